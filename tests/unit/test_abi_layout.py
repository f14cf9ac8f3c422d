"""alignchecker: the ctypes mirror in nodeguard/bpf/abi.py against the C header.

A small C program (generated here, in a temporary directory) includes the real header
and prints sizeof/offsetof of every mirrored struct and field, and every #define value;
the test compares them with what ctypes computes.
"""

from __future__ import annotations

import ctypes as ct
import shutil
import subprocess
from pathlib import Path

import pytest

from nodeguard.bpf import abi


def _compiler() -> str | None:
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _program() -> str:
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        '#include "nodeguard.h"',
        "int main(void) {",
    ]
    for cname, cls in abi.MIRRORS:
        lines.append(f'  printf("size {cname} %zu\\n", sizeof(struct {cname}));')
        for field, *_ in cls._fields_:
            lines.append(
                f'  printf("field {cname}.{field} %zu %zu\\n", '
                f"offsetof(struct {cname}, {field}), sizeof(((struct {cname} *)0)->{field}));"
            )
    for define in abi.CONSTANTS:
        lines.append(f'  printf("define {define} %lld\\n", (long long)({define}));')
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler (cc/gcc/clang) on PATH: cannot check the ABI layout")
    work: Path = tmp_path_factory.mktemp("alignchecker")
    src, exe = work / "layout.c", work / "layout"
    src.write_text(_program())
    built = subprocess.run(
        [
            cc,
            "-std=gnu11",
            "-Wall",
            "-Werror",
            "-I",
            str(abi.HEADER_PATH.parent),
            "-o",
            str(exe),
            str(src),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0 and "linux/types.h" in built.stderr:
        pytest.skip("linux/types.h missing (install linux-libc-dev): cannot compile the header")
    assert built.returncode == 0, f"compiling the layout program failed:\n{built.stderr}"
    ran = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    out: dict[str, int] = {}
    for line in ran.stdout.splitlines():
        kind, name, *values = line.split()
        if kind == "field":
            out[f"offset {name}"], out[f"sizeof {name}"] = int(values[0]), int(values[1])
        else:
            out[f"{kind} {name}"] = int(values[0])
    return out


@pytest.mark.parametrize(("cname", "cls"), abi.MIRRORS, ids=[m[0] for m in abi.MIRRORS])
def test_struct_size(c_layout: dict[str, int], cname: str, cls: type[ct.Structure]) -> None:
    assert ct.sizeof(cls) == c_layout[f"size {cname}"]


@pytest.mark.parametrize(("cname", "cls"), abi.MIRRORS, ids=[m[0] for m in abi.MIRRORS])
def test_field_offsets_and_sizes(
    c_layout: dict[str, int], cname: str, cls: type[ct.Structure]
) -> None:
    mismatches = []
    for field, *_ in cls._fields_:
        desc = getattr(cls, field)
        c_off = c_layout[f"offset {cname}.{field}"]
        c_size = c_layout[f"sizeof {cname}.{field}"]
        if (desc.offset, desc.size) != (c_off, c_size):
            mismatches.append(
                f"{field}: ctypes offset {desc.offset} size {desc.size}, "
                f"C offset {c_off} size {c_size}"
            )
    assert not mismatches, f"struct {cname}: " + "; ".join(mismatches)


@pytest.mark.parametrize(("cname", "cls"), abi.MIRRORS, ids=[m[0] for m in abi.MIRRORS])
def test_no_implicit_padding(c_layout: dict[str, int], cname: str, cls: type[ct.Structure]) -> None:
    # House rule: explicit padding only, and 8-byte aligned sizes. The C fields the
    # mirror names must tile the struct with no holes (this also catches a C field
    # missing from the mirror).
    covered = sum(c_layout[f"sizeof {cname}.{field}"] for field, *_ in cls._fields_)
    assert covered == c_layout[f"size {cname}"], f"struct {cname} has implicit padding"
    assert c_layout[f"size {cname}"] % 8 == 0, f"struct {cname} size is not a multiple of 8"


@pytest.mark.parametrize("define", sorted(abi.CONSTANTS))
def test_constants(c_layout: dict[str, int], define: str) -> None:
    assert int(abi.CONSTANTS[define]) == c_layout[f"define {define}"]
