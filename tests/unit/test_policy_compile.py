"""Policy compilation: LPM entries for egress and exec, versions and uids."""

from __future__ import annotations

import ipaddress
import textwrap
import uuid
from typing import Any

import pytest

from nodeguard.bpf.abi import MAX_PORT_RANGES, ExecKind, PolicyFlag, Proto
from nodeguard.errors import PolicyError
from nodeguard.policy import (
    AgentPolicy,
    CompiledPolicy,
    EgressEntry,
    ExecEntry,
    PortRule,
    compile_policies,
    compile_policy,
    load_policy_text,
)
from nodeguard.policy.compile import UID_NAMESPACE, merge_ranges, to_mapped

TCP, UDP, OTHER = Proto.TCP, Proto.UDP, Proto.OTHER
ANY = TCP | UDP
EVERYTHING = TCP | UDP | OTHER

HEAD = "apiVersion: nodeguard.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: p}\n"


def load(spec: str, name: str = "p") -> AgentPolicy:
    text = HEAD.replace("name: p", f"name: {name}") + "spec:\n"
    (policy,) = load_policy_text(text + textwrap.indent(textwrap.dedent(spec), "  "), "p.yaml")
    return policy


def compiled(spec: str) -> CompiledPolicy:
    return compile_policy(load(spec))


def egress(*rules: str) -> dict[str, tuple[PortRule, ...]]:
    """Compile egress rules (flow mappings); entries keyed by their IPv6 network text."""
    spec = "egress:\n  allow:\n" + "".join(f"    - {r}\n" for r in rules)
    entries = compiled(spec).egress
    assert entries is not None
    return {str(e.network): e.ranges for e in entries}


def net(text: str) -> str:
    return str(ipaddress.IPv6Network(text))


def rule(lo: int, hi: int, protocols: Proto) -> PortRule:
    return PortRule(lo, hi, protocols)


ALL = rule(0, 65535, EVERYTHING)

# ---------------------------------------------------------------- networks --


@pytest.mark.parametrize(
    ("cidr", "expected"),
    [
        ("10.0.0.0/8", "::ffff:10.0.0.0/104"),
        ("10.1.2.3", "::ffff:10.1.2.3/128"),
        ("0.0.0.0/0", "::ffff:0.0.0.0/96"),
        ("'::ffff:10.0.0.0/104'", "::ffff:10.0.0.0/104"),
        ("'fd00::/64'", "fd00::/64"),
        ("'::1'", "::1/128"),
    ],
)
def test_networks_are_ipv6_with_ipv4_mapped(cidr: str, expected: str) -> None:
    (network,) = egress(f"{{cidr: {cidr}}}")
    assert network == net(expected)


def test_to_mapped_prefix_length() -> None:
    mapped = to_mapped(ipaddress.IPv4Network("192.168.0.0/16"))
    assert mapped.prefixlen == 96 + 16
    assert mapped.network_address.packed == bytes(10) + b"\xff\xff" + bytes([192, 168, 0, 0])


def test_rules_of_one_network_are_grouped() -> None:
    entries = egress(
        "{cidr: 10.0.0.0/8, ports: [443], protocol: tcp}",
        "{cidr: '::ffff:10.0.0.0/104', ports: [53], protocol: udp}",
        "{cidr: 10.0.0.0/8, ports: [80], protocol: tcp}",
    )
    assert entries == {
        net("::ffff:10.0.0.0/104"): (rule(53, 53, UDP), rule(80, 80, TCP), rule(443, 443, TCP))
    }


def test_ports_and_protocols_of_a_rule() -> None:
    entries = egress(
        "{cidr: 10.0.0.1, ports: [443, '8000-8100'], protocol: tcp}",
        "{cidr: 10.0.0.2, ports: [53], protocol: any}",
        "{cidr: 10.0.0.3}",
        "{cidr: 10.0.0.4, protocol: udp}",
    )
    assert list(entries.values()) == [
        (rule(443, 443, TCP), rule(8000, 8100, TCP)),
        (rule(53, 53, ANY),),  # with ports, "any" means TCP and UDP
        (ALL,),  # without ports, "any" allows other protocols (ICMP echo) too
        (rule(0, 65535, UDP),),
    ]


