"""The AgentPolicy document schema (pydantic v2, strict, unknown keys are errors).

Values that need parsing (CIDRs, ports, exec patterns) are validated here into typed
values, so the compiler never sees a malformed rule. Error messages say what is wrong and
how to fix it; :mod:`nodeguard.policy.loader` adds the file, line and field path.

A validator that wants its error reported on a sub-field raises :func:`problem` with
``at=`` (the loader appends it to the error's path).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from nodeguard.bpf.abi import PATH_MAX, ExecKind
from nodeguard.errors import PolicyProblem
from nodeguard.policy import syscalls as syscall_vocabulary
from nodeguard.policy.sockets import SocketKind, SocketKindError, number_hint, parse_socket_kind

API_VERSION = "nodeguard.io/v1alpha1"
KIND = "AgentPolicy"

# Longest exec path (bytes, without the NUL) the kernel can match: it reads at most
# PATH_MAX bytes including the NUL and treats a full buffer as "maybe truncated".
EXEC_PATH_MAX = PATH_MAX - 2

# spec.limits bounds: PID_MAX_LIMIT of 64-bit kernels (no pod can have more processes),
# and a rate (per second) and burst a GCRA in nanoseconds represents exactly.
MAX_PROCESSES_LIMIT = 4_194_304
MAX_RATE = 1_000_000
MAX_BURST = 1_000_000

ERROR_TYPE = "nodeguard"  # pydantic error type of every error raised by this module

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PathElem = str | int
FieldPath = tuple[PathElem, ...]

_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_NAME_MAX = 63
_PORT_RE = re.compile(r"(\d{1,9})(?:-(\d{1,9}))?")
_WELL_KNOWN_PORTS = {"http": 80, "https": 443, "dns": 53, "domain": 53, "ssh": 22}
_GLOB_CHARS = "*?[]{}"


def problem(message: str, *, at: str | None = None) -> PydanticCustomError:
    """A validation error with our own message; ``at`` names the sub-field it is about."""
    return PydanticCustomError(ERROR_TYPE, "{message}", {"message": message, "at": at})


def describe(value: Any) -> str:
    """Short description of a YAML value's type for error messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------- names --


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise problem(f"expected a {what}, got {describe(value)}")
    if len(value) > _NAME_MAX or not _NAME_RE.fullmatch(value):
        raise problem(
            f"{value!r} is not a valid {what}: use at most {_NAME_MAX} lower-case letters, "
            "digits and '-', starting and ending with a letter or digit (e.g. 'research-agent')"
        )
    return value


def _parse_policy_name(value: Any) -> str:
    return _check_name(value, "policy name")


def _parse_namespace(value: Any) -> str:
    return _check_name(value, "namespace name")


PolicyName = Annotated[str, PlainValidator(_parse_policy_name)]
NamespaceName = Annotated[str, PlainValidator(_parse_namespace)]


# ---------------------------------------------------------------------------- CIDRs --


def parse_cidr(value: Any) -> Network:
    """``"10.0.0.0/8"``, ``"10.1.2.3"``, ``"fd00::/64"``, ``"::1"`` -> network (host bits
    must be zero)."""
    example = "e.g. 10.0.0.0/8, 10.1.2.3, fd00::/64 or ::1"
    if not isinstance(value, str):
        raise problem(f"expected a CIDR string ({example}), got {describe(value)}")
    if "%" in value:
        raise problem(f"{value!r}: IPv6 zone ids ('%eth0') are not supported; drop the zone")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise problem(f"{value!r} is not an IP address or CIDR ({example})") from None
    host = value.split("/", 1)[0]
    raise problem(
        f"{value!r} has host bits set; did you mean {loose}? "
        f"(or {host}/{loose.max_prefixlen} for that single address)"
    )


Cidr = Annotated[Network, PlainValidator(parse_cidr), PlainSerializer(str)]


# ---------------------------------------------------------------------------- ports --


@dataclass(frozen=True, slots=True, order=True)
class PortSpan:
    """An inclusive destination port range, 1-65535."""

    lo: int
    hi: int

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


