"""resolve(): validation against both arches, group expansion, warnings, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nodeguard.errors import NodeguardError
from nodeguard.policy.syscall_tables import ARM64, X86_64
from nodeguard.policy.syscalls import (
    ARCHES,
    GROUP_SUMMARIES,
    IO_URING_REACHABLE,
    SAME_EFFECT,
    SYSCALL_GROUPS,
    SyscallNameError,
    host_arch,
    normalize_arch,
    resolve,
    syscall_name,
    syscall_number,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "syscall-groups.md"


def test_design_example_resolves_to_the_expected_numbers() -> None:
    r = resolve(["ptrace", "mount", "unshare", "setns", "bpf", "init_module"])
    assert r.arches == ("x86_64", "arm64")
    assert r.names == ("bpf", "init_module", "mount", "ptrace", "setns", "unshare")
    assert r.numbers["x86_64"] == (101, 165, 175, 272, 308, 321)
    assert r.numbers["arm64"] == (40, 97, 105, 117, 268, 280)
    assert r.arch_specific == {}
    # mount alone leaves the new mount API open: that is worth a warning.
    assert any("deny @mount" in w for w in r.warnings)


def test_groups_expand_and_duplicates_collapse() -> None:
    r = resolve(["@module", "init_module", "@module", "delete_module", "ptrace", "ptrace"])
    assert r.names == ("delete_module", "finit_module", "init_module", "ptrace")
    assert r.numbers["x86_64"] == (101, 175, 176, 313)
    assert r.origins["init_module"] == ("@module", "init_module")
    assert r.origins["finit_module"] == ("@module",)
    assert r.origins["ptrace"] == ("ptrace",)


def test_numbers_are_sorted_and_match_the_tables() -> None:
    r = resolve(list(SYSCALL_GROUPS))
    for arch, table in (("x86_64", X86_64), ("arm64", ARM64)):
        numbers = r.numbers_for(arch)
        assert list(numbers) == sorted(numbers)
        assert numbers == tuple(sorted(table[n] for n in r.names if n in table))
        assert r.names_for(arch) == tuple(n for n in r.names if n in table)


def test_one_arch_and_its_aliases() -> None:
    r = resolve(["@tracing"], arch="aarch64")
    assert r.arches == ("arm64",)
    assert set(r.numbers) == {"arm64"}
    assert r.numbers_for("arm64") == tuple(sorted(ARM64[n] for n in SYSCALL_GROUPS["@tracing"]))
    with pytest.raises(ValueError, match="not resolved"):
        r.numbers_for("x86_64")
    assert resolve(["bpf"], arch="amd64").numbers_for("x86_64") == (321,)
    with pytest.raises(ValueError, match="unsupported architecture 'riscv64'"):
        resolve(["bpf"], arch="riscv64")


def test_arch_specific_names_are_allowed_and_reported() -> None:
    r = resolve(["iopl", "open"])
    assert r.arch_specific == {"iopl": ("x86_64",), "open": ("x86_64",)}
    assert r.numbers["x86_64"] == (2, 172)
    assert r.numbers["arm64"] == ()
    assert "'iopl' does not exist on arm64: nothing to deny there" in r.warnings
    assert "'open' does not exist on arm64: nothing to deny there" in r.warnings

    # Resolved for x86_64 only: still reported as arch-specific, but nothing to warn about.
    x86 = resolve(["iopl"], arch="x86_64")
    assert x86.arch_specific == {"iopl": ("x86_64",)}
    assert x86.warnings == ()
    assert resolve(["iopl"], arch="arm64").warnings == (
        "'iopl' does not exist on arm64: nothing to deny there",
    )


def test_a_group_with_arch_specific_members_warns_once_per_arch() -> None:
    r = resolve(["@raw-io"])
    assert r.warnings == ("@raw-io: ioperm, iopl do not exist on arm64: nothing to deny there",)
    assert r.numbers == {"x86_64": (172, 173), "arm64": ()}


def test_unknown_name_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(SyscallNameError) as info:
        resolve(["ptarce"])
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, NodeguardError)
    assert err.problems == {"ptarce": ("ptrace",)}
    assert "unknown syscall 'ptarce' (did you mean 'ptrace'?)" in str(err)
    assert "@mount" in str(err)  # the fix lists the groups


def test_every_bad_entry_is_reported_at_once() -> None:
    with pytest.raises(SyscallNameError) as info:
        resolve(["bpf", "@mounts", "PTRACE", "tracing", "@ptrace", "sys_enter_setns", "xyzzy"])
    assert info.value.problems == {
        "@mounts": ("@mount",),
        "PTRACE": ("ptrace",),
        "tracing": ("@tracing",),
        "@ptrace": ("ptrace",),
        "sys_enter_setns": ("setns",),
        "xyzzy": (),
    }
    message = str(info.value)
    assert "unknown group '@mounts' (did you mean '@mount'?)" in message
    assert "unknown syscall 'xyzzy';" not in message  # the last one ends the message
    assert message.splitlines()[0].endswith("unknown syscall 'xyzzy'")


def test_numbers_and_empty_names_get_their_own_message() -> None:
    with pytest.raises(SyscallNameError, match=r"'101' \(use syscall names, not numbers"):
        resolve(["101"])
    with pytest.raises(SyscallNameError, match="empty syscall name"):
        resolve([""])


def test_wrong_types_are_type_errors() -> None:
    with pytest.raises(TypeError, match="not one string"):
        resolve("ptrace")
    with pytest.raises(TypeError, match="int 101"):
        resolve([101])  # type: ignore[list-item]


def test_empty_list() -> None:
    r = resolve([])
    assert r.names == () and r.warnings == () and r.numbers == {"x86_64": (), "arm64": ()}


def test_same_effect_warnings() -> None:
    (w,) = [w for w in resolve(["execve"]).warnings if "execveat" in w]
    assert w == "execve denied but execveat can do the same and is not: deny both"
    assert not [w for w in resolve(["execve", "execveat"]).warnings if "can do the same" in w]
    # open and creat do not exist on arm64, so an arm64-only resolve does not ask for them.
    arm = resolve(["openat", "openat2", "@io-uring"], arch="arm64")
    assert arm.warnings == ()
    x86 = resolve(["openat", "openat2", "@io-uring"], arch="x86_64")
    assert x86.warnings == (
        "openat, openat2 denied but creat, open can do the same and are not: deny all of them",
    )


def test_io_uring_warning() -> None:
    unlinks = ["unlinkat", "unlink", "rmdir"]
    (w,) = resolve(unlinks, arch="x86_64").warnings
    assert w.startswith("rmdir, unlink, unlinkat can also be done through io_uring")
    assert resolve([*unlinks, "@io-uring"], arch="x86_64").warnings == ()
    assert resolve([*unlinks, "io_uring_setup"], arch="x86_64").warnings == ()


@pytest.mark.parametrize("group", sorted(SYSCALL_GROUPS))
def test_groups_resolve_cleanly_on_x86_64(group: str) -> None:
    r = resolve([group], arch="x86_64")
    assert r.warnings == ()
    assert set(r.names) == set(SYSCALL_GROUPS[group])


def test_group_table_is_well_formed() -> None:
    assert set(GROUP_SUMMARIES) == set(SYSCALL_GROUPS)
    for group, members in SYSCALL_GROUPS.items():
        assert re.fullmatch(r"@[a-z][a-z0-9-]*", group)
        assert len(set(members)) == len(members), group
    # clone/clone3 would kill every program that forks or starts a thread.
    all_members = {m for members in SYSCALL_GROUPS.values() for m in members}
    assert not all_members & {"clone", "clone3", "fork", "vfork", "execve"}


def test_hint_tables_only_name_real_syscalls() -> None:
    known = set(X86_64) | set(ARM64)
    for members, _advice in SAME_EFFECT:
        assert members <= known, members - known
    assert known >= IO_URING_REACHABLE, IO_URING_REACHABLE - known


def test_lookups() -> None:
    assert syscall_number("ptrace", "x86_64") == 101
    assert syscall_number("ptrace", "aarch64") == 117
    assert syscall_number("open", "arm64") is None
    assert syscall_name(101, "x86_64") == "ptrace"
    assert syscall_name(117, "arm64") == "ptrace"
    assert syscall_name(100_000, "arm64") is None
    assert normalize_arch("x86_64") == "x86_64"
    with pytest.raises(ValueError, match="unsupported architecture"):
        normalize_arch("i686")


def test_host_arch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert host_arch() == "arm64"
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert host_arch() == "x86_64"
    assert set(ARCHES) == {"x86_64", "arm64"}


def test_result_is_read_only() -> None:
    r = resolve(["bpf"])
    with pytest.raises(TypeError):
        r.numbers["x86_64"] = ()  # type: ignore[index]
    with pytest.raises(AttributeError):
        r.names = ()  # type: ignore[misc]


def test_every_group_is_documented() -> None:
    doc = DOC.read_text()
    for group, members in SYSCALL_GROUPS.items():
        match = re.search(rf"^### `{re.escape(group)}`\n(.*?)(?=^#)", doc, re.M | re.S)
        assert match, f"{group} has no section in {DOC.name}"
        for member in members:
            assert f"`{member}`" in match.group(1), f"{group}: {member} not documented"
