"""Policy loading: every kind of problem is reported with its exact line and field path."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from nodeguard.bpf.abi import ExecKind
from nodeguard.errors import PolicyError
from nodeguard.policy import (
    AgentPolicy,
    load_policy_file,
    load_policy_files,
    load_policy_text,
    parse_policy_text,
)
from nodeguard.policy.model import EXEC_PATH_MAX, PortSpan

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policies" / "research-agent.yaml"

# Three lines; "spec:" is line 4 in every case below.
HEAD = "apiVersion: nodeguard.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: p}\n"


def policy_text(spec: str) -> str:
    """A document whose spec body starts on line 5."""
    return HEAD + "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  ")


def problems(text: str) -> list[tuple[int, str, str]]:
    _, found = parse_policy_text(text, "p.yaml")
    assert all(p.file == "p.yaml" for p in found)
    return [(p.line, p.path, p.message) for p in found]


def only_problem(text: str) -> tuple[int, str, str]:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# (id, document text, line, path, fragment of the message)
CASES: list[tuple[str, str, int, str, str]] = [
    # --- YAML and document level
    ("yaml-syntax", HEAD + "spec: {mode: [\n", 4, "(yaml)", "invalid YAML"),
    ("yaml-tab", HEAD + "spec:\n\tmode: audit\n", 5, "(yaml)", "invalid YAML"),
    ("yaml-control-char", HEAD + 'spec: {mode: "\x07"}\n', 4, "(yaml)", "control characters"),
    ("empty-file", "", 1, "(document)", "no policy in this file"),
    ("comments-only", "# nothing\n# here\n", 1, "(document)", "no policy in this file"),
    (
        "empty-document",
        HEAD + "spec: {}\n---\n---\n" + HEAD.replace("p}", "q}") + "spec: {}\n",
        6,
        "(document)",
        "empty document",
    ),
    ("list-document", "- a\n- b\n", 1, "(document)", "must be a mapping"),
    ("scalar-document", "hello\n", 1, "(document)", "got a string ('hello')"),
    (
        "duplicate-key",
        HEAD + "spec:\n  mode: audit\n  mode: enforce\n",
        6,
        "spec.mode",
        "duplicate key 'mode' (first at line 5)",
    ),
    (
        "duplicate-nested-key",
        policy_text("egress:\n  allow:\n    - cidr: 10.0.0.0/8\n      cidr: 10.0.0.0/9\n"),
        8,
        "spec.egress.allow[0].cidr",
        "duplicate key 'cidr'",
    ),
    ("merge-key", HEAD + "spec:\n  <<: {mode: audit}\n", 5, "spec", "merge keys"),
    ("non-string-key", HEAD + "spec:\n  ? [a]\n  : 1\n", 5, "spec", "plain strings"),
    ("unknown-tag", HEAD + "spec:\n  mode: !weird audit\n", 5, "spec.mode", "!weird"),
    ("recursive-alias", HEAD + "spec:\n  mode: &a [*a]\n", 5, "spec.mode[0]", "recursive"),
    # --- header
    (
        "wrong-api-version",
        "apiVersion: nodeguard.io/v1\nkind: AgentPolicy\nmetadata: {name: p}\nspec: {}\n",
        1,
        "apiVersion",
        "unsupported apiVersion",
    ),
    (
        "wrong-kind",
        "apiVersion: nodeguard.io/v1alpha1\nkind: NetworkPolicy\n"
        "metadata: {name: p}\nspec: {nonsense: 1}\n",
        2,
        "kind",
        "kind is 'NetworkPolicy'",
    ),
    (
        "missing-api-version",
        "kind: AgentPolicy\nmetadata: {name: p}\nspec: {}\n",
        1,
        "apiVersion",
        "missing required key 'apiVersion'",
    ),
    ("missing-spec", HEAD, 1, "spec", "missing required key 'spec'"),
    (
        "unknown-top-key",
        HEAD + "spec: {}\nstatus: {}\n",
        5,
        "status",
        "unknown key 'status'; allowed here: apiVersion, kind, metadata, spec",
    ),
    # --- metadata
    (
        "bad-name",
        HEAD.replace("name: p", "name: Research_Agent") + "spec: {}\n",
        3,
        "metadata.name",
        "not a valid policy name",
    ),
    (
        "long-name",
        HEAD.replace("name: p", "name: " + "a" * 64) + "spec: {}\n",
        3,
        "metadata.name",
        "at most 63",
    ),
    (
        "missing-name",
        HEAD.replace("{name: p}", "{labels: {}}") + "spec: {}\n",
        3,
        "metadata.name",
        "missing required key 'name'",
    ),
    (
        "label-not-string",
        HEAD.replace("{name: p}", "{name: p, labels: {tier: 1}}") + "spec: {}\n",
        3,
        "metadata.labels.tier",
        "expected a string, got a number (1); put it",
    ),
    (
        "dotted-label-key",
        HEAD.replace("{name: p}", "{name: p, labels: {a.b/c: null}}") + "spec: {}\n",
        3,
        "metadata.labels['a.b/c']",
        "expected a string, got nothing",
    ),
    # --- spec
    (
        "unknown-spec-key",
        HEAD + "spec:\n  filesystem: {deny: [/etc]}\n",
        5,
        "spec.filesystem",
        "not supported by this version",
    ),
    (
        "spec-key-synonym",
        HEAD + "spec:\n  budget: {maxProcesses: 5}\n",
        5,
        "spec.budget",
        "unknown key 'budget' (did you mean 'limits'?)",
    ),
    (
        "typo-spec-key",
        HEAD + "spec:\n  egres: {allow: []}\n",
        5,
        "spec.egres",
        "did you mean 'egress'?",
    ),
    (
        "unknown-key-line-is-key-line",
        HEAD + "spec:\n  bogus:\n    a: 1\n",
        5,
        "spec.bogus",
        "unknown key 'bogus'",
    ),
    ("bad-mode", policy_text("mode: block\n"), 5, "spec.mode", "use one of 'enforce' or 'audit'"),
    ("spec-not-mapping", HEAD + "spec: [a]\n", 4, "spec", "expected a mapping, got a list"),
    # --- selector
    (
        "in-without-values",
        policy_text("selector:\n  matchExpressions:\n    - {key: app, operator: In}\n"),
        7,
        "spec.selector.matchExpressions[0].values",
        "needs a non-empty 'values'",
    ),
    (
        "in-empty-values",
        policy_text(
            "selector:\n  matchExpressions:\n"
            "    - key: app\n      operator: NotIn\n      values: []\n"
        ),
        9,
        "spec.selector.matchExpressions[0].values",
        "needs a non-empty 'values'",
    ),
    (
        "exists-with-values",
        policy_text(
            "selector:\n  matchExpressions:\n"
            "    - key: app\n      operator: Exists\n      values: [x]\n"
        ),
        9,
        "spec.selector.matchExpressions[0].values",
        "takes no 'values'",
    ),
    (
        "bad-operator",
        policy_text("selector:\n  matchExpressions:\n    - {key: app, operator: Equals}\n"),
        7,
        "spec.selector.matchExpressions[0].operator",
        "'In', 'NotIn', 'Exists' or 'DoesNotExist'",
    ),
    (
        "bad-namespace",
        policy_text("selector: {namespaces: [ok, Not_OK]}\n"),
        5,
        "spec.selector.namespaces[1]",
        "not a valid namespace name",
    ),
    (
        "selector-unknown-key",
        policy_text("selector: {matchLabel: {a: b}}\n"),
        5,
        "spec.selector.matchLabel",
        "did you mean 'matchLabels'?",
    ),
    (
        "yaml-boolean-mode",
        policy_text("mode: on\n"),
        5,
        "spec.mode",
        "a boolean (true) is not allowed here; use one of 'enforce' or 'audit' (YAML reads",
    ),
    (
        "expression-unknown-key",
        policy_text(
            "selector:\n  matchExpressions:\n    - {key: a, operator: Exists, value: [x]}\n"
        ),
        7,
        "spec.selector.matchExpressions[0].value",
        "unknown key 'value' (did you mean 'values'?); allowed here: key, operator, values",
    ),
    # --- egress
    ("egress-null", policy_text("egress:\n"), 5, "spec.egress", "write 'egress: {allow: []}'"),
    (
        "egress-without-allow",
        policy_text("egress: {}\n"),
        5,
        "spec.egress.allow",
        "missing required key 'allow'; use 'allow: []'",
    ),
    (
        "allow-null",
        policy_text("egress:\n  allow:\n"),
        6,
        "spec.egress.allow",
        "expected a list, got nothing (null)",
    ),
    (
        "rule-not-mapping",
        policy_text("egress:\n  allow:\n    - 10.0.0.0/8\n"),
        7,
        "spec.egress.allow[0]",
        "expected a mapping, got a string",
    ),
    (
        "missing-cidr",
        policy_text("egress:\n  allow:\n    - {ports: [443]}\n"),
        7,
        "spec.egress.allow[0].cidr",
        "missing required key 'cidr'",
    ),
    (
        "cidr-host-bits",
        policy_text("egress:\n  allow:\n    - cidr: 10.0.0.1/8\n"),
        7,
        "spec.egress.allow[0].cidr",
        "host bits set; did you mean 10.0.0.0/8?",
    ),
    (
        "cidr-host-bits-v6",
        policy_text("egress:\n  allow:\n    - cidr: 'fd00::1/64'\n"),
        7,
        "spec.egress.allow[0].cidr",
        "did you mean fd00::/64?",
    ),
    (
        "cidr-junk",
        policy_text("egress:\n  allow:\n    - {cidr: example.com}\n"),
        7,
        "spec.egress.allow[0].cidr",
        "not an IP address or CIDR",
    ),
    (
        "cidr-bad-prefix",
        policy_text("egress:\n  allow:\n    - {cidr: 10.0.0.0/33}\n"),
        7,
        "spec.egress.allow[0].cidr",
        "not an IP address or CIDR",
    ),
    (
        "cidr-not-string",
        policy_text("egress:\n  allow:\n    - {cidr: 10}\n"),
        7,
        "spec.egress.allow[0].cidr",
        "expected a CIDR string",
    ),
    (
        "cidr-zone",
        policy_text("egress:\n  allow:\n    - {cidr: 'fe80::1%eth0'}\n"),
        7,
        "spec.egress.allow[0].cidr",
        "zone ids",
    ),
    (
        "port-zero",
        policy_text("egress:\n  allow:\n    - {cidr: '::1', ports: [443, 0]}\n"),
        7,
        "spec.egress.allow[0].ports[1]",
        "port 0 is out of range: ports are 1-65535",
    ),
    (
        "port-too-big",
        policy_text(
            "egress:\n  allow:\n    - cidr: ::1\n      ports:\n        - 80\n        - '1-65536'\n"
        ),
        10,
        "spec.egress.allow[0].ports[1]",
        "port 65536 in '1-65536' is out of range",
    ),
    (
        "port-reversed",
        policy_text("egress:\n  allow:\n    - {cidr: '::1', ports: ['8100-8000']}\n"),
        7,
        "spec.egress.allow[0].ports[0]",
        "reversed; did you mean '8000-8100'?",
    ),
    (
        "port-junk",
        policy_text("egress:\n  allow:\n    - {cidr: '::1', ports: ['80,443']}\n"),
        7,
        "spec.egress.allow[0].ports[0]",
        "not a port or port range",
    ),
    (
        "port-name",
        policy_text("egress:\n  allow:\n    - {cidr: '::1', ports: [https]}\n"),
        7,
        "spec.egress.allow[0].ports[0]",
        "https is port 443",
    ),
    (
        "port-bool",
        policy_text("egress:\n  allow:\n    - {cidr: '::1', ports: [true]}\n"),
        7,
        "spec.egress.allow[0].ports[0]",
        "expected a port, got a boolean",
    ),
    (
        "port-float",
        policy_text("egress:\n  allow:\n    - {cidr: '::1', ports: [44.3]}\n"),
        7,
        "spec.egress.allow[0].ports[0]",
        "expected a port",
    ),
    (
        "ports-empty",
        policy_text("egress:\n  allow:\n    - {cidr: '::1', ports: []}\n"),
        7,
        "spec.egress.allow[0].ports",
        "remove 'ports' to allow every port",
    ),
    (
        "ports-not-list",
        policy_text("egress:\n  allow:\n    - {cidr: '::1', ports: 443}\n"),
        7,
        "spec.egress.allow[0].ports",
        "expected a list, got a number (443)",
    ),
    (
        "bad-protocol",
        policy_text("egress:\n  allow:\n    - {cidr: '::1', protocol: TCP}\n"),
        7,
        "spec.egress.allow[0].protocol",
        "use one of 'tcp', 'udp' or 'any'",
    ),
    (
        "unknown-rule-key",
        policy_text("egress:\n  allow:\n    - cidr: ::1\n      port: 443\n"),
        8,
        "spec.egress.allow[0].port",
        "did you mean 'ports'?",
    ),
    # --- exec
    ("exec-null", policy_text("exec:\n"), 5, "spec.exec", "write 'exec: {allow: []}'"),
    (
        "exec-relative",
        policy_text("exec: {allow: [python3]}\n"),
        5,
        "spec.exec.allow[0]",
        "not an absolute path",
    ),
    (
        "exec-double-slash",
        policy_text("exec: {allow: [/usr//bin/x]}\n"),
        5,
        "spec.exec.allow[0]",
        "contains '//'",
    ),
    (
        "exec-dot",
        policy_text("exec: {allow: [/usr/./bin/x]}\n"),
        5,
        "spec.exec.allow[0]",
        "contains '/./'",
    ),
    (
        "exec-dotdot",
        policy_text("exec: {allow: ['/opt/a/../**']}\n"),
        5,
        "spec.exec.allow[0]",
        "contains '/../'",
    ),
    (
        "exec-trailing-slash",
        policy_text("exec: {allow: [/usr/bin/]}\n"),
        5,
        "spec.exec.allow[0]",
        "use '/usr/bin/*' (one level) or '/usr/bin/**'",
    ),
    (
        "exec-trailing-dotdot",
        policy_text("exec: {allow: [/usr/bin/..]}\n"),
        5,
        "spec.exec.allow[0]",
        "names a directory",
    ),
    (
        "exec-star-inside",
        policy_text("exec:\n  allow:\n    - /usr/bin/x\n    - /opt/*/bin/x\n"),
        8,
        "spec.exec.allow[1]",
        "a '*' before the end is not supported",
    ),
    (
        "exec-question",
        policy_text("exec: {allow: ['/usr/bin/python?']}\n"),
        5,
        "spec.exec.allow[0]",
        "'?' is not supported",
    ),
    (
        "exec-bracket",
        policy_text("exec: {allow: ['/usr/bin/python[23]']}\n"),
        5,
        "spec.exec.allow[0]",
        "'[' is not supported",
    ),
    (
        "exec-triple-star",
        policy_text("exec: {allow: ['/opt/***']}\n"),
        5,
        "spec.exec.allow[0]",
        "'***' is not a pattern",
    ),
    (
        "exec-too-long",
        policy_text("exec: {allow: [/" + "a" * EXEC_PATH_MAX + "]}\n"),
        5,
        "spec.exec.allow[0]",
        f"at most {EXEC_PATH_MAX} bytes",
    ),
    ("exec-nul", policy_text('exec: {allow: ["/usr/bin/x\\0"]}\n'), 5, "spec.exec.allow[0]", "NUL"),
    (
        "exec-number",
        policy_text("exec: {allow: [5]}\n"),
        5,
        "spec.exec.allow[0]",
        "expected an absolute path pattern, got a number",
    ),
    (
        "exec-unknown-key",
        policy_text("exec: {allow: [], deny: [/bin/sh]}\n"),
        5,
        "spec.exec.deny",
        "unknown key 'deny'; allowed here: allow",
    ),
    # --- across documents
    (
        "duplicate-name",
        HEAD + "spec: {}\n---\n" + HEAD + "spec: {}\n",
        8,
        "metadata.name",
        "duplicate policy name 'p' (already used at p.yaml:3)",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "path", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_problem_is_located(text: str, line: int, path: str, fragment: str) -> None:
    got_line, got_path, message = only_problem(text)
    assert (got_line, got_path) == (line, path), message
    assert fragment in message


def test_every_problem_is_reported_in_line_order() -> None:
    text = policy_text(
        """\
        mode: block
        egress:
          allow:
            - {cidr: 10.0.0.1/8, ports: [0, "9-1"], protocol: TCP}
            - {cidr: nope}
        exec:
          allow: [python3, /ok, /a//b]
        """
    )
    assert [(line, path) for line, path, _ in problems(text)] == [
        (5, "spec.mode"),
        (8, "spec.egress.allow[0].cidr"),
        (8, "spec.egress.allow[0].ports[0]"),
        (8, "spec.egress.allow[0].ports[1]"),
        (8, "spec.egress.allow[0].protocol"),
        (9, "spec.egress.allow[1].cidr"),
        (11, "spec.exec.allow[0]"),
        (11, "spec.exec.allow[2]"),
    ]


def test_problems_in_several_documents_and_a_late_syntax_error() -> None:
    text = HEAD + "spec: {mode: x}\n---\n" + HEAD.replace("p}", "q}") + "spec: {}\n---\n[\n"
    assert [(line, path) for line, path, _ in problems(text)] == [
        (4, "spec.mode"),
        (11, "(yaml)"),
    ]


def test_problem_renders_as_file_line_path_message() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(policy_text("mode: block\n"), "dir/p.yaml")
    assert str(info.value).startswith("dir/p.yaml:5: spec.mode: 'block' is not allowed here")


def test_minimal_policy_defaults() -> None:
    (policy,) = load_policy_text(HEAD + "spec: {}\n")
    assert policy.name == "p"
    assert policy.spec.mode == "enforce"
    assert policy.spec.egress is None
    assert policy.spec.exec is None
    assert policy.spec.selector is None


def test_values_are_parsed() -> None:
    text = policy_text(
        """\
        mode: audit
        egress:
          allow:
            - {cidr: 10.1.2.3, ports: [443, "8000-8100", " 53 "], protocol: udp}
            - {cidr: "fd00::/64"}
        exec:
          allow: [/usr/bin/python3, /opt/agent/bin/*, /opt/agent/**, /usr/bin/python3*]
        """
    )
    (policy,) = load_policy_text(text)
    assert policy.spec.egress is not None and policy.spec.exec is not None
    first, second = policy.spec.egress.allow
    assert first.cidr == ipaddress.ip_network("10.1.2.3/32")
    assert first.ports == [PortSpan(443, 443), PortSpan(8000, 8100), PortSpan(53, 53)]
    assert first.protocol == "udp"
    assert second.cidr == ipaddress.ip_network("fd00::/64")
    assert second.ports is None and second.protocol == "any"
    assert [(p.literal, p.kind) for p in policy.spec.exec.allow] == [
        ("/usr/bin/python3", ExecKind.EXACT),
        ("/opt/agent/bin/", ExecKind.SEGMENT),
        ("/opt/agent/", ExecKind.SUBTREE),
        ("/usr/bin/python3", ExecKind.SEGMENT),
    ]


def test_deny_all_sections_are_empty_lists() -> None:
    (policy,) = load_policy_text(policy_text("egress: {allow: []}\nexec: {allow: []}\n"))
    assert policy.spec.egress is not None and policy.spec.egress.allow == []
    assert policy.spec.exec is not None and policy.spec.exec.allow == []


def test_longest_exec_path_is_accepted() -> None:
    path = "/" + "a" * (EXEC_PATH_MAX - 1)
    (policy,) = load_policy_text(policy_text(f"exec: {{allow: [{path}]}}\n"))
    assert policy.spec.exec is not None
    assert policy.spec.exec.allow[0].literal == path


def test_selector_is_parsed() -> None:
    text = policy_text(
        """\
        selector:
          namespaces: [agents]
          matchLabels: {app: research}
          matchExpressions:
            - {key: env, operator: In, values: [prod]}
            - {key: canary, operator: DoesNotExist}
        """
    )
    (policy,) = load_policy_text(text)
    selector = policy.spec.selector
    assert selector is not None
    assert selector.namespaces == ["agents"]
    assert selector.match_labels == {"app": "research"}
    assert selector.match_expressions is not None
    assert [e.operator for e in selector.match_expressions] == ["In", "DoesNotExist"]


def test_source_map_locates_values() -> None:
    text = HEAD + "spec:\n  egress:\n    allow:\n      - cidr: 10.0.0.0/8\n        ports: [1]\n"
    (policy,) = load_policy_text(text, "x.yaml")
    assert policy.source is not None
    assert policy.source.file == "x.yaml"
    assert policy.source.line_of(("spec", "egress", "allow", 0, "ports")) == 8
    assert policy.source.line_of(("spec", "egress", "allow", 0, "missing", 3)) == 7
    problem = policy.problem_at(("spec", "egress", "allow", 0), "too big")
    assert problem.render() == "x.yaml:7: spec.egress.allow[0]: too big"


def test_second_document_lines_are_absolute() -> None:
    text = HEAD + "spec: {}\n---\n" + HEAD.replace("p}", "q}") + "spec: {mode: audit}\n"
    _, second = load_policy_text(text)
    assert second.source is not None
    assert second.source.line == 6
    assert second.source.line_of(("spec", "mode")) == 9


def test_policy_built_in_code_has_no_source() -> None:
    data = {"apiVersion": "nodeguard.io/v1alpha1", "kind": "AgentPolicy"}
    policy = AgentPolicy.model_validate({**data, "metadata": {"name": "p"}, "spec": {}})
    assert policy.source is None
    assert policy.problem_at(("spec",), "x").render() == "<policy p>:0: spec: x"


def test_example_policy_is_valid() -> None:
    (policy,) = load_policy_file(EXAMPLE)
    assert policy.name == "research-agent"


def test_load_files_all_or_nothing(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(HEAD + "spec: {}\n")
    other = tmp_path / "other.yaml"
    other.write_text(HEAD.replace("p}", "q}") + "spec: {}\n")
    assert [p.name for p in load_policy_files([good, other])] == ["p", "q"]

    bad = tmp_path / "bad.yaml"
    bad.write_text(policy_text("mode: x\n"))
    missing = tmp_path / "missing.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy_files([good, bad, missing])
    assert [(p.file, p.line, p.path) for p in info.value.problems] == [
        (str(bad), 5, "spec.mode"),
        (str(missing), 1, "(file)"),
    ]
    assert "cannot read policy file" in info.value.problems[1].message


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    one.write_text(HEAD + "spec: {}\n")
    two = tmp_path / "two.yaml"
    two.write_text("# comment\n" + HEAD + "spec: {}\n")
    with pytest.raises(PolicyError) as info:
        load_policy_files([one, two])
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.path) == (str(two), 4, "metadata.name")
    assert f"already used at {one}:3" in problem.message


def test_duplicate_names_within_a_file_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(HEAD + "spec: {}\n---\n" + HEAD + "spec: {}\n")
    with pytest.raises(PolicyError) as info:
        load_policy_files([path])
    assert len(info.value.problems) == 1


def test_directory_and_binary_files_are_problems(tmp_path: Path) -> None:
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"a: 1\nb: \xff\n")
    with pytest.raises(PolicyError) as info:
        load_policy_files([tmp_path, binary])
    assert [(p.line, p.path) for p in info.value.problems] == [(1, "(file)"), (2, "(file)")]
    assert "UTF-8" in info.value.problems[1].message


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    (line, path, message) = problems("\n".join(lines) + "\n")[0]
    assert (line, path) == (1, "(document)")
    assert "alias expansion" in message