# ---------------------------------------------------------- ancestor folding --


def test_entry_inherits_ranges_of_containing_networks() -> None:
    entries = egress(
        "{cidr: 10.0.0.0/8, ports: [443], protocol: tcp}",
        "{cidr: 10.1.0.0/16, ports: [53], protocol: udp}",
        "{cidr: 10.1.2.0/24, ports: [22], protocol: tcp}",
        "{cidr: 10.2.0.0/16, ports: [80], protocol: tcp}",
    )
    assert entries == {
        net("::ffff:10.0.0.0/104"): (rule(443, 443, TCP),),
        net("::ffff:10.1.0.0/112"): (rule(53, 53, UDP), rule(443, 443, TCP)),
        net("::ffff:10.1.2.0/120"): (rule(22, 22, TCP), rule(53, 53, UDP), rule(443, 443, TCP)),
        net("::ffff:10.2.0.0/112"): (rule(80, 80, TCP), rule(443, 443, TCP)),  # not 10.1's
    }


@pytest.mark.parametrize(
    ("outer", "inner", "inherits"),
    [
        ("10.0.0.0/8", "10.255.255.255", True),  # last address inside
        ("10.0.0.0/8", "10.0.0.0", True),  # first address inside
        ("10.0.0.0/8", "11.0.0.0", False),  # first address after
        ("10.0.0.0/8", "9.255.255.255", False),  # last address before
        ("10.0.0.0/9", "10.128.0.0/16", False),  # the other half
        ("10.0.0.0/9", "10.127.0.0/16", True),
        ("'fd00::/16'", "'fd00:ffff::/32'", True),
        ("'fd00::/16'", "'fd01::/32'", False),
    ],
)
def test_folding_at_the_edges(outer: str, inner: str, inherits: bool) -> None:
    entries = egress(
        f"{{cidr: {outer}, ports: [443], protocol: tcp}}",
        f"{{cidr: {inner}, ports: [22], protocol: tcp}}",
    )
    inner_net = ipaddress.ip_network(inner.strip("'"))
    inner_ranges = entries[str(to_mapped(inner_net))]
    assert (rule(443, 443, TCP) in inner_ranges) is inherits
    outer_net = ipaddress.ip_network(outer.strip("'"))
    assert entries[str(to_mapped(outer_net))] == (rule(443, 443, TCP),)  # never the other way


def test_ipv6_rules_do_not_open_ipv4() -> None:
    entries = egress(
        "{cidr: '::/0', ports: [443], protocol: tcp}",
        "{cidr: 10.0.0.0/8, ports: [53], protocol: udp}",
    )
    assert entries == {
        net("::/0"): (rule(443, 443, TCP),),
        net("::ffff:0:0/96"): (),  # barrier: IPv4 not covered by an IPv4 rule is denied
        net("::ffff:10.0.0.0/104"): (rule(53, 53, UDP),),  # no ranges from ::/0
    }


def test_ipv4_catch_all_is_its_own_barrier() -> None:
    entries = egress(
        "{cidr: '::/0', ports: [443], protocol: tcp}",
        "{cidr: 0.0.0.0/0, ports: [80], protocol: tcp}",
    )
    assert entries == {
        net("::/0"): (rule(443, 443, TCP),),
        net("::ffff:0:0/96"): (rule(80, 80, TCP),),
    }


def test_no_barrier_without_a_covering_ipv6_rule() -> None:
    entries = egress("{cidr: 'fd00::/8'}", "{cidr: 10.0.0.0/8}")
    assert set(entries) == {net("fd00::/8"), net("::ffff:10.0.0.0/104")}


