"""``nodeguard policy check FILE...`` and ``nodeguard policy show FILE``.

``check`` validates and compiles every policy (so kernel limits are checked too), prints
each problem as ``file:line: path: message`` on stdout with a summary last, and exits 1
if there is any problem; when all is clean it prints one line per file and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from typing import TextIO

from nodeguard.bpf.abi import ExecKind, Proto
from nodeguard.errors import PolicyError, PolicyProblem
from nodeguard.policy.compile import ALL_PORTS, compile_policies, compile_policy, display_network
from nodeguard.policy.compiled import (
    CompiledLimits,
    CompiledPolicy,
    CompiledSockets,
    CompiledSyscalls,
    EgressEntry,
    ExecEntry,
    PortRule,
    Rate,
)
from nodeguard.policy.loader import duplicate_name_problems, load_policy_file, read_policy_file
from nodeguard.policy.model import AgentPolicy
from nodeguard.policy.sockets import describe_deny, family_name
from nodeguard.policy.syscalls import COMPILED_ARCHES, SYSCALL_GROUPS, i386_names, resolve

EXIT_OK = 0
EXIT_INVALID = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``policy`` command and its subcommands."""
    parser = subparsers.add_parser(
        "policy",
        help="check and inspect policy files",
        description="Check and inspect AgentPolicy files.",
    )
    sub = parser.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)
    check = sub.add_parser(
        "check",
        help="validate policy files (exit 0 clean, 1 invalid)",
        description="Validate and compile policy files; print every problem as "
        "'file:line: path: message'. Exit 0 when all are valid, 1 otherwise.",
    )
    check.add_argument("files", nargs="+", metavar="FILE", help="policy YAML file")
    check.set_defaults(func=cmd_check)
    show = sub.add_parser(
        "show",
        help="print the compiled kernel entries of a policy file",
        description="Print what the kernel will enforce for each policy in FILE.",
    )
    show.add_argument("file", metavar="FILE", help="policy YAML file")
    show.set_defaults(func=cmd_show)


# ------------------------------------------------------------------------ check --


def _ok_line(path: str, compiled: Sequence[CompiledPolicy]) -> str:
    noun = "policy" if len(compiled) == 1 else "policies"
    names = "; ".join(f"{c.name}, version {c.version}" for c in compiled)
    return f"{path}: {len(compiled)} {noun} OK ({names})"


def _compile_file(
    policies: Sequence[AgentPolicy],
) -> tuple[list[CompiledPolicy], list[PolicyProblem]]:
    compiled: list[CompiledPolicy] = []
    problems: list[PolicyProblem] = []
    for policy in policies:
        try:
            compiled.append(compile_policy(policy))
        except PolicyError as err:
            problems.extend(err.problems)
    return compiled, problems


def check_files(paths: Sequence[str], out: TextIO | None = None) -> int:
    """Check policy files; print problems (or one OK line per file) and return the exit
    code."""
    out = out or sys.stdout
    loaded = [(path, *read_policy_file(path)) for path in paths]
    reported = {p.render() for _, _, problems in loaded for p in problems}
    across = [
        p
        for p in duplicate_name_problems(pol for _, policies, _ in loaded for pol in policies)
        if p.render() not in reported
    ]
    total = files_bad = 0
    for path, policies, load_problems in loaded:
        compiled, compile_problems = _compile_file(policies)
        problems = [*load_problems, *(p for p in across if p.file == path), *compile_problems]
        if problems:
            files_bad += 1
            total += len(problems)
            for problem in sorted(problems, key=lambda p: p.line):
                print(problem.render(), file=out)
        else:
            print(_ok_line(path, compiled), file=out)
    if total:
        noun = "problem" if total == 1 else "problems"
        print(f"{total} {noun} in {files_bad} of {len(paths)} file(s)", file=out)
        return EXIT_INVALID
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    return check_files(args.files)


# ------------------------------------------------------------------------- show --


def format_range(rule: PortRule) -> str:
    """``tcp 443``, ``tcp+udp 8000-8100``, ``all protocols, all ports``."""
    everything = Proto.TCP | Proto.UDP | Proto.OTHER
    if (rule.lo, rule.hi) == ALL_PORTS and rule.protocols == everything:
        return "all protocols, all ports"
    names = "+".join(str(p.name).lower() for p in Proto if p & rule.protocols)
    if (rule.lo, rule.hi) == ALL_PORTS:
        return f"{names} all ports"
    ports = str(rule.lo) if rule.lo == rule.hi else f"{rule.lo}-{rule.hi}"
    return f"{names} {ports}"


def format_egress_entry(entry: EgressEntry) -> str:
    ranges = ", ".join(format_range(r) for r in entry.ranges) or "nothing (denied)"
    return f"{display_network(entry.network):<28} {ranges}"


def format_exec_entry(entry: ExecEntry) -> str:
    text = entry.prefix.rstrip(b"\0").decode("utf-8", errors="replace")
    suffix = {ExecKind.EXACT: "", ExecKind.SEGMENT: "*", ExecKind.SUBTREE: "**"}[entry.kind]
    return f"{entry.kind.name.lower():<8} {text}{suffix}"


