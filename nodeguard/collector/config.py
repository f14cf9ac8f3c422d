"""The collector's configuration file (``nodeguard collector --config FILE``).

A YAML mapping with camelCase keys, parsed as strictly as the agent's configuration and
the policies: unknown keys, wrong types and bad values are errors reported as
``file:line: path: message``, all of them at once, before the collector starts. Line
tracking and host:port parsing reuse :mod:`nodeguard.policy.loader` and
:mod:`nodeguard.agent.config`. See docs/collector.md.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from nodeguard.agent.config import HostPort, parse_host_port
from nodeguard.collector.records import DEFAULT_STORE_PATH, Retention
from nodeguard.collector.sinks.config import SinkConfig
from nodeguard.durations import DURATION_UNITS, duration_seconds
from nodeguard.errors import NodeguardError, PolicyProblem
from nodeguard.policy.loader import DOCUMENT_PATH, FILE_PATH, _data_path, single_document
from nodeguard.policy.model import (
    ERROR_TYPE,
    FieldPath,
    SourceMap,
    StrictModel,
    describe,
    problem,
    render_path,
)

API_VERSION = "nodeguard.io/v1alpha1"
KIND = "CollectorConfig"

DEFAULT_LISTEN = HostPort("0.0.0.0", 7443)  # noqa: S104 - a network service
DEFAULT_METRICS = HostPort("127.0.0.1", 9465)
DEFAULT_MAX_AGE_S = 7 * 86400.0
DEFAULT_MAX_EVENTS = 10_000_000
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_RECORDS_PER_BATCH = 10_000
DEFAULT_MAX_STREAMS = 256

# gRPC takes the receive limit as a signed 32-bit int.
MAX_MESSAGE_BYTES_LIMIT = 2**31 - 1
MIN_MESSAGE_BYTES = 1024

_CLUSTER_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class CollectorConfigError(NodeguardError):
    """The collector configuration is invalid or unreadable; carries every problem."""

    exit_code = 1

    def __init__(self, problems: list[PolicyProblem], *, fix: str | None = None) -> None:
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems), fix=fix)


# ------------------------------------------------------------------------- values --


def _parse_listen(value: Any) -> HostPort:
    """host:port like the agent's addresses, and port 0 (the kernel picks a free one)."""
    if isinstance(value, str) and value.endswith(":0") and value != ":0":
        found = parse_host_port(value[:-2] + ":1")
        return HostPort(found.host, 0)
    return parse_host_port(value)


def _parse_optional_address(value: Any) -> HostPort | None:
    if value is None or value == "":
        return None
    return _parse_listen(value)


def _serialize_optional_address(value: HostPort | None) -> str | None:
    return None if value is None else str(value)


def is_loopback(address: HostPort) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if address.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.host).is_loopback
    except ValueError:
        return False


def parse_duration(value: Any) -> float | None:
    """``"7d"``, ``"36h"``, ``"1h30m"``, ``"90s"``, ``"2w"`` -> seconds; null -> None."""
    usage = "write a duration such as '7d', '36h', '1h30m' or '90s' (null: no limit)"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str):
        raise problem(f"expected a duration, got {describe(value)}; {usage}")
    seconds = duration_seconds(value)
    if seconds is None:
        raise problem(f"{value!r} is not a duration; {usage}")
    if seconds <= 0:
        raise problem(f"{value!r} is zero; {usage}")
    return float(seconds)


def format_duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    whole = int(seconds)
    out = ""
    for unit, suffix in zip(DURATION_UNITS[1:], "dhms", strict=True):
        count, whole = divmod(whole, unit)
        if count:
            out += f"{count}{suffix}"
    return out or "0s"


def _int_range(lo: int, hi: int, what: str, *, optional: bool = False) -> PlainValidator:
    def parse(value: Any) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            null = " (null: no limit)" if optional else ""
            raise problem(f"expected a whole number of {what}{null}, got {describe(value)}")
        if not lo <= value <= hi:
            raise problem(f"{value} is out of range: use {lo}-{hi} {what}")
        return value

    return PlainValidator(parse)


