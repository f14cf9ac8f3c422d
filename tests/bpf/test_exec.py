"""Exec enforcement on a real kernel: sched_process_exec + bpf_send_signal(SIGKILL).

The forbidden programs are copies of /usr/bin/touch in the test's own directory: their
first action is to create a file, so "the file does not exist" proves the process died
before running an instruction of its own.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bpf.conftest import Guarded
from tests.netlab import PROBE, SYSTEM_PYTHON, probe_results, run_in_cgroup

pytestmark = pytest.mark.bpf

MakeGuarded = Callable[[str], Guarded]
KILLED = -signal.SIGKILL


def policy(allow: list[str], mode: str = "enforce") -> str:
    items = ", ".join(f"'{a}'" for a in [SYSTEM_PYTHON, "/bin/sh", *allow])
    return f"""
apiVersion: nodeguard.io/v1alpha1
kind: AgentPolicy
metadata: {{name: exec-test}}
spec:
  mode: {mode}
  exec: {{allow: [{items}]}}
"""


def probe(g: Guarded, *actions: str) -> list[dict[str, object]]:
    proc = run_in_cgroup(g.path, [SYSTEM_PYTHON, str(PROBE), *actions])
    assert proc.returncode == 0, proc.stderr
    return probe_results(proc)


@pytest.fixture
def bins(tmp_path: Path) -> Path:
    """tmp/bin/touch, tmp/bin/sub/touch and tmp/other/touch: copies of /usr/bin/touch."""
    for rel in ("bin/touch", "bin/sub/touch", "other/touch"):
        dest = tmp_path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2("/usr/bin/touch", dest)
    return tmp_path


def test_forbidden_exec_is_killed_before_its_first_action(guarded: MakeGuarded, bins: Path) -> None:
    g = guarded(policy(["/usr/bin/touch"]))
    marker = bins / "created-by-forbidden"
    r = probe(g, "exec", str(bins / "other/touch"), str(marker))
    assert r == [{"action": "exec", "path": str(bins / "other/touch"), "status": KILLED}]
    assert not marker.exists(), "the killed program ran far enough to create its file"
    (v,) = [v for v in g.collect() if v.exec]
    assert v.exec is not None and v.exec.path == str(bins / "other/touch")
    assert v.verdict == "blocked" and v.kind == "exec"


def test_allowed_exec_runs(guarded: MakeGuarded, bins: Path) -> None:
    g = guarded(policy(["/usr/bin/touch"]))
    marker = bins / "created-by-allowed"
    r = probe(g, "exec", "/usr/bin/touch", str(marker))
    assert r[0]["status"] == 0
    assert marker.exists()
    assert [v for v in g.collect() if v.exec] == []


def test_grandchild_is_still_guarded(guarded: MakeGuarded, bins: Path) -> None:
    g = guarded(policy(["/usr/bin/touch"]))
    marker = bins / "created-by-grandchild"
    r = probe(g, "spawn-grandchild", str(bins / "other/touch"), str(marker))
    assert r[0]["status"] != 0
    assert not marker.exists()
    paths = {v.exec.path for v in g.collect() if v.exec}
    assert paths == {str(bins / "other/touch")}


def test_segment_glob_allows_one_level_only(guarded: MakeGuarded, bins: Path) -> None:
    g = guarded(policy([f"{bins}/bin/*"]))
    ok, deeper = bins / "ok", bins / "deeper"
    assert probe(g, "exec", str(bins / "bin/touch"), str(ok))[0]["status"] == 0
    assert probe(g, "exec", str(bins / "bin/sub/touch"), str(deeper))[0]["status"] == KILLED
    assert ok.exists() and not deeper.exists()


def test_subtree_glob_allows_below_but_not_path_tricks(guarded: MakeGuarded, bins: Path) -> None:
    g = guarded(policy([f"{bins}/bin/**"]))
    deep, trick, dot = bins / "deep", bins / "trick", bins / "dot"
    assert probe(g, "exec", str(bins / "bin/sub/touch"), str(deep))[0]["status"] == 0
    # /bin/../other/touch resolves outside the allowed subtree: refused
    assert probe(g, "exec", f"{bins}/bin/../other/touch", str(trick))[0]["status"] == KILLED
    assert probe(g, "exec", f"{bins}/bin/./sub/touch", str(dot))[0]["status"] == KILLED
    assert deep.exists() and not trick.exists() and not dot.exists()


def test_first_exec_into_a_guarded_cgroup_is_checked(guarded: MakeGuarded, bins: Path) -> None:
    g = guarded(policy([]))
    r = run_in_cgroup(g.path, ["/usr/bin/touch", str(bins / "never")])
    assert r.returncode == KILLED
    assert not (bins / "never").exists()


def test_audit_mode_lets_exec_run_and_reports(guarded: MakeGuarded, bins: Path) -> None:
    g = guarded(policy(["/usr/bin/touch"], mode="audit"))
    marker = bins / "audited"
    r = probe(g, "exec", str(bins / "other/touch"), str(marker))
    assert r[0]["status"] == 0 and marker.exists()
    (v,) = [v for v in g.collect() if v.exec]
    assert v.exec is not None and v.exec.path == str(bins / "other/touch")
    assert v.verdict == "audited"


def test_processes_outside_guarded_cgroups_are_untouched(guarded: MakeGuarded, bins: Path) -> None:
    guarded(policy([]))  # a deny-all exec policy is loaded for some other cgroup
    import subprocess  # noqa: PLC0415

    r = subprocess.run([str(bins / "other/touch"), str(bins / "outside")], check=False)
    assert r.returncode == 0 and (bins / "outside").exists()
