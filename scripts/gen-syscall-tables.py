#!/usr/bin/env python3
"""Generate nodeguard/policy/syscall_tables.py from the kernel UAPI headers on this machine.

Usage::

    python3 scripts/gen-syscall-tables.py                 # rewrite the committed module
    python3 scripts/gen-syscall-tables.py --output -      # print it instead
    python3 scripts/gen-syscall-tables.py --check         # exit 1 if the module is stale

Sources (Debian's ``linux-libc-dev``, already a dependency of the BPF build):

* x86_64: ``<include>/x86_64-linux-gnu/asm/unistd_64.h`` (the 64-bit syscall table; the
  x32 table is deliberately not read: see docs/syscall-groups.md on compat syscalls).
* i386: ``<include>/x86_64-linux-gnu/asm/unistd_32.h``, the 32-bit ABI of x86_64 kernels
  (``int $0x80`` and 32-bit programs, with numbers of their own). Policies never name
  i386 syscalls; the table lets the seccomp filter deny the same syscalls for that ABI.
* arm64: ``<include>/asm-generic/unistd.h``. arm64 has no table of its own in these
  kernels: its ``asm/unistd.h`` defines a handful of ``__ARCH_WANT_*`` switches and includes
  the generic table. Those switches are written down below (``ARM64_DEFINES``) so the
  result does not depend on whether an arm64 header happens to be installed; when one is
  (Debian ``linux-libc-dev-arm64-cross``), the script checks that its switches are the
  ones assumed here and stops if they are not.

The generic header is conditional C, so it is read by a small preprocessor below that
understands exactly the constructs these headers use (``#if defined(X) || __BITS_PER_LONG
!= 32``, ``#ifdef``, aliases such as ``#define __NR_fcntl __NR3264_fcntl``) and fails
loudly on anything else, rather than guessing. Output is deterministic: entries are
sorted by number then name, and only the headers' major.minor version is recorded (a
stable-series bump of linux-libc-dev does not change syscall numbers).

The generated module holds plain dict literals and is ruff-format and mypy --strict clean.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "nodeguard" / "policy" / "syscall_tables.py"
DEFAULT_INCLUDE = Path("/usr/include")

X86_64_HEADER = "x86_64-linux-gnu/asm/unistd_64.h"
I386_HEADER = "x86_64-linux-gnu/asm/unistd_32.h"
GENERIC_HEADER = "asm-generic/unistd.h"
# Where Debian's linux-libc-dev-arm64-cross puts arm64's own asm/unistd.h (optional).
ARM64_ARCH_HEADER = Path("/usr/aarch64-linux-gnu/include/asm/unistd.h")

# arm64's arch/arm64/include/uapi/asm/unistd.h (6.1): the switches it sets before
# including asm-generic/unistd.h, plus what asm/bitsperlong.h gives a 64-bit arch.
ARM64_DEFINES: Mapping[str, str] = {
    "__BITS_PER_LONG": "64",
    "__ARCH_WANT_RENAMEAT": "",
    "__ARCH_WANT_NEW_STAT": "",
    "__ARCH_WANT_SET_GET_RLIMIT": "",
    "__ARCH_WANT_TIME32_SYSCALLS": "",
    "__ARCH_WANT_SYS_CLONE3": "",
    "__ARCH_WANT_MEMFD_SECRET": "",
}
# Includes the preprocessor may skip: their only effect is supplied by the defines above.
_SKIPPABLE_INCLUDES = frozenset({"asm/bitsperlong.h"})
# __NR_ macros that are not syscalls.
_NOT_SYSCALLS = frozenset({"syscalls", "arch_specific_syscall"})


class HeaderError(Exception):
    """A header uses a construct this generator does not understand, or is missing."""


@dataclass(frozen=True)
class Table:
    arch: str
    source: str  # header path relative to the include directory, for the comment
    entries: Mapping[str, int]


# --------------------------------------------------------------------------- preprocessor


def _logical_lines(text: str) -> list[str]:
    """Comments removed, backslash continuations joined."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)
    text = re.sub(r"//[^\n]*", "", text)
    text = text.replace("\\\n", " ")
    return text.splitlines()


_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_]\w*)|(\|\||&&|==|!=|!|\(|\)))")