def _parse_file(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise problem(f"expected the absolute path of a file, got {describe(value)}")
    if "\0" in value:
        raise problem("path contains a NUL byte; remove it")
    if not value.startswith("/"):
        raise problem(
            f"{value!r} is not an absolute path; write the full path (relative paths would "
            "depend on the collector's working directory)"
        )
    path = Path(os.path.normpath(value))
    return path


def _parse_existing_file(value: Any) -> Path:
    path = _parse_file(value)
    if not path.is_file():
        raise problem(
            f"{str(path)!r} does not exist or is not a file; create it "
            "(`nodeguard collector certs --out DIR` makes a CA, server and node certificates)"
        )
    if not os.access(path, os.R_OK):
        raise problem(f"{str(path)!r} is not readable; make it readable by the collector")
    return path


def _parse_cluster(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"expected a cluster name, got {describe(value)}; put it in quotes")
    if len(value) > 63 or not _CLUSTER_RE.fullmatch(value):
        raise problem(
            f"{value!r} is not a valid cluster name: use at most 63 lower-case letters, digits "
            "and '-' (it becomes part of sink subjects and fields)"
        )
    return value


Address = Annotated[HostPort, PlainValidator(_parse_listen), PlainSerializer(str)]
OptionalAddress = Annotated[
    HostPort | None,
    PlainValidator(_parse_optional_address),
    PlainSerializer(_serialize_optional_address),
]
Duration = Annotated[float | None, PlainValidator(parse_duration), PlainSerializer(format_duration)]
FilePath = Annotated[Path, PlainValidator(_parse_file), PlainSerializer(str)]
ExistingFile = Annotated[Path, PlainValidator(_parse_existing_file), PlainSerializer(str)]
ClusterName = Annotated[str, PlainValidator(_parse_cluster)]


def transport_problem(
    *, tls: bool, insecure: bool, listen: HostPort | None
) -> tuple[str, str] | None:
    """(key, why) when tls/insecure/listen do not make a valid transport: mTLS is
    required unless ``insecure``, which needs a loopback listen address and no tls."""
    if insecure:
        if tls:
            return "insecure", "insecure: true turns TLS off, but tls is set too; remove one"
        if listen is not None and not is_loopback(listen):
            return "insecure", (
                f"plaintext (insecure: true) is only allowed on a loopback listen address, "
                f"and listen is {listen}: listen on 127.0.0.1 or [::1], or configure tls "
                "(mTLS) instead"
            )
        return None
    if not tls:
        return "tls", (
            "the collector needs mTLS: add 'tls: {cert: FILE, key: FILE, clientCA: FILE}' "
            "(`nodeguard collector certs --out DIR` makes them), or 'insecure: true' with a "
            "loopback listen address for a local test"
        )
    return None


# -------------------------------------------------------------------------- model --


class TlsConfig(StrictModel):
    """The server's certificate and the CA that signs producers' (nodes') certificates."""

    cert: ExistingFile
    key: ExistingFile
    client_ca: ExistingFile = Field(alias="clientCA")


class RetentionConfig(StrictModel):
    max_age: Duration = Field(default=DEFAULT_MAX_AGE_S, alias="maxAge")
    max_events: Annotated[int | None, _int_range(1, 2**62, "events", optional=True)] = Field(
        default=DEFAULT_MAX_EVENTS, alias="maxEvents"
    )

    def to_retention(self) -> Retention:
        return Retention(max_age_s=self.max_age, max_events=self.max_events)


class StoreConfig(StrictModel):
    path: FilePath = DEFAULT_STORE_PATH
    durable: bool = True
    retention: RetentionConfig = Field(default_factory=RetentionConfig)


class LimitsConfig(StrictModel):
    max_message_bytes: Annotated[
        int, _int_range(MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES_LIMIT, "bytes")
    ] = Field(default=DEFAULT_MAX_MESSAGE_BYTES, alias="maxMessageBytes")
    max_records_per_batch: Annotated[int, _int_range(1, 1_000_000, "records")] = Field(
        default=DEFAULT_MAX_RECORDS_PER_BATCH, alias="maxRecordsPerBatch"
    )
    max_streams: Annotated[int, _int_range(1, 100_000, "streams")] = Field(
        default=DEFAULT_MAX_STREAMS, alias="maxStreams"
    )


class CollectorConfig(StrictModel):
    """The collector's settings (immutable). Attribute names are the snake_case form of
    the YAML keys."""

    api_version: Literal["nodeguard.io/v1alpha1"] | None = Field(default=None, alias="apiVersion")
    kind: Literal["CollectorConfig"] | None = None
    listen: Address = DEFAULT_LISTEN
    cluster: ClusterName = "default"
    tls: TlsConfig | None = None
    insecure: bool = False
    store: StoreConfig = Field(default_factory=StoreConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    metrics_address: OptionalAddress = Field(default=DEFAULT_METRICS, alias="metricsAddress")
    sinks: list[SinkConfig] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", alias="logLevel"
    )

    @model_validator(mode="after")
    def _transport(self) -> Self:
        found = transport_problem(
            tls=self.tls is not None, insecure=self.insecure, listen=self.listen
        )
        if found is not None:
            at, message = found
            raise problem(message, at=at)
        names = [s.name for s in self.sinks]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise problem(
                    f"sink name {name!r} is used twice; every sink needs its own name (it "
                    "keys the sink's delivery cursor)",
                    at=f"sinks[{i}]",
                )
        return self

    def to_yaml_dict(self) -> dict[str, Any]:
        """The effective configuration with its YAML keys (for logs)."""
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True)
        data.pop("apiVersion", None)
        data.pop("kind", None)
        return data


