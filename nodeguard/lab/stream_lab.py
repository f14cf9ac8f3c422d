"""The violation stream end to end, for fault tests and the stream benchmark.

The pieces (all real): certificates from :mod:`nodeguard.pki`, a collector subprocess
(:class:`~nodeguard.lab.collector_process.CollectorProcess`) storing in SQLite, the node
agent subprocess (:class:`~nodeguard.lab.agent_process.AgentProcess`) publishing to it
over mutual TLS, a pod guarded by :data:`POLICY` (created through CRI by
:class:`~nodeguard.lab.containerd.KubeletSim`), and ``bench/c/violation_gen.c`` compiled
into a scratch directory and run in a child cgroup of that pod: RATE denied ``sendto()``
per second, each to its own 127.64.x.y destination, so every attempt is its own kernel
record (nothing aggregated away) and every one is counted by the generator.

The accounting (:func:`account`): every attempt the generator saw denied is either in the
collector's store exactly once (the ``count`` of the pod's rows, no uid and no (node,
epoch, seq) twice) or counted as lost (spool drops and rejected records in ``nodeguard
status``, kernel and user-space loss records in the store's ``losses`` table); the rest is
``unexplained`` and must be 0.

:class:`VethLink` puts the agent and the collector in two network namespaces of their own
joined by one veth pair, so a test can cut the link without touching the host's network.
:class:`StreamRig` ties it together and undoes everything in :meth:`StreamRig.close`.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nodeguard import log, pki
from nodeguard.agent.status import CollectorLink, StatusSnapshot
from nodeguard.errors import NodeguardError
from nodeguard.identity.cgroup_paths import find_pod_cgroup
from nodeguard.identity.cgroupfs import find_cgroup2_mount, remove_cgroup
from nodeguard.lab.agent_process import AgentProcess
from nodeguard.lab.collector_process import CollectorProcess
from nodeguard.lab.containerd import ContainerdRuntime, KubeletSim, PodHandle
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb

_log = log.get("nodeguard.lab.stream")

REPO = Path(__file__).resolve().parents[2]
GENERATOR_SOURCE = REPO / "bench" / "c" / "violation_gen.c"
NODE = "test-node"  # AgentProcess's nodeName
NAMESPACE = "agents"
POLICY_NAME = "stream-lab"
POD_LABELS = {"app": "stream-lab"}
POLICY = f"""\
apiVersion: nodeguard.io/v1alpha1
kind: AgentPolicy
metadata: {{name: {POLICY_NAME}}}
spec:
  selector: {{namespaces: [{NAMESPACE}], matchLabels: {{app: {POD_LABELS["app"]}}}}}
  egress:
    allow: [{{cidr: 198.18.250.0/24, ports: ["443"], protocol: tcp}}]
"""
GENERATOR_CGROUP = "ng-stream-gen"


class StreamLabError(NodeguardError):
    """The stream lab cannot be set up (no compiler, no cgroup v2, a pod not guarded)."""


# ----------------------------------------------------------------- certificates --


@dataclass(frozen=True, slots=True)
class StreamCerts:
    """A CA (``ca.crt`` + ``ca.key`` in one directory), the collector's server
    certificate and one node's client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    node_cert: Path
    node_key: Path

    def agent_tls(self) -> dict[str, str]:
        """The agent's ``collectorTLS`` setting."""
        return {"ca": str(self.ca), "cert": str(self.node_cert), "key": str(self.node_key)}


def make_certs(
    directory: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), node: str = NODE
) -> StreamCerts:
    """A new CA in ``directory``, a server certificate for ``hosts`` and a node
    certificate for ``node``."""
    ca = pki.make_ca(directory)
    server = pki.issue_server(ca, directory, list(hosts))
    client = pki.issue_node(ca, directory, node)
    return StreamCerts(ca.cert_path, server.cert, server.key, client.cert, client.key)


# --------------------------------------------------------------------- configs --


