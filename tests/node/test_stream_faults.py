"""The violation stream under faults, end to end: a real agent, a real collector, a real pod.

A generator (bench/c/violation_gen.c, compiled by the test) in a guarded pod's cgroup makes
paced denied sendto()s, each to its own destination, so each is its own kernel record. The
agent (a subprocess, as the DaemonSet runs it) spools every violation and publishes it over
mutual TLS to a collector subprocess that stores it in SQLite. After each fault the test
checks the accounting (nodeguard.lab.stream_lab.account): every attempt the generator saw
denied is stored exactly once (sum(count) over the pod's rows, no uid and no (node, epoch,
seq) twice) or counted as lost (spool drops / rejected in `nodeguard status`, kernel and
user-space loss records in the store), with nothing unexplained.

Faults: the collector SIGKILLed mid-stream and restarted on its port; the agent-collector
link cut for 30 s (the two in network namespaces of the test's own, joined by one veth);
the agent SIGKILLed while its spool holds everything (collector down), then restarted.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nodeguard.agent.status import StatusSnapshot
from nodeguard.lab.containerd import ContainerdRuntime, KubeletSim
from nodeguard.lab.stream_lab import (
    StreamRig,
    VethLink,
    build_violation_gen,
    spooled_attempts,
    stored_pod,
    stored_telemetry_epoch,
)

pytestmark = pytest.mark.node

RigFactory = Callable[..., StreamRig]


@pytest.fixture(scope="module")
def violation_gen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_violation_gen(tmp_path_factory.mktemp("violation-gen"))


@pytest.fixture
def make_rig(
    runtime: ContainerdRuntime, kubelet: KubeletSim, tmp_path: Path, violation_gen: Path
) -> Iterator[RigFactory]:
    """Builds StreamRigs; each is closed at the end (generator, cgroup, pod, agent,
    collector, network namespaces), also when the test fails."""
    rigs: list[StreamRig] = []

    def make(pod_name: str, *, link: VethLink | None = None) -> StreamRig:
        rig = StreamRig(runtime, kubelet, tmp_path / pod_name, violation_gen, link=link)
        rigs.append(rig)
        return rig.setup(pod_name)

    try:
        yield make
    finally:
        for rig in reversed(rigs):
            rig.close()


def poll(what: str, check: Callable[[], object], timeout: float, interval: float = 0.1) -> object:
    """Call ``check`` until it returns something truthy (returned); AssertionError naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)


def wait_stream_flowing(rig: StreamRig, timeout: float = 30) -> int:
    """Wait until the collector stored some of the pod's records (the stream runs)."""
    assert rig.pod is not None
    db, pod = rig.db, rig.pod.name
    records = poll(f"records of {pod} in the store", lambda: stored_pod(db, pod).records, timeout)
    assert isinstance(records, int)
    return records


def test_collector_sigkilled_mid_stream_loses_and_duplicates_nothing(
    make_rig: RigFactory,
) -> None:
    """2,000 violations/s for 8 s; the collector is SIGKILLed at ~2 s (batches committed
    but not acknowledged are resent and deduplicated) and started again on its port at
    ~5 s (the agent spools meanwhile and reconnects)."""
    rig = make_rig("stream-kill")
    assert rig.collector is not None and rig.agent is not None
    gen = rig.generate(rate=2000, seconds=8)
    wait_stream_flowing(rig)
    assert gen.started_at is not None
    time.sleep(max(0.0, gen.started_at + 2 - time.monotonic()))
    stored_at_kill = stored_pod(rig.db, "stream-kill").attempts
    rig.collector.kill()
    time.sleep(max(0.0, gen.started_at + 5 - time.monotonic()))
    rig.collector.start()  # the same port: the agent's address stays valid
    run = gen.wait()
    assert run.denied == run.attempts > 0, run

    acc, snap = rig.wait_accounted(run.denied)
    assert acc.balanced, f"{acc.describe()}\n{rig.logs()}"
    assert 0 < stored_at_kill < run.denied  # the kill did hit the stream in the middle
    assert snap.collector.state == "connected"
    assert snap.collector.reconnects >= 1  # the agent noticed the crash and came back
    assert len(acc.stored.by_epoch) == 1  # one agent, one sequence space


