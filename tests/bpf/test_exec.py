"""Exec enforcement on a real kernel: sched_process_exec + bpf_send_signal(SIGKILL).

The forbidden programs are copies of /usr/bin/touch in the test's own directory: their
first action is to create a file, so "the file does not exist" proves the process died
before running an instruction of its own.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
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
    r = subprocess.run([str(bins / "other/touch"), str(bins / "outside")], check=False)
    assert r.returncode == 0 and (bins / "outside").exists()


# ------------------------------------------- an exec that began outside the cgroup ---

STALLED_EXEC = Path(__file__).with_name("stalled_exec.py")


class StalledExec:
    """tests/bpf/stalled_exec.py: an execve held in the kernel (userfaultfd) until go()."""

    def __init__(self, argv: list[str], cgroup: Path | None = None) -> None:
        def join() -> None:
            if cgroup is not None:
                (cgroup / "cgroup.procs").write_text("0")

        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(STALLED_EXEC), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=join,  # noqa: PLW1509 - only a write to cgroup.procs
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        if line != "stalled\n":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            if self.proc.returncode == 3 and os.environ.get("NODEGUARD_REQUIRE_BPF") != "1":
                pytest.skip(f"stalled_exec cannot stall an exec here: {err.strip()}")
            raise AssertionError(f"stalled_exec did not stall: {line!r} {err}")

    def go(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.close()
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def stalled() -> Iterator[Callable[..., StalledExec]]:
    made: list[StalledExec] = []

    def make(argv: list[str], cgroup: Path | None = None) -> StalledExec:
        s = StalledExec(argv, cgroup)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.kill()


def begun_outside(g: Guarded) -> int:
    return g.guard.counters()["exec_begun_outside"]


@pytest.mark.parametrize("thread", ["leader", "other thread"])
def test_exec_begun_before_the_move_into_the_cgroup_is_let_through_once(
    guarded: MakeGuarded, bins: Path, stalled: Callable[..., StalledExec], thread: str
) -> None:
    """runc 1.1's race, made deterministic: the process is moved into the guarded cgroup
    while its exec of a forbidden program is in flight. That exec is judged by where it
    began (let through, counted, not reported); the program's own next exec is checked."""
    g = guarded(policy([]))
    sh = bins / "other/sh"
    shutil.copy2("/bin/sh", sh)
    ran, escaped = bins / "ran", bins / "escaped"
    before = begun_outside(g)
    leader = ["--from-leader"] if thread == "leader" else []
    s = stalled([*leader, str(sh), "-c", f": > {ran}; exec {bins}/other/touch {escaped}"])
    (g.path / "cgroup.procs").write_text(str(s.proc.pid))
    assert s.go() == KILLED  # the shell ran, then its exec of touch was killed
    assert ran.exists() and not escaped.exists()
    assert begun_outside(g) == before + 1
    paths = [v.exec.path for v in g.collect() if v.exec]
    assert paths == [f"{bins}/other/touch"]


def test_exec_begun_inside_the_cgroup_is_checked(
    guarded: MakeGuarded, bins: Path, stalled: Callable[..., StalledExec]
) -> None:
    """The same stalled exec, by a process already in the guarded cgroup: killed. A
    workload cannot start an exec outside its own cgroup."""
    g = guarded(policy([]))
    sh = bins / "other/sh"
    shutil.copy2("/bin/sh", sh)
    ran = bins / "ran"
    before = begun_outside(g)
    s = stalled([str(sh), "-c", f": > {ran}"], cgroup=g.path)
    assert s.go() == KILLED
    assert not ran.exists()
    assert begun_outside(g) == before
    paths = [v.exec.path for v in g.collect() if v.exec]
    assert paths == [str(sh)]


def test_fileless_exec_of_a_memfd_is_killed(guarded: MakeGuarded, bins: Path) -> None:
    """A program copied into a memfd and run with fexecve (/dev/fd/N): not on the list."""
    g = guarded(policy([]))
    marker = bins / "fileless"
    code = (
        "import os; fd = os.memfd_create('x', 0); "
        "os.write(fd, open('/usr/bin/touch', 'rb').read()); "
        f"os.execve(fd, ['touch', '{marker}'], {{}})"
    )
    r = run_in_cgroup(g.path, [SYSTEM_PYTHON, "-c", code])
    assert r.returncode == KILLED
    assert not marker.exists()
    (v,) = [v for v in g.collect() if v.exec]
    assert v.exec is not None and v.exec.path.startswith("/dev/fd/")
