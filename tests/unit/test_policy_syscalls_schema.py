"""spec.syscalls: schema errors (exact text, file:line: path), group expansion, numbers on
x86_64, arm64 and i386, versions and flags, ``policy show``."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import pytest

from nodeguard.bpf.abi import PolicyFlag
from nodeguard.cli import policy as policy_cli
from nodeguard.policy import AgentPolicy, CompiledPolicy, compile_policy, parse_policy_text
from nodeguard.policy.compiled import CompiledSyscalls
from nodeguard.policy.syscall_tables import ARM64, I386, X86_64
from nodeguard.policy.syscalls import (
    COMPILED_ARCHES,
    I386_COUNTERPARTS,
    SYSCALL_GROUPS,
    deny_numbers,
    entry_problem,
    i386_names,
    normalize_table_arch,
    resolve,
    syscall_name,
    syscall_number,
)

HEAD = "apiVersion: nodeguard.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: p}\n"
GROUPS = ", ".join(sorted(SYSCALL_GROUPS))


def text(spec: str) -> str:
    """A document whose spec body starts on line 5."""
    return HEAD + "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  ")


def load(spec: str) -> AgentPolicy:
    policies, problems = parse_policy_text(text(spec), "p.yaml")
    assert problems == [], [p.render() for p in problems]
    (policy,) = policies
    return policy


def compiled(spec: str) -> CompiledPolicy:
    return compile_policy(load(spec))


def syscalls(spec: str) -> CompiledSyscalls:
    result = compiled(spec).syscalls
    assert result is not None
    return result


def problems(spec: str) -> list[str]:
    _, found = parse_policy_text(text(spec), "p.yaml")
    return [p.render() for p in found]


# ------------------------------------------------------------------- compiling --


def test_issue_example_compiles() -> None:
    result = syscalls('syscalls:\n  deny: [ptrace, "@mount", unshare, setns, bpf, "@module"]\n')
    assert result.action == "kill"
    assert result.names == tuple(
        sorted(
            {"ptrace", "unshare", "setns", "bpf", *SYSCALL_GROUPS["@mount"]}
            | set(SYSCALL_GROUPS["@module"])
        )
    )
    assert set(result.numbers) == {"x86_64", "arm64", "i386"}
    for arch, table in (("x86_64", X86_64), ("arm64", ARM64)):
        assert result.numbers[arch] == tuple(sorted(table[n] for n in result.names))
    # i386 has every one of these names, plus the old 'umount' next to 'umount2'.
    assert result.numbers["i386"] == tuple(sorted([*(I386[n] for n in result.names), 22]))


def test_ptrace_numbers_per_arch() -> None:
    result = syscalls("syscalls: {deny: [ptrace]}\n")
    assert result.names == ("ptrace",)
    assert dict(result.numbers) == {"x86_64": (101,), "arm64": (117,), "i386": (26,)}


def test_action_audit() -> None:
    result = syscalls("syscalls: {deny: [bpf], action: audit}\n")
    assert result.action == "audit"
    assert dict(result.numbers) == {"x86_64": (321,), "arm64": (280,), "i386": (357,)}


def test_groups_expand_and_duplicates_collapse() -> None:
    result = syscalls('syscalls: {deny: ["@module", init_module, "@module", bpf, "@bpf"]}\n')
    assert result.names == ("bpf", "delete_module", "finit_module", "init_module")
    assert result.numbers["x86_64"] == (175, 176, 313, 321)
    assert result.numbers["i386"] == (128, 129, 350, 357)


def test_every_group_compiles() -> None:
    deny = ", ".join(f'"{g}"' for g in SYSCALL_GROUPS)
    result = syscalls(f"syscalls: {{deny: [{deny}]}}\n")
    members = {m for group in SYSCALL_GROUPS.values() for m in group}
    assert result.names == tuple(sorted(members))
    for arch in COMPILED_ARCHES:
        numbers = result.numbers[arch]
        assert list(numbers) == sorted(set(numbers)), arch


def test_arch_specific_names_are_accepted() -> None:
    # iopl: x86_64 (and i386) only; kexec_file_load: no i386 number.
    result = syscalls("syscalls: {deny: [iopl, kexec_file_load]}\n")
    assert result.names == ("iopl", "kexec_file_load")
    assert result.numbers["x86_64"] == (172, 320)
    assert result.numbers["arm64"] == (294,)
    assert result.numbers["i386"] == (110,)


def test_i386_denies_the_32bit_variants_too() -> None:
    result = syscalls('syscalls: {deny: ["@clock", setuid, connect]}\n')
    names = i386_names(result.names)
    for variant in ("clock_settime64", "clock_adjtime64", "stime", "setuid32", "socketcall"):
        assert variant in names
        assert I386[variant] in result.numbers["i386"]
    assert "clock_settime64" not in result.names  # names stay the policy's (x86_64/arm64)


def test_i386_counterparts_are_real_syscalls() -> None:
    for name, variants in I386_COUNTERPARTS.items():
        assert name in X86_64 or name in ARM64, name
        assert variants, name
        for variant in variants:
            assert variant in I386, (name, variant)
            assert variant not in X86_64 and variant not in ARM64, (name, variant)


def test_deny_numbers_matches_resolve_on_the_validated_arches() -> None:
    resolved = resolve(list(SYSCALL_GROUPS))
    for arch in ("x86_64", "arm64"):
        assert deny_numbers(resolved.names, arch) == resolved.numbers[arch]
    assert deny_numbers(["ptrace", "umount2"], "i386") == (22, 26, 52)
    assert deny_numbers(["ptrace"], "ia32") == (26,)


def test_numbers_and_names_on_i386() -> None:
    assert syscall_number("ptrace", "i386") == 26
    assert syscall_number("ptrace", "x86_64") == 101
    assert syscall_number("ptrace", "aarch64") == 117
    assert syscall_number("newfstatat", "i386") is None
    assert syscall_name(26, "i386") == "ptrace"
    assert syscall_name(102, "i686") == "socketcall"
    assert syscall_name(101, "amd64") == "ptrace"
    assert normalize_table_arch("ia32") == "i386"
    with pytest.raises(ValueError, match=r"tables exist for x86_64, arm64, i386"):
        normalize_table_arch("riscv64")


def test_names_are_validated_on_x86_64_and_arm64_only() -> None:
    # i386 is an output only: resolve() does not take it, and i386 names are not policy names.
    with pytest.raises(ValueError, match="unsupported architecture 'i386'"):
        resolve(["ptrace"], arch="i386")
    assert entry_problem("socketcall") is not None
    assert entry_problem("ptrace") is None
    assert entry_problem("@mount") is None


# ------------------------------------------------------------------------ errors --


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "syscalls:\n  deny: [ptrace, ptarce]\n",
            "p.yaml:6: spec.syscalls.deny[1]: unknown syscall 'ptarce' (did you mean 'ptrace'?)",
        ),
        (
            'syscalls:\n  deny:\n    - ptrace\n    - "@mounts"\n',
            "p.yaml:8: spec.syscalls.deny[1]: unknown group '@mounts' (did you mean '@mount'?); "
            f"groups are {GROUPS} (docs/syscall-groups.md)",
        ),
        (
            'syscalls:\n  deny: ["@ptrace"]\n',
            "p.yaml:6: spec.syscalls.deny[0]: unknown group '@ptrace' (did you mean 'ptrace'?); "
            f"groups are {GROUPS} (docs/syscall-groups.md)",
        ),
        (
            "syscalls:\n  deny: [SYS_PTRACE]\n",
            "p.yaml:6: spec.syscalls.deny[0]: unknown syscall 'SYS_PTRACE' "
            "(did you mean 'ptrace'?)",
        ),
        (
            "syscalls:\n  deny: [xyzzy]\n",
            "p.yaml:6: spec.syscalls.deny[0]: unknown syscall 'xyzzy': it is in neither the "
            "x86_64 nor the arm64 syscall table (Linux 6.1 headers); check the spelling, or "
            "use a group (docs/syscall-groups.md)",
        ),
        (
            "syscalls:\n  deny: [101]\n",
            "p.yaml:6: spec.syscalls.deny[0]: 101 is a syscall number; write the syscall's "
            "name (e.g. 'ptrace'): numbers differ between x86_64 and arm64",
        ),
        (
            "syscalls:\n  deny: ['101']\n",
            "p.yaml:6: spec.syscalls.deny[0]: unknown syscall '101' (use syscall names, not "
            "numbers: numbers differ between arches)",
        ),
        (
            "syscalls:\n  deny: ['']\n",
            "p.yaml:6: spec.syscalls.deny[0]: empty syscall name; remove it or write a "
            "syscall name",
        ),
        (
            "syscalls:\n  deny: [true]\n",
            "p.yaml:6: spec.syscalls.deny[0]: expected a syscall name or '@group', got a "
            "boolean (true)",
        ),
        (
            "syscalls:\n  deny: [clock_settime64]\n",
            "p.yaml:6: spec.syscalls.deny[0]: 'clock_settime64' is an i386 (32-bit) syscall; "
            "deny lists use x86_64/arm64 names: write 'clock_settime' (its i386 forms, "
            "'clock_settime64' among them, are denied too)",
        ),
        (
            "syscalls:\n  deny: [socketcall]\n",
            "p.yaml:6: spec.syscalls.deny[0]: 'socketcall' is an i386 (32-bit) syscall; deny "
            "lists use x86_64/arm64 names: denying any of 'socket', 'socketpair', ... also "
            "denies 'socketcall' on i386",
        ),
        (
            "syscalls:\n  deny: []\n",
            "p.yaml:6: spec.syscalls.deny: 'deny: []' denies nothing; list syscalls or groups "
            "(e.g. [ptrace, \"@mount\"]), or remove 'syscalls'",
        ),
        (
            "syscalls:\n  deny: ptrace\n",
            "p.yaml:6: spec.syscalls.deny: expected a list, got a string ('ptrace')",
        ),
        (
            "syscalls:\n  action: kill\n",
            "p.yaml:6: spec.syscalls.deny: missing required key 'deny'; list what to deny, "
            "e.g. 'deny: [ptrace, \"@mount\"]'",
        ),
        (
            "syscalls:\n  deny: [ptrace]\n  action: block\n",
            "p.yaml:7: spec.syscalls.action: 'block' is not allowed here; use one of 'kill' "
            "or 'audit'",
        ),
        (
            "syscalls:\n  deny: [ptrace]\n  action: true\n",
            "p.yaml:7: spec.syscalls.action: a boolean (true) is not allowed here; use one of "
            "'kill' or 'audit' (YAML reads unquoted yes/no/on/off as booleans)",
        ),
        (
            "syscalls:\n  deny: [ptrace]\n  allow: [read]\n",
            "p.yaml:7: spec.syscalls.allow: unknown key 'allow'; allowed here: deny, action",
        ),
        (
            "syscalls:\n",
            "p.yaml:5: spec.syscalls: 'syscalls:' is empty; list what to deny (e.g. "
            "'syscalls: {deny: [ptrace, \"@mount\"]}'), or remove 'syscalls'",
        ),
        (
            "syscalls: [ptrace]\n",
            "p.yaml:5: spec.syscalls: expected a mapping, got a list",
        ),
        (
            "syscall: {deny: [ptrace]}\n",
            "p.yaml:5: spec.syscall: unknown key 'syscall' (did you mean 'syscalls'?); allowed "
            "here: selector, mode, egress, exec, syscalls, sockets, limits",
        ),
        (
            "syscalls: {deny: [@mount]}\n",
            "p.yaml:5: (yaml): invalid YAML: found character '@' that cannot start any token, "
            "while scanning for the next token; a value starting with '@' must be quoted "
            '("@mount")',
        ),
    ],
)
def test_schema_errors(spec: str, expected: str) -> None:
    assert problems(spec) == [expected]


def test_every_bad_entry_is_reported() -> None:
    found = problems("syscalls:\n  deny:\n    - ptarce\n    - bpf\n    - mout\n")
    assert [p.split(": ")[0:2] for p in found] == [
        ["p.yaml:7", "spec.syscalls.deny[0]"],
        ["p.yaml:9", "spec.syscalls.deny[2]"],
    ]


# -------------------------------------------------------------- version, flags --

BASE = 'syscalls: {deny: [ptrace, "@mount", bpf]}\n'


def test_version_ignores_order_duplicates_and_spelling() -> None:
    version = compiled(BASE).version
    same = (
        'syscalls: {deny: [bpf, "@mount", ptrace, ptrace], action: kill}\n',
        'syscalls: {deny: ["@bpf", ptrace, "@mount", mount]}\n',
    )
    for spec in same:
        assert compiled(spec).version == version, spec


@pytest.mark.parametrize(
    "spec",
    [
        'syscalls: {deny: [ptrace, "@mount"]}\n',
        'syscalls: {deny: [ptrace, "@mount", bpf, setns]}\n',
        'syscalls: {deny: [ptrace, "@mount", bpf], action: audit}\n',
        "{}\n",
    ],
)
def test_version_changes_with_the_deny_list(spec: str) -> None:
    assert compiled(spec).version != compiled(BASE).version


def test_policies_without_the_new_sections_keep_their_version() -> None:
    # Versions end up in violation records and the agent's checkpoints: adding
    # spec.syscalls/sockets/limits to the schema must not change existing ones.
    assert compiled("{}\n").version == "3e4cd60bb044"
    assert compiled("mode: audit\n").version != "3e4cd60bb044"


def test_flags() -> None:
    assert PolicyFlag.SYSCALLS not in compiled("{}\n").flags()
    kill = compiled(BASE)
    assert kill.flags() & (PolicyFlag.SYSCALLS | PolicyFlag.SYSCALL_AUDIT) == PolicyFlag.SYSCALLS
    assert not kill.syscall_audit()
    audit = compiled("syscalls: {deny: [bpf], action: audit}\n")
    assert PolicyFlag.SYSCALL_AUDIT in audit.flags()
    assert audit.syscall_audit()


# ------------------------------------------------------------------------- show --


def show(capsys: pytest.CaptureFixture[str], tmp_path: Path, spec: str) -> list[str]:
    path = tmp_path / "p.yaml"
    path.write_text(text(spec))
    parser = argparse.ArgumentParser(prog="nodeguard")
    policy_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["policy", "show", str(path)])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out.splitlines()


def test_show_lists_entries_groups_and_counts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = show(capsys, tmp_path, 'syscalls: {deny: [ptrace, "@module", clock_settime]}\n')
    start = lines.index(
        "  syscalls (5 names; numbers: x86_64 5, arm64 5, i386 7; a denied call is killed "
        "(SIGSYS) before it runs):"
    )
    assert lines[start + 1 : start + 5] == [
        "    ptrace",
        "    @module      init_module, finit_module, delete_module",
        "    clock_settime",
        "    (i386 also)  clock_settime64, stime",
    ]
    notes = [line for line in lines if line.startswith("    note: ")]
    assert any("deny @tracing" in n for n in notes)
    assert any("deny @clock" in n for n in notes)
    assert "  sockets: none denied" in lines
    assert "  limits: none" in lines


def test_show_audit(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    lines = show(capsys, tmp_path, "syscalls: {deny: [bpf], action: audit}\n")
    assert (
        "  syscalls (1 name; numbers: x86_64 1, arm64 1, i386 1; a denied call is reported "
        "(audit) and let through):"
    ) in lines
    lines = show(capsys, tmp_path, "mode: audit\nsyscalls: {deny: [bpf]}\n")
    assert any("reported (audit) and let through" in line for line in lines)


def test_show_none_denied(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "  syscalls: none denied" in show(capsys, tmp_path, "{}\n")


def test_example_policy_with_every_section_compiles() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "policies" / "coding-agent.yaml"
    policies, found = parse_policy_text(example.read_text(), str(example))
    assert found == []
    policy = compile_policy(policies[0])
    assert policy.syscalls is not None and policy.sockets is not None
    assert policy.limits is not None and policy.limits.max_processes == 256
    flags = PolicyFlag.SYSCALLS | PolicyFlag.SOCKETS | PolicyFlag.LIMITS | PolicyFlag.EGRESS
    assert policy.flags() & flags == flags
