"""The syslog sink: RFC 5424 messages carrying a CEF payload, over TCP or TLS.

``<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [SD-ID uid=.. node=.. ...] CEF:0|...``

- PRI: the configured facility and the syslog severity of the event's OCSF severity
  (:data:`SYSLOG_SEVERITY`); TIMESTAMP: the violation's time, UTC, milliseconds.
- HOSTNAME: ``hostname`` from the configuration, else the event's node.
- PROCID ``-`` (the collector is not the process the event is about); MSGID: the kind
  (``egress``, ``exec``, ``syscall``, ``socket``, ``limit``).
- one SD element (``structuredDataId``, default ``nodeguard@32473``) with ``uid``,
  ``node``, ``cluster``, ``policy``, ``kind``, ``verdict`` and, when known,
  ``namespace`` and ``pod``.

Framing is octet counting (``LEN SP MSG``, RFC 6587 3.4.1 and RFC 5425 4.3) on both
transports, so a message may contain any character. TCP has no application-level
acknowledgement; before each batch the sink checks that the receiver has not closed the
connection, and after writing it waits until the receiver's TCP has acknowledged every
byte (``SIOCOUTQ`` = 0), so a receiver that is stopped or restarted cleanly loses
nothing. See docs/sinks.md for what a receiver crash can still lose.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import ssl
import struct
import termios
import time
from collections.abc import Sequence

from nodeguard import __version__
from nodeguard.collector.records import StoredEvent
from nodeguard.collector.sinks.cef import ocsf_severity, to_cef
from nodeguard.collector.sinks.config import FACILITIES
from nodeguard.collector.sinks.config import SyslogSink as SyslogSinkConfig
from nodeguard.collector.sinks.sink import Sink, SinkDeliveryError
from nodeguard.collector.sinks.tls import client_context, server_hostname
from nodeguard.events.model import Violation

# OCSF severity_id -> syslog severity (0 emerg ... 7 debug)
SYSLOG_SEVERITY = {0: 5, 1: 6, 2: 5, 3: 4, 4: 3, 5: 2, 6: 1, 99: 5}
NILVALUE = "-"
IO_TIMEOUT_S = 10.0

_SD_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "]": "\\]"})
_NOT_PRINTUSASCII = str.maketrans(
    {c: "_" for c in [*range(0x21), *range(0x7F, 0x100)]}  # space and controls too
)


def timestamp(ms: int) -> str:
    """RFC 5424 TIMESTAMP (RFC 3339, UTC, milliseconds), e.g. 2024-05-01T12:00:00.123Z."""
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def header_token(text: str | None, limit: int) -> str:
    """A header field: printable US-ASCII without spaces (others become ``_``), at most
    ``limit`` characters; empty or None is the NILVALUE ``-``."""
    if not text:
        return NILVALUE
    return text.translate(_NOT_PRINTUSASCII)[:limit]


def sd_value(text: str) -> str:
    return text.translate(_SD_ESCAPES)


def structured_data(v: Violation, sd_id: str, cluster: str) -> str:
    params: list[tuple[str, str | None]] = [
        ("uid", v.uid),
        ("node", v.node),
        ("cluster", cluster),
        ("policy", v.policy.name),
        ("kind", v.kind),
        ("verdict", v.verdict),
    ]
    if v.workload is not None:
        params += [("namespace", v.workload.namespace), ("pod", v.workload.pod_name)]
    body = " ".join(f'{name}="{sd_value(value)}"' for name, value in params if value)
    return f"[{sd_id} {body}]"


def format_message(
    v: Violation,
    *,
    facility: int,
    app_name: str,
    hostname: str | None,
    sd_id: str,
    cluster: str,
    node: str | None = None,
    product_version: str = __version__,
) -> str:
    """One RFC 5424 message (without framing). ``node`` is the stored node name, used
    when the violation names none."""
    pri = facility * 8 + SYSLOG_SEVERITY.get(ocsf_severity(v), 5)
    host = header_token(hostname or v.node or node, 255)
    return (
        f"<{pri}>1 {timestamp(v.time_ms)} {host} {header_token(app_name, 48)} {NILVALUE} "
        f"{header_token(v.kind, 32)} {structured_data(v, sd_id, cluster)} "
        f"{to_cef(v, product_version=product_version)}"
    )


def frame(message: str) -> bytes:
    """Octet-counted framing: ``LEN SP MSG`` (LEN counts the UTF-8 octets of MSG)."""
    data = message.encode("utf-8", "backslashreplace")
    return b"%d %b" % (len(data), data)


def unacknowledged_bytes(sock: socket.socket) -> int:
    """Bytes written to ``sock`` that the peer's TCP has not acknowledged yet."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ
    value: int = struct.unpack("i", buf)[0]
    return value