def write_collector_config(
    path: Path, certs: StreamCerts, store: Path, *, listen: str = "127.0.0.1:0"
) -> Path:
    """A collector config (mutual TLS, durable SQLite store at ``store``, no metrics
    endpoint) written to ``path``."""
    config = {
        "apiVersion": "nodeguard.io/v1alpha1",
        "kind": "CollectorConfig",
        "listen": listen,
        "tls": {
            "cert": str(certs.server_cert),
            "key": str(certs.server_key),
            "clientCA": str(certs.ca),
        },
        "store": {"path": str(store), "durable": True},
        "metricsAddress": None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def agent_overrides(
    collector_address: str,
    certs: StreamCerts,
    *,
    log_level: str = "info",
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """AgentProcess overrides: publish to ``collector_address`` with the node
    certificate; the local event log off (the stream is what is measured)."""
    return {
        "collectorAddress": collector_address,
        "collectorTLS": certs.agent_tls(),
        "eventLog": {"enabled": False},
        "logLevel": log_level,
        **(extra or {}),
    }


# ------------------------------------------------------------------- generator --


def build_violation_gen(directory: Path, source: Path = GENERATOR_SOURCE) -> Path:
    """Compile ``violation_gen.c`` with gcc into ``directory``; the binary's path."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise StreamLabError(
            f"cannot compile {source}: gcc is not installed", fix="apt-get install gcc"
        )
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "violation_gen"
    result = subprocess.run(
        [gcc, "-O2", "-Wall", "-o", str(binary), str(source)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    if result.returncode != 0:
        raise StreamLabError(f"gcc could not compile {source}:\n{result.stderr.strip()}")
    return binary


@dataclass(frozen=True, slots=True)
class GeneratorRun:
    """What ``violation_gen`` printed."""

    attempts: int
    denied: int
    allowed: int
    other_errors: int
    elapsed_s: float

    @classmethod
    def parse(cls, stdout: str) -> GeneratorRun:
        values = dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)
        try:
            return cls(
                attempts=int(values["attempts"]),
                denied=int(values["denied"]),
                allowed=int(values["allowed"]),
                other_errors=int(values.get("other_errors", "0")),
                elapsed_s=float(values["elapsed_s"]),
            )
        except (KeyError, ValueError) as err:
            raise StreamLabError(f"violation_gen printed something unexpected: {stdout!r}") from err


class Generator:
    """``violation_gen RATE SECONDS`` in ``cgroup`` (joined between fork and exec), in
    the background: :meth:`wait` for its counts."""

    def __init__(self, binary: Path, cgroup: Path, rate: int, seconds: float) -> None:
        self.binary = binary
        self.cgroup = cgroup
        self.rate = rate
        self.seconds = seconds
        self.proc: subprocess.Popen[str] | None = None
        self.started_at: float | None = None

    def start(self) -> Generator:
        procs = self.cgroup / "cgroup.procs"

        def join() -> None:  # in the child: a write to cgroupfs, nothing else
            with open(procs, "w") as f:
                f.write("0")

        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [str(self.binary), str(self.rate), str(self.seconds)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=join,  # noqa: PLW1509 - only a write to cgroup.procs
        )  # fmt: skip
        return self

    def wait(self, timeout: float | None = None) -> GeneratorRun:
        if self.proc is None:
            raise RuntimeError("the generator was not started")
        limit = timeout if timeout is not None else self.seconds + 60
        try:
            out, err = self.proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            self.kill()
            raise StreamLabError(
                f"violation_gen {self.rate} {self.seconds} still running after {limit}s"
            ) from None
        if self.proc.returncode != 0:
            raise StreamLabError(
                f"violation_gen exited with status {self.proc.returncode}: {err.strip()}"
            )
        return GeneratorRun.parse(out)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def run_generator(binary: Path, cgroup: Path, rate: int, seconds: float) -> GeneratorRun:
    """Run ``violation_gen`` in ``cgroup`` to the end."""
    gen = Generator(binary, cgroup, rate, seconds).start()
    try:
        return gen.wait()
    finally:
        gen.kill()


@contextlib.contextmanager
def generator_cgroup(pod_uid: str, name: str = GENERATOR_CGROUP) -> Iterator[Path]:
    """A child cgroup of the pod's cgroup (guarded with the pod: the programs attach to
    the pod's cgroup and apply to its descendants); removed at the end, its processes
    killed."""
    mount = find_cgroup2_mount()
    if mount is None:
        raise StreamLabError("cgroup v2 is not mounted", fix="mount cgroup2 on /sys/fs/cgroup")
    pod_cgroup = find_pod_cgroup(mount, pod_uid)
    if pod_cgroup is None:
        raise StreamLabError(f"no cgroup for pod uid {pod_uid} under {mount}")
    path = pod_cgroup / name
    path.mkdir()
    try:
        yield path
    finally:
        remove_cgroup(path)


# ------------------------------------------------------------------- the store --


@dataclass(frozen=True, slots=True)
class StoredPod:
    """One pod's rows in the collector's ``events`` table."""

    records: int = 0
    attempts: int = 0  # sum(count)
    duplicate_uids: int = 0  # uids stored more than once (extra rows)
    duplicate_keys: int = 0  # (node, epoch, seq) stored more than once (extra rows)
    by_epoch: Mapping[int, int] = field(default_factory=dict)  # epoch -> attempts
    # attempts beyond the first to one egress destination (None: not checked). Every
    # attempt of violation_gen has its own destination: more than 0 means one attempt
    # was reported twice, under different uids and sequence numbers.
    repeated_destinations: int | None = None


@dataclass(frozen=True, slots=True)
class StoredLosses:
    """Loss records of one node in the ``losses`` table, by reason."""

    records: Mapping[str, int] = field(default_factory=dict)  # reason -> sum(count)
    attempts: Mapping[str, int] = field(default_factory=dict)  # reason -> sum(attempts)

    def lost_attempts(self, reason: str) -> int:
        """Attempts lost for ``reason``: the attempts the producer reported, or, when it
        reported none (it did not know them), the lost records (each stands for at least
        one attempt; for violation_gen's distinct destinations, exactly one)."""
        attempts = self.attempts.get(reason, 0)
        return attempts if attempts > 0 else self.records.get(reason, 0)


@contextlib.contextmanager
def _read_only(db: Path) -> Iterator[sqlite3.Connection | None]:
    if not db.exists():
        yield None
        return
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        yield con
    finally:
        con.close()


def stored_pod(db: Path, pod: str, *, destinations: bool = False) -> StoredPod:
    """What the store at ``db`` holds for pod ``pod`` (empty before the first batch).
    ``destinations``: also decode every row and count repeated egress destinations."""
    with _read_only(db) as con:
        if con is None:
            return StoredPod()
        try:
            records, attempts = con.execute(
                "SELECT count(*), coalesce(sum(count), 0) FROM events WHERE pod = ?", (pod,)
            ).fetchone()
            (dup_uids,) = con.execute(
                "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM events"
                " WHERE pod = ? GROUP BY uid HAVING n > 1)",
                (pod,),
            ).fetchone()
            (dup_keys,) = con.execute(
                "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM events"
                " WHERE pod = ? GROUP BY node, epoch, seq HAVING n > 1)",
                (pod,),
            ).fetchone()
            epochs = con.execute(
                "SELECT epoch, sum(count) FROM events WHERE pod = ? GROUP BY epoch", (pod,)
            ).fetchall()
            repeated = _repeated_destinations(con, pod) if destinations else None
        except sqlite3.OperationalError:  # the collector has not created the tables yet
            return StoredPod()
    return StoredPod(
        int(records),
        int(attempts),
        int(dup_uids),
        int(dup_keys),
        {int(e): int(n) for e, n in epochs},
        repeated,
    )


def _repeated_destinations(con: sqlite3.Connection, pod: str) -> int:
    per_destination: Counter[tuple[str, int]] = Counter()
    for body, count in con.execute("SELECT body, count FROM events WHERE pod = ?", (pod,)):
        v = pb.Violation.FromString(body)
        if v.HasField("egress"):
            per_destination[(v.egress.ip, v.egress.port)] += int(count)
    return sum(n - 1 for n in per_destination.values() if n > 1)


def stored_losses(db: Path, node: str = NODE) -> StoredLosses:
    """The loss records node ``node`` sent, summed by reason."""
    with _read_only(db) as con:
        if con is None:
            return StoredLosses()
        try:
            rows = con.execute(
                "SELECT reason, sum(count), sum(attempts) FROM losses WHERE node = ?"
                " GROUP BY reason",
                (node,),
            ).fetchall()
        except sqlite3.OperationalError:
            return StoredLosses()
    return StoredLosses({str(r): int(c) for r, c, _ in rows}, {str(r): int(a) for r, _, a in rows})


def stored_telemetry_epoch(db: Path, node: str = NODE) -> int | None:
    """The epoch of the latest telemetry record ``node`` sent (None: none yet). An agent
    sends its first one in its first flush, after the violations that flush found in
    the kernel's pinned aggregates: once it is stored, so are they."""
    with _read_only(db) as con:
        if con is None:
            return None
        try:
            row = con.execute("SELECT epoch FROM telemetry WHERE node = ?", (node,)).fetchone()
        except sqlite3.OperationalError:
            return None
    return None if row is None else int(row[0])


def spooled_attempts(spool_db: Path) -> int:
    """Violation attempts waiting in an agent's spool (``stateDir/spool.db``)."""
    with _read_only(spool_db) as con:
        if con is None:
            return 0
        try:
            (n,) = con.execute(
                "SELECT coalesce(sum(attempts), 0) FROM chunks WHERE priority IN (?, ?)",
                (pb.PRIORITY_VIOLATION, pb.PRIORITY_AUDIT),
            ).fetchone()
        except sqlite3.OperationalError:
            return 0
    return int(n)


# ------------------------------------------------------------------ accounting --


@dataclass(frozen=True, slots=True)
class Accounting:
    """Generated attempts against what was stored and what was counted as lost."""

    generated: int
    stored: StoredPod
    spool_dropped_attempts: int  # status: dropped from the full spool
    rejected_attempts: int  # status: refused by the collector
    kernel_lost_attempts: int  # losses table: the ring buffer was full
    userspace_lost_attempts: int  # losses table: undecodable or unspoolable records

    @property
    def counted_lost(self) -> int:
        return (
            self.spool_dropped_attempts
            + self.rejected_attempts
            + self.kernel_lost_attempts
            + self.userspace_lost_attempts
        )

    @property
    def unexplained(self) -> int:
        """Attempts neither stored nor counted lost (negative: counted twice)."""
        return self.generated - self.stored.attempts - self.counted_lost

    @property
    def balanced(self) -> bool:
        s = self.stored
        return (
            self.unexplained == 0
            and s.duplicate_uids == 0
            and s.duplicate_keys == 0
            and not s.repeated_destinations
        )

    def describe(self) -> str:
        s = self.stored
        unexplained = str(self.unexplained)
        if self.unexplained < 0:
            unexplained += " (negative: more stored or counted lost than generated)"
        text = (
            f"generated {self.generated} = stored {s.attempts} (in {s.records} records, "
            f"by epoch {dict(s.by_epoch)}) + lost {self.counted_lost} (spool dropped "
            f"{self.spool_dropped_attempts}, rejected {self.rejected_attempts}, kernel "
            f"{self.kernel_lost_attempts}, user space {self.userspace_lost_attempts}) + "
            f"unexplained {unexplained}; duplicate uids {s.duplicate_uids}, duplicate "
            f"(node, epoch, seq) {s.duplicate_keys}"
        )
        if s.repeated_destinations is not None:
            text += f", attempts reported twice (same destination) {s.repeated_destinations}"
        return text

    def check(self) -> None:
        """Raise :class:`AccountingError` unless everything is accounted for once."""
        if not self.balanced:
            raise AccountingError(
                f"the violation stream lost or duplicated attempts: {self.describe()}",
                fix="read the agent's and the collector's logs around the fault",
            )


class AccountingError(NodeguardError):
    """Generated violations are missing from the store without being counted as lost,
    or are stored twice."""


def account(
    db: Path,
    pod: str,
    generated: int,
    link: CollectorLink,
    node: str = NODE,
    *,
    destinations: bool = True,
) -> Accounting:
    """The accounting for ``pod``'s ``generated`` attempts, given the agent's collector
    link (its spool drop and reject counts cover the spool's whole life, across agent
    restarts). ``destinations``: also look for attempts stored twice under different
    uids (violation_gen gives every attempt its own destination)."""
    losses = stored_losses(db, node)
    return Accounting(
        generated=generated,
        stored=stored_pod(db, pod, destinations=destinations),
        spool_dropped_attempts=link.dropped_attempts,
        rejected_attempts=link.rejected_attempts,
        kernel_lost_attempts=losses.lost_attempts("kernel"),
        userspace_lost_attempts=losses.lost_attempts("userspace"),
    )


def wait_accounted(
    agent: AgentProcess,
    db: Path,
    pod: str,
    generated: int,
    *,
    timeout: float = 120,
    settle_s: float = 1.0,
) -> tuple[Accounting, StatusSnapshot]:
    """Poll until the agent's spool is empty with nothing in flight and every generated
    attempt is stored or counted lost (or more: duplicates), then once more after
    ``settle_s`` (a late resend would show). At ``timeout``, the last figures: the caller
    asserts :attr:`Accounting.balanced` and shows :meth:`Accounting.describe`."""
    deadline = time.monotonic() + timeout
    while True:
        snap = agent.status()
        acc = account(db, pod, generated, snap.collector, destinations=False)
        idle = snap.collector.spool_records == 0 and snap.collector.in_flight == 0
        if (idle and acc.unexplained <= 0) or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    time.sleep(settle_s)
    snap = agent.status()
    return account(db, pod, generated, snap.collector), snap


# --------------------------------------------------------------------- network --


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StreamLabError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class VethLink:
    """Two network namespaces of our own, the agent's and the collector's, joined by one
    veth pair with a /30 of 198.19.0.0/16 (a benchmarking range nothing else uses here).
    Nothing else is routed: the agent reaches the collector only through this link.
    :meth:`cut` takes the collector's end down (the agent's end loses carrier: its
    packets go nowhere, no error comes back, as when a network path dies);
    :meth:`restore` brings it back. :meth:`close` deletes both namespaces."""

    subnet: int = 0  # 198.19.<subnet>.0/30
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    started: bool = False

    @property
    def agent_netns(self) -> str:
        return f"ngsa-{self.tag}"

    @property
    def collector_netns(self) -> str:
        return f"ngsc-{self.tag}"

    @property
    def agent_netns_path(self) -> str:
        return f"/run/netns/{self.agent_netns}"

    @property
    def collector_netns_path(self) -> str:
        return f"/run/netns/{self.collector_netns}"

    @property
    def agent_dev(self) -> str:
        return f"ngsa{self.tag}"

    @property
    def collector_dev(self) -> str:
        return f"ngsc{self.tag}"

    @property
    def agent_ip(self) -> str:
        return f"198.19.{self.subnet}.1"

    @property
    def collector_ip(self) -> str:
        return f"198.19.{self.subnet}.2"

    def start(self) -> VethLink:
        self.started = True
        try:
            for ns in (self.agent_netns, self.collector_netns):
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip("link", "add", self.agent_dev, "netns", self.agent_netns, "type", "veth",
                "peer", self.collector_dev, "netns", self.collector_netns)  # fmt: skip
            for ns, dev, addr in (
                (self.agent_netns, self.agent_dev, self.agent_ip),
                (self.collector_netns, self.collector_dev, self.collector_ip),
            ):
                _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
        except BaseException:
            self.close()
            raise
        return self

    def cut(self) -> None:
        _ip("-n", self.collector_netns, "link", "set", self.collector_dev, "down")

    def restore(self) -> None:
        _ip("-n", self.collector_netns, "link", "set", self.collector_dev, "up")

    def close(self) -> None:
        """Delete both namespaces (the veth pair goes with them). Stop the processes
        inside first: a namespace lives on while a process is in it."""
        if not self.started:
            return
        for ns in (self.agent_netns, self.collector_netns):
            with contextlib.suppress(StreamLabError):
                _ip("netns", "del", ns)
        self.started = False


# ------------------------------------------------------------------------- rig --


class StreamRig:
    """A collector, an agent publishing to it and one guarded pod with a generator
    cgroup, under ``workdir``; with ``link``, the collector and the agent run in its two
    network namespaces. :meth:`close` undoes everything, whatever state the test left.

    ``start_collector=False`` in :meth:`setup` still starts the collector once (to learn
    its port for the agent's config) and stops it again before the agent starts."""

    def __init__(
        self,
        runtime: ContainerdRuntime,
        kubelet: KubeletSim,
        workdir: Path,
        generator: Path,
        *,
        link: VethLink | None = None,
        node: str = NODE,
    ) -> None:
        self.runtime = runtime
        self.kubelet = kubelet
        self.workdir = workdir
        self.generator = generator
        self.link = link
        self.node = node
        self._stack = contextlib.ExitStack()
        self.collector: CollectorProcess | None = None
        self.agent: AgentProcess | None = None
        self.pod: PodHandle | None = None
        self.cgroup: Path | None = None
        self.certs: StreamCerts | None = None

    @property
    def db(self) -> Path:
        return self.workdir / "collector" / "events.db"

    @property
    def spool_db(self) -> Path:
        return self.workdir / "agent" / "state" / "spool.db"

    def setup(
        self,
        pod_name: str,
        *,
        agent_settings: Mapping[str, object] | None = None,
        ready_timeout: float = 60,
    ) -> StreamRig:
        try:
            self._setup(pod_name, agent_settings, ready_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _setup(
        self, pod_name: str, agent_settings: Mapping[str, object] | None, ready_timeout: float
    ) -> None:
        link = self.link
        if link is not None:
            link.start()
            self._stack.callback(link.close)  # last: after the processes inside stopped
        host = link.collector_ip if link is not None else "127.0.0.1"
        self.certs = make_certs(self.workdir / "pki", [host, "localhost"], self.node)
        config = write_collector_config(
            self.workdir / "collector.yaml", self.certs, self.db, listen=f"{host}:0"
        )
        collector = CollectorProcess(
            config,
            workdir=self.workdir / "collector-run",
            netns=link.collector_netns_path if link is not None else None,
        )
        self.collector = collector
        self._stack.callback(collector.kill)
        self._stack.callback(_stop_quietly, collector)
        collector.start()
        agent = AgentProcess(
            self.runtime,
            self.workdir / "agent",
            overrides=agent_overrides(collector.target, self.certs, extra=agent_settings),
            netns=link.agent_netns_path if link is not None else None,
        )
        self.agent = agent
        agent.policy_dir.mkdir(parents=True)
        (agent.policy_dir / f"{POLICY_NAME}.yaml").write_text(POLICY)
        self._stack.callback(agent.teardown)
        agent.start(ready_timeout)
        pod = self.kubelet.run_pod(NAMESPACE, pod_name, dict(POD_LABELS))
        self.pod = pod
        self._stack.callback(self.kubelet.remove_pod, pod)
        agent.wait_for(
            lambda s: any(p.uid == pod.uid and p.policy == POLICY_NAME for p in s.pods),
            timeout=30,
        )
        self.cgroup = self._stack.enter_context(generator_cgroup(pod.uid))

    def generate(self, rate: int, seconds: float) -> Generator:
        """Start the generator in the pod (in the background)."""
        if self.cgroup is None:
            raise RuntimeError("StreamRig.setup() first")
        gen = Generator(self.generator, self.cgroup, rate, seconds).start()
        self._stack.callback(gen.kill)
        return gen

    def account(self, generated: int) -> Accounting:
        assert self.agent is not None and self.pod is not None
        return account(self.db, self.pod.name, generated, self.agent.status().collector)

    def wait_accounted(
        self, generated: int, timeout: float = 120
    ) -> tuple[Accounting, StatusSnapshot]:
        assert self.agent is not None and self.pod is not None
        return wait_accounted(self.agent, self.db, self.pod.name, generated, timeout=timeout)

    def logs(self) -> str:
        """The tails of the agent's and the collector's logs (for failure messages)."""
        parts = []
        if self.agent is not None:
            parts.append(f"--- agent (start {self.agent.starts}):\n{self.agent.log_tail(40)}")
        if self.collector is not None:
            parts.append(
                f"--- collector (start {self.collector.starts}):\n{self.collector.log_tail(40)}"
            )
        return "\n".join(parts)

    def close(self) -> None:
        """Generators killed, generator cgroup removed, pod removed, agent torn down,
        collector stopped, network namespaces deleted (in that order)."""
        self._stack.close()


def _stop_quietly(collector: CollectorProcess) -> None:
    try:
        collector.stop()
    except RuntimeError as err:  # did not stop on SIGTERM: the kill callback follows
        _log.warning("collector_stop_failed", error=str(err))