# ------------------------------------------------------------------------ errors --


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Every model class inside ``annotation`` (``list[A | B] | None`` -> ``[A, B]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _tag_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("type")
    if field is None:
        return None
    args = typing.get_args(field.annotation)
    return str(args[0]) if len(args) == 1 else None


def _model_at(loc: typing.Sequence[str | int]) -> type[BaseModel] | None:
    """The model describing the mapping at a pydantic ``loc`` (aliases, list indexes, the
    tags of discriminated unions)."""
    candidates: list[type[BaseModel]] = [CollectorConfig]
    for elem in loc:
        if isinstance(elem, int):
            continue
        if len(candidates) > 1:
            tagged = [m for m in candidates if _tag_of(m) == elem]
            if tagged:
                candidates = tagged
                continue
        if len(candidates) != 1:
            return None
        fields = {f.alias or name: f for name, f in candidates[0].model_fields.items()}
        if elem not in fields:
            return None
        candidates = _models_in(fields[elem].annotation)
        if not candidates:
            return None
    return candidates[0] if len(candidates) == 1 else None


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _unknown_key_message(error: ErrorDetails, key: str) -> str:
    model = _model_at(error["loc"][:-1])
    allowed = [f.alias or n for n, f in model.model_fields.items()] if model else []
    message = f"unknown key {key!r}"
    camel = _camel(key)
    close = [camel] if camel in allowed else difflib.get_close_matches(key, allowed, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    if allowed:
        message += f"; allowed here: {', '.join(allowed)}"
    return message


def _literal_message(error: ErrorDetails, path: FieldPath) -> str:
    value = error["input"]
    if path == ("apiVersion",):
        return f"unsupported apiVersion {value!r}; this nodeguard reads '{API_VERSION}'"
    if path == ("kind",):
        return f"kind is {value!r}; the collector configuration is 'kind: {KIND}'"
    expected = (error.get("ctx") or {}).get("expected", "")
    got = repr(value) if isinstance(value, str) else describe(value)
    message = f"{got} is not allowed here; use one of {expected}"
    if isinstance(value, bool):
        message += " (YAML reads unquoted yes/no/on/off as booleans)"
    return message


_TYPE_NAMES = {
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "int_type": "a number",
    "bool_type": "a boolean (true or false)",
}


def _message(error: ErrorDetails, path: FieldPath) -> str:
    kind = error["type"]
    if kind == ERROR_TYPE:
        return str((error.get("ctx") or {})["message"])
    if kind == "missing":
        return f"missing required key {str(path[-1]) if path else '?'!r}"
    if kind == "extra_forbidden":
        return _unknown_key_message(error, str(path[-1]) if path else "?")
    if kind == "literal_error":
        return _literal_message(error, path)
    if kind == "union_tag_invalid":
        ctx = error.get("ctx") or {}
        return (
            f"unknown sink type {ctx.get('tag')!r}; use one of "
            f"{str(ctx.get('expected_tags', '')).replace(chr(39), '')}"
        )
    if kind == "union_tag_not_found":
        return (
            "missing required key 'type'; say which sink this is (jsonl, syslog, "
            "splunk_hec or nats)"
        )
    if kind in _TYPE_NAMES:
        message = f"expected {_TYPE_NAMES[kind]}, got {describe(error['input'])}"
        if kind == "string_type" and isinstance(error["input"], bool | int | float):
            message += "; put it in quotes"
        return message
    return str(error["msg"])


def _at_path(at: str) -> FieldPath:
    """``"sinks[2]"`` -> ``("sinks", 2)``; ``"tls"`` -> ``("tls",)``."""
    out: list[str | int] = []
    for name, index in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]", at):
        out.append(name if name else int(index))
    return tuple(out)


def _raw_transport_problem(
    data: dict[str, Any], file: str, source: SourceMap, key_lines: dict[FieldPath, int]
) -> PolicyProblem | None:
    """The transport problem of a configuration whose other problems kept the model
    check from running (so every problem is reported at once)."""
    insecure = data.get("insecure", False)
    if not isinstance(insecure, bool):
        return None
    try:
        listen = _parse_listen(data.get("listen", str(DEFAULT_LISTEN)))
    except PydanticCustomError:
        listen = None
    found = transport_problem(tls=data.get("tls") is not None, insecure=insecure, listen=listen)
    if found is None:
        return None
    at, message = found
    line = key_lines.get((at,)) or source.line_of((at,))
    return PolicyProblem(file, line, at, message)


def _validate(
    data: Any, file: str, line: int, lines: dict[FieldPath, int], key_lines: dict[FieldPath, int]
) -> CollectorConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        message = (
            "the collector configuration must be a mapping of settings (e.g. 'listen: "
            f"0.0.0.0:7443'), got {describe(data)}"
        )
        raise CollectorConfigError([PolicyProblem(file, line, DOCUMENT_PATH, message)])
    source = SourceMap(file, line, lines)
    try:
        return CollectorConfig.model_validate(data)
    except ValidationError as err:
        problems: list[PolicyProblem] = []
        for error in err.errors():
            path = _data_path(error, data)
            message = _message(error, path)
            at = (error.get("ctx") or {}).get("at") if error["type"] == ERROR_TYPE else None
            if at:
                path = (*path, *_at_path(str(at)))
            key_line = key_lines.get(path) if error["type"] == "extra_forbidden" else None
            if at:
                key_line = key_lines.get(path)
            problems.append(
                PolicyProblem(
                    file,
                    key_line or source.line_of(path),
                    render_path(path) or DOCUMENT_PATH,
                    message,
                )
            )
        extra = _raw_transport_problem(data, file, source, key_lines)
        if extra is not None and all(p.path != extra.path for p in problems):
            problems.append(extra)
        problems.sort(key=lambda p: p.line)
        raise CollectorConfigError(problems) from None


# ---------------------------------------------------------------------- public API --


def parse_collector_config_text(text: str, filename: str = "<string>") -> CollectorConfig:
    """Parse and validate a configuration; CollectorConfigError lists every problem."""
    doc, problems = single_document(text, filename, "the collector configuration")
    if problems:
        raise CollectorConfigError(problems)
    if doc is None:
        return _validate(None, filename, 1, {}, {})
    return _validate(doc.data, filename, doc.line, doc.lines, doc.key_lines)


def load_collector_config(path: Path) -> CollectorConfig:
    """The configuration in ``path``; CollectorConfigError (exit code 1) with every
    problem, or with a fix when the file cannot be read."""
    name = os.fspath(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CollectorConfigError(
            [PolicyProblem(name, 1, FILE_PATH, "collector configuration file not found")],
            fix="check the --config path (examples/collector.yaml has every setting)",
        ) from None
    except OSError as err:
        reason = err.strerror or str(err)
        raise CollectorConfigError(
            [PolicyProblem(name, 1, FILE_PATH, f"cannot read collector configuration: {reason}")],
            fix="make the file readable by the collector",
        ) from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        message = "not valid UTF-8 text; save the configuration as UTF-8"
        raise CollectorConfigError([PolicyProblem(name, line, FILE_PATH, message)]) from None
    return parse_collector_config_text(text, name)