def _check_port(port: int, text: str) -> int:
    if not 1 <= port <= 65535:
        where = "" if text == str(port) else f" in {text!r}"
        raise problem(f"port {port}{where} is out of range: ports are 1-65535")
    return port


def parse_port(value: Any) -> PortSpan:
    """``443``, ``"443"`` or ``"8000-8100"`` -> :class:`PortSpan`."""
    usage = "use a port number (443) or an inclusive range in quotes ('8000-8100')"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise problem(f"expected a port, got {describe(value)}: {usage}")
    text = str(value).strip()
    if isinstance(value, int):
        port = _check_port(value, text)
        return PortSpan(port, port)
    match = _PORT_RE.fullmatch(text.replace(" ", ""))
    if match is None:
        hint = _WELL_KNOWN_PORTS.get(text.lower())
        if hint is not None:
            raise problem(f"{value!r} is not a port number; {text} is port {hint}")
        raise problem(f"{value!r} is not a port or port range: {usage}")
    lo = _check_port(int(match.group(1)), text)
    hi = _check_port(int(match.group(2) or lo), text)
    if lo > hi:
        raise problem(f"port range {text!r} is reversed; did you mean '{hi}-{lo}'?")
    return PortSpan(lo, hi)


Port = Annotated[PortSpan, PlainValidator(parse_port), PlainSerializer(str)]


# ------------------------------------------------------------------- exec patterns --


@dataclass(frozen=True, slots=True)
class ExecPattern:
    """A validated exec allow pattern.

    ``literal`` is the pattern without its trailing ``*``/``**``; ``kind`` says how the
    rest of the path is matched (see :class:`nodeguard.bpf.abi.ExecKind`).
    """

    text: str
    literal: str
    kind: ExecKind

    def __str__(self) -> str:
        return self.text


_EXEC_SUPPORTED = (
    "supported are exact paths ('/usr/bin/python3'), a trailing '*' for one path segment "
    "('/opt/agent/bin/*', '/usr/bin/python3*') and a trailing '**' for everything below "
    "('/opt/agent/**'), because the kernel matches exec paths by longest prefix"
)


def _split_exec_pattern(text: str) -> tuple[str, ExecKind]:
    if text.endswith("***"):
        raise problem(f"{text!r}: '***' is not a pattern; {_EXEC_SUPPORTED}")
    if text.endswith("**"):
        return text[:-2], ExecKind.SUBTREE
    if text.endswith("*"):
        return text[:-1], ExecKind.SEGMENT
    return text, ExecKind.EXACT


def _check_exec_literal(text: str, literal: str, kind: ExecKind) -> None:
    glob = next((c for c in literal if c in _GLOB_CHARS), None)
    if glob is not None:
        where = "a '*' before the end" if glob == "*" else f"{glob!r}"
        raise problem(
            f"{text!r}: {where} is not supported; {_EXEC_SUPPORTED}. "
            "List each path separately instead"
        )
    for bad in ("//", "/./", "/../"):
        if bad in literal:
            raise problem(
                f"{text!r} is not a normalized path (contains {bad!r}); the kernel sees "
                "normalized paths, so write it without it"
            )
    if kind is ExecKind.EXACT and literal.endswith(("/", "/.", "/..")):
        raise problem(
            f"{text!r} names a directory, not a program; to allow the programs in it use "
            f"'{literal.rstrip('/.')}/*' (one level) or '{literal.rstrip('/.')}/**' (all below)"
        )
    size = len(literal.encode("utf-8"))
    if size > EXEC_PATH_MAX:
        raise problem(
            f"exec path is {size} bytes long; the kernel checks at most {EXEC_PATH_MAX} bytes "
            "(longer paths are always denied): use a shorter path or a '**' pattern on a parent"
        )


