"""The agent's local violation log: OCSF JSON lines under ``stateDir/events``.

Bounded: the file rotates at ``max_bytes`` and ``keep`` old files are kept. A line that
cannot be written (disk full, I/O error) is counted in ``dropped`` (shown by `nodeguard
status` and metrics as lost in user space), never silently skipped. Streaming to the
central collector goes through the spool (:mod:`nodeguard.delivery`), not this file;
``eventLog.enabled: false`` turns this log off (``enabled=False``: nothing is opened or
written, and the agent does not even format the lines).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO

from nodeguard import log

_log = log.get("nodeguard.agent.eventlog")


class EventLog:
    def __init__(
        self, directory: Path, max_bytes: int = 64 << 20, keep: int = 3, *, enabled: bool = True
    ) -> None:
        self.directory = directory
        self.path = directory / "violations.jsonl"
        self.max_bytes = max_bytes
        self.keep = keep
        self.enabled = enabled
        self.dropped = 0
        self.written = 0
        self._file: IO[str] | None = None
        self._size = 0
        if enabled:
            directory.mkdir(parents=True, exist_ok=True)
            self._open()

    def _open(self) -> None:
        try:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._size = self._file.tell()
        except OSError as err:
            self._file = None
            _log.error("event_log_unwritable", path=str(self.path), error=str(err))

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
        for i in range(self.keep - 1, 0, -1):
            src = self.path.with_suffix(f".jsonl.{i}")
            if src.exists():
                os.replace(src, self.path.with_suffix(f".jsonl.{i + 1}"))
        if self.path.exists():
            os.replace(self.path, self.path.with_suffix(".jsonl.1"))
        self._open()

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self._file is None:
            self._open()
        if self._file is None:
            self.dropped += 1
            return
        try:
            if self._size + len(line) + 1 > self.max_bytes:
                self._rotate()
                assert self._file is not None
            self._file.write(line + "\n")
            self._size += len(line) + 1
            self.written += 1
        except OSError as err:
            self.dropped += 1
            _log.error("event_log_write_failed", error=str(err))

    def flush(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
