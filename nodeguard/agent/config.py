"""The node agent's configuration file (``nodeguard agent --config FILE``).

A YAML mapping with camelCase keys (``criSocket``, ``policyDir``, ...), parsed as
strictly as a policy: unknown keys, wrong types and bad values are errors reported as
``file:line: path: message``, all of them at once, before the agent starts. Every key
is optional; the defaults work on a standard containerd node. See docs/agent-config.md.

Line tracking reuses the policy loader's YAML composer (:mod:`nodeguard.policy.loader`),
so the two files report problems the same way.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from nodeguard.errors import NodeguardError, PolicyProblem
from nodeguard.policy.loader import (
    DOCUMENT_PATH,
    FILE_PATH,
    _data_path,
    single_document,
)
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
KIND = "AgentConfig"

DEFAULT_CRI_SOCKET = "unix:///run/containerd/containerd.sock"
DEFAULT_POLICY_DIR = Path("/etc/nodeguard/policies")
DEFAULT_STATE_DIR = Path("/var/lib/nodeguard")
DEFAULT_API_SOCKET = Path("/run/nodeguard/agent.sock")
DEFAULT_PIN_DIR = Path("/sys/fs/bpf/nodeguard")
DEFAULT_METRICS_PORT = 9464
DEFAULT_RESYNC_INTERVAL_MS = 500
DEFAULT_HOOK_TIMEOUT_MS = 2000
DEFAULT_SECCOMP_PROFILE_DIR = Path("/var/lib/kubelet/seccomp/nodeguard")
DEFAULT_SECCOMP_LISTENER = Path("/run/nodeguard/seccomp.sock")
DEFAULT_SPOOL_MAX_BYTES = 256 << 20
DEFAULT_BATCH_RECORDS = 2000
DEFAULT_WINDOW = 4
DEFAULT_TELEMETRY_INTERVAL_S = 10.0
MIN_SPOOL_BYTES = 1 << 20
MAX_SPOOL_BYTES = 1 << 40
MAX_BATCH_RECORDS = 10_000  # the collector's default limits.maxRecordsPerBatch
MAX_WINDOW = 64

# Where "every namespace" is written in failClosedNamespaces.
ALL_NAMESPACES = "*"

# sun_path is 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 107

DEFAULTS_FILE = "<built-in defaults>"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL_RE = re.compile(_DNS_LABEL)
_DNS_SUBDOMAIN_RE = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_HOSTNAME_LABEL_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?")
_DOTTED_NUMBERS_RE = re.compile(r"[0-9.]+")


class ConfigError(NodeguardError):
    """The agent configuration is invalid or unreadable; carries every problem found."""

    exit_code = 1

    def __init__(self, problems: list[PolicyProblem], *, fix: str | None = None) -> None:
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems), fix=fix)


# ------------------------------------------------------------------------- values --


@dataclass(frozen=True, slots=True)
class HostPort:
    """A listen or dial address. ``host`` is an IP literal (IPv6 without brackets) or a
    DNS name."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


_HOSTPORT_USAGE = (
    "write host:port, e.g. 0.0.0.0:9464, 127.0.0.1:9464, [::]:9464 or collector.example:4317"
)