def parse_exec_pattern(value: Any) -> ExecPattern:
    """Validate an exec allow pattern (see ``_EXEC_SUPPORTED``)."""
    if not isinstance(value, str):
        raise problem(f"expected an absolute path pattern, got {describe(value)}")
    if "\0" in value:
        raise problem("exec path contains a NUL byte; remove it")
    if not value.startswith("/"):
        raise problem(
            f"{value!r} is not an absolute path; exec rules match the full path of the "
            "program (e.g. '/usr/bin/python3')"
        )
    literal, kind = _split_exec_pattern(value)
    _check_exec_literal(value, literal, kind)
    return ExecPattern(text=value, literal=literal, kind=kind)


ExecRulePattern = Annotated[ExecPattern, PlainValidator(parse_exec_pattern), PlainSerializer(str)]


# ------------------------------------------------------------- syscalls, sockets --


def parse_syscall_entry(value: Any) -> str:
    """A ``spec.syscalls.deny`` entry: a syscall name of x86_64 or arm64, or ``@group``."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise problem(
            f"{value} is a syscall number; write the syscall's name (e.g. 'ptrace'): "
            "numbers differ between x86_64 and arm64"
        )
    if not isinstance(value, str):
        raise problem(f"expected a syscall name or '@group', got {describe(value)}")
    message = syscall_vocabulary.entry_problem(value)
    if message is not None:
        raise problem(message)
    return value


SyscallEntry = Annotated[str, PlainValidator(parse_syscall_entry)]


def _parse_socket_kind(value: Any) -> SocketKind:
    if isinstance(value, int) and not isinstance(value, bool):
        raise problem(number_hint(value))
    if not isinstance(value, str):
        raise problem(
            f"expected a socket kind such as 'packet' or 'inet:raw', got {describe(value)}"
        )
    try:
        return parse_socket_kind(value)
    except SocketKindError as err:
        raise problem(err.message) from None


SocketEntry = Annotated[SocketKind, PlainValidator(_parse_socket_kind), PlainSerializer(str)]


# --------------------------------------------------------------------------- limits --


def _whole_number(value: Any, what: str, lo: int, hi: int, unit: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        hint = "; write it without quotes" if isinstance(value, str) and value.isdigit() else ""
        raise problem(f"{what}: expected a whole number, got {describe(value)}{hint}")
    if not lo <= value <= hi:
        raise problem(f"{what} {value} is out of range: use {lo}-{hi}{unit}")
    return value


def _parse_max_processes(value: Any) -> int:
    return _whole_number(
        value, "maxProcesses", 1, MAX_PROCESSES_LIMIT, " (live processes in the pod)"
    )


def _parse_rate(value: Any) -> int:
    return _whole_number(value, "rate", 1, MAX_RATE, " per second")


def _parse_burst(value: Any) -> int:
    return _whole_number(value, "burst", 1, MAX_BURST)


MaxProcesses = Annotated[int, PlainValidator(_parse_max_processes)]
RatePerSecond = Annotated[int, PlainValidator(_parse_rate)]
Burst = Annotated[int, PlainValidator(_parse_burst)]


# ---------------------------------------------------------------------------- models --


class StrictModel(BaseModel):
    """Base of every schema model: strict types, unknown keys are errors, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class LabelSelectorRequirement(StrictModel):
    """One Kubernetes ``matchExpressions`` entry."""

    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None

    @model_validator(mode="after")
    def _values_match_operator(self) -> Self:
        if self.operator in ("In", "NotIn") and not self.values:
            raise problem(f"operator {self.operator} needs a non-empty 'values' list", at="values")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise problem(
                f"operator {self.operator} takes no 'values'; remove them or use In/NotIn",
                at="values",
            )
        return self


class Selector(StrictModel):
    """Which pods a policy applies to (used by the node agent; ``nodeguard run`` ignores it).

    All given conditions must hold (AND), like a Kubernetes label selector.
    """

    namespaces: list[NamespaceName] | None = None
    match_labels: dict[str, str] | None = Field(default=None, alias="matchLabels")
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, alias="matchExpressions"
    )


