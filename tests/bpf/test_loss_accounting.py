"""No silent loss: when the ring buffer is full or the aggregate table is full, every
attempt is still either in a record's count or counted as lost by the kernel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeguard.bpf.guard import Guard, GuardLimits
from nodeguard.events.aggregate import CountTracker
from nodeguard.events.build import ViolationBuilder
from nodeguard.events.clock import MonotonicClock
from nodeguard.events.decode import DecodeStats, decode
from nodeguard.events.model import PolicyRef, Violation
from nodeguard.identity.cgroupfs import remove_cgroup
from tests.bpf.conftest import TEST_PARENT, policy_from_yaml
from tests.netlab import NetLab, probe_cmd, probe_results, run_in_cgroup

pytestmark = pytest.mark.bpf

ATTEMPTS = 2000


def _run(
    limits: GuardLimits, mount: Path, lab: NetLab, tag: str
) -> tuple[list[Violation], dict[str, int]]:
    f = lab.hosts["forbidden"]
    compiled = policy_from_yaml(
        "apiVersion: nodeguard.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: loss}\n"
        "spec:\n  egress: {allow: []}\n"
    )
    cg = mount / TEST_PARENT / f"loss-{tag}"
    cg.mkdir(parents=True)
    out: list[Violation] = []
    try:
        with Guard(limits) as guard:
            pid = guard.load_policy(compiled)
            ref = PolicyRef(compiled.name, compiled.uid, compiled.version, "enforce")
            builder = ViolationBuilder({pid: ref}, MonotonicClock(), CountTracker(), enrich=False)
            stats = DecodeStats()

            def on(data: bytes) -> None:
                raw = decode(data, stats)
                v = builder.from_record(raw) if raw is not None else None
                if v is not None:
                    out.append(v)

            guard.on_record(on)
            guard.guard(mount, cg, pid)
            # nobody reads the ring buffer while the probe runs
            proc = run_in_cgroup(cg, probe_cmd(lab, "distinct-udp", f.ip4, "20000", str(ATTEMPTS)))
            (res,) = probe_results(proc)
            assert res["eperm"] == ATTEMPTS
            guard.poll(10)
            guard.drain()
            out.extend(builder.flush(guard.aggregates()))
            counters = guard.counters()
    finally:
        remove_cgroup(cg)
    return out, counters


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetLab]:
    lab = NetLab(workdir=tmp_path_factory.mktemp("netlab")).start()
    try:
        lab.add_host("forbidden", [], [])
        yield lab
    finally:
        lab.close()


def test_full_ring_buffer_loses_records_not_attempts(cgroup_mount: Path, lab: NetLab) -> None:
    # one 4 KiB page holds ~46 egress records; 2,000 distinct destinations overflow it
    violations, counters = _run(GuardLimits(ringbuf_pages=1), cgroup_mount, lab, "rb")
    assert counters["ringbuf_full"] > 0, counters
    assert counters["violations"] == ATTEMPTS
    # records were lost, but the aggregates hold every attempt: nothing unaccounted for
    assert sum(v.count for v in violations) == ATTEMPTS
    ports = {v.egress.port for v in violations if v.egress}
    assert len(ports) == ATTEMPTS


def test_full_aggregate_table_sends_unaggregated_records(cgroup_mount: Path, lab: NetLab) -> None:
    violations, counters = _run(GuardLimits(agg_max=64), cgroup_mount, lab, "agg")
    assert counters["agg_table_full"] == ATTEMPTS - 64, counters
    assert counters["ringbuf_full"] == 0
    assert sum(v.count for v in violations) == ATTEMPTS
