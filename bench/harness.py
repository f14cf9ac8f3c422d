"""Benchmark plumbing: build the C loops, make cgroups, alternate baseline and guarded rounds.

Every figure is a ratio against a baseline measured in the same run, in rounds that
alternate baseline and subject so drift (CPU frequency, other load) hits both alike;
the median of the rounds is reported. Traffic goes to loopback only.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import statistics
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nodeguard.identity.cgroupfs import find_cgroup2_mount, remove_cgroup

BENCH_DIR = Path(__file__).resolve().parent
C_DIR = BENCH_DIR / "c"
BIN_DIR = BENCH_DIR / "bin"
BENCH_PARENT = "nodeguard-bench"


def build_binaries() -> dict[str, Path]:
    BIN_DIR.mkdir(exist_ok=True)
    out: dict[str, Path] = {}
    for src in sorted(C_DIR.glob("*.c")):
        binary = BIN_DIR / src.stem
        if not binary.exists() or binary.stat().st_mtime < src.stat().st_mtime:
            subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(src)], check=True)
        out[src.stem] = binary
    return out


def cgroup_mount() -> Path:
    mount = find_cgroup2_mount()
    if mount is None:
        raise SystemExit("cgroup v2 is not mounted")
    return mount


@contextlib.contextmanager
def bench_cgroup(name: str) -> Iterator[Path]:
    """A cgroup of the benchmark's own (never the root or the caller's), removed after."""
    parent = cgroup_mount() / BENCH_PARENT
    parent.mkdir(exist_ok=True)
    path = parent / f"{name}-{secrets.token_hex(3)}"
    path.mkdir()
    try:
        yield path
    finally:
        remove_cgroup(path)
        with contextlib.suppress(OSError):
            parent.rmdir()


def run_loop(cgroup: Path, argv: list[str], setup: Callable[[], None] | None = None) -> float:
    """Run a C loop inside ``cgroup``; returns its ns per operation. ``setup`` runs in the
    child after it joined the cgroup, before exec (e.g. to install a seccomp filter)."""
    procs = cgroup / "cgroup.procs"

    def join() -> None:
        with open(procs, "w") as f:
            f.write("0")
        if setup is not None:
            setup()

    r = subprocess.run(
        argv, preexec_fn=join, capture_output=True, text=True, timeout=300, check=False
    )
    values = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
    if r.returncode != 0 or "ns_per_op" not in values:
        raise RuntimeError(f"{argv[0]} failed ({r.returncode}): {r.stdout} {r.stderr}")
    return float(values["ns_per_op"])


@dataclass(frozen=True)
class Comparison:
    name: str
    baseline_ns: float
    subject_ns: float
    goal_max_ratio: float | None
    rounds: int
    note: str = ""
    paired_ratio: float | None = None  # median of per-round subject/baseline ratios

    @property
    def ratio(self) -> float:
        """Median of the per-round ratios (robust to drift between rounds), else the
        ratio of the medians."""
        if self.paired_ratio is not None:
            return self.paired_ratio
        return self.subject_ns / self.baseline_ns

    @property
    def overhead_pct(self) -> float:
        return (self.ratio - 1.0) * 100.0

    @property
    def meets_goal(self) -> bool | None:
        return None if self.goal_max_ratio is None else self.ratio <= self.goal_max_ratio

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "baseline_ns_per_op": round(self.baseline_ns, 2),
            "subject_ns_per_op": round(self.subject_ns, 2),
            "ratio": round(self.ratio, 4),
            "overhead_pct": round(self.overhead_pct, 2),
            "goal_max_ratio": self.goal_max_ratio,
            "meets_goal": self.meets_goal,
            "rounds": self.rounds,
            "note": self.note,
        }


def compare(
    name: str,
    baseline: Callable[[], float],
    subject: Callable[[], float],
    *,
    rounds: int,
    goal_max_ratio: float | None,
    note: str = "",
) -> Comparison:
    base: list[float] = []
    subj: list[float] = []
    ratios: list[float] = []
    for i in range(rounds):
        # alternate the order too, so neither side always runs "warm"
        if i % 2 == 0:
            base.append(baseline())
            subj.append(subject())
        else:
            subj.append(subject())
            base.append(baseline())
        ratios.append(subj[-1] / base[-1])
    return Comparison(
        name=name,
        baseline_ns=statistics.median(base),
        subject_ns=statistics.median(subj),
        paired_ratio=statistics.median(ratios),
        goal_max_ratio=goal_max_ratio,
        rounds=rounds,
        note=note,
    )


def median_of(samples: int, measure: Callable[[], float]) -> float:
    """The median of ``samples`` back-to-back measurements (one outlier run, e.g. a loop
    that lost its CPU for a while, does not decide a round)."""
    return statistics.median(measure() for _ in range(samples))


@dataclass(frozen=True)
class Subject:
    name: str
    measure: Callable[[], float]
    goal_max_ratio: float | None = None
    note: str = ""


@dataclass(frozen=True)
class SubjectGroup:
    """Subjects measured while ``context`` is entered (e.g. a hook attached): the context is
    entered once per round for the whole group, so attaching is not repeated per subject."""

    subjects: list[Subject]
    context: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext


def compare_groups(
    baseline: Callable[[], float], groups: list[SubjectGroup], *, rounds: int
) -> list[Comparison]:
    """Several subjects against one baseline, all in the same rounds.

    A round measures the baseline, every subject, then the baseline again; the order of
    the groups (and of the subjects in them) is reversed every other round. Each subject's
    round ratio is against the mean of the two baselines that bracket it, so slow drift
    during a round cancels; the reported ratio is the median of the round ratios.
    """
    base: list[float] = []
    samples: dict[str, list[float]] = {s.name: [] for g in groups for s in g.subjects}
    ratios: dict[str, list[float]] = {name: [] for name in samples}
    for i in range(rounds):
        order = groups if i % 2 == 0 else list(reversed(groups))
        first = baseline()
        measured: dict[str, float] = {}
        for group in order:
            subjects = group.subjects if i % 2 == 0 else list(reversed(group.subjects))
            with group.context():
                for s in subjects:
                    measured[s.name] = s.measure()
        last = baseline()
        base += [first, last]
        for name, value in measured.items():
            samples[name].append(value)
            ratios[name].append(value / ((first + last) / 2))
    base_ns = statistics.median(base)
    return [
        Comparison(
            name=s.name,
            baseline_ns=base_ns,
            subject_ns=statistics.median(samples[s.name]),
            paired_ratio=statistics.median(ratios[s.name]),
            goal_max_ratio=s.goal_max_ratio,
            rounds=rounds,
            note=s.note,
        )
        for g in groups
        for s in g.subjects
    ]


class LoopbackListener:
    """A TCP listener on 127.0.0.1 that accepts and closes, for the TCP connect loop."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.port: int = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
