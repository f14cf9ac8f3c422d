"""Fixtures for kernel tests: a loaded Guard, test hosts in network namespaces, and guarded
cgroups that this test suite creates (and always removes, also when a test fails)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nodeguard.bpf.guard import Guard
from nodeguard.events.aggregate import CountTracker
from nodeguard.events.build import ViolationBuilder
from nodeguard.events.clock import MonotonicClock
from nodeguard.events.decode import DecodeStats, decode
from nodeguard.events.model import PolicyRef, Violation
from nodeguard.identity.cgroupfs import find_cgroup2_mount, remove_cgroup
from nodeguard.policy import compile_policy, load_policy_text
from nodeguard.policy.compiled import CompiledPolicy
from tests.netlab import NetLab

TEST_PARENT = "nodeguard-test"

# Ports every test host listens on (TCP and UDP).
TCP_PORTS = [80, 443, 7999, 8000, 8050, 8100, 8101, 53]
UDP_PORTS = [53, 5353, 9999]


@pytest.fixture(scope="session")
def cgroup_mount() -> Iterator[Path]:
    mount = find_cgroup2_mount()
    assert mount is not None, "cgroup v2 is not mounted"
    try:
        yield mount
    finally:  # the shared parent of every test cgroup goes too, once empty
        parent = mount / TEST_PARENT
        if parent.exists() and not any(p.is_dir() for p in parent.iterdir()):
            parent.rmdir()


class Harness:
    """One loaded Guard per test module; ring buffer records go to every subscriber."""

    def __init__(self) -> None:
        self.guard = Guard()
        self.subscribers: list[Callable[[bytes], None]] = []
        self.guard.on_record(self._dispatch)

    def _dispatch(self, data: bytes) -> None:
        for fn in self.subscribers:
            fn(data)


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.guard.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetLab]:
    lab = NetLab(workdir=tmp_path_factory.mktemp("netlab")).start()
    try:
        lab.add_host("allowed", TCP_PORTS, UDP_PORTS)
        lab.add_host("forbidden", TCP_PORTS, UDP_PORTS)
        yield lab
    finally:
        lab.close()


def policy_from_yaml(text: str) -> CompiledPolicy:
    (policy,) = load_policy_text(text, "<test>")
    return compile_policy(policy)


class Guarded:
    """A cgroup this test created, under a policy, with the records it produced."""

    def __init__(self, guard: Guard, mount: Path, policy: CompiledPolicy) -> None:
        self.guard = guard
        self.path = mount / TEST_PARENT / f"t-{secrets.token_hex(4)}"
        self.path.mkdir(parents=True)
        self.policy_id = guard.load_policy(policy)
        self.cgid = guard.guard(mount, self.path, self.policy_id)
        ref = PolicyRef(policy.name, policy.uid, policy.version, policy.mode)
        self.builder = ViolationBuilder(
            policies={self.policy_id: ref},
            clock=MonotonicClock(),
            tracker=CountTracker(),
            node="test",
            enrich=False,
        )
        self.stats = DecodeStats()
        self.violations: list[Violation] = []

    def on_record(self, data: bytes) -> None:
        raw = decode(data, self.stats)
        if raw is not None and raw.hdr.policy_id == self.policy_id:
            v = self.builder.from_record(raw)
            if v is not None:
                self.violations.append(v)

    def collect(self) -> list[Violation]:
        """Drain the ring buffer and flush this cgroup's aggregates into violations."""
        self.guard.poll(50)
        self.guard.drain()
        for key, value in self.guard.aggregates():
            if key.policy_id == self.policy_id:
                v = self.builder.from_residual(key, value)
                if v is not None:
                    self.violations.append(v)
        return self.violations

    def close(self) -> None:
        self.guard.unguard(self.cgid)
        self.guard.unload_policy(self.policy_id)
        remove_cgroup(self.path)


@pytest.fixture
def guarded(harness: Harness, cgroup_mount: Path) -> Iterator[Callable[[str], Guarded]]:
    """Factory: guarded(policy_yaml) -> a fresh cgroup under that policy."""
    made: list[Guarded] = []

    def make(text: str) -> Guarded:
        g = Guarded(harness.guard, cgroup_mount, policy_from_yaml(text))
        made.append(g)
        harness.subscribers.append(g.on_record)
        return g

    try:
        yield make
    finally:
        for g in made:
            harness.subscribers.remove(g.on_record)
            g.close()
        parent = cgroup_mount / TEST_PARENT
        if parent.exists() and not any(p.is_dir() for p in parent.iterdir()):
            parent.rmdir()