# ------------------------------------------------------------- range merging --


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [
        pytest.param([], [], id="nothing"),
        pytest.param([(1, 5, TCP), (3, 9, TCP)], [(1, 9, TCP)], id="overlapping"),
        pytest.param([(1, 5, TCP), (6, 9, TCP)], [(1, 9, TCP)], id="adjacent"),
        pytest.param([(1, 5, TCP), (7, 9, TCP)], [(1, 5, TCP), (7, 9, TCP)], id="gap"),
        pytest.param([(1, 5, TCP), (6, 9, UDP)], [(1, 5, TCP), (6, 9, UDP)], id="other-proto"),
        pytest.param([(5, 5, TCP), (5, 5, UDP)], [(5, 5, ANY)], id="same-span-joins-protocols"),
        pytest.param([(1, 100, ANY), (50, 60, TCP)], [(1, 100, ANY)], id="contained"),
        pytest.param(
            [(443, 443, TCP), (0, 65535, EVERYTHING)],
            [(0, 65535, EVERYTHING)],
            id="all-ports-absorbs",
        ),
        pytest.param(
            [(9, 9, TCP), (1, 1, TCP), (5, 5, UDP)],
            [(1, 1, TCP), (5, 5, UDP), (9, 9, TCP)],
            id="sorted",
        ),
        pytest.param(
            [(1, 100, ANY), (101, 200, TCP)],
            [(1, 100, UDP), (1, 200, TCP)],
            id="per-protocol-union",
        ),
        pytest.param([(65535, 65535, TCP), (0, 65534, TCP)], [(0, 65535, TCP)], id="top-edge"),
    ],
)
def test_merge_ranges(
    ranges: list[tuple[int, int, Proto]], expected: list[tuple[int, int, Proto]]
) -> None:
    assert merge_ranges(rule(*r) for r in ranges) == tuple(rule(*r) for r in expected)


def test_merging_never_changes_what_is_allowed() -> None:
    inputs = [rule(1, 100, ANY), rule(90, 120, TCP), rule(121, 130, TCP), rule(50, 50, UDP)]
    merged = merge_ranges(inputs)

    def allowed(ranges: Any, port: int, proto: Proto) -> bool:
        return any(r.lo <= port <= r.hi and r.protocols & proto for r in ranges)

    for port in range(0, 140):
        for proto in (TCP, UDP, OTHER):
            assert allowed(merged, port, proto) == allowed(inputs, port, proto)


def test_merged_ranges_are_stored_in_entries() -> None:
    entries = egress("{cidr: 10.0.0.0/8, ports: ['1-10', '5-20', 21, 30], protocol: tcp}")
    assert list(entries.values()) == [(rule(1, 21, TCP), rule(30, 30, TCP))]


# ------------------------------------------------------------ the range limit --


def ports(count: int, start: int = 1) -> str:
    return "[" + ", ".join(str(start + 2 * i) for i in range(count)) + "]"


def test_exactly_max_ranges_is_fine() -> None:
    (ranges,) = egress(f"{{cidr: 10.0.0.0/8, ports: {ports(MAX_PORT_RANGES)}}}").values()
    assert len(ranges) == MAX_PORT_RANGES


def test_too_many_ranges_is_a_located_error() -> None:
    spec = f"""\
    egress:
      allow:
        - {{cidr: 10.0.0.0/8, ports: [443]}}
        - cidr: 10.1.0.0/16
          ports: {ports(MAX_PORT_RANGES + 1)}
          protocol: udp
    """
    with pytest.raises(PolicyError) as info:
        compiled(spec)
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.path) == ("p.yaml", 8, "spec.egress.allow[1]")
    assert "10.1.0.0/16 needs 18 port ranges" in problem.message
    assert f"at most {MAX_PORT_RANGES}" in problem.message
    assert "inherited from the enclosing 10.0.0.0/8" in problem.message
    assert "merge neighbouring ports into ranges" in problem.message