def _tokenize(expr: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise HeaderError(f"unsupported #if expression: {expr!r}")
        tokens.append(m.group(m.lastindex or 0))
        pos = m.end()
    return tokens


class _Expr:
    """Recursive-descent evaluator for the #if subset: || && ! == != () defined(X) N X."""

    def __init__(self, tokens: list[str], macros: Mapping[str, str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.macros = macros

    def evaluate(self) -> int:
        value = self._or()
        if self.pos != len(self.tokens):
            raise HeaderError(f"trailing tokens in #if: {self.tokens[self.pos :]}")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> str:
        tok = self._peek()
        if tok is None or (expected is not None and tok != expected):
            raise HeaderError(f"#if: expected {expected or 'a token'}, got {tok!r}")
        self.pos += 1
        return tok

    def _or(self) -> int:
        value = self._and()
        while self._peek() == "||":
            self._take()
            right = self._and()
            value = int(bool(value) or bool(right))
        return value

    def _and(self) -> int:
        value = self._eq()
        while self._peek() == "&&":
            self._take()
            right = self._eq()
            value = int(bool(value) and bool(right))
        return value

    def _eq(self) -> int:
        value = self._unary()
        while self._peek() in ("==", "!="):
            op = self._take()
            right = self._unary()
            value = int(value == right) if op == "==" else int(value != right)
        return value

    def _unary(self) -> int:
        tok = self._take()
        if tok == "!":
            return int(not self._unary())
        if tok == "(":
            value = self._or()
            self._take(")")
            return value
        if tok == "defined":
            parens = self._peek() == "("
            if parens:
                self._take("(")
            name = self._take()
            if parens:
                self._take(")")
            return int(name in self.macros)
        if tok.isdigit():
            return int(tok)
        if re.fullmatch(r"[A-Za-z_]\w*", tok):
            body = self.macros.get(tok)
            if body is None:
                return 0  # C: an undefined identifier in #if is 0
            if not body.strip().isdigit():
                raise HeaderError(f"#if uses macro {tok} with non-numeric value {body!r}")
            return int(body)
        raise HeaderError(f"#if: unexpected token {tok!r}")


def preprocess(text: str, predefined: Mapping[str, str]) -> dict[str, str]:
    """Run the supported subset of cpp over ``text``; return the object-like macros defined."""
    macros: dict[str, str] = dict(predefined)
    # Stack of (this branch active, some branch of this #if already taken, parent active).
    stack: list[tuple[bool, bool, bool]] = []
    active = True
    for line in _logical_lines(text):
        stripped = line.strip()
        if not stripped.startswith("#"):
            continue
        m = re.match(r"#\s*(\w+)\s*(.*)$", stripped)
        if m is None:
            raise HeaderError(f"unparsable directive: {stripped!r}")
        directive, rest = m.group(1), m.group(2).strip()
        if directive in ("if", "ifdef", "ifndef"):
            if directive == "if":
                cond = bool(_Expr(_tokenize(rest), macros).evaluate()) if active else False
            elif directive == "ifdef":
                cond = rest in macros
            else:
                cond = rest not in macros
            taken = active and cond
            stack.append((taken, taken, active))
            active = taken
        elif directive == "elif":
            if not stack:
                raise HeaderError("#elif without #if")
            _, done, parent = stack.pop()
            cond = parent and not done and bool(_Expr(_tokenize(rest), macros).evaluate())
            stack.append((cond, done or cond, parent))
            active = cond
        elif directive == "else":
            if not stack:
                raise HeaderError("#else without #if")
            _, done, parent = stack.pop()
            active = parent and not done
            stack.append((active, True, parent))
        elif directive == "endif":
            if not stack:
                raise HeaderError("#endif without #if")
            _, _, active = stack.pop()
        elif not active:
            continue
        elif directive == "define":
            dm = re.match(r"([A-Za-z_]\w*)(\([^)]*\))?\s*(.*)$", rest)
            if dm is None:
                raise HeaderError(f"unparsable #define: {rest!r}")
            if dm.group(2) is None:  # function-like macros (__SYSCALL(x, y)) are ignored
                macros[dm.group(1)] = dm.group(3).strip()
        elif directive == "undef":
            macros.pop(rest, None)
        elif directive == "include":
            name = rest.strip('<>"')
            if name not in _SKIPPABLE_INCLUDES:
                raise HeaderError(f"unexpected #include {rest}")
        else:
            raise HeaderError(f"unsupported directive #{directive}")
    if stack:
        raise HeaderError("unterminated #if")
    return macros


def syscall_numbers(macros: Mapping[str, str]) -> dict[str, int]:
    """``__NR_<name>`` macros resolved to numbers (aliases followed, non-syscalls dropped)."""

    def value(name: str, seen: tuple[str, ...] = ()) -> int:
        if name in seen:
            raise HeaderError(f"macro cycle: {' -> '.join((*seen, name))}")
        body = macros.get(name)
        if body is None:
            raise HeaderError(f"{seen[-1] if seen else name} refers to undefined {name}")
        body = body.strip()
        if body.isdigit():
            return int(body)
        if re.fullmatch(r"[A-Za-z_]\w*", body):
            return value(body, (*seen, name))
        raise HeaderError(f"{name} has a value this generator cannot evaluate: {body!r}")

    table: dict[str, int] = {}
    for macro in macros:
        if not macro.startswith("__NR_"):
            continue
        name = macro.removeprefix("__NR_")
        if name in _NOT_SYSCALLS:
            continue
        table[name] = value(macro)
    numbers = sorted(table.values())
    if len(set(numbers)) != len(numbers):
        raise HeaderError("two syscall names share a number: the preprocessing went wrong")
    return table


# --------------------------------------------------------------------------- sources


def _read(include: Path, relative: str) -> str:
    path = include / relative
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise HeaderError(
            f"{path} not found; install Debian's linux-libc-dev (apt-get install linux-libc-dev)"
        ) from err


def check_arm64_defines(header: Path = ARM64_ARCH_HEADER) -> None:
    """If arm64's own asm/unistd.h is installed, its switches must be ARM64_DEFINES'."""
    if not header.exists():
        return
    found = set(re.findall(r"^\s*#\s*define\s+(__ARCH_WANT_\w+)", header.read_text(), re.M))
    assumed = {name for name in ARM64_DEFINES if name.startswith("__ARCH_WANT_")}
    if found != assumed:
        raise HeaderError(
            f"{header} sets {sorted(found)} but this script assumes {sorted(assumed)}; "
            "update ARM64_DEFINES in scripts/gen-syscall-tables.py"
        )


def headers_version(include: Path) -> str:
    """``major.minor`` of the UAPI headers (linux/version.h)."""
    text = _read(include, "linux/version.h")
    m = re.search(r"#define\s+LINUX_VERSION_CODE\s+(\d+)", text)
    if m is None:
        raise HeaderError(f"{include / 'linux/version.h'} has no LINUX_VERSION_CODE")
    code = int(m.group(1))
    return f"{code >> 16}.{(code >> 8) & 0xFF}"


def load_tables(include: Path) -> list[Table]:
    x86 = syscall_numbers(preprocess(_read(include, X86_64_HEADER), {}))
    check_arm64_defines()
    arm64 = syscall_numbers(preprocess(_read(include, GENERIC_HEADER), ARM64_DEFINES))
    i386 = syscall_numbers(preprocess(_read(include, I386_HEADER), {}))
    return [
        Table("x86_64", X86_64_HEADER, x86),
        Table("arm64", GENERIC_HEADER, arm64),
        Table("i386", I386_HEADER, i386),
    ]


# --------------------------------------------------------------------------- output


def _dict_literal(var: str, entries: Mapping[str, int]) -> Iterable[str]:
    yield f"{var}: Mapping[str, int] = {{"
    for name, number in sorted(entries.items(), key=lambda item: (item[1], item[0])):
        yield f'    "{name}": {number},'
    yield "}"


def render(tables: list[Table], version: str) -> str:
    wants = ", ".join(n for n in ARM64_DEFINES if n.startswith("__ARCH_WANT_"))
    lines = [
        "# Generated by scripts/gen-syscall-tables.py -- DO NOT EDIT; rerun the script instead.",
        f"# Source: Linux {version} UAPI headers (Debian linux-libc-dev) under /usr/include:",
        f"#   x86_64: {X86_64_HEADER} (64-bit ABI; no x32 numbers)",
        f"#   i386:   {I386_HEADER} (32-bit ABI of x86_64 kernels)",
        f"#   arm64:  {GENERIC_HEADER} with __BITS_PER_LONG 64 and arm64's",
        "#           asm/unistd.h switches:",
    ]
    # Keep the comment under the 100-column limit.
    chunk: list[str] = []
    for want in wants.split(", "):
        if len("#             " + ", ".join([*chunk, want])) > 98:
            lines.append("#             " + ", ".join(chunk) + ",")
            chunk = []
        chunk.append(want)
    lines.append("#             " + ", ".join(chunk))
    lines += [
        '"""Syscall name -> number tables for x86_64, arm64 and i386 (generated, see the header).',
        "",
        "Policies name syscalls as x86_64 and arm64 know them; i386 (the 32-bit ABI of x86_64",
        "kernels) is only an output, for the seccomp filter.",
        '"""',
        "",
        "from collections.abc import Mapping",
        "",
        f'HEADERS_VERSION = "{version}"',
        "",
    ]
    names = {"x86_64": "X86_64", "arm64": "ARM64", "i386": "I386"}
    for table in tables:
        lines += [*_dict_literal(names[table.arch], table.entries), ""]
    lines.append("TABLES: Mapping[str, Mapping[str, int]] = {")
    for table in tables:
        lines.append(f'    "{table.arch}": {names[table.arch]},')
    lines.append("}")
    return "\n".join(lines) + "\n"


def generate(include: Path = DEFAULT_INCLUDE) -> str:
    return render(load_tables(include), headers_version(include))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--include", type=Path, default=DEFAULT_INCLUDE, help="UAPI root")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="file to write, - = stdout")
    parser.add_argument("--check", action="store_true", help="exit 1 if --output is stale")
    args = parser.parse_args(argv)
    try:
        text = generate(args.include)
    except HeaderError as err:
        print(f"gen-syscall-tables: {err}", file=sys.stderr)
        return 2
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.output)
    if args.check:
        current = out.read_text(encoding="utf-8") if out.exists() else ""
        if current != text:
            print(f"{out} is stale: run scripts/gen-syscall-tables.py", file=sys.stderr)
            return 1
        return 0
    out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
