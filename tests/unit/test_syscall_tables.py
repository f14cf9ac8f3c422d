"""The generated syscall tables: known numbers, sanity, and that they are what
scripts/gen-syscall-tables.py makes from the UAPI headers installed here."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from nodeguard.policy import syscall_tables
from nodeguard.policy.syscall_tables import ARM64, HEADERS_VERSION, I386, TABLES, X86_64
from nodeguard.policy.syscalls import SYSCALL_GROUPS

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen-syscall-tables.py"
INCLUDE = Path("/usr/include")
X86_HEADER = INCLUDE / "x86_64-linux-gnu/asm/unistd_64.h"
I386_HEADER = INCLUDE / "x86_64-linux-gnu/asm/unistd_32.h"
GENERIC_HEADER = INCLUDE / "asm-generic/unistd.h"
ARM64_CROSS_HEADER = Path("/usr/aarch64-linux-gnu/include/asm/unistd.h")


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_syscall_tables", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _installed_version() -> str | None:
    version_h = INCLUDE / "linux/version.h"
    headers = (X86_HEADER, I386_HEADER, GENERIC_HEADER, version_h)
    if not all(h.exists() for h in headers):
        return None
    return str(gen.headers_version(INCLUDE))


def _skip_unless_same_headers() -> None:
    version = _installed_version()
    if version is None:
        pytest.skip("kernel UAPI headers not installed (apt-get install linux-libc-dev)")
    if version != HEADERS_VERSION:
        pytest.skip(
            f"installed UAPI headers are {version}, the tables were generated from "
            f"{HEADERS_VERSION}: run scripts/gen-syscall-tables.py to update them"
        )


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("read", 0),
        ("open", 2),
        ("ptrace", 101),
        ("mount", 165),
        ("umount2", 166),
        ("init_module", 175),
        ("unshare", 272),
        ("setns", 308),
        ("bpf", 321),
        ("io_uring_setup", 425),
        ("clone3", 435),
    ],
)
def test_known_x86_64_numbers(name: str, number: int) -> None:
    assert X86_64[name] == number


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("io_setup", 0),
        ("fcntl", 25),  # an alias of __NR3264_fcntl in the generic header
        ("renameat", 38),  # __ARCH_WANT_RENAMEAT
        ("umount2", 39),
        ("mount", 40),
        ("newfstatat", 79),  # __ARCH_WANT_NEW_STAT
        ("fstat", 80),
        ("unshare", 97),
        ("init_module", 105),
        ("ptrace", 117),
        ("getrlimit", 163),  # __ARCH_WANT_SET_GET_RLIMIT
        ("mmap", 222),
        ("setns", 268),
        ("bpf", 280),
        ("clone3", 435),  # __ARCH_WANT_SYS_CLONE3
        ("memfd_secret", 447),  # __ARCH_WANT_MEMFD_SECRET
    ],
)
def test_known_arm64_numbers(name: str, number: int) -> None:
    assert ARM64[name] == number


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("restart_syscall", 0),
        ("mount", 21),
        ("umount", 22),
        ("ptrace", 26),
        ("umount2", 52),
        ("socketcall", 102),
        ("ipc", 117),
        ("init_module", 128),
        ("mmap2", 192),
        ("setuid32", 213),
        ("clock_settime", 264),
        ("unshare", 310),
        ("setns", 346),
        ("bpf", 357),
        ("socket", 359),
        ("clock_settime64", 404),
        ("clone3", 435),
    ],
)
def test_known_i386_numbers(name: str, number: int) -> None:
    assert I386[name] == number


def test_arm64_has_no_legacy_calls_and_no_32bit_names() -> None:
    for legacy in ("open", "fork", "vfork", "stat", "lstat", "mkdir", "pipe", "dup2", "iopl"):
        assert legacy not in ARM64, legacy
    # The 32-bit (off_t / time32) spellings must not leak into a 64-bit table.
    for name32 in ("fcntl64", "mmap2", "fstatat64", "llseek", "sync_file_range2"):
        assert name32 not in ARM64, name32
    assert "arch_specific_syscall" not in ARM64 and "syscalls" not in ARM64


def test_tables_are_sane() -> None:
    assert set(TABLES) == {"x86_64", "arm64", "i386"}
    assert TABLES["x86_64"] is X86_64 and TABLES["arm64"] is ARM64 and TABLES["i386"] is I386
    for arch, table in TABLES.items():
        assert len(table) > 250, arch
        numbers = list(table.values())
        assert len(set(numbers)) == len(numbers), f"{arch}: duplicate numbers"
        assert all(0 <= n < 512 for n in numbers), f"{arch}: compat/x32 numbers leaked in"
        assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", name) for name in table), arch
    assert re.fullmatch(r"\d+\.\d+", HEADERS_VERSION)


def test_every_group_member_exists_on_some_arch() -> None:
    for group, members in SYSCALL_GROUPS.items():
        assert members, group
        for name in members:
            assert name in X86_64 or name in ARM64, f"{group}: {name}"


def test_data_module_header_says_how_it_was_made() -> None:
    text = Path(syscall_tables.__file__).read_text()
    assert text.startswith("# Generated by scripts/gen-syscall-tables.py")
    assert "unistd_64.h" in text and "asm-generic/unistd.h" in text and "unistd_32.h" in text


def test_generator_output_matches_committed_module() -> None:
    _skip_unless_same_headers()
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--output", "-"], capture_output=True, text=True, check=True
    ).stdout
    assert out == Path(syscall_tables.__file__).read_text(), (
        "nodeguard/policy/syscall_tables.py is stale: run scripts/gen-syscall-tables.py"
    )


def _cpp_table(args: list[str]) -> dict[str, int]:
    """Syscall table according to the real C preprocessor (an independent derivation)."""
    cpp = shutil.which("cpp")
    assert cpp is not None
    out = subprocess.run(
        [cpp, "-dM", "-undef", "-nostdinc", *args], capture_output=True, text=True, check=True
    ).stdout
    macros = dict(re.findall(r"^#define (\w+) (.*)$", out, re.M))

    def value(name: str) -> int:
        body = macros[name].strip()
        return int(body) if body.isdigit() else value(body)

    return {
        m.removeprefix("__NR_"): value(m)
        for m in macros
        if m.startswith("__NR_") and m not in ("__NR_syscalls", "__NR_arch_specific_syscall")
    }


def test_tables_agree_with_the_c_preprocessor(tmp_path: Path) -> None:
    _skip_unless_same_headers()
    if shutil.which("cpp") is None:
        pytest.skip("no C preprocessor (cpp) to cross-check with")
    assert _cpp_table(["-D__x86_64__", f"-I{INCLUDE}", str(X86_HEADER)]) == X86_64
    assert _cpp_table([f"-I{INCLUDE}", str(I386_HEADER)]) == I386
    # arm64's switches as the generator assumes them, applied by cpp to the generic table.
    (tmp_path / "asm").mkdir()
    (tmp_path / "asm" / "bitsperlong.h").write_text("#define __BITS_PER_LONG 64\n")
    defines = [f"-D{k}" if not v else f"-D{k}={v}" for k, v in gen.ARM64_DEFINES.items()]
    assert _cpp_table([*defines, f"-I{tmp_path}", str(GENERIC_HEADER)]) == ARM64
    if ARM64_CROSS_HEADER.exists():  # Debian's linux-libc-dev-arm64-cross: arm64's own header
        cross = ARM64_CROSS_HEADER.parent.parent
        assert _cpp_table([f"-I{cross}", str(ARM64_CROSS_HEADER)]) == ARM64


def test_preprocessor_handles_the_conditionals_the_headers_use() -> None:
    text = """
    /* a comment with #define __NR_fake 9 inside */
    #include <asm/bitsperlong.h>
    #define __NR_always 1
    #if defined(__WANT_A) || __BITS_PER_LONG != 32
    #define __NR_a 2
    #else
    #define __NR_not_a 3
    #endif
    #ifdef __WANT_B
    #define __NR_b 4
    #elif !defined(__WANT_C) && __BITS_PER_LONG == 64
    #define __NR_c 5
    #endif
    #ifndef __WANT_B
    #define __NR3264_x 6
    #endif
    #define __NR_alias __NR3264_x
    #define __NR_gone 7
    #undef __NR_gone
    __SC_COMP(__NR_a, sys_a, \\
              compat_sys_a)
    #define __NR_syscalls 8
    """
    macros = gen.preprocess(text, {"__BITS_PER_LONG": "64"})
    assert gen.syscall_numbers(macros) == {"always": 1, "a": 2, "c": 5, "alias": 6}


@pytest.mark.parametrize(
    "text",
    [
        "#include <linux/types.h>\n",
        "#if __X + 1\n#endif\n",
        "#pragma once\n",
        "#if 1\n",
        "#endif\n",
        "#define __NR_x (__NR_y + 1)\n",
    ],
)
def test_preprocessor_refuses_what_it_does_not_understand(text: str) -> None:
    with pytest.raises(gen.HeaderError):
        gen.syscall_numbers(gen.preprocess(text, {}))