def test_too_many_ranges_through_inheritance_blames_the_inner_rule() -> None:
    spec = f"""\
    egress:
      allow:
        - {{cidr: 10.0.0.0/8, ports: {ports(10)}, protocol: tcp}}
        - {{cidr: 10.1.0.0/16, ports: {ports(7, start=1001)}, protocol: tcp}}
    """
    with pytest.raises(PolicyError) as info:
        compiled(spec)
    (problem,) = info.value.problems
    assert (problem.line, problem.path) == (8, "spec.egress.allow[1]")


def test_too_many_ranges_without_source_still_reported() -> None:
    data = {
        "apiVersion": "nodeguard.io/v1alpha1",
        "kind": "AgentPolicy",
        "metadata": {"name": "code"},
        "spec": {"egress": {"allow": [{"cidr": "::1", "ports": list(range(1, 40, 2))}]}},
    }
    with pytest.raises(PolicyError) as info:
        compile_policy(AgentPolicy.model_validate(data))
    assert info.value.problems[0].render().startswith("<policy code>:0: spec.egress.allow[0]:")


# ---------------------------------------------------------------------- exec --


def exec_entries(*patterns: str) -> list[tuple[bytes, ExecKind]]:
    spec = "exec:\n  allow:\n" + "".join(f"    - '{p}'\n" for p in patterns)
    entries = compiled(spec).exec
    assert entries is not None
    return [(e.prefix, e.kind) for e in entries]


def test_exec_kinds_and_prefixes() -> None:
    assert exec_entries("/usr/bin/python3", "/opt/agent/bin/*", "/usr/lib/**", "/usr/bin/py*") == [
        (b"/opt/agent/bin/", ExecKind.SEGMENT),
        (b"/usr/bin/py", ExecKind.SEGMENT),
        (b"/usr/bin/python3\0", ExecKind.EXACT),
        (b"/usr/lib/", ExecKind.SUBTREE),
    ]


def test_exec_entries_are_the_compiled_type() -> None:
    entries = compiled("exec: {allow: [/bin/sh]}\n").exec
    assert entries == (ExecEntry(b"/bin/sh\0", ExecKind.EXACT),)


def test_non_ascii_paths_are_utf8() -> None:
    assert exec_entries("/opt/ünï/tool") == [("/opt/ünï/tool\0".encode(), ExecKind.EXACT)]


@pytest.mark.parametrize(
    ("patterns", "kept"),
    [
        pytest.param(["/opt/**", "/opt/agent/bin/*"], ["/opt/**"], id="segment-under-subtree"),
        pytest.param(["/opt/**", "/opt/agent/x"], ["/opt/**"], id="exact-under-subtree"),
        pytest.param(["/opt/**", "/opt/agent/**"], ["/opt/**"], id="subtree-under-subtree"),
        pytest.param(["/opt/*", "/opt/**"], ["/opt/**"], id="same-prefix-segment"),
        pytest.param(["/opt**", "/opt-x/bin/*"], ["/opt**"], id="string-prefix"),
        pytest.param(
            ["/opt/agent/**", "/opt/agent"],
            ["/opt/agent", "/opt/agent/**"],
            id="directory-itself-is-not-below",
        ),
        pytest.param(
            ["/opt/*", "/opt/agent/**"],
            ["/opt/*", "/opt/agent/**"],
            id="subtree-under-segment-kept",
        ),
        pytest.param(["/opt/a/**", "/opt/b/*"], ["/opt/a/**", "/opt/b/*"], id="siblings"),
        pytest.param(["/usr/bin/x", "/usr/bin/x"], ["/usr/bin/x"], id="duplicates"),
    ],
)
def test_exec_redundancy(patterns: list[str], kept: list[str]) -> None:
    spec = "exec:\n  allow:\n" + "".join(f"    - '{p}'\n" for p in kept)
    expected = compiled(spec).exec
    assert exec_entries(*patterns) == [(e.prefix, e.kind) for e in expected or ()]
    assert len(exec_entries(*patterns)) == len(kept)


def test_exec_order_is_deterministic() -> None:
    patterns = ["/b", "/a/**", "/c/*", "/a", "/b*"]
    assert exec_entries(*patterns) == exec_entries(*reversed(patterns))


