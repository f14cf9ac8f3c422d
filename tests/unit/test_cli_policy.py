"""``nodeguard policy check`` / ``show``: output and exit codes (parser built here, so the
test does not depend on the other subcommands)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from nodeguard.cli import policy as policy_cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "policies" / "research-agent.yaml"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "policies"
BAD = FIXTURES / "bad-egress.yaml"
TWO = FIXTURES / "two-policies.yaml"

HEAD = "apiVersion: nodeguard.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: p}\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, list[str], str]:
    parser = argparse.ArgumentParser(prog="nodeguard")
    policy_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    code = args.func(args)
    assert isinstance(code, int)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_check_clean_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = run(capsys, "policy", "check", EXAMPLE)
    assert code == 0
    assert err == ""
    (line,) = lines
    assert re.fullmatch(
        rf"{re.escape(str(EXAMPLE))}: 1 policy OK \(research-agent, version [0-9a-f]{{12}}\)", line
    )


def test_check_one_line_per_clean_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(capsys, "policy", "check", EXAMPLE, TWO)
    assert code == 0
    assert len(lines) == 2
    assert re.fullmatch(
        rf"{re.escape(str(TWO))}: 2 policies OK "
        r"\(first, version [0-9a-f]{12}; second, version [0-9a-f]{12}\)",
        lines[1],
    )


def test_check_bad_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(capsys, "policy", "check", BAD)
    assert code == 1
    assert lines[0].startswith(f"{BAD}:9: spec.egress.allow[0].cidr: '10.0.0.1/8' has host bits")
    assert lines[1].startswith(f"{BAD}:10: spec.egress.allow[1].ports[0]: port range '8100-8000'")
    assert lines[2:] == ["2 problems in 1 of 1 file(s)"]


def test_check_mixed_files_reports_problems_and_ok_lines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.yaml"
    code, lines, _ = run(capsys, "policy", "check", EXAMPLE, BAD, missing)
    assert code == 1
    assert lines[0].startswith(f"{EXAMPLE}: 1 policy OK")
    assert [line.split(": ")[0] for line in lines[1:4]] == [f"{BAD}:9", f"{BAD}:10", f"{missing}:1"]
    assert "cannot read policy file" in lines[3]
    assert lines[-1] == "3 problems in 2 of 3 file(s)"


def test_check_reports_kernel_limits(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ports = ", ".join(str(p) for p in range(1, 60, 2))
    path = tmp_path / "many.yaml"
    path.write_text(
        HEAD + f"spec:\n  egress:\n    allow:\n      - {{cidr: '::1', ports: [{ports}]}}\n"
    )
    code, lines, _ = run(capsys, "policy", "check", path)
    assert code == 1
    assert lines[0].startswith(f"{path}:7: spec.egress.allow[0]: ::1/128 needs 30 port ranges")
    assert lines[-1] == "1 problem in 1 of 1 file(s)"


def test_check_duplicate_names_across_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text(HEAD + "spec: {}\n")
    two.write_text(HEAD + "spec: {}\n")
    code, lines, _ = run(capsys, "policy", "check", one, two)
    assert code == 1
    assert lines[0].startswith(f"{one}: 1 policy OK")
    assert lines[1].startswith(f"{two}:3: metadata.name: duplicate policy name 'p'")
    assert lines[-1] == "1 problem in 1 of 2 file(s)"


def test_check_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run(capsys, "policy", "check")
    assert info.value.code == 2


def test_show_prints_compiled_entries(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(capsys, "policy", "show", EXAMPLE)
    assert code == 0
    text = "\n".join(lines)
    assert lines[0].startswith("research-agent  uid ")
    assert re.search(r"10\.20\.5\.0/24 +tcp 443, tcp 6333-6334, tcp 8000-8100", text)
    assert re.search(r"10\.96\.0\.10/32 +tcp\+udp 53", text)
    assert "subtree  /opt/agent/venv/**" in text
    assert "exact    /usr/bin/python3" in text


def test_show_unrestricted_and_deny_all(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(capsys, "policy", "show", TWO)
    assert code == 0
    assert "  egress: not restricted" in lines
    assert "  exec (1 entry; anything else reported (audit)):" in lines
    assert "  egress (0 entries; anything else denied):" in lines
    assert "  exec: not restricted" in lines


def test_show_bad_file_prints_problems(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = run(capsys, "policy", "show", BAD)
    assert code == 1
    assert lines == []
    assert [line.split(": ")[0] for line in err.splitlines()] == [f"{BAD}:9", f"{BAD}:10"]