class EgressRule(StrictModel):
    """Allow connections to ``cidr`` on ``ports`` (all ports when absent)."""

    cidr: Cidr
    ports: list[Port] | None = None
    protocol: Literal["tcp", "udp", "any"] = "any"

    @field_validator("ports")
    @classmethod
    def _ports_not_empty(cls, ports: list[PortSpan] | None) -> list[PortSpan] | None:
        if ports is not None and not ports:
            raise problem(
                "'ports: []' would allow no port at all; list ports, or remove 'ports' to "
                "allow every port"
            )
        return ports


class EgressSpec(StrictModel):
    """Outbound connections; anything not allowed is denied (``allow: []`` denies all)."""

    allow: list[EgressRule]


class ExecSpec(StrictModel):
    """Programs that may be executed; anything else is killed (``allow: []`` denies all)."""

    allow: list[ExecRulePattern]


class SyscallsSpec(StrictModel):
    """Syscalls the agent may not make (names and ``@groups``, checked on x86_64 and arm64).

    ``kill``: the seccomp filter kills the caller (SIGSYS) before the call runs; ``audit``:
    reported, the call goes ahead.
    """

    deny: list[SyscallEntry]
    action: Literal["kill", "audit"] = "kill"

    @field_validator("deny")
    @classmethod
    def _deny_not_empty(cls, deny: list[str]) -> list[str]:
        if not deny:
            raise problem(
                "'deny: []' denies nothing; list syscalls or groups (e.g. "
                "[ptrace, \"@mount\"]), or remove 'syscalls'"
            )
        return deny


class SocketsSpec(StrictModel):
    """Socket kinds the agent may not create (``socket()`` fails with EPERM)."""

    deny: list[SocketEntry]

    @field_validator("deny")
    @classmethod
    def _deny_not_empty(cls, deny: list[SocketKind]) -> list[SocketKind]:
        if not deny:
            raise problem(
                "'deny: []' denies nothing; list socket kinds (e.g. [raw, packet]), or "
                "remove 'sockets'"
            )
        return deny


class RateSpec(StrictModel):
    """At most ``rate`` events per second, ``burst`` at once after a quiet period."""

    rate: RatePerSecond
    burst: Burst | None = None  # None: the rate

    @property
    def effective_burst(self) -> int:
        return self.rate if self.burst is None else self.burst


def _rate_shorthand(value: Any, name: str) -> Any:
    usage = f"write a rate ('{name}: 20') or a rate and burst ('{name}: {{rate: 20, burst: 40}}')"
    if value is None:
        raise problem(f"'{name}:' is empty; {usage}, or remove '{name}'")
    if isinstance(value, int) and not isinstance(value, bool):
        return {"rate": value}
    if isinstance(value, str) and value.strip().isdigit():
        raise problem(f"expected a rate, got {describe(value)}; write the number without quotes")
    if not isinstance(value, dict):
        raise problem(f"expected a rate, got {describe(value)}; {usage}")
    return value


class LimitsSpec(StrictModel):
    """Process budgets of the pod (all its processes together); the process that breaks
    one is killed."""

    max_processes: MaxProcesses | None = Field(default=None, alias="maxProcesses")
    forks_per_second: RateSpec | None = Field(default=None, alias="forksPerSecond")
    execs_per_second: RateSpec | None = Field(default=None, alias="execsPerSecond")

    @field_validator("forks_per_second", mode="before")
    @classmethod
    def _forks_shorthand(cls, value: Any) -> Any:
        return _rate_shorthand(value, "forksPerSecond")

    @field_validator("execs_per_second", mode="before")
    @classmethod
    def _execs_shorthand(cls, value: Any) -> Any:
        return _rate_shorthand(value, "execsPerSecond")

    @field_validator("max_processes", mode="before")
    @classmethod
    def _max_processes_not_null(cls, value: Any) -> Any:
        if value is None:
            raise problem(
                "'maxProcesses:' is empty; give a number (e.g. 64), or remove 'maxProcesses'"
            )
        return value

    @model_validator(mode="after")
    def _some_budget(self) -> Self:
        if (
            self.max_processes is None
            and self.forks_per_second is None
            and self.execs_per_second is None
        ):
            raise problem(
                "'limits' sets no budget; set maxProcesses, forksPerSecond and/or "
                "execsPerSecond, or remove 'limits'"
            )
        return self


