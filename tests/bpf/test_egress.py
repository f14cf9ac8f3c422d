"""Egress enforcement on a real kernel: cgroup connect4/6 and sendmsg4/6.

Every destination is a test host in a network namespace this suite created (tests/netlab.py);
the "forbidden" one too. Each test guards a fresh cgroup and runs tests/probe.py in it.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from tests.bpf.conftest import Guarded
from tests.netlab import NetLab, probe_cmd, probe_results, run_in_cgroup

pytestmark = pytest.mark.bpf

MakeGuarded = Callable[[str], Guarded]


def policy(rules: str, mode: str = "enforce") -> str:
    return f"""
apiVersion: nodeguard.io/v1alpha1
kind: AgentPolicy
metadata: {{name: egress-test}}
spec:
  mode: {mode}
  egress:
    allow:
{rules}
"""


def probe(g: Guarded, lab: NetLab, *actions: str) -> list[dict[str, object]]:
    proc = run_in_cgroup(g.path, probe_cmd(lab, *actions))
    assert proc.returncode == 0, proc.stderr
    return probe_results(proc)


def test_tcp_v4_and_v6_allowed_and_forbidden(guarded: MakeGuarded, lab: NetLab) -> None:
    a, f = lab.hosts["allowed"], lab.hosts["forbidden"]
    g = guarded(
        policy(
            f"      - {{cidr: {a.ip4}/32, ports: ['443'], protocol: tcp}}\n"
            f"      - {{cidr: '{a.ip6}', ports: ['443'], protocol: tcp}}"
        )
    )
    before = len(f.received())
    r = probe(
        g, lab, "tcp", a.ip4, "443", "tcp", f.ip4, "443", "tcp", a.ip6, "443", "tcp", f.ip6, "443"
    )
    assert [x["errno"] for x in r] == [0, errno.EPERM, 0, errno.EPERM]
    assert len(f.received()) == before, "the forbidden host must see no connection"
    kinds = {(v.egress.ip, v.egress.port, v.verdict) for v in g.collect() if v.egress}
    assert kinds == {(f.ip4, 443, "blocked"), (f.ip6, 443, "blocked")}


def test_udp_sendto_and_connected_udp(guarded: MakeGuarded, lab: NetLab) -> None:
    a, f = lab.hosts["allowed"], lab.hosts["forbidden"]
    g = guarded(policy(f"      - {{cidr: {a.ip4}/32, ports: [53], protocol: udp}}"))
    before = len(f.received())
    r = probe(
        g,
        lab,
        "udp-sendto",
        a.ip4,
        "53",
        "udp-sendto",
        f.ip4,
        "53",
        "udp-connect",
        a.ip4,
        "53",
        "udp-connect",
        f.ip4,
        "53",
        "udp-sendto",
        f.ip6,
        "53",
    )
    assert [x["errno"] for x in r] == [0, errno.EPERM, 0, errno.EPERM, errno.EPERM]
    assert len(f.received()) == before
    # sendto and connect to the same destination share one aggregate (the hook is not part
    # of the key): 2 attempts on f.ip4:53, 1 on f.ip6:53.
    counts: dict[str, int] = {}
    for v in g.collect():
        assert v.egress is not None
        counts[v.egress.ip] = counts.get(v.egress.ip, 0) + v.count
    assert counts == {f.ip4: 2, f.ip6: 1}


def test_ipv4_mapped_ipv6_is_checked_as_ipv4(guarded: MakeGuarded, lab: NetLab) -> None:
    a, f = lab.hosts["allowed"], lab.hosts["forbidden"]
    g = guarded(policy(f"      - {{cidr: {a.ip4}/32, protocol: any}}"))
    r = probe(
        g,
        lab,
        "tcp",
        f"::ffff:{a.ip4}",
        "80",
        "tcp",
        f"::ffff:{f.ip4}",
        "80",
        "udp-sendto",
        f"::ffff:{f.ip4}",
        "53",
    )
    assert [x["errno"] for x in r] == [0, errno.EPERM, errno.EPERM]
    # TCP: the connect6 hook sees ::ffff:a.b.c.d and checks it as the IPv4 address.
    # UDP: udpv6_sendmsg hands v4-mapped destinations to the IPv4 path, so the sendmsg4
    # hook sees the plain IPv4 address. Both are blocked and reported as that address.
    seen = {(v.egress.ip, v.egress.family, v.egress.hook) for v in g.collect() if v.egress}
    assert seen == {(f.ip4, 6, "connect6"), (f.ip4, 4, "sendmsg4")}


def test_port_range_edges(guarded: MakeGuarded, lab: NetLab) -> None:
    a = lab.hosts["allowed"]
    g = guarded(policy(f"      - {{cidr: {a.ip4}/32, ports: ['8000-8100'], protocol: tcp}}"))
    r = probe(
        g, lab, *[x for p in ("7999", "8000", "8050", "8100", "8101") for x in ("tcp", a.ip4, p)]
    )
    assert [x["errno"] for x in r] == [errno.EPERM, 0, 0, 0, errno.EPERM]


def test_protocol_rules(guarded: MakeGuarded, lab: NetLab) -> None:
    a = lab.hosts["allowed"]
    g = guarded(
        policy(
            f"      - {{cidr: {a.ip4}/32, ports: [53], protocol: udp}}\n"
            f"      - {{cidr: {a.ip4}/32, ports: [443], protocol: tcp}}"
        )
    )
    r = probe(
        g,
        lab,
        "udp-sendto",
        a.ip4,
        "53",
        "tcp",
        a.ip4,
        "53",
        "tcp",
        a.ip4,
        "443",
        "udp-sendto",
        a.ip4,
        "443",
    )
    assert [x["errno"] for x in r] == [0, errno.EPERM, 0, errno.EPERM]


def test_cidr_edges_and_containing_prefixes(guarded: MakeGuarded, lab: NetLab) -> None:
    a, f = lab.hosts["allowed"], lab.hosts["forbidden"]
    # 198.18.1.0/30 holds the allowed host (.2); the /16 allows 443 to both hosts; the /24
    # only port 80: a connect to the allowed host's 443 matches the /30 (longest prefix)
    # and must still be allowed through the /16 rule.
    g = guarded(
        policy(
            "      - {cidr: 198.18.1.0/30, ports: [80], protocol: tcp}\n"
            "      - {cidr: 198.18.0.0/16, ports: [443], protocol: tcp}\n"
            "      - {cidr: 'fd00:6e67:1::/64', ports: [80], protocol: tcp}"
        )
    )
    r = probe(
        g,
        lab,
        "tcp",
        a.ip4,
        "80",
        "tcp",
        a.ip4,
        "443",
        "tcp",
        f.ip4,
        "443",
        "tcp",
        f.ip4,
        "80",
        "tcp",
        a.ip6,
        "80",
        "tcp",
        f.ip6,
        "80",
    )
    assert [x["errno"] for x in r] == [0, 0, 0, errno.EPERM, 0, errno.EPERM]


def test_empty_allow_list_denies_all_and_no_egress_section_allows_all(
    guarded: MakeGuarded, lab: NetLab
) -> None:
    a = lab.hosts["allowed"]
    deny_all = guarded(policy("      []").replace("allow:\n      []", "allow: []"))
    r = probe(deny_all, lab, "tcp", a.ip4, "80", "udp-sendto", a.ip6, "53")
    assert [x["errno"] for x in r] == [errno.EPERM, errno.EPERM]
    open_policy = guarded("""
