"""`nodeguard run` end to end, as a user runs it: real kernel, real command, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeguard.identity.cgroupfs import find_cgroup2_mount
from tests.netlab import PROBE, SYSTEM_PYTHON, NetLab

pytestmark = pytest.mark.bpf

NODEGUARD = [sys.executable, "-m", "nodeguard"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetLab]:
    lab = NetLab(workdir=tmp_path_factory.mktemp("netlab")).start()
    try:
        lab.add_host("allowed", [443], [53])
        lab.add_host("forbidden", [443], [53])
        yield lab
    finally:
        lab.close()


def write_policy(tmp_path: Path, lab: NetLab, mode: str = "enforce") -> Path:
    a = lab.hosts["allowed"]
    p = tmp_path / "policy.yaml"
    p.write_text(f"""\
apiVersion: nodeguard.io/v1alpha1
kind: AgentPolicy
metadata: {{name: cli-agent}}
spec:
  mode: {mode}
  egress:
    allow:
      - {{cidr: {a.ip4}/32, ports: ["443"], protocol: tcp}}
  exec:
    allow: [{SYSTEM_PYTHON}, /usr/bin/sleep, /bin/sh]
""")
    return p


def ng_programs() -> dict[int, str]:
    """id -> name of every nodeguard program loaded on the machine."""
    out = subprocess.run(
        ["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True
    ).stdout
    return {
        int(p["id"]): p.get("name", "")
        for p in json.loads(out or "[]")
        if p.get("name", "").startswith("ng_")
        or any(tp in p.get("name", "") for tp in ("sched_process_e", "task_newtask", "signal_gen"))
    }


_before: dict[int, str] = {}


@pytest.fixture(autouse=True)
def _programs_before() -> None:
    """Programs loaded before the test (another nodeguard on the machine is not ours)."""
    _before.clear()
    _before.update(ng_programs())


def nothing_left_behind() -> None:
    mount = find_cgroup2_mount()
    assert mount is not None
    parent = mount / "nodeguard"
    runs = parent.iterdir() if parent.exists() else iter(())
    left = [p.name for p in runs if p.is_dir() and p.name.startswith("run-")]
    assert left == [], f"cgroups left behind: {left}"
    new = {i: n for i, n in ng_programs().items() if i not in _before}
    assert new == {}, f"BPF programs left loaded: {new}"


def test_run_blocks_reports_and_exits_with_command_status(tmp_path: Path, lab: NetLab) -> None:
    a, f = lab.hosts["allowed"], lab.hosts["forbidden"]
    events = tmp_path / "events.jsonl"
    r = subprocess.run(
        [
            *NODEGUARD,
            "run",
            "--policy",
            str(write_policy(tmp_path, lab)),
            "--events",
            str(events),
            "--",
            SYSTEM_PYTHON,
            str(PROBE),
            "--netns",
            lab.client_netns_path,
            "tcp",
            a.ip4,
            "443",
            "tcp",
            f.ip4,
            "443",
            "exec",
            "/usr/bin/touch",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    results = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [x.get("errno", x.get("status")) for x in results] == [0, 1, -9]
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    by_class = {x["class_uid"]: x for x in lines}
    net, proc = by_class[4001], by_class[1007]
    assert net["dst_endpoint"] == {"ip": f.ip4, "port": 443} or (
        net["dst_endpoint"]["ip"] == f.ip4 and net["dst_endpoint"]["port"] == 443
    )
    assert net["activity_id"] == 5 and net["type_uid"] == 400105
    assert net["action_id"] == 2 and net["disposition_id"] == 2
    assert net["policy"]["name"] == "cli-agent"
    assert proc["process"]["file"]["path"] == "/usr/bin/touch"
    assert proc["type_uid"] == 100701
    assert not (tmp_path / "x").exists()
    assert "2 violating attempts blocked" in r.stderr
    nothing_left_behind()


def test_fail_on_violation_exits_3_and_clean_run_exits_0(tmp_path: Path, lab: NetLab) -> None:
    policy = str(write_policy(tmp_path, lab))
    f = lab.hosts["forbidden"]
    bad = subprocess.run(
        [
            *NODEGUARD,
            "run",
            "--policy",
            policy,
            "--fail-on-violation",
            "--",
            SYSTEM_PYTHON,
            str(PROBE),
            "--netns",
            lab.client_netns_path,
            "tcp",
            f.ip4,
            "443",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 3, bad.stderr
    good = subprocess.run(
        [
            *NODEGUARD,
            "run",
            "--policy",
            policy,
            "--fail-on-violation",
            "--",
            "/bin/sh",
            "-c",
            "exit 7",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert good.returncode == 7, good.stderr
    nothing_left_behind()


def test_audit_mode_override(tmp_path: Path, lab: NetLab) -> None:
    f = lab.hosts["forbidden"]
    events = tmp_path / "e.jsonl"
    r = subprocess.run(
        [
            *NODEGUARD,
            "run",
            "--policy",
            str(write_policy(tmp_path, lab)),
            "--mode",
            "audit",
            "--events",
            str(events),
            "--",
            SYSTEM_PYTHON,
            str(PROBE),
            "--netns",
            lab.client_netns_path,
            "tcp",
            f.ip4,
            "443",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0
    assert json.loads(r.stdout.splitlines()[0])["errno"] == 0
    (line,) = [json.loads(x) for x in events.read_text().splitlines()]
    assert line["action_id"] == 1 and line["disposition_id"] == 17


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_nothing_behind(tmp_path: Path, lab: NetLab, sig: int) -> None:
    proc = subprocess.Popen(
        [
            *NODEGUARD,
            "run",
            "--policy",
            str(write_policy(tmp_path, lab)),
            "--",
            "/bin/sh",
            "-c",
            "/usr/bin/sleep 300 & /usr/bin/sleep 300",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    mount = find_cgroup2_mount()
    assert mount is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the command runs in its cgroup
        runs = list((mount / "nodeguard").glob("run-*")) if (mount / "nodeguard").exists() else []
        if runs and len((runs[0] / "cgroup.procs").read_text().split()) >= 3:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the command never started in its cgroup")
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "Traceback" not in err
    nothing_left_behind()


def test_invalid_policy_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: nodeguard.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: x}\n"
        "spec:\n  egress:\n    allow:\n      - {cidr: 10.0.0.1/8}\n"
    )
    r = subprocess.run(
        [*NODEGUARD, "run", "--policy", str(bad), "--", "/bin/true"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1
    assert f"{bad}:7: spec.egress.allow[0].cidr" in r.stderr
    assert "Traceback" not in r.stderr
    nothing_left_behind()


def test_not_root_is_a_clear_error(tmp_path: Path, lab: NetLab) -> None:
    policy = write_policy(tmp_path, lab)
    policy.chmod(0o644)
    tmp_path.chmod(0o755)
    r = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            *NODEGUARD,
            "run",
            "--policy",
            str(policy),
            "--",
            "/bin/true",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": "/tmp"},
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert "must run as root" in r.stderr and "Traceback" not in r.stderr


def test_missing_command_is_a_clear_error(tmp_path: Path, lab: NetLab) -> None:
    r = subprocess.run(
        [*NODEGUARD, "run", "--policy", str(write_policy(tmp_path, lab)), "--", "no-such-cmd-x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2
    assert "command not found" in r.stderr and "Traceback" not in r.stderr


def test_command_runs_as_the_sudo_caller_by_default(tmp_path: Path, lab: NetLab) -> None:
    import pwd  # noqa: PLC0415

    nobody = pwd.getpwnam("nobody")
    policy = tmp_path / "id.yaml"
    policy.write_text(
        "apiVersion: nodeguard.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: id}\n"
        "spec:\n  exec: {allow: [/usr/bin/id]}\n"
    )
    env = {**os.environ, "SUDO_UID": str(nobody.pw_uid), "SUDO_GID": str(nobody.pw_gid)}
    as_caller = subprocess.run(
        [*NODEGUARD, "run", "--policy", str(policy), "--", "id", "-u"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert as_caller.stdout.strip() == str(nobody.pw_uid), as_caller.stderr
    as_root = subprocess.run(
        [*NODEGUARD, "run", "--policy", str(policy), "--user", "root", "--", "id", "-u"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert as_root.stdout.strip() == "0", as_root.stderr