# ------------------------------------------------------------- sections, flags --


def test_absent_sections_are_unrestricted() -> None:
    policy = compiled("mode: audit\n")
    assert policy.egress is None and policy.exec is None
    assert policy.flags() == PolicyFlag.AUDIT
    assert policy.mode == "audit"


def test_empty_allow_lists_deny_everything() -> None:
    policy = compiled("egress: {allow: []}\nexec: {allow: []}\n")
    assert policy.egress == () and policy.exec == ()
    assert policy.flags() == PolicyFlag.EGRESS | PolicyFlag.EXEC


def test_entries_are_the_compiled_types() -> None:
    entries = compiled("egress: {allow: [{cidr: 10.0.0.0/8}]}\n").egress
    assert entries == (EgressEntry(ipaddress.IPv6Network("::ffff:10.0.0.0/104"), (ALL,)),)


# ---------------------------------------------------------- version and uid --

BASE = """\
mode: enforce
selector:
  namespaces: [b, a]
  matchExpressions:
    - {key: k, operator: In, values: [y, x]}
    - {key: j, operator: Exists}
egress:
  allow:
    - {cidr: 10.0.0.0/8, ports: [443, '8000-8100'], protocol: tcp}
    - {cidr: 'fd00::/64'}
exec:
  allow: [/usr/bin/python3, '/opt/agent/**']
"""

SAME_MEANING = """\
selector:
  matchExpressions:
    - {key: j, operator: Exists}
    - {key: k, operator: In, values: [x, y, x]}
  namespaces: [a, b]
exec:
  allow: ['/opt/agent/**', /usr/bin/python3, /usr/bin/python3]
egress:
  allow:
    - {cidr: 'fd00::/64', protocol: any}
    - {cidr: '::ffff:10.0.0.0/104', ports: ['8000-8100', '443', 443], protocol: tcp}
"""


def test_version_is_short_hex() -> None:
    version = compiled(BASE).version
    assert len(version) == 12
    int(version, 16)


def test_version_ignores_order_duplicates_and_spelling() -> None:
    assert compiled(SAME_MEANING).version == compiled(BASE).version


def test_version_ignores_the_name() -> None:
    assert compile_policy(load(BASE, name="other")).version == compiled(BASE).version


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("ports: [443, '8000-8100']", "ports: [443, '8000-8101']"),
        ("protocol: tcp", "protocol: udp"),
        ("10.0.0.0/8", "10.0.0.0/9"),
        ("mode: enforce", "mode: audit"),
        ("/usr/bin/python3", "/usr/bin/python3*"),
        ("namespaces: [b, a]", "namespaces: [b]"),
        ("    - {cidr: 'fd00::/64'}\n", ""),
    ],
)
def test_version_changes_with_the_rules(old: str, new: str) -> None:
    assert old in BASE
    assert compiled(BASE.replace(old, new)).version != compiled(BASE).version


def test_uid_is_uuid5_of_the_name() -> None:
    policy = compiled(BASE)
    assert policy.uid == str(uuid.uuid5(UID_NAMESPACE, "p"))
    assert compile_policy(load("mode: audit\n")).uid == policy.uid
    assert compile_policy(load(BASE, name="q")).uid != policy.uid


# ------------------------------------------------------------- many policies --


def test_compile_policies_collects_every_problem() -> None:
    too_many = f"egress: {{allow: [{{cidr: 10.0.0.0/8, ports: {ports(17)}}}]}}\n"
    policies = [load(too_many, "a"), load("{}\n", "b"), load(too_many, "c"), load("{}\n", "b")]
    with pytest.raises(PolicyError) as info:
        compile_policies(policies)
    messages = sorted(p.message.split(" ")[0] for p in info.value.problems)
    assert messages == ["10.0.0.0/8", "10.0.0.0/8", "duplicate"]


def test_compile_policies_keeps_order() -> None:
    result = compile_policies([load("{}\n", "b"), load("{}\n", "a")])
    assert [p.name for p in result] == ["b", "a"]