def test_link_cut_for_30s_spools_then_drains_exactly_once(make_rig: RigFactory) -> None:
    """The agent and the collector in two network namespaces joined by one veth (the
    agent's only way to the collector); 1,000 violations/s for 36 s. The collector's end
    goes down for 30 s (no RST, no ICMP: packets just vanish): the agent must notice
    (gRPC keepalive), report the link down and spool; once the link is back, the spool
    drains and every attempt is stored exactly once."""
    link = VethLink()
    rig = make_rig("stream-cut", link=link)
    assert rig.agent is not None
    agent = rig.agent
    gen = rig.generate(rate=1000, seconds=36)
    wait_stream_flowing(rig)
    before = agent.status()
    assert before.collector.state == "connected", before.collector

    cut_at = time.time()
    link.cut()
    t_cut = time.monotonic()
    seen: list[StatusSnapshot] = []
    while time.monotonic() - t_cut < 30:
        seen.append(agent.status())
        time.sleep(0.1)
    link.restore()

    def noticed(s: StatusSnapshot) -> bool:
        c = s.collector
        return c.state != "connected" and (c.last_error_at or 0) >= cut_at

    down = [s for s in seen if noticed(s)]
    states = sorted({s.collector.state for s in seen})
    assert down, (
        f"the agent never reported the link down during the 30 s cut (states seen: "
        f"{states}; last: {seen[-1].collector})\n{rig.logs()}"
    )
    assert any(s.collector.state == "disconnected" for s in down), states
    spool = [s.collector.spool_records for s in down]
    assert max(spool) > spool[0], f"the spool did not grow while disconnected: {spool}"

    run = gen.wait()
    assert run.denied == run.attempts > 0, run
    acc, snap = rig.wait_accounted(run.denied)
    assert acc.balanced, f"{acc.describe()}\n{rig.logs()}"
    assert snap.collector.state == "connected"
    first_down = min(s.generated_at for s in down)
    print(
        f"link cut: down noticed {first_down - cut_at:.1f}s after the cut; spool peaked at "
        f"{max(spool)} records; {acc.describe()}"
    )


def test_agent_sigkilled_with_spooled_events_sends_them_once_under_its_epoch(
    make_rig: RigFactory,
) -> None:
    """The collector is down, the agent's spool holds every violation, the agent is
    SIGKILLed (as soon as the spool has them: a crash picks no good moment) and started
    again on the same state directory: the old epoch's records arrive exactly once, and
    nothing is reported a second time; what the new agent sees comes under a new epoch."""
    rig = make_rig("stream-restart")
    assert rig.collector is not None and rig.agent is not None and rig.pod is not None
    agent, collector, pod = rig.agent, rig.collector, rig.pod
    collector.stop()
    agent.wait_for(lambda s: s.collector.state != "connected", timeout=30)
    run1 = rig.generate(rate=2500, seconds=2).wait()
    assert run1.denied == run1.attempts > 0, run1

    def spooled_all() -> StatusSnapshot | None:
        snap = agent.status()
        lost = snap.counters.lost_in_kernel
        seen = {p.uid: p.violations for p in snap.pods}.get(pod.uid, 0)
        if seen + lost >= run1.denied and spooled_attempts(rig.spool_db) == seen:
            return snap
        return None

    held = poll("every violation in the agent's spool", spooled_all, timeout=30)
    assert isinstance(held, StatusSnapshot)
    old_epoch = held.collector.epoch
    assert old_epoch is not None
    assert stored_pod(rig.db, pod.name).records == 0  # nothing got through before the kill
    agent.kill(signal.SIGKILL)

    collector.start()
    agent.start()
    snap = agent.wait_for(
        lambda s: any(p.uid == pod.uid and p.policy is not None for p in s.pods), timeout=30
    )
    new_epoch = snap.collector.epoch
    assert new_epoch is not None and new_epoch > old_epoch, (old_epoch, new_epoch)
    # The new agent's first flush (the one that reads the kernel's pinned aggregates)
    # has reached the store once its first telemetry record has.
    poll(
        "the restarted agent's first telemetry in the store",
        lambda: stored_telemetry_epoch(rig.db) == new_epoch,
        timeout=60,
    )
    acc, _ = rig.wait_accounted(run1.denied)
    lost = acc.counted_lost
    assert acc.stored.by_epoch.get(old_epoch) == run1.denied - lost, acc.describe()
    assert acc.balanced, (
        f"the restarted agent reported again attempts the killed agent had spooled: "
        f"{acc.describe()}\n{rig.logs()}"
    )
    assert dict(acc.stored.by_epoch) == {old_epoch: acc.stored.attempts}

    run2 = rig.generate(rate=500, seconds=1).wait()
    assert run2.denied == run2.attempts > 0, run2
    acc2, _ = rig.wait_accounted(run1.denied + run2.denied)
    # run2's generator starts again at run1's first destinations, so "same destination
    # twice" is expected here; every other part of the balance must hold
    s2 = acc2.stored
    assert acc2.unexplained == 0, f"{acc2.describe()}\n{rig.logs()}"
    assert s2.duplicate_uids == 0 and s2.duplicate_keys == 0, acc2.describe()
    assert set(acc2.stored.by_epoch) == {old_epoch, new_epoch}
    assert acc2.stored.by_epoch[old_epoch] == acc.stored.attempts  # nothing sent twice
    assert acc2.stored.by_epoch[new_epoch] == acc2.stored.attempts - acc.stored.attempts
