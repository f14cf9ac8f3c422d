"""The NATS JetStream sink: one message per event, acknowledged by the stream.

- subject ``<subjectPrefix>.<cluster>.<namespace or "_">.<kind>`` (tokens escaped by
  :func:`subject_token`), so consumers filter by cluster, namespace and kind;
- payload: the OCSF JSON object; header ``Nats-Msg-Id``: the violation's uid, so the
  stream drops a re-publish within its duplicate window (default 2 minutes);
- every message of a batch is published at once (one JetStream request each, all in
  flight together) and the batch counts as delivered only when every publish was
  acknowledged by the stream. One failed ack fails the batch: the runner re-publishes
  all of it and the stream deduplicates what it already had.

nats-py is asyncio: the sink runs its own event loop in a thread of its own (the runner
thread hands each batch over and waits for the result), so the client keeps reading
between batches and sees a lost server at once. After a failure the next batch dials
again; nats-py's background reconnect is off so the runner's backoff is the one retry
policy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import urllib.parse
from collections.abc import Coroutine, Sequence
from typing import Any, NamedTuple, TypeVar

import nats
import nats.js.errors

from nodeguard import log
from nodeguard.collector.records import StoredEvent
from nodeguard.collector.sinks.config import NatsSink as NatsSinkConfig
from nodeguard.collector.sinks.sink import Sink, SinkDeliveryError, violation_of
from nodeguard.collector.sinks.tls import client_context, server_hostname
from nodeguard.events.ocsf import to_json_line

_log = log.get("nodeguard.collector.sinks.nats")
T = TypeVar("T")

IO_TIMEOUT_S = 10.0
MSG_ID_HEADER = "Nats-Msg-Id"
NO_NAMESPACE = "_"
# Characters a NATS subject token cannot hold ('.', '*', '>', whitespace) and '%', which
# escapes them (so the escaping is reversible): %2E, %2A, %3E, %20, %25 ...
_SUBJECT_UNSAFE = {".", "*", ">", "%"}


class NatsMessage(NamedTuple):
    subject: str
    payload: bytes
    msg_id: str


def subject_token(text: str | None) -> str:
    """``text`` as one subject token: unsafe characters percent-escaped, empty -> ``_``."""
    if not text:
        return NO_NAMESPACE
    if all(c not in _SUBJECT_UNSAFE and c.isprintable() and not c.isspace() for c in text):
        return text
    return "".join(
        f"%{ord(c):02X}" if c in _SUBJECT_UNSAFE or c.isspace() or not c.isprintable() else c
        for c in text
    )


def subject_for(prefix: str, cluster: str, namespace: str | None, kind: str) -> str:
    return ".".join((prefix, subject_token(cluster), subject_token(namespace), subject_token(kind)))


class NatsPublisher(Sink[NatsMessage]):
    type = "nats"

    def __init__(
        self, config: NatsSinkConfig, *, cluster: str, io_timeout_s: float = IO_TIMEOUT_S
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.io_timeout_s = io_timeout_s
        wants_tls = config.tls is not None or any(s.startswith("tls:") for s in config.servers)
        self._context = client_context(config.tls, sink=config.name) if wants_tls else None
        first_host = urllib.parse.urlsplit(config.servers[0]).hostname or ""
        self._tls_hostname = server_hostname(config.tls, first_host) if wants_tls else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: Any = None
        self._js: Any = None
        self._stream_checked = False

    def describe(self) -> str:
        return f"{','.join(self.config.servers)} stream {self.config.stream}"

    def render(self, event: StoredEvent) -> NatsMessage:
        v = violation_of(event)
        namespace = v.workload.namespace if v.workload is not None else None
        subject = subject_for(self.config.subject_prefix, self.cluster, namespace, v.kind)
        return NatsMessage(subject, to_json_line(v).encode("utf-8", "backslashreplace"), v.uid)

    def send(self, items: Sequence[NatsMessage]) -> None:
        try:
            self._run(self._send(items), self.io_timeout_s * 3)
        except SinkDeliveryError:
            self._disconnect()
            raise
        except Exception as err:
            self._disconnect()
            raise SinkDeliveryError(
                f"publishing to NATS at {self.describe()} failed: {_describe(err)}"
            ) from err

    def close(self) -> None:
        self._disconnect()
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self.io_timeout_s)
            if not thread.is_alive():
                loop.close()

    # ------------------------------------------------------------------ private --

    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coro`` on the sink's event loop (a thread of its own, so nats-py keeps
        reading between batches and notices a lost server at once)."""
        if self._loop is None or self._thread is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name=f"nodeguard-sink-{self.config.name}-nats", daemon=True
            )
            thread.start()
            self._loop, self._thread = loop, thread
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise SinkDeliveryError(
                f"NATS at {self.describe()} did not answer within {timeout_s:g} s"
            ) from None

    def _disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._run(asyncio.wait_for(nc.close(), self.io_timeout_s), self.io_timeout_s + 1)

    async def _send(self, items: Sequence[NatsMessage]) -> None:
        js = await self._jetstream()
        stream = self.config.stream
        timeout = self.io_timeout_s
        results = await asyncio.gather(
            *(
                js.publish(
                    m.subject,
                    m.payload,
                    timeout=timeout,
                    stream=stream,
                    headers={MSG_ID_HEADER: m.msg_id},
                )
                for m in items
            ),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            first = errors[0]
            fix = None
            if isinstance(first, nats.js.errors.NoStreamResponseError):
                self._stream_checked = False  # createStream: look for it again next time
                fix = (
                    f"no JetStream stream takes subject {items[0].subject!r}: create stream "
                    f"{stream} with subjects '{self.config.subject_prefix}.>' or set "
                    "createStream: true"
                )
            elif isinstance(first, nats.js.errors.APIError):
                fix = f"the stream refused the message; check stream {stream}'s limits"
            raise SinkDeliveryError(
                f"{len(errors)} of {len(items)} JetStream publishes to stream {stream} at "
                f"{self.describe()} were not acknowledged: {_describe(first)}",
                fix=fix,
            )

    async def _jetstream(self) -> Any:
        if self._nc is not None and self._nc.is_connected and self._js is not None:
            return self._js
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), self.io_timeout_s)
        self._nc, self._js = None, None
        options: dict[str, Any] = {
            "servers": list(self.config.servers),
            "name": f"nodeguard-collector sink {self.config.name}",
            "connect_timeout": max(1, round(self.io_timeout_s)),
            "allow_reconnect": False,
            # nats-py tries each server up to max_reconnect_attempts + 1 times even on a
            # first connect; 1 (the minimum: 0 means forever) keeps a down server from
            # holding the runner (the runner's backoff does the retrying)
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.1,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
        }
        if self._context is not None:
            options["tls"] = self._context
            options["tls_hostname"] = self._tls_hostname
        if self.config.credentials is not None:
            options["user_credentials"] = str(self.config.credentials)
        token = self._token()
        if token is not None:
            options["token"] = token
        try:
            nc = await nats.connect(**options)
        except Exception as err:
            raise SinkDeliveryError(
                f"cannot connect to NATS at {', '.join(self.config.servers)}: {_describe(err)}",
                fix="check that the servers run and listen there, and the credentials/token",
            ) from err
        self._nc = nc
        js = nc.jetstream(timeout=self.io_timeout_s)
        if self.config.create_stream and not self._stream_checked:
            await self._ensure_stream(js)
            self._stream_checked = True
        self._js = js
        return js

    async def _ensure_stream(self, js: Any) -> None:
        stream = self.config.stream
        subjects = [f"{self.config.subject_prefix}.>"]
        try:
            await js.stream_info(stream)
            return
        except nats.js.errors.NotFoundError:
            pass
        except Exception as err:
            raise SinkDeliveryError(
                f"cannot look up JetStream stream {stream}: {_describe(err)}",
                fix="check that JetStream is enabled on the server (nats-server -js)",
            ) from err
        try:
            await js.add_stream(name=stream, subjects=subjects)
            _log.info(
                "sink_nats_stream_created", sink=self.config.name, stream=stream, subjects=subjects
            )
        except Exception as err:
            with contextlib.suppress(Exception):
                await js.stream_info(stream)  # another collector created it meanwhile
                return
            raise SinkDeliveryError(
                f"cannot create JetStream stream {stream} with subjects {subjects}: "
                f"{_describe(err)}",
                fix="create the stream yourself and set createStream: false, or allow this "
                "user to create streams",
            ) from err

    def _token(self) -> str | None:
        if self.config.token is not None:
            return self.config.token.get_secret_value()
        if self.config.token_file is not None:
            try:
                return self.config.token_file.read_text(encoding="utf-8").strip()
            except OSError as err:
                raise SinkDeliveryError(
                    f"cannot read the NATS token file {self.config.token_file}: "
                    f"{err.strerror or err}",
                    fix="make tokenFile readable by the collector",
                ) from err
        return None

    async def _on_error(self, err: Exception) -> None:
        _log.debug("sink_nats_client_error", sink=self.config.name, error=_describe(err))

    async def _on_disconnected(self) -> None:
        _log.debug("sink_nats_disconnected", sink=self.config.name)


def _describe(err: BaseException) -> str:
    text = str(err)
    name = type(err).__name__
    if not text or text == name:
        return name
    return f"{name}: {text}"