apiVersion: nodeguard.io/v1alpha1
kind: AgentPolicy
metadata: {name: no-egress-rules}
spec:
  exec: {allow: ["/usr/bin/python3"]}
""")
    r = probe(open_policy, lab, "tcp", a.ip4, "80")
    assert [x["errno"] for x in r] == [0]


def test_audit_mode_lets_through_and_reports(guarded: MakeGuarded, lab: NetLab) -> None:
    a, f = lab.hosts["allowed"], lab.hosts["forbidden"]
    g = guarded(policy(f"      - {{cidr: {a.ip4}/32}}", mode="audit"))
    before = len(f.received())
    r = probe(
        g,
        lab,
        "tcp",
        f.ip4,
        "443",
        "udp-sendto",
        f.ip4,
        "9999",
        "tcp",
        f.ip6,
        "80",
        "tcp",
        a.ip4,
        "80",
    )
    assert [x["errno"] for x in r] == [0, 0, 0, 0]
    assert len(f.received()) >= before + 2  # the TCP accepts (UDP may still be in flight)
    got = {(v.egress.ip, v.egress.port, v.verdict) for v in g.collect() if v.egress}
    assert got == {(f.ip4, 443, "audited"), (f.ip4, 9999, "audited"), (f.ip6, 80, "audited")}


def test_thousand_forbidden_connects_aggregate(guarded: MakeGuarded, lab: NetLab) -> None:
    a, f = lab.hosts["allowed"], lab.hosts["forbidden"]
    g = guarded(policy(f"      - {{cidr: {a.ip4}/32}}"))
    r = probe(g, lab, "repeat", "1000", "tcp", f.ip4, "443")
    assert r == [{"action": "repeat", "sub": "tcp", "n": 1000, "eperm": 1000, "ok": 0}]
    records = [v for v in g.collect() if v.egress and v.egress.port == 443]
    assert sum(v.count for v in records) == 1000
    assert 1 <= len(records) <= 10, f"{len(records)} records for one repeated violation"


def test_sub_cgroup_of_a_guarded_cgroup_stays_guarded(guarded: MakeGuarded, lab: NetLab) -> None:
    a, f = lab.hosts["allowed"], lab.hosts["forbidden"]
    g = guarded(policy(f"      - {{cidr: {a.ip4}/32, ports: ['443'], protocol: tcp}}"))
    r = probe(g, lab, "join-subcgroup", "inner", "tcp", a.ip4, "443", "tcp", f.ip4, "443")
    assert r[0]["action"] == "join-subcgroup"
    assert [x["errno"] for x in r[1:]] == [0, errno.EPERM]
    (v,) = g.collect()
    assert v.egress is not None and v.egress.ip == f.ip4
    assert v.cgroup_id != g.cgid, "the record names the sub-cgroup the process lives in"