def _reject_null_section(value: Any, name: str, what: str) -> Any:
    if value is None:
        raise problem(
            f"'{name}:' is empty; write '{name}: {{allow: []}}' to deny all {what}, list "
            f"rules under '{name}.allow', or remove '{name}' to leave {what} unrestricted"
        )
    return value


class PolicySpec(StrictModel):
    """What the agent may do. ``selector`` absent: the node agent applies the policy to no
    pod (``nodeguard run`` ignores selectors)."""

    selector: Selector | None = None
    mode: Literal["enforce", "audit"] = "enforce"
    egress: EgressSpec | None = None  # None: egress not restricted
    exec: ExecSpec | None = None  # None: exec not restricted
    syscalls: SyscallsSpec | None = None  # None: no syscall denied
    sockets: SocketsSpec | None = None  # None: no socket kind denied
    limits: LimitsSpec | None = None  # None: no process budget

    @field_validator("egress", mode="before")
    @classmethod
    def _egress_not_null(cls, value: Any) -> Any:
        return _reject_null_section(value, "egress", "egress")

    @field_validator("exec", mode="before")
    @classmethod
    def _exec_not_null(cls, value: Any) -> Any:
        return _reject_null_section(value, "exec", "exec")

    @field_validator("syscalls", mode="before")
    @classmethod
    def _syscalls_not_null(cls, value: Any) -> Any:
        if value is None:
            raise problem(
                "'syscalls:' is empty; list what to deny (e.g. 'syscalls: {deny: [ptrace, "
                "\"@mount\"]}'), or remove 'syscalls'"
            )
        return value

    @field_validator("sockets", mode="before")
    @classmethod
    def _sockets_not_null(cls, value: Any) -> Any:
        if value is None:
            raise problem(
                "'sockets:' is empty; list what to deny (e.g. 'sockets: {deny: [raw, "
                "packet]}'), or remove 'sockets'"
            )
        return value

    @field_validator("limits", mode="before")
    @classmethod
    def _limits_not_null(cls, value: Any) -> Any:
        if value is None:
            raise problem(
                "'limits:' is empty; set maxProcesses, forksPerSecond and/or "
                "execsPerSecond, or remove 'limits'"
            )
        return value


class Metadata(StrictModel):
    name: PolicyName
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class SourceMap:
    """Where a policy came from: its file and the line of every value in it."""

    file: str
    line: int  # the document's first line
    lines: Mapping[FieldPath, int]  # field path -> line of its value (1-based)

    def line_of(self, path: FieldPath) -> int:
        """Line of ``path``, or of its nearest ancestor that is in the file."""
        for end in range(len(path), 0, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return self.line


def render_path(path: FieldPath) -> str:
    """``("spec", "egress", "allow", 1, "cidr")`` -> ``spec.egress.allow[1].cidr``."""
    out = ""
    for elem in path:
        if isinstance(elem, int):
            out += f"[{elem}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", elem):
            out += f".{elem}" if out else elem
        else:
            out += f"[{elem!r}]"
    return out


class AgentPolicy(StrictModel):
    """One ``kind: AgentPolicy`` document."""

    api_version: Literal["nodeguard.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["AgentPolicy"]
    metadata: Metadata
    spec: PolicySpec

    _source: SourceMap | None = PrivateAttr(default=None)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def source(self) -> SourceMap | None:
        """File and line map, set by the loader (None for policies built in code)."""
        return self._source

    def attach_source(self, source: SourceMap) -> None:
        self._source = source

    def problem_at(self, path: FieldPath, message: str) -> PolicyProblem:
        """A :class:`PolicyProblem` about ``path`` in this policy, located if known."""
        if self._source is None:
            return PolicyProblem(f"<policy {self.name}>", 0, render_path(path), message)
        return PolicyProblem(
            self._source.file, self._source.line_of(path), render_path(path), message
        )
