"""The jsonl sink: one OCSF JSON object per line in a local file, rotated by size.

When the next line would take the file over ``maxBytes`` it is rotated first: ``path``
becomes ``path.1``, ``path.1`` becomes ``path.2`` ... and ``path.<keep>`` is dropped
(a single line longer than ``maxBytes`` still gets a file of its own). Every batch is
written and fsync'ed before the runner moves the cursor; a failed write is cut back off
the file (best effort), so a retried batch is not half there twice. Files are created
0640: violations name pods, commands and addresses.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from nodeguard.collector.records import StoredEvent
from nodeguard.collector.sinks.config import JsonlSink as JsonlSinkConfig
from nodeguard.collector.sinks.sink import Sink, SinkDeliveryError, violation_of
from nodeguard.events.ocsf import to_json_line

FILE_MODE = 0o640


def rotated_path(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


class JsonlWriter(Sink[bytes]):
    type = "jsonl"

    def __init__(self, config: JsonlSinkConfig) -> None:
        self.config = config
        self.path = config.path
        self._fd: int | None = None
        self._size = 0

    def describe(self) -> str:
        return f"file://{self.path}"

    def render(self, event: StoredEvent) -> bytes:
        return (to_json_line(violation_of(event)) + "\n").encode("utf-8", "backslashreplace")

    def send(self, items: Sequence[bytes]) -> None:
        rotated = False
        fd = -1
        start = 0
        try:
            fd = self._open()
            start = self._size
            pending: list[bytes] = []
            pending_size = 0
            for item in items:
                if self._size + pending_size > 0 and (
                    self._size + pending_size + len(item) > self.config.max_bytes
                ):
                    self._write(fd, pending)
                    pending, pending_size = [], 0
                    fd = self._rotate()
                    rotated = True
                pending.append(item)
                pending_size += len(item)
            self._write(fd, pending)
            os.fsync(fd)
        except OSError as err:
            if not rotated and fd >= 0:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
            self.close()
            raise SinkDeliveryError(
                f"writing {self.path} failed: {err.strerror or err}",
                fix="check free space and permissions of the directory",
            ) from err

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    # ------------------------------------------------------------------ private --

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
            )
            self._size = os.fstat(fd).st_size
            self._fd = fd
        return self._fd

    def _write(self, fd: int, chunks: list[bytes]) -> None:
        if not chunks:
            return
        data = memoryview(b"".join(chunks))
        while data:
            written = os.write(fd, data)
            data = data[written:]
            self._size += written

    def _rotate(self) -> int:
        """Close, shift the rotated files up by one, start a new file."""
        if self._fd is not None:
            os.fsync(self._fd)
        self.close()
        keep = self.config.keep
        with contextlib.suppress(FileNotFoundError):
            rotated_path(self.path, keep).unlink()
        for index in range(keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(rotated_path(self.path, index), rotated_path(self.path, index + 1))
        os.replace(self.path, rotated_path(self.path, 1))
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return self._open()
