"""The ``sinks:`` list of the collector configuration (pydantic v2, strict, camelCase keys).

One discriminated union, :data:`SinkConfig`, keyed by ``type``: ``jsonl``, ``syslog``,
``splunk_hec`` and ``nats``. Every sink has a ``name`` (unique: it keys the sink's delivery
cursor in the store), a ``batchSize`` and a ``maxRetryInterval``. Values are checked here
(addresses, URLs, files that must exist, subject tokens), so a sink never starts with a
setting it cannot use; :mod:`nodeguard.collector.config` adds file, line and key path to
every problem. See docs/sinks.md.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, PlainSerializer, PlainValidator, SecretStr, model_validator

from nodeguard.agent.config import HostPort, parse_host_port
from nodeguard.policy.model import StrictModel, describe, problem

DEFAULT_BATCH_SIZE = 500
DEFAULT_MAX_RETRY_INTERVAL_S = 30.0
MAX_BATCH_SIZE = 100_000
MAX_RETRY_INTERVAL_LIMIT_S = 3600.0

DEFAULT_JSONL_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_JSONL_KEEP = 5
MIN_JSONL_MAX_BYTES = 4096

DEFAULT_APP_NAME = "nodeguard"
# Security/authorization messages: the facility syslog daemons route to a root-only file
# by default (see docs/sinks.md, "Why authpriv").
DEFAULT_FACILITY = "authpriv"
# RFC 5424 7.2.2: an SD-ID with '@' names a private enterprise number; 32473 is the
# number IANA reserves for documentation (RFC 5612). Operators with their own PEN set
# structuredDataId.
DEFAULT_SD_ID = "nodeguard@32473"

DEFAULT_HEC_SOURCE = "nodeguard"
DEFAULT_HEC_SOURCETYPE = "nodeguard:ocsf"  # Splunk's vendor:product:format convention
HEC_PATHS = ("/services/collector/event", "/services/collector/event/1.0")

DEFAULT_NATS_STREAM = "NODEGUARD"
DEFAULT_NATS_PREFIX = "nodeguard"

FACILITIES: dict[str, int] = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "security": 13,
    "console": 14,
    "solaris-cron": 15,
    "local0": 16,
    "local1": 17,
    "local2": 18,
    "local3": 19,
    "local4": 20,
    "local5": 21,
    "local6": 22,
    "local7": 23,
}

_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_PRINTUSASCII_RE = re.compile(r"[\x21-\x7e]+")
_SD_NAME_RE = re.compile(r"[\x21-\x7e]{1,32}")
_PEN_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
# JetStream stream names: no whitespace, '.', '*', '>', path separators or NUL.
_INDEX_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,79}")
_STREAM_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")
_SUBJECT_TOKEN_RE = re.compile(r"[^\s.*>]+")


# ------------------------------------------------------------------------ values --


def _parse_sink_name(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"expected a sink name, got {describe(value)}; put it in quotes")
    if not _NAME_RE.fullmatch(value):
        raise problem(
            f"{value!r} is not a valid sink name: use 1-63 letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit (it names the sink's cursor, its "
            "metrics and its log lines)"
        )
    return value


def _parse_batch_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise problem(f"expected a whole number of events, got {describe(value)}")
    if not 1 <= value <= MAX_BATCH_SIZE:
        raise problem(f"{value} is out of range: use 1-{MAX_BATCH_SIZE} events")
    return value


def _parse_retry_interval(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise problem(f"expected a number of seconds, got {describe(value)}")
    if not 0.5 <= value <= MAX_RETRY_INTERVAL_LIMIT_S:
        raise problem(
            f"{value} is out of range: use 0.5-{MAX_RETRY_INTERVAL_LIMIT_S:g} seconds "
            "(the first retry waits up to 0.5 s, later ones up to this)"
        )
    return float(value)


def _absolute_path(value: Any, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise problem(f"expected the absolute path of {what}, got {describe(value)}")
    if "\0" in value:
        raise problem("path contains a NUL byte; remove it")
    if not value.startswith("/"):
        raise problem(
            f"{value!r} is not an absolute path; write the full path (relative paths would "
            "depend on the collector's working directory)"
        )
    return Path(os.path.normpath(value))


def _parse_output_file(value: Any) -> Path:
    path = _absolute_path(value, "the file to write")
    if path.is_dir():
        raise problem(f"{str(path)!r} is a directory; name a file in it, e.g. {path}/events.jsonl")
    return path


def _parse_existing_file(value: Any) -> Path:
    path = _absolute_path(value, "a file")
    if not path.is_file():
        raise problem(f"{str(path)!r} does not exist or is not a file; create it or fix the path")
    if not os.access(path, os.R_OK):
        raise problem(f"{str(path)!r} is not readable; make it readable by the collector")
    return path


def _parse_secret(value: Any) -> SecretStr:
    if not isinstance(value, str) or not value.strip():
        raise problem(f"expected a non-empty string, got {describe(value)}")
    if value != value.strip():
        raise problem("the token has surrounding spaces; remove them")
    return SecretStr(value)


def _parse_hostname(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"expected a host name, got {describe(value)}; put it in quotes")
    if len(value) > 255 or not _PRINTUSASCII_RE.fullmatch(value):
        raise problem(
            f"{value!r} is not a syslog HOSTNAME: use 1-255 printable ASCII characters "
            "without spaces (RFC 5424 6.2.4)"
        )
    return value


def _parse_app_name(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"expected an app name, got {describe(value)}; put it in quotes")
    if len(value) > 48 or not _PRINTUSASCII_RE.fullmatch(value):
        raise problem(
            f"{value!r} is not a syslog APP-NAME: use 1-48 printable ASCII characters "
            "without spaces (RFC 5424 6.2.5)"
        )
    return value


def _checked_text(value: Any, ok: Callable[[str], object], why: str) -> str:
    """``value`` when it is a string ``ok`` accepts, else the problem "<value> <why>"."""
    if isinstance(value, str) and ok(value):
        return value
    got = repr(value) if isinstance(value, str) else describe(value)
    raise problem(f"{got} {why}")


def _parse_index(value: Any) -> str:
    return _checked_text(
        value,
        _INDEX_RE.fullmatch,
        "is not a Splunk index name: use lower-case letters, digits, '_' and '-', "
        "not starting with '_' or '-'",
    )


def _parse_facility(value: Any) -> str:
    return _checked_text(
        value,
        FACILITIES.__contains__,
        f"is not a syslog facility; use one of {', '.join(FACILITIES)}",
    )


def _parse_sd_id(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"expected an SD-ID such as 'nodeguard@32473', got {describe(value)}")
    name, at, pen = value.partition("@")
    if (
        not at
        or not _SD_NAME_RE.fullmatch(value)
        or any(c in name for c in '=]"@')
        or not name
        or not _PEN_RE.fullmatch(pen)
    ):
        raise problem(
            f"{value!r} is not a private SD-ID: write NAME@PEN with your IANA private "
            "enterprise number, at most 32 printable characters, no '=', ']' or '\"' "
            "(RFC 5424 7.2.2), e.g. nodeguard@32473"
        )
    return value


def _parse_hec_url(value: Any) -> str:
    usage = "write e.g. https://splunk.example:8088/services/collector/event"
    if not isinstance(value, str):
        raise problem(f"expected a URL, got {describe(value)}; {usage}")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise problem(f"{value!r} is not an http:// or https:// URL; {usage}")
    if not parts.hostname:
        raise problem(f"{value!r} has no host; {usage}")
    try:
        _ = parts.port
    except ValueError:
        raise problem(f"{value!r} has an invalid port; {usage}") from None
    if parts.query or parts.fragment or parts.username or parts.password:
        raise problem(
            f"{value!r}: leave out query, fragment and credentials (the token goes in "
            f"'token' or 'tokenFile'); {usage}"
        )
    if parts.path.rstrip("/") not in HEC_PATHS:
        raise problem(
            f"{value!r} does not end in /services/collector/event (the HEC JSON event "
            f"endpoint the sink posts to); {usage}"
        )
    return value


def _parse_nats_server(value: Any) -> str:
    usage = "write e.g. nats://nats.example:4222 or tls://nats.example:4222"
    if not isinstance(value, str):
        raise problem(f"expected a server URL, got {describe(value)}; {usage}")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("nats", "tls"):
        raise problem(f"{value!r} is not a nats:// or tls:// URL; {usage}")
    if not parts.hostname:
        raise problem(f"{value!r} has no host; {usage}")
    try:
        _ = parts.port
    except ValueError:
        raise problem(f"{value!r} has an invalid port; {usage}") from None
    if parts.username or parts.password:
        raise problem(
            f"{value!r}: leave credentials out of the URL; use 'token', 'tokenFile' or "
            "'credentials'"
        )
    return value


def _parse_stream(value: Any) -> str:
    return _checked_text(
        value,
        _STREAM_RE.fullmatch,
        "is not a JetStream stream name: use letters, digits, '-' and '_' "
        "(no '.', '*', '>', spaces or path separators)",
    )


def _parse_subject_prefix(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"expected a subject prefix, got {describe(value)}; put it in quotes")
    tokens = value.split(".")
    if not value or not all(_SUBJECT_TOKEN_RE.fullmatch(t) for t in tokens):
        raise problem(
            f"{value!r} is not a NATS subject prefix: one or more '.'-separated tokens, each "
            "non-empty, without spaces, '*' or '>' (e.g. 'nodeguard' or 'acme.security')"
        )
    return value


SinkName = Annotated[str, PlainValidator(_parse_sink_name)]
BatchSize = Annotated[int, PlainValidator(_parse_batch_size)]
RetryInterval = Annotated[float, PlainValidator(_parse_retry_interval)]
OutputFile = Annotated[Path, PlainValidator(_parse_output_file), PlainSerializer(str)]
ExistingFile = Annotated[Path, PlainValidator(_parse_existing_file), PlainSerializer(str)]
Secret = Annotated[SecretStr, PlainValidator(_parse_secret)]
Address = Annotated[HostPort, PlainValidator(parse_host_port), PlainSerializer(str)]


def _int_range(lo: int, hi: int, what: str) -> PlainValidator:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise problem(f"expected a whole number of {what}, got {describe(value)}")
        if not lo <= value <= hi:
            raise problem(f"{value} is out of range: use {lo}-{hi} {what}")
        return value

    return PlainValidator(parse)


# ------------------------------------------------------------------------ models --


class TlsClientConfig(StrictModel):
    """How a sink checks its server (``ca``: PEM bundle, default: the system's trust
    store) and, optionally, the client certificate it presents (``cert`` + ``key``)."""

    ca: ExistingFile | None = None
    cert: ExistingFile | None = None
    key: ExistingFile | None = None
    server_name: Annotated[str, PlainValidator(_parse_hostname)] | None = Field(
        default=None, alias="serverName"
    )
    insecure_skip_verify: bool = Field(default=False, alias="insecureSkipVerify")

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert is None) != (self.key is None):
            missing = "key" if self.key is None else "cert"
            raise problem(
                f"a client certificate needs both 'cert' and 'key'; add '{missing}' or "
                "remove the other",
                at=missing,
            )
        if self.insecure_skip_verify and self.ca is not None:
            raise problem(
                "insecureSkipVerify: true ignores 'ca'; remove one of them (prefer 'ca')",
                at="insecureSkipVerify",
            )
        return self


class SinkBase(StrictModel):
    name: SinkName
    batch_size: BatchSize = Field(default=DEFAULT_BATCH_SIZE, alias="batchSize")
    max_retry_interval: RetryInterval = Field(
        default=DEFAULT_MAX_RETRY_INTERVAL_S, alias="maxRetryInterval"
    )


class JsonlSink(SinkBase):
    """OCSF JSON lines in a local file, rotated by size."""

    type: Literal["jsonl"]
    path: OutputFile
    max_bytes: Annotated[int, _int_range(MIN_JSONL_MAX_BYTES, 2**50, "bytes")] = Field(
        default=DEFAULT_JSONL_MAX_BYTES, alias="maxBytes"
    )
    keep: Annotated[int, _int_range(1, 1000, "rotated files")] = DEFAULT_JSONL_KEEP


class SyslogSink(SinkBase):
    """RFC 5424 messages carrying CEF, octet-counted over TCP or TLS (RFC 6587 / 5425)."""

    type: Literal["syslog"]
    address: Address
    transport: Literal["tcp", "tls"] = "tls"
    tls: TlsClientConfig | None = None
    app_name: Annotated[str, PlainValidator(_parse_app_name)] = Field(
        default=DEFAULT_APP_NAME, alias="appName"
    )
    facility: Annotated[str, PlainValidator(_parse_facility)] = DEFAULT_FACILITY
    hostname: Annotated[str, PlainValidator(_parse_hostname)] | None = None
    structured_data_id: Annotated[str, PlainValidator(_parse_sd_id)] = Field(
        default=DEFAULT_SD_ID, alias="structuredDataId"
    )

    @model_validator(mode="after")
    def _tls_needs_tls(self) -> Self:
        if self.transport == "tcp" and self.tls is not None:
            raise problem(
                "tls is set but transport is tcp; write 'transport: tls' or remove tls",
                at="tls",
            )
        return self


class SplunkHecSink(SinkBase):
    """Splunk HTTP Event Collector: batches of OCSF events per POST."""

    type: Literal["splunk_hec"]
    url: Annotated[str, PlainValidator(_parse_hec_url)]
    token: Secret | None = None
    token_file: ExistingFile | None = Field(default=None, alias="tokenFile")
    index: Annotated[str, PlainValidator(_parse_index)] | None = None
    source: str = DEFAULT_HEC_SOURCE
    sourcetype: str = DEFAULT_HEC_SOURCETYPE
    tls: TlsClientConfig | None = None

    @model_validator(mode="after")
    def _one_token(self) -> Self:
        if (self.token is None) == (self.token_file is None):
            raise problem(
                "set exactly one of 'token' and 'tokenFile' (the HEC token; tokenFile keeps "
                "it out of the configuration file)",
                at="token",
            )
        if self.tls is not None and not self.url.startswith("https:"):
            raise problem("tls is set but url is http://; use https:// or remove tls", at="tls")
        return self


class NatsSink(SinkBase):
    """NATS JetStream: one message per event, deduplicated by Nats-Msg-Id."""

    type: Literal["nats"]
    servers: list[Annotated[str, PlainValidator(_parse_nats_server)]]
    tls: TlsClientConfig | None = None
    credentials: ExistingFile | None = None
    token: Secret | None = None
    token_file: ExistingFile | None = Field(default=None, alias="tokenFile")
    stream: Annotated[str, PlainValidator(_parse_stream)] = DEFAULT_NATS_STREAM
    subject_prefix: Annotated[str, PlainValidator(_parse_subject_prefix)] = Field(
        default=DEFAULT_NATS_PREFIX, alias="subjectPrefix"
    )
    create_stream: bool = Field(default=True, alias="createStream")

    @model_validator(mode="after")
    def _auth(self) -> Self:
        if not self.servers:
            raise problem("list at least one server, e.g. [nats://nats:4222]", at="servers")
        given = [
            key
            for key, value in (
                ("credentials", self.credentials),
                ("token", self.token),
                ("tokenFile", self.token_file),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise problem(
                f"{' and '.join(given)} are both set; use one way to authenticate",
                at=given[1],
            )
        return self


SinkConfig = Annotated[
    JsonlSink | SyslogSink | SplunkHecSink | NatsSink, Field(discriminator="type")
]
AnySink = JsonlSink | SyslogSink | SplunkHecSink | NatsSink
