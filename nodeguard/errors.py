"""Error hierarchy. Every error says what failed, in which context, and how to fix it.

Layers wrap lower-level exceptions with ``raise SomeError(...) from err`` so the CLI can
print one clear line (and exit non-zero) instead of a traceback.
"""

from __future__ import annotations


class NodeguardError(Exception):
    """Base class of every error nodeguard reports to a user.

    ``fix`` is an optional hint printed after the message.
    """

    exit_code = 2

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message}\n  fix: {self.fix}"
        return self.message


class PolicyError(NodeguardError):
    """A policy file is invalid. Carries every problem found, not just the first."""

    exit_code = 1

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems))


class PolicyProblem:
    """One problem in a policy file: ``file:line: path: message``."""

    __slots__ = ("file", "line", "message", "path")

    def __init__(self, file: str, line: int, path: str, message: str) -> None:
        self.file = file
        self.line = line
        self.path = path
        self.message = message

    def render(self) -> str:
        return f"{self.file}:{self.line}: {self.path}: {self.message}"

    def __repr__(self) -> str:
        return f"PolicyProblem({self.render()!r})"


class PrivilegeError(NodeguardError):
    """Not running with the privileges needed (root / CAP_BPF + CAP_SYS_ADMIN)."""


class KernelFeatureError(NodeguardError):
    """A kernel feature nodeguard needs is missing or refused."""


class BccMissingError(KernelFeatureError):
    """BCC's Python bindings cannot be imported."""


class BpfLoadError(KernelFeatureError):
    """A BPF program failed to compile, load or attach."""


class CgroupError(NodeguardError):
    """cgroup v2 is missing, or a cgroup could not be created, joined or removed."""


class CommandError(NodeguardError):
    """The command to run under the guard cannot be started."""