class SyslogSender(Sink[bytes]):
    """Sends octet-counted frames over one TCP or TLS connection, reconnecting after a
    failure."""

    type = "syslog"

    def __init__(
        self, config: SyslogSinkConfig, *, cluster: str, io_timeout_s: float = IO_TIMEOUT_S
    ):
        self.config = config
        self.cluster = cluster
        self.io_timeout_s = io_timeout_s
        self.facility = FACILITIES[config.facility]
        self._context = (
            client_context(config.tls, sink=config.name) if config.transport == "tls" else None
        )
        self._sock: socket.socket | None = None

    def describe(self) -> str:
        return f"syslog+{self.config.transport}://{self.config.address}"

    def render(self, event: StoredEvent) -> bytes:
        return frame(
            format_message(
                event.violation,
                facility=self.facility,
                app_name=self.config.app_name,
                hostname=self.config.hostname,
                sd_id=self.config.structured_data_id,
                cluster=self.cluster,
                node=event.node,
            )
        )

    def send(self, items: Sequence[bytes]) -> None:
        where = f"syslog receiver {self.config.address} ({self.config.transport})"
        if self._sock is not None and not self._alive(self._sock):
            self.close()
        sock = self._sock if self._sock is not None else self._connect(where)
        try:
            sock.sendall(b"".join(items))
            self._wait_acknowledged(sock, where)
        except (OSError, SinkDeliveryError) as err:
            self.close()
            if isinstance(err, SinkDeliveryError):
                raise
            raise SinkDeliveryError(f"sending to {where} failed: {err}") from err

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if isinstance(sock, ssl.SSLSocket):
            with contextlib.suppress(OSError, ValueError):
                sock.settimeout(1.0)
                sock.unwrap()  # close_notify: a clean end for the receiver's TLS layer
        with contextlib.suppress(OSError):
            sock.close()

    # ------------------------------------------------------------------ private --

    def _connect(self, where: str) -> socket.socket:
        address = self.config.address
        try:
            raw = socket.create_connection((address.host, address.port), self.io_timeout_s)
        except OSError as err:
            raise SinkDeliveryError(
                f"cannot connect to {where}: {err.strerror or err}",
                fix="check that the receiver runs and listens on that address",
            ) from err
        if self._context is None:
            self._sock = raw
            return raw
        try:
            sock = self._context.wrap_socket(
                raw, server_hostname=server_hostname(self.config.tls, address.host)
            )
        except ssl.SSLCertVerificationError as err:
            raw.close()
            raise SinkDeliveryError(
                f"TLS handshake with {where} failed: {err.verify_message}",
                fix="set tls.ca to the CA that signed the receiver's certificate, and "
                "tls.serverName to a name in it",
            ) from err
        except (OSError, ssl.SSLError) as err:
            raw.close()
            raise SinkDeliveryError(
                f"TLS handshake with {where} failed: {err}",
                fix="check the receiver's TLS settings (does it want a client certificate? "
                "set tls.cert and tls.key)",
            ) from err
        self._sock = sock
        return sock

    def _alive(self, sock: socket.socket) -> bool:
        """False when the receiver closed or reset the connection. A syslog receiver
        sends no data, so anything readable is an end of stream (or TLS records such as
        session tickets, which recv() consumes)."""
        try:
            sock.setblocking(False)
            while True:
                try:
                    if not sock.recv(4096):
                        return False
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    return True
        except (OSError, ssl.SSLError):
            return False
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(self.io_timeout_s)

    def _wait_acknowledged(self, sock: socket.socket, where: str) -> None:
        deadline = time.monotonic() + self.io_timeout_s
        delay = 0.0005
        while unacknowledged_bytes(sock) > 0:
            if time.monotonic() > deadline:
                raise SinkDeliveryError(
                    f"{where} did not acknowledge the batch within {self.io_timeout_s:g} s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
