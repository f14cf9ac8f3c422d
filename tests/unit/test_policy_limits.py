"""spec.limits: process budgets, the rate shorthand, schema errors with file:line: path,
versions, flags and ``policy show``."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import pytest

from nodeguard.bpf.abi import PolicyFlag
from nodeguard.cli import policy as policy_cli
from nodeguard.policy import CompiledPolicy, compile_policy, parse_policy_text
from nodeguard.policy.compiled import CompiledLimits, Rate

HEAD = "apiVersion: nodeguard.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: p}\n"


def text(spec: str) -> str:
    return HEAD + "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  ")


def compiled(spec: str) -> CompiledPolicy:
    policies, problems = parse_policy_text(text(spec), "p.yaml")
    assert problems == [], [p.render() for p in problems]
    return compile_policy(policies[0])


def limits(spec: str) -> CompiledLimits:
    result = compiled(spec).limits
    assert result is not None
    return result


def problems(spec: str) -> list[str]:
    _, found = parse_policy_text(text(spec), "p.yaml")
    return [p.render() for p in found]


def test_issue_example() -> None:
    result = limits(
        """\
        limits:
          maxProcesses: 64
          forksPerSecond: 20
          execsPerSecond: {rate: 10, burst: 30}
        """
    )
    assert result == CompiledLimits(
        max_processes=64, forks=Rate(per_second=20, burst=20), execs=Rate(per_second=10, burst=30)
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("limits: {maxProcesses: 1}\n", CompiledLimits(1, None, None)),
        ("limits: {maxProcesses: 4194304}\n", CompiledLimits(4194304, None, None)),
        ("limits: {forksPerSecond: 5}\n", CompiledLimits(None, Rate(5, 5), None)),
        ("limits: {forksPerSecond: {rate: 5}}\n", CompiledLimits(None, Rate(5, 5), None)),
        (
            "limits: {execsPerSecond: {rate: 10, burst: 1}}\n",
            CompiledLimits(None, None, Rate(10, 1)),
        ),
        (
            "limits: {execsPerSecond: {burst: 1000000, rate: 1000000}}\n",
            CompiledLimits(None, None, Rate(1_000_000, 1_000_000)),
        ),
    ],
)
def test_budgets(spec: str, expected: CompiledLimits) -> None:
    assert limits(spec) == expected


def test_no_limits() -> None:
    policy = compiled("{}\n")
    assert policy.limits is None
    assert PolicyFlag.LIMITS not in policy.flags()
    assert PolicyFlag.LIMITS in compiled("limits: {maxProcesses: 8}\n").flags()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "limits: {}\n",
            "p.yaml:5: spec.limits: 'limits' sets no budget; set maxProcesses, forksPerSecond "
            "and/or execsPerSecond, or remove 'limits'",
        ),
        (
            "limits:\n",
            "p.yaml:5: spec.limits: 'limits:' is empty; set maxProcesses, forksPerSecond "
            "and/or execsPerSecond, or remove 'limits'",
        ),
        (
            "limits:\n  maxProcesses: 0\n",
            "p.yaml:6: spec.limits.maxProcesses: maxProcesses 0 is out of range: use "
            "1-4194304 (live processes in the pod)",
        ),
        (
            "limits:\n  maxProcesses: 4194305\n",
            "p.yaml:6: spec.limits.maxProcesses: maxProcesses 4194305 is out of range: use "
            "1-4194304 (live processes in the pod)",
        ),
        (
            "limits:\n  maxProcesses: 1.5\n",
            "p.yaml:6: spec.limits.maxProcesses: maxProcesses: expected a whole number, got a "
            "number (1.5)",
        ),
        (
            "limits:\n  maxProcesses: '64'\n",
            "p.yaml:6: spec.limits.maxProcesses: maxProcesses: expected a whole number, got a "
            "string ('64'); write it without quotes",
        ),
        (
            "limits:\n  maxProcesses: true\n",
            "p.yaml:6: spec.limits.maxProcesses: maxProcesses: expected a whole number, got a "
            "boolean (true)",
        ),
        (
            "limits:\n  maxProcesses:\n",
            "p.yaml:6: spec.limits.maxProcesses: 'maxProcesses:' is empty; give a number "
            "(e.g. 64), or remove 'maxProcesses'",
        ),
        (
            "limits:\n  forksPerSecond: 0\n",
            "p.yaml:6: spec.limits.forksPerSecond: rate 0 is out of range: use 1-1000000 per "
            "second",
        ),
        (
            "limits:\n  forksPerSecond: '20'\n",
            "p.yaml:6: spec.limits.forksPerSecond: expected a rate, got a string ('20'); write "
            "the number without quotes",
        ),
        (
            "limits:\n  forksPerSecond: fast\n",
            "p.yaml:6: spec.limits.forksPerSecond: expected a rate, got a string ('fast'); "
            "write a rate ('forksPerSecond: 20') or a rate and burst ('forksPerSecond: "
            "{rate: 20, burst: 40}')",
        ),
        (
            "limits:\n  forksPerSecond:\n",
            "p.yaml:6: spec.limits.forksPerSecond: 'forksPerSecond:' is empty; write a rate "
            "('forksPerSecond: 20') or a rate and burst ('forksPerSecond: {rate: 20, burst: "
            "40}'), or remove 'forksPerSecond'",
        ),
        (
            "limits:\n  execsPerSecond:\n    rate: 10\n    burst: 0\n",
            "p.yaml:8: spec.limits.execsPerSecond.burst: burst 0 is out of range: use 1-1000000",
        ),
        (
            "limits:\n  execsPerSecond: {rate: 10, burst: 1000001}\n",
            "p.yaml:6: spec.limits.execsPerSecond.burst: burst 1000001 is out of range: use "
            "1-1000000",
        ),
        (
            "limits:\n  execsPerSecond:\n    rate: 2000000\n",
            "p.yaml:7: spec.limits.execsPerSecond.rate: rate 2000000 is out of range: use "
            "1-1000000 per second",
        ),
        (
            "limits:\n  execsPerSecond:\n    burst: 5\n",
            "p.yaml:7: spec.limits.execsPerSecond.rate: missing required key 'rate'; e.g. "
            "'{rate: 10, burst: 30}', or just the rate: 'execsPerSecond: 10'",
        ),
        (
            "limits:\n  execsPerSecond:\n    rate: 5\n    brust: 10\n",
            "p.yaml:8: spec.limits.execsPerSecond.brust: unknown key 'brust' (did you mean "
            "'burst'?); allowed here: rate, burst",
        ),
        (
            "limits:\n  maxProcess: 5\n",
            "p.yaml:6: spec.limits.maxProcess: unknown key 'maxProcess' (did you mean "
            "'maxProcesses'?); allowed here: maxProcesses, forksPerSecond, execsPerSecond",
        ),
        (
            "budget: {maxProcesses: 5}\n",
            "p.yaml:5: spec.budget: unknown key 'budget' (did you mean 'limits'?); allowed "
            "here: selector, mode, egress, exec, syscalls, sockets, limits",
        ),
    ],
)
def test_schema_errors(spec: str, expected: str) -> None:
    assert problems(spec) == [expected]


def test_version_ignores_the_shorthand() -> None:
    base = compiled("limits: {maxProcesses: 64, forksPerSecond: 20}\n").version
    for spec in (
        "limits: {forksPerSecond: {rate: 20}, maxProcesses: 64}\n",
        "limits: {forksPerSecond: {rate: 20, burst: 20}, maxProcesses: 64}\n",
    ):
        assert compiled(spec).version == base, spec


@pytest.mark.parametrize(
    "spec",
    [
        "limits: {maxProcesses: 65, forksPerSecond: 20}\n",
        "limits: {maxProcesses: 64, forksPerSecond: 21}\n",
        "limits: {maxProcesses: 64, forksPerSecond: {rate: 20, burst: 21}}\n",
        "limits: {maxProcesses: 64, execsPerSecond: 20}\n",
        "limits: {maxProcesses: 64}\n",
        "{}\n",
    ],
)
def test_version_changes_with_the_budgets(spec: str) -> None:
    base = compiled("limits: {maxProcesses: 64, forksPerSecond: 20}\n").version
    assert compiled(spec).version != base


def test_show(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    spec = "limits: {maxProcesses: 64, forksPerSecond: 20, execsPerSecond: {rate: 10, burst: 30}}"
    path.write_text(text(spec + "\n"))
    parser = argparse.ArgumentParser(prog="nodeguard")
    policy_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["policy", "show", str(path)])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("  limits (per pod; the process that breaks a budget is killed):")
    assert lines[start + 1 :] == [
        "    maxProcesses    64 live processes",
        "    forksPerSecond  20/s, burst 20",
        "    execsPerSecond  10/s, burst 30",
    ]
