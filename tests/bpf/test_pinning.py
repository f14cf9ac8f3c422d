"""Restart safety: pinned maps, ring buffer and exec link outlive a SIGKILLed agent, and a
new agent adopts them without attaching a second copy anywhere."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeguard.bpf import syscalls
from nodeguard.bpf.guard import (
    ATTACH_INET4_CONNECT,
    Guard,
    detach_ours,
    our_programs,
    stale_pin_sets,
)
from nodeguard.events.decode import DecodeStats, decode
from nodeguard.identity.cgroupfs import remove_cgroup
from tests.bpf.conftest import TEST_PARENT, policy_from_yaml
from tests.netlab import SYSTEM_PYTHON, NetLab, probe_cmd, probe_results, run_in_cgroup

pytestmark = pytest.mark.bpf

HOLDER = Path(__file__).with_name("pinned_holder.py")


@pytest.fixture
def pin_root() -> Iterator[Path]:
    root = Path("/sys/fs/bpf") / f"nodeguard-test-{secrets.token_hex(3)}"
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cgroup(cgroup_mount: Path) -> Iterator[Path]:
    path = cgroup_mount / TEST_PARENT / f"pin-{secrets.token_hex(3)}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        fd = os.open(path, os.O_RDONLY)
        try:
            detach_ours(fd)
        finally:
            os.close(fd)
        remove_cgroup(path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetLab]:
    lab = NetLab(workdir=tmp_path_factory.mktemp("netlab")).start()
    try:
        lab.add_host("allowed", [443], [])
        lab.add_host("forbidden", [443], [])
        yield lab
    finally:
        lab.close()


def ours_attached(cgroup: Path) -> int:
    fd = os.open(cgroup, os.O_RDONLY)
    try:
        return len(our_programs(fd, ATTACH_INET4_CONNECT))
    finally:
        os.close(fd)


def test_enforcement_survives_sigkill_and_is_adopted(
    pin_root: Path, cgroup: Path, lab: NetLab, tmp_path: Path
) -> None:
    a, f = lab.hosts["allowed"], lab.hosts["forbidden"]
    policy_yaml = (
        "apiVersion: nodeguard.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: pinned}\n"
        f"spec:\n  egress:\n    allow: [{{cidr: {a.ip4}/32}}]\n"
        f"  exec:\n    allow: [{SYSTEM_PYTHON}]\n"
    )
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(policy_yaml)
    holder = subprocess.Popen(
        [sys.executable, str(HOLDER), str(pin_root), str(cgroup), str(policy_file)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)

    # The agent is dead: egress and exec are still enforced for the cgroup.
    r = probe_results(
        run_in_cgroup(cgroup, probe_cmd(lab, "tcp", a.ip4, "443", "tcp", f.ip4, "443"))
    )
    assert [x["errno"] for x in r] == [0, errno.EPERM]
    marker = tmp_path / "should-not-exist"
    killed = run_in_cgroup(cgroup, ["/usr/bin/touch", str(marker)])
    assert killed.returncode == -signal.SIGKILL and not marker.exists()

    # A new agent adopts: same ring buffer (records from the downtime are there), no
    # second attachment, and the old policy id is not reused.
    with Guard(pin_root=pin_root) as guard:
        assert guard.adopted
        records = []
        stats = DecodeStats()
        guard.on_record(lambda data: records.append(decode(data, stats)))
        guard.poll(100)
        kinds = sorted(rec.hdr.op for rec in records if rec is not None)
        assert kinds == [1, 2], "egress and exec records written while no agent ran"
        assert guard.policy_ids_in_maps() == {1}
        new_id = guard.load_policy(policy_from_yaml(policy_yaml))
        assert new_id == 2
        mount = cgroup.parents[1]
        guard.guard(mount, cgroup, new_id)
        assert ours_attached(cgroup) == 1, "a restarted agent must not attach twice"
        assert guard.gc_policies({new_id}) > 0  # policy 1's rules, left by the dead agent
        r = probe_results(run_in_cgroup(cgroup, probe_cmd(lab, "tcp", f.ip4, "443")))
        assert [x["errno"] for x in r] == [errno.EPERM]
        guard.teardown()
    assert ours_attached(cgroup) == 0
    assert not any(pin_root.iterdir())
    ok = run_in_cgroup(cgroup, ["/usr/bin/touch", str(marker)])
    assert ok.returncode == 0, "after teardown nothing is enforced any more"


def test_other_program_versions_are_reported_as_stale(pin_root: Path) -> None:
    with Guard(pin_root=pin_root) as guard:
        (pin_root / "v0-old").mkdir()
        assert stale_pin_sets(pin_root, guard.version) == [pin_root / "v0-old"]
        guard.teardown()


def test_program_upgrade_replaces_make_before_break(
    pin_root: Path, cgroup: Path, lab: NetLab, tmp_path: Path
) -> None:
    """A new program version (here: other limits, so other code and another pin set)
    replaces the old programs on a guarded cgroup; the old pin set can then be removed."""
    from nodeguard.bpf.guard import GuardLimits, remove_pin_set  # noqa: PLC0415

    f = lab.hosts["forbidden"]
    compiled = policy_from_yaml(
        "apiVersion: nodeguard.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: up}\n"
        f"spec:\n  egress: {{allow: []}}\n  exec:\n    allow: [{SYSTEM_PYTHON}]\n"
    )
    mount = cgroup.parents[1]
    old = Guard(pin_root=pin_root)
    old.guard(mount, cgroup, old.load_policy(compiled))
    old_version = old.version
    old.close()  # the old agent is gone; its programs and pins stay

    new = Guard(GuardLimits(agg_window_ms=999), pin_root=pin_root)
    try:
        assert new.version != old_version
        new.guard(mount, cgroup, new.load_policy(compiled))
        fd = os.open(cgroup, os.O_RDONLY)
        try:
            present = syscalls.attached_programs(fd, ATTACH_INET4_CONNECT)
        finally:
            os.close(fd)
        mine = syscalls.prog_tag(new._fns[ATTACH_INET4_CONNECT].fd)
        assert [(n, t) for _, n, t in present] == [("ng_connect4", mine)]
        (stale,) = stale_pin_sets(pin_root, new.version)
        remove_pin_set(stale)  # drops the old exec link
        r = probe_results(run_in_cgroup(cgroup, probe_cmd(lab, "tcp", f.ip4, "443")))
        assert [x["errno"] for x in r] == [errno.EPERM]
        marker = tmp_path / "x"
        assert run_in_cgroup(cgroup, ["/usr/bin/touch", str(marker)]).returncode == -9
        assert not marker.exists()
    finally:
        new.teardown()