def _entries(entries: Sequence[object]) -> str:
    return f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _wrapped(head: str, items: Sequence[str], width: int = 96) -> list[str]:
    """``head`` then the items, continuation lines aligned under the first item."""
    return textwrap.wrap(
        ", ".join(items),
        width=width,
        initial_indent=head,
        subsequent_indent=" " * len(head),
        break_on_hyphens=False,
    )


def format_syscalls(
    syscalls: CompiledSyscalls, audit: bool, entries: Sequence[str] | None = None
) -> list[str]:
    """The syscall deny list: each entry of the policy (groups with their members), the
    numbers per arch, and resolve()'s warnings. ``entries``: the policy's own deny list
    (without it, the expanded names)."""
    per_arch = ", ".join(f"{a} {len(syscalls.numbers.get(a, ()))}" for a in COMPILED_ARCHES)
    outcome = "reported (audit) and let through" if audit else "killed (SIGSYS) before it runs"
    lines = [
        f"  syscalls ({_count(len(syscalls.names), 'name')}; numbers: {per_arch}; "
        f"a denied call is {outcome}):"
    ]
    shown = list(dict.fromkeys(entries)) if entries is not None else list(syscalls.names)
    for entry in shown:
        members = SYSCALL_GROUPS.get(entry)
        lines += _wrapped(f"    {entry:<12} ", members) if members else [f"    {entry}"]
    extra = sorted(set(i386_names(syscalls.names)) - set(syscalls.names))
    if extra:
        lines += _wrapped(f"    {'(i386 also)':<12} ", extra)
    if entries is not None:
        lines += [f"    note: {w}" for w in resolve(entries).warnings]
    return lines


def format_sockets(sockets: CompiledSockets, audit: bool) -> list[str]:
    outcome = "reported (audit)" if audit else "refused (EPERM)"
    families = _count(len(sockets.deny), "family", "families")
    lines = [f"  sockets ({families}; socket() of these kinds {outcome}):"]
    for deny in sockets.deny:
        spelled = ", ".join(deny.spelled)
        lines.append(f"    {family_name(deny.family):<10} {describe_deny(deny):<32} ({spelled})")
    return lines


def _format_rate(rate: Rate) -> str:
    return f"{rate.per_second}/s, burst {rate.burst}"


def format_limits(limits: CompiledLimits, audit: bool) -> list[str]:
    outcome = "reported (audit)" if audit else "killed"
    lines = [f"  limits (per pod; the process that breaks a budget is {outcome}):"]
    if limits.max_processes is not None:
        lines.append(f"    maxProcesses    {limits.max_processes} live processes")
    if limits.forks is not None:
        lines.append(f"    forksPerSecond  {_format_rate(limits.forks)}")
    if limits.execs is not None:
        lines.append(f"    execsPerSecond  {_format_rate(limits.execs)}")
    return lines


def format_policy(policy: CompiledPolicy, source: AgentPolicy | None = None) -> list[str]:
    """Readable lines describing what the kernel enforces for one policy; ``source`` (the
    policy it was compiled from) lets the syscall section show the groups as written."""
    otherwise = "denied" if policy.mode == "enforce" else "reported (audit)"
    lines = [f"{policy.name}  uid {policy.uid}  version {policy.version}  mode {policy.mode}"]
    if policy.egress is None:
        lines.append("  egress: not restricted")
    else:
        lines.append(f"  egress ({_entries(policy.egress)}; anything else {otherwise}):")
        lines += [f"    {format_egress_entry(e)}" for e in policy.egress]
    if policy.exec is None:
        lines.append("  exec: not restricted")
    else:
        killed = "killed" if policy.mode == "enforce" else "reported (audit)"
        lines.append(f"  exec ({_entries(policy.exec)}; anything else {killed}):")
        lines += [f"    {format_exec_entry(e)}" for e in policy.exec]
    audit = policy.mode == "audit"
    if policy.syscalls is None:
        lines.append("  syscalls: none denied")
    else:
        spec = source.spec.syscalls if source is not None else None
        entries = list(spec.deny) if spec is not None else None
        lines += format_syscalls(policy.syscalls, policy.syscall_audit(), entries)
    if policy.sockets is None:
        lines.append("  sockets: none denied")
    else:
        lines += format_sockets(policy.sockets, audit)
    if policy.limits is None:
        lines.append("  limits: none")
    else:
        lines += format_limits(policy.limits, audit)
    return lines


def show_file(path: str, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print the compiled policies of a file (exit 0), or its problems on stderr (exit 1)."""
    out = out or sys.stdout
    try:
        policies = load_policy_file(path)
        compiled = compile_policies(policies)
    except PolicyError as error:
        for problem in error.problems:
            print(problem.render(), file=err or sys.stderr)
        return EXIT_INVALID
    for index, (policy, source) in enumerate(zip(compiled, policies, strict=True)):
        if index:
            print(file=out)
        print("\n".join(format_policy(policy, source)), file=out)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    return show_file(args.file)
