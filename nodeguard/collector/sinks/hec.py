"""The Splunk HTTP Event Collector sink: one POST per batch on a kept-alive connection.

The body is the batch's events as concatenated JSON objects, each
``{"time": <seconds.millis>, "host": <node>, "source": .., "sourcetype": .., "index": ..,
"event": <OCSF object>}`` (``index`` only when configured). A batch counts as delivered
only on HTTP 200 with ``{"code": 0}`` in the response.

Every other answer fails the batch and the runner retries it with backoff, whatever the
status: 503/429 (busy) clear by themselves, while 400 (bad index or format), 401/403
(bad or disabled token) and 413 (batch too large) need the operator, so they are kept
as the sink's ``last_error`` and logged with a fix, and the events wait in the store
until the configuration is fixed (nothing is dropped for a bad token).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import ssl
import urllib.parse
import uuid
from collections.abc import Sequence

from nodeguard import log
from nodeguard.collector.records import StoredEvent
from nodeguard.collector.sinks.config import SplunkHecSink as HecSinkConfig
from nodeguard.collector.sinks.sink import Sink, SinkDeliveryError, violation_of
from nodeguard.collector.sinks.tls import client_context, server_hostname
from nodeguard.events.ocsf import to_json_line

_log = log.get("nodeguard.collector.sinks.hec")

IO_TIMEOUT_S = 10.0
# Errors that mean a kept-alive connection was closed by the server while idle: the
# request is retried once on a new connection before it counts as a failure.
_STALE_CONNECTION = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
    http.client.CannotSendRequest,
)
_FIXES = {
    400: "the HEC rejected the data: check 'index' (is it allowed for this token?) and "
    "the HEC's settings",
    401: "the HEC wants a token: set 'token' or 'tokenFile'",
    403: "the HEC refused the token: check 'token'/'tokenFile' and that the token is "
    "enabled in Splunk",
    404: "no HEC at this URL: check 'url' (…/services/collector/event) and that HEC is enabled",
    413: "the batch is larger than the HEC accepts: lower 'batchSize' (or raise "
    "max_content_length in Splunk's limits.conf)",
}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _TlsConnection(http.client.HTTPConnection):
    """HTTPS that checks the certificate against ``server_name`` (tls.serverName) while
    dialling ``host``; http.client's own HTTPSConnection ties the two together."""

    default_port = http.client.HTTPS_PORT

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        context: ssl.SSLContext,
        server_name: str,
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._tls_context = context
        self._server_name = server_name

    def connect(self) -> None:
        super().connect()
        self.sock = self._tls_context.wrap_socket(self.sock, server_hostname=self._server_name)


class HecSender(Sink[bytes]):
    type = "splunk_hec"

    def __init__(self, config: HecSinkConfig, *, io_timeout_s: float = IO_TIMEOUT_S) -> None:
        self.config = config
        self.io_timeout_s = io_timeout_s
        parts = urllib.parse.urlsplit(config.url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.path = parts.path
        self.channel = str(uuid.uuid4())  # X-Splunk-Request-Channel (needed with indexer acks)
        self._context = client_context(config.tls, sink=config.name) if self.https else None
        self._conn: http.client.HTTPConnection | None = None
        self._token: str | None = None
        self._envelope = {
            "source": json.dumps(config.source, ensure_ascii=False),
            "sourcetype": json.dumps(config.sourcetype, ensure_ascii=False),
            "index": json.dumps(config.index) if config.index else None,
        }
        if not self.https and not _is_loopback(self.host):
            _log.warning(
                "sink_hec_plaintext",
                sink=config.name,
                url=config.url,
                hint="the token and the events cross the network unencrypted; use https",
            )

    def describe(self) -> str:
        return self.config.url

    def render(self, event: StoredEvent) -> bytes:
        v = violation_of(event)
        seconds, millis = divmod(v.time_ms, 1000)
        env = self._envelope
        index = f',"index":{env["index"]}' if env["index"] else ""
        host = json.dumps(v.node or event.node, ensure_ascii=False)
        text = (
            f'{{"time":{seconds}.{millis:03d},"host":{host},"source":{env["source"]},'
            f'"sourcetype":{env["sourcetype"]}{index},"event":{to_json_line(v)}}}'
        )
        return text.encode("utf-8", "backslashreplace")

    def send(self, items: Sequence[bytes]) -> None:
        body = b"".join(items)
        where = f"HEC {self.config.url}"
        for attempt in (1, 2):
            fresh = self._conn is None
            conn = self._connection()
            try:
                conn.request("POST", self.path, body=body, headers=self._headers())
                response = conn.getresponse()
                data = response.read()
            except _STALE_CONNECTION as err:
                self.close()
                if fresh or attempt == 2:
                    raise SinkDeliveryError(f"posting to {where} failed: {err!r}") from err
                continue  # the server closed the idle connection: once more, new one
            except (OSError, http.client.HTTPException) as err:
                self.close()
                raise SinkDeliveryError(
                    f"posting to {where} failed: {err}",
                    fix="check that the HEC is reachable (and tls.ca for https)",
                ) from err
            if response.will_close:
                self.close()
            self._check(response.status, data, where)
            return

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ private --

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._token = self._read_token()
            if self._context is not None:
                self._conn = _TlsConnection(
                    self.host,
                    self.port,
                    timeout=self.io_timeout_s,
                    context=self._context,
                    server_name=server_hostname(self.config.tls, self.host),
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.io_timeout_s
                )
        return self._conn

    def _read_token(self) -> str:
        if self.config.token is not None:
            return self.config.token.get_secret_value()
        path = self.config.token_file
        assert path is not None  # the config ensures one of them
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise SinkDeliveryError(
                f"cannot read the HEC token file {path}: {err.strerror or err}",
                fix="make tokenFile readable by the collector",
            ) from err
        if not token:
            raise SinkDeliveryError(f"the HEC token file {path} is empty", fix="write the token")
        return token

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Splunk {self._token}",
            "Content-Type": "application/json",
            "X-Splunk-Request-Channel": self.channel,
        }

    def _check(self, status: int, data: bytes, where: str) -> None:
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        code = answer.get("code")
        text = answer.get("text") or data[:200].decode("utf-8", "replace")
        if status == 200 and code == 0:
            return
        if status == 200:
            raise SinkDeliveryError(f"{where} answered 200 but code {code!r} ({text!r})")
        fix = _FIXES.get(status)
        if status in (401, 403):
            self._token = None
            self.close()  # re-read tokenFile on the next attempt
        raise SinkDeliveryError(
            f"{where} answered HTTP {status} (code {code!r}: {text})",
            fix=fix
            or ("the HEC is busy or failing; the batch is retried" if status >= 500 else None),
        )