def _check_host(host: str, text: str) -> str:
    if not host:
        raise problem(
            f"{text!r} has no host; use 0.0.0.0:PORT (every IPv4 interface), [::]:PORT or "
            "127.0.0.1:PORT"
        )
    if _DOTTED_NUMBERS_RE.fullmatch(host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise problem(f"{host!r} in {text!r} is not a valid IPv4 address") from None
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(
        len(label) <= 63 and _HOSTNAME_LABEL_RE.fullmatch(label) for label in labels
    ):
        raise problem(
            f"{host!r} in {text!r} is neither an IP address nor a host name; {_HOSTPORT_USAGE}"
        )
    return host


def _check_port_text(port: str, text: str) -> int:
    if not port.isdigit() or len(port) > 5:
        raise problem(f"{text!r} has no valid port; {_HOSTPORT_USAGE}")
    number = int(port)
    if not 1 <= number <= 65535:
        raise problem(f"port {number} in {text!r} is out of range: ports are 1-65535")
    return number


def parse_host_port(value: Any) -> HostPort:
    """``"0.0.0.0:9464"``, ``"[::1]:9464"``, ``"collector.example:4317"`` -> HostPort."""
    if not isinstance(value, str):
        raise problem(f"expected a host:port string, got {describe(value)}; {_HOSTPORT_USAGE}")
    text = value
    if text != text.strip():
        raise problem(f"{text!r} has surrounding spaces; remove them")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise problem(f"{text!r} is not [IPv6]:port; {_HOSTPORT_USAGE}")
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise problem(f"{host!r} in {text!r} is not an IPv6 address") from None
        return HostPort(str(address), _check_port_text(port, text))
    host, sep, port = text.rpartition(":")
    if not sep:
        raise problem(f"{text!r} has no port; {_HOSTPORT_USAGE}")
    if ":" in host:
        raise problem(f"{text!r}: write IPv6 addresses in brackets, e.g. [::1]:9464")
    port_number = _check_port_text(port, text)
    return HostPort(_check_host(host, text), port_number)


def _parse_optional_host_port(value: Any) -> HostPort | None:
    if value == "":
        return None
    if value is None:
        raise problem('expected host:port, got nothing (null); write "" to turn it off')
    return parse_host_port(value)


def _serialize_optional_host_port(value: HostPort | None) -> str:
    return "" if value is None else str(value)


OptionalHostPort = Annotated[
    HostPort | None,
    PlainValidator(_parse_optional_host_port),
    PlainSerializer(_serialize_optional_host_port),
]


def _parse_path_text(value: Any, what: str) -> Path:
    if not isinstance(value, str):
        raise problem(f"expected {what} (an absolute path), got {describe(value)}")
    if not value:
        raise problem(f"expected {what} (an absolute path), got an empty string")
    if "\0" in value:
        raise problem("path contains a NUL byte; remove it")
    if not value.startswith("/"):
        raise problem(
            f"{value!r} is not an absolute path; write the full path (relative paths would "
            "depend on the agent's working directory)"
        )
    return Path(os.path.normpath(value))


def _parse_dir(value: Any) -> Path:
    return _parse_path_text(value, "a directory")


def _check_socket_path(path: Path) -> Path:
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        raise problem(
            f"unix socket path is {size} bytes long; the kernel allows at most "
            f"{UNIX_PATH_MAX}: use a shorter path"
        )
    return path


def _parse_socket_path(value: Any) -> Path:
    return _check_socket_path(_parse_path_text(value, "a unix socket path"))


def parse_cri_endpoint(value: Any) -> str:
    """``unix:///run/x.sock`` or ``/run/x.sock`` -> ``unix:///run/x.sock``."""
    example = f"e.g. {DEFAULT_CRI_SOCKET}"
    if not isinstance(value, str):
        raise problem(f"expected a CRI endpoint ({example}), got {describe(value)}")
    text = value
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme != "unix":
            raise problem(
                f"{text!r}: only unix socket endpoints are supported (the runtime's socket "
                f"on this node), {example}"
            )
        if not rest.startswith("/"):
            raise problem(f"{text!r}: the path must be absolute; did you mean 'unix:///{rest}'?")
        text = rest
    path = _parse_path_text(text, "a CRI endpoint")
    return f"unix://{_check_socket_path(path)}"


def _parse_node_name(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"expected a node name, got {describe(value)}; put it in quotes")
    if len(value) > 253 or not _DNS_SUBDOMAIN_RE.fullmatch(value):
        raise problem(
            f"{value!r} is not a valid Kubernetes node name: use lower-case letters, digits, "
            "'-' and '.' (at most 253). Set nodeName in the config, or NODE_NAME in the "
            "environment (in the DaemonSet, from the downward API field spec.nodeName)"
        )
    return value


def default_node_name() -> str:
    """``$NODE_NAME`` if set, else the host name in lower case (as the kubelet does)."""
    from_env = os.environ.get("NODE_NAME", "").strip()
    if from_env:
        return from_env
    return socket.gethostname().strip().lower()


def _parse_namespace_entry(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"expected a namespace name or '*', got {describe(value)}")
    if value == ALL_NAMESPACES:
        return value
    if len(value) > 63 or not _DNS_LABEL_RE.fullmatch(value):
        raise problem(
            f"{value!r} is not a valid namespace name: use at most 63 lower-case letters, "
            "digits and '-' (or '*' alone for every namespace)"
        )
    return value


def _ms_range(lo: int, hi: int) -> PlainValidator:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise problem(
                f"expected a whole number of milliseconds ({lo}-{hi}), got {describe(value)}"
            )
        if not lo <= value <= hi:
            raise problem(f"{value} ms is out of range: use {lo}-{hi} milliseconds")
        return value

    return PlainValidator(parse)


def _parse_file(value: Any) -> Path:
    return _parse_path_text(value, "a file")


_SIZE_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1 << 10,
    "mi": 1 << 20,
    "gi": 1 << 30,
    "ti": 1 << 40,
}
_SIZE_RE = re.compile(r"([0-9]+)\s*([kmgt]i?)?b?", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """``268435456``, ``"256Mi"``, ``"256MiB"``, ``"1Gi"``, ``"500M"`` -> bytes."""
    usage = "write a number of bytes or a size such as 256Mi, 1Gi or 500M"
    if isinstance(value, bool):
        raise problem(f"expected a size, got {describe(value)}; {usage}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        match = _SIZE_RE.fullmatch(value.strip())
        if match is None:
            raise problem(f"{value!r} is not a size; {usage}")
        number = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]
    else:
        raise problem(f"expected a size, got {describe(value)}; {usage}")
    if not MIN_SPOOL_BYTES <= number <= MAX_SPOOL_BYTES:
        raise problem(f"{value!r} is out of range: use 1Mi to 1Ti")
    return number


_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds_range(lo: float, hi: float) -> PlainValidator:
    usage = "write a duration such as 10s, 500ms, 2m or 1h (a bare number means seconds)"

    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise problem(f"expected a duration, got {describe(value)}; {usage}")
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            match = _DURATION_RE.fullmatch(value.strip())
            if match is None:
                raise problem(f"{value!r} is not a duration; {usage}")
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        else:
            raise problem(f"expected a duration, got {describe(value)}; {usage}")
        if not lo <= seconds <= hi:
            raise problem(f"{value!r} is out of range: use {lo:g}s to {hi:g}s")
        return seconds

    return PlainValidator(parse)


def _count_range(lo: int, hi: int, what: str) -> PlainValidator:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise problem(f"expected a whole number of {what} ({lo}-{hi}), got {describe(value)}")
        if not lo <= value <= hi:
            raise problem(f"{value} is out of range: use {lo}-{hi} {what}")
        return value

    return PlainValidator(parse)


def _parse_optional_count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise problem(f"expected a whole number of records or null, got {describe(value)}")
    if value < 1:
        raise problem(f"{value} is out of range: use at least 1 record (null: no limit)")
    return value


def _parse_server_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise problem(f"expected a host name, got {describe(value)}")
    if _DOTTED_NUMBERS_RE.fullmatch(value):
        return _check_host(value, value)
    try:
        return str(ipaddress.IPv6Address(value))
    except ValueError:
        return _check_host(value, value)


AbsDir = Annotated[Path, PlainValidator(_parse_dir), PlainSerializer(str)]
AbsFile = Annotated[Path, PlainValidator(_parse_file), PlainSerializer(str)]
Size = Annotated[int, PlainValidator(parse_size)]
OptionalCount = Annotated[int | None, PlainValidator(_parse_optional_count)]
ServerName = Annotated[str, PlainValidator(_parse_server_name)]
TelemetryInterval = Annotated[float, _seconds_range(1.0, 3600.0)]
SocketPath = Annotated[Path, PlainValidator(_parse_socket_path), PlainSerializer(str)]
CriEndpoint = Annotated[str, PlainValidator(parse_cri_endpoint)]
NodeName = Annotated[str, PlainValidator(_parse_node_name)]
NamespaceEntry = Annotated[str, PlainValidator(_parse_namespace_entry)]
ResyncIntervalMs = Annotated[int, _ms_range(50, 60_000)]
HookTimeoutMs = Annotated[int, _ms_range(100, 60_000)]


# -------------------------------------------------------------------------- model --


class CollectorTLS(StrictModel):
    """Mutual TLS towards the collector: the CA of its server certificate, this node's
    certificate (it names the node: ``nodeguard collector certs --node NAME``) and key."""

    ca: AbsFile
    cert: AbsFile
    key: AbsFile
    server_name: ServerName | None = Field(default=None, alias="serverName")


class SpoolConfig(StrictModel):
    """The on-disk spool (``stateDir/spool.db``) and the publishing window."""

    max_bytes: Size = Field(default=DEFAULT_SPOOL_MAX_BYTES, alias="maxBytes")
    max_records: OptionalCount = Field(default=None, alias="maxRecords")
    batch_records: Annotated[int, _count_range(1, MAX_BATCH_RECORDS, "records")] = Field(
        default=DEFAULT_BATCH_RECORDS, alias="batchRecords"
    )
    window: Annotated[int, _count_range(1, MAX_WINDOW, "batches")] = DEFAULT_WINDOW


class EventLogConfig(StrictModel):
    """The local OCSF JSON-lines log under ``stateDir/events``."""

    enabled: bool = True


class AgentConfig(StrictModel):
    """The node agent's settings (immutable). Attribute names are the snake_case form of
    the YAML keys."""

    api_version: Literal["nodeguard.io/v1alpha1"] | None = Field(default=None, alias="apiVersion")
    kind: Literal["AgentConfig"] | None = None
    cri_socket: CriEndpoint = Field(default=DEFAULT_CRI_SOCKET, alias="criSocket")
    policy_dir: AbsDir = Field(default=DEFAULT_POLICY_DIR, alias="policyDir")
    node_name: NodeName = Field(
        default_factory=default_node_name, alias="nodeName", validate_default=True
    )
    state_dir: AbsDir = Field(default=DEFAULT_STATE_DIR, alias="stateDir")
    api_socket: SocketPath = Field(default=DEFAULT_API_SOCKET, alias="apiSocket")
    metrics_address: OptionalHostPort = Field(
        default=HostPort("0.0.0.0", DEFAULT_METRICS_PORT),  # noqa: S104 - a node exporter
        alias="metricsAddress",
    )
    collector_address: OptionalHostPort = Field(default=None, alias="collectorAddress")
    collector_tls: CollectorTLS | None = Field(default=None, alias="collectorTLS")
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    event_log: EventLogConfig = Field(default_factory=EventLogConfig, alias="eventLog")
    telemetry_interval: TelemetryInterval = Field(
        default=DEFAULT_TELEMETRY_INTERVAL_S, alias="telemetryInterval"
    )
    cgroup_driver: Literal["auto", "cgroupfs", "systemd"] = Field(
        default="auto", alias="cgroupDriver"
    )
    pin_dir: AbsDir = Field(default=DEFAULT_PIN_DIR, alias="pinDir")
    fail_closed_namespaces: tuple[NamespaceEntry, ...] = Field(
        default=(), alias="failClosedNamespaces"
    )
    resync_interval_ms: ResyncIntervalMs = Field(
        default=DEFAULT_RESYNC_INTERVAL_MS, alias="resyncIntervalMs"
    )
    hook_timeout_ms: HookTimeoutMs = Field(default=DEFAULT_HOOK_TIMEOUT_MS, alias="hookTimeoutMs")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", alias="logLevel"
    )
    seccomp_profile_dir: AbsDir = Field(
        default=DEFAULT_SECCOMP_PROFILE_DIR, alias="seccompProfileDir"
    )
    seccomp_listener_path: SocketPath = Field(
        default=DEFAULT_SECCOMP_LISTENER, alias="seccompListenerPath"
    )

    @field_validator("fail_closed_namespaces", mode="before")
    @classmethod
    def _namespaces_from_list(cls, value: Any) -> Any:
        # YAML gives a list; strict mode only takes a tuple (items keep their index).
        return tuple(value) if isinstance(value, list) else value

    @field_validator("fail_closed_namespaces")
    @classmethod
    def _star_alone(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if ALL_NAMESPACES in names and len(names) > 1:
            raise problem("'*' already means every namespace; remove the other names or the '*'")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise problem(f"namespace {duplicates[0]!r} is listed twice; list each once")
        return names

    @model_validator(mode="after")
    def _collector_needs_tls(self) -> Self:
        if self.collector_address is not None and self.collector_tls is None:
            raise problem(
                "collectorAddress is set but collectorTLS is not: the collector only takes "
                "mutual TLS; add 'collectorTLS: {ca: FILE, cert: FILE, key: FILE}' (this "
                "node's certificate, e.g. from `nodeguard collector certs`), or remove "
                "collectorAddress",
                at="collectorTLS",
            )
        return self

    @property
    def cri_socket_path(self) -> Path:
        """The CRI socket as a file system path (``criSocket`` without ``unix://``)."""
        return Path(self.cri_socket.removeprefix("unix://"))

    def fail_closed(self, namespace: str) -> bool:
        """True when new containers in ``namespace`` are refused while the agent is down."""
        names = self.fail_closed_namespaces
        return ALL_NAMESPACES in names or namespace in names

    def to_yaml_dict(self) -> dict[str, Any]:
        """The effective configuration with its YAML keys (for logs and ``status``)."""
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True)
        data.pop("apiVersion", None)
        data.pop("kind", None)
        return data


# ------------------------------------------------------------------------ errors --


def _aliases(model: type[StrictModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


_FIELD_ALIASES = _aliases(AgentConfig)
_SECTIONS: dict[str, type[StrictModel]] = {
    "collectorTLS": CollectorTLS,
    "spool": SpoolConfig,
    "eventLog": EventLogConfig,
}


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _unknown_key_message(path: FieldPath) -> str:
    key = str(path[-1]) if path else "?"
    section = _SECTIONS.get(str(path[0])) if len(path) == 2 else None
    aliases = _aliases(section) if section is not None else _FIELD_ALIASES
    message = f"unknown key {key!r}"
    camel = _camel(key)
    close = [camel] if camel in aliases else difflib.get_close_matches(key, aliases, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    where = f" in {path[0]}" if section is not None else ""
    return message + f"; allowed keys{where}: {', '.join(aliases)}"


def _literal_message(error: ErrorDetails, path: FieldPath) -> str:
    value = error["input"]
    if path == ("apiVersion",):
        return f"unsupported apiVersion {value!r}; this nodeguard reads '{API_VERSION}'"
    if path == ("kind",):
        return f"kind is {value!r}; the agent configuration is 'kind: {KIND}'"
    expected = (error.get("ctx") or {}).get("expected", "")
    got = repr(value) if isinstance(value, str) else describe(value)
    message = f"{got} is not allowed here; use one of {expected}"
    if isinstance(value, bool):
        message += " (YAML reads unquoted yes/no/on/off as booleans)"
    elif isinstance(value, str) and value.lower() != value:
        message += " (lower case)"
    return message


def _message(error: ErrorDetails, path: FieldPath) -> str:
    kind = error["type"]
    if kind == ERROR_TYPE:
        return str((error.get("ctx") or {})["message"])
    if kind == "extra_forbidden":
        return _unknown_key_message(path)
    if kind == "missing":
        where = f" in {render_path(path[:-1])}" if len(path) > 1 else ""
        return f"missing key {str(path[-1])!r}{where}; it is required"
    if kind == "literal_error":
        return _literal_message(error, path)
    if kind in _TYPE_NAMES:
        message = f"expected {_TYPE_NAMES[kind]}, got {describe(error['input'])}"
        if kind == "string_type" and isinstance(error["input"], bool | int | float):
            message += "; put it in quotes"
        return message
    return str(error["msg"])


_TYPE_NAMES = {
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "dict_type": "a mapping",
    "int_type": "a number",
    "bool_type": "true or false",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _default_path(error: ErrorDetails) -> FieldPath:
    """The key of a default value that failed (nodeName from $NODE_NAME): not in the data,
    and pydantic names it by attribute, not by YAML key."""
    loc = error["loc"]
    if len(loc) == 1 and loc[0] in AgentConfig.model_fields:
        field = AgentConfig.model_fields[str(loc[0])]
        return (field.alias or str(loc[0]),)
    return ()


def _validate(
    data: Any, file: str, line: int, lines: dict[FieldPath, int], key_lines: dict[FieldPath, int]
) -> AgentConfig:
    if data is None:
        data = {}  # an empty file means "all defaults"
    if not isinstance(data, dict):
        message = (
            f"the agent configuration must be a mapping of settings (e.g. 'policyDir: "
            f"/etc/nodeguard/policies'), got {describe(data)}"
        )
        raise ConfigError([PolicyProblem(file, line, DOCUMENT_PATH, message)])
    source = SourceMap(file, line, lines)
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as err:
        problems: list[PolicyProblem] = []
        for error in err.errors():
            path = _data_path(error, data) or _default_path(error)
            at = (error.get("ctx") or {}).get("at") if error["type"] == ERROR_TYPE else None
            if at:
                path = (*path, *str(at).split("."))
            key_line = key_lines.get(path) if error["type"] == "extra_forbidden" else None
            rendered = render_path(path) or DOCUMENT_PATH
            problems.append(
                PolicyProblem(
                    file, key_line or source.line_of(path), rendered, _message(error, path)
                )
            )
        problems.sort(key=lambda p: p.line)
        raise ConfigError(problems) from None


# ---------------------------------------------------------------------- public API --


def parse_agent_config_text(text: str, filename: str = "<string>") -> AgentConfig:
    """Parse and validate a configuration; ConfigError lists every problem."""
    doc, problems = single_document(text, filename, "the agent configuration")
    if problems:
        raise ConfigError(problems)
    if doc is None:
        return _validate(None, filename, 1, {}, {})
    return _validate(doc.data, filename, doc.line, doc.lines, doc.key_lines)


def load_agent_config(path: Path | None) -> AgentConfig:
    """The configuration in ``path``, or every default when ``path`` is None.

    Raises ConfigError (exit code 1) with every problem, or with a fix when the file
    cannot be read.
    """
    if path is None:
        return parse_agent_config_text("", DEFAULTS_FILE)
    name = os.fspath(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        message = "agent configuration file not found"
        raise ConfigError(
            [PolicyProblem(name, 1, FILE_PATH, message)],
            fix=(
                "check the --config path, or create the file (examples/agent.yaml has every "
                "setting; an empty file means all defaults)"
            ),
        ) from None
    except OSError as err:
        reason = err.strerror or str(err)
        raise ConfigError(
            [PolicyProblem(name, 1, FILE_PATH, f"cannot read agent configuration: {reason}")],
            fix="make the file readable by the agent (it runs as root)",
        ) from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        message = "not valid UTF-8 text; save the configuration as UTF-8"
        raise ConfigError([PolicyProblem(name, line, FILE_PATH, message)]) from None
    return parse_agent_config_text(text, name)
