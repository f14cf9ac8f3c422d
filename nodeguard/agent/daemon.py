"""`nodeguard agent`: the per-node agent.

Start-up: preflight checks, the guard programs loaded with their maps pinned (adopting
what an earlier agent left: enforcement never stopped), the policy directory loaded,
pods listed through CRI and reconciled, stale state of pods deleted meanwhile removed,
then the local API (status, runtime-hook admission) and metrics come up.

Main loop (one thread owns the ring buffer): violation records -> events; a policy
directory change (inotify thread) -> new versions loaded and pods re-pointed; every
``resyncIntervalMs`` -> CRI listed and pods reconciled; aggregates flushed each second.

Violations stream to the central collector when ``collectorAddress`` is set: each one
becomes a ``nodeguard.v1.Record`` in memory, appended to the on-disk spool
(``stateDir/spool.db``) once per loop round, and a publisher thread sends the spool over
mutual TLS (:mod:`nodeguard.delivery`). Losses the agent knows of (kernel ring buffer
full, records it could not decode or spool) go in-band as ``Loss`` records, and a
``Telemetry`` heartbeat with the agent's counters every ``telemetryInterval``.

Stop (SIGTERM/SIGINT): servers stopped, events flushed, the tracker checkpointed, the
spool given a moment to drain (what is left is sent by the next agent); the kernel keeps
enforcing (pinned) until the next agent adopts it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import queue
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

from nodeguard import __version__, log
from nodeguard.agent import checkpoint
from nodeguard.agent.api import AdmitRequest, AdmitResponse, AgentAPIServer
from nodeguard.agent.cgroup_watch import PodCgroupWatch
from nodeguard.agent.config import AgentConfig
from nodeguard.agent.enforcer import Enforcer
from nodeguard.agent.eventlog import EventLog
from nodeguard.agent.hook import (
    CONTAINER_NAME,
    SANDBOX_NAME,
    SANDBOX_NAMESPACE,
    SANDBOX_UID,
    write_fail_closed_file,
)
from nodeguard.agent.metrics import AgentMetrics, MetricsServer
from nodeguard.agent.policy_store import PolicyStore
from nodeguard.agent.sandbox import admission_problem, enforcement
from nodeguard.agent.seccomp_listener import ProcessState, SeccompListenerServer
from nodeguard.agent.status import (
    AgentHealth,
    AgentState,
    CollectorLink,
    CollectorState,
    Counters,
    KernelInfo,
    PodStatus,
    PolicyDirStatus,
    PolicyStatus,
    StatusSnapshot,
)
from nodeguard.bpf.guard import (
    Guard,
    GuardLimits,
    program_version,
    remove_pin_set,
    stale_pin_sets,
)
from nodeguard.bpf.probe import run_probes
from nodeguard.delivery.producer import Producer
from nodeguard.delivery.publisher import Publisher, PublisherStats, PublisherTLS, certificate_node
from nodeguard.delivery.spool import Spool, SpoolStats
from nodeguard.errors import NodeguardError
from nodeguard.events.aggregate import CountTracker
from nodeguard.events.build import ViolationBuilder
from nodeguard.events.clock import MonotonicClock
from nodeguard.events.decode import DecodeStats, decode
from nodeguard.events.model import Violation
from nodeguard.events.ocsf import to_json_line
from nodeguard.identity.cgroupfs import cgroup_id, own_cgroup_path
from nodeguard.identity.cri import CRIClient, CRIError
from nodeguard.policy.compiled import CompiledSockets
from nodeguard.policy.syscalls import host_arch
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb
from nodeguard.runner.preflight import preflight
from nodeguard.seccomp.notify import Listener, NotifyServer
from nodeguard.seccomp.profile import METADATA_PREFIX, write_profiles

_log = log.get("nodeguard.agent")

POLL_MS = 50
FLUSH_INTERVAL_S = 1.0
FAST_WINDOW_S = 1.0
FAST_RESYNC_S = 0.05
LIVENESS_STALL_S = 30.0
SHUTDOWN_DRAIN_S = 2.0  # at stop, how long the spool may take to reach the collector
LINK_RETRY_S = 10.0  # a collector link that could not start (no certificate yet): next try


class Agent:
    def __init__(self, config: AgentConfig, limits: GuardLimits | None = None) -> None:
        self.config = config
        self.limits = limits or GuardLimits()
        self.started_at = time.time()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._policy_changed = threading.Event()
        self._pods_changed = threading.Event()
        self._ready = False
        self._reasons: list[str] = []
        self._collector_error: str | None = None
        self._link_retry_at: float | None = None  # the link failed to start: next try
        self.stats = DecodeStats()
        self.by_kind: Counter[str] = Counter()
        self.records = 0
        self.pod_violations: Counter[str] = Counter()
        self._kernel_info = KernelInfo(release=os.uname().release)
        self._heartbeat = time.monotonic()
        self._stale_pin_sets: list[Path] = []
        self._cleaned = False
        self.arch = host_arch()
        self._notify_records: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.notify = NotifyServer(emit=self._notify_records.put)
        self._profiles: dict[str, Path] = {}
        self._profile_error: str | None = None
        self._untraceable: list[str] = []
        self.producer: Producer | None = None
        self._emit_lock = threading.Lock()
        # violation metrics are added up here and handed to prometheus once per round
        self._violation_counts: Counter[tuple[str, str, str, str]] = Counter()
        self._event_log_on = config.event_log.enabled
        self._next_telemetry = 0.0

    # ------------------------------------------------------------- start-up ---
    def start(self) -> None:
        cfg = self.config
        self.mount = preflight()
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self._kernel_info = KernelInfo.from_report(run_probes())
        self._stale_pin_sets = stale_pin_sets(cfg.pin_dir, program_version(self.limits))
        for stale in self._stale_pin_sets:
            _log.warning("stale_pin_set", path=str(stale), hint="another agent version's")
        self.guard = Guard(self.limits, pin_root=cfg.pin_dir)
        self.enforcer = Enforcer(self.guard, self.mount, on_pod_removed=self._pod_removed)
        self.builder = ViolationBuilder(
            policies=self.enforcer.refs,
            clock=MonotonicClock(),
            tracker=CountTracker(),
            node=cfg.node_name,
            enrich=True,
            workload_of=self._workload_of,
        )
        self.events = EventLog(cfg.state_dir / "events", enabled=cfg.event_log.enabled)
        self._start_delivery()
        self._checkpoint_path = cfg.state_dir / "reported.json"
        seeded = checkpoint.load(self._checkpoint_path, self.builder.tracker)
        if self.producer is not None:  # newer: written with each round's records
            seeded += checkpoint.seed_rows(
                self.builder.tracker, self.producer.spool.reported_rows()
            )
        if seeded:
            _log.info("checkpoint_loaded", keys=seeded)
        self.metrics = AgentMetrics(node=cfg.node_name)
        self.store = PolicyStore(cfg.policy_dir)
        self.store.watch()
        self._last_policy_error: str | None = None
        result = self.store.reload()
        self._note_policy_error(result.error)
        if self.store.generation > 0:  # an invalid first load has no good set to apply:
            self.enforcer.apply_policies(result.policies)  # adopted enforcement stays
            self._apply_sandbox()
        self._write_fail_closed()
        self.cri = CRIClient(cfg.cri_socket, timeout_s=5.0)
        self.guard.on_record(self._on_record)
        self.notify.start()
        self.seccomp_listener = SeccompListenerServer(
            cfg.seccomp_listener_path, self._on_seccomp_fd
        )
        self.seccomp_listener.start()
        _log.info(
            "agent_starting",
            node=cfg.node_name,
            adopted=self.guard.adopted,
            pin_dir=str(self.guard.pin_dir),
            policies=sorted(self.enforcer.policies),
        )
        self._resync()
        self.api = AgentAPIServer(cfg.api_socket, snapshot=self.snapshot, admit=self.admit)
        self.api.start()
        self.metrics_server: MetricsServer | None = None
        if cfg.metrics_address is not None:
            self.metrics_server = MetricsServer(
                str(cfg.metrics_address),
                self.metrics.registry,
                ready=lambda: self._ready,
                alive=self._alive,
            )
            self.metrics_server.start()
        threading.Thread(target=self._watch_policies, name="policy-watch", daemon=True).start()
        threading.Thread(target=self._watch_cgroups, name="cgroup-watch", daemon=True).start()

    def _start_delivery(self) -> None:
        """The spool and the publisher, when a collector is configured."""
        cfg = self.config
        if cfg.collector_address is None or cfg.collector_tls is None:
            return
        try:
            spool = Spool(
                cfg.state_dir / "spool.db",
                max_bytes=cfg.spool.max_bytes,
                max_records=cfg.spool.max_records,
                chunk_records=cfg.spool.batch_records,
            )
        except NodeguardError as err:
            # Enforcement never depends on delivery: an unusable spool (corrupt file,
            # newer schema, full or read-only disk) leaves the agent guarding pods,
            # degraded, with the records in the local event log only.
            self._collector_error = f"spool unusable, nothing is streamed: {err}"
            _log.error(
                "spool_unusable", error=str(err), effect="violations go to the local event log"
            )
            if not self._event_log_on:  # the records must land somewhere
                self._event_log_on = True
                self.events = EventLog(cfg.state_dir / "events", enabled=True)
            return
        publisher: Publisher | None = None
        try:
            publisher = self._start_publisher(spool)
        except NodeguardError as err:
            # Enforcement never depends on delivery: without a usable link the agent
            # still guards pods and spools every violation; it tries again every
            # LINK_RETRY_S (the certificate files may appear later, e.g. a Secret or a
            # bootstrap step) and sends the spool once it can. Status is degraded and
            # says why.
            publisher = None
            self._collector_error = f"collector link not started: {err}"
            self._link_retry_at = time.monotonic() + LINK_RETRY_S
            _log.error(
                "collector_link_failed",
                error=str(err),
                effect="violations are spooled",
                retry_in_s=LINK_RETRY_S,
            )
        self.producer = Producer(spool, publisher, reported=self._reported_rows)
        _log.info(
            "collector_link_started" if publisher is not None else "collector_spool_only",
            address=str(cfg.collector_address),
            epoch=spool.epoch,
            spool=str(spool.path),
            spooled=spool.records,
        )

    def _start_publisher(self, spool: Spool) -> Publisher:
        """The publisher for ``spool``, started; NodeguardError if its TLS files are
        missing or unusable."""
        cfg = self.config
        t = cfg.collector_tls
        if t is None or cfg.collector_address is None:
            raise NodeguardError("no collector is configured (collectorAddress, collectorTLS)")
        tls = PublisherTLS(t.ca, t.cert, t.key, t.server_name)
        cert_node = certificate_node(t.cert)
        if cert_node != cfg.node_name:
            _log.error(
                "collector_certificate_node_mismatch",
                node=cfg.node_name,
                certificate_node=cert_node,
                cert=str(t.cert),
                effect="the collector refuses this agent's records; they wait in the spool",
                fix="use this node's certificate, or set nodeName to the certificate's node",
            )
        publisher = Publisher(
            spool,
            str(cfg.collector_address),
            node=cfg.node_name,
            tls=tls,
            producer="agent",
            window=cfg.spool.window,
            batch_records=cfg.spool.batch_records,
        )
        publisher.start()
        return publisher

    def _retry_link(self, now: float) -> None:
        """The link could not start (e.g. no certificate yet): try again, and once it
        starts, the spool (everything since the agent started) goes out."""
        if self._link_retry_at is None or now < self._link_retry_at or self.producer is None:
            return
        try:
            publisher = self._start_publisher(self.producer.spool)
        except NodeguardError as err:
            error = f"collector link not started: {err}"
            if error != self._collector_error:
                _log.error("collector_link_failed", error=str(err), retry_in_s=LINK_RETRY_S)
            with self._lock:
                self._collector_error = error
            self._link_retry_at = now + LINK_RETRY_S
            return
        with self._lock:
            self.producer.publisher = publisher
            self._collector_error = None
        self._link_retry_at = None
        publisher.notify()
        _log.info(
            "collector_link_started",
            address=str(self.config.collector_address),
            epoch=self.producer.spool.epoch,
            spooled=self.producer.spool.records,
            after="retry",
        )

    # ----------------------------------------------------------------- loop ---
    def run(self) -> int:
        self._install_signals()
        self.start()
        # Per kernel record the loop allocates a handful of short-lived, acyclic objects;
        # with the default thresholds the cyclic GC runs every 700 allocations and walks
        # the long-lived start-up objects (BCC, policies, protobuf) each time. Freeze
        # those and collect less often (bench --only stream: agent CPU 0.97 -> 0.91 cores).
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)
        next_resync = time.monotonic()
        fast_until = 0.0  # after a pod cgroup event: resync every FAST_RESYNC_S for a while
        next_flush = time.monotonic() + FLUSH_INTERVAL_S
        try:
            while not self._stop.is_set():
                self.guard.poll(POLL_MS)
                self._pump_notify()
                self._end_round()
                now = time.monotonic()
                self._heartbeat = now
                if self._policy_changed.is_set():
                    self._policy_changed.clear()
                    self._reload_policies()
                if self._pods_changed.is_set():
                    # The pod cgroup appears during RunPodSandbox, a moment before CRI
                    # lists the sandbox: look again a few times in quick succession.
                    self._pods_changed.clear()
                    fast_until = now + FAST_WINDOW_S
                    next_resync = now
                if now >= next_resync:
                    self._resync()
                    interval = self.config.resync_interval_ms / 1000
                    if now < fast_until:
                        interval = min(interval, FAST_RESYNC_S)
                    next_resync = now + interval
                if now >= next_flush:
                    self._flush()
                    self._retry_link(now)
                    next_flush = now + FLUSH_INTERVAL_S
        finally:
            self.shutdown()
        return 0

    def _alive(self) -> tuple[bool, str]:
        """Liveness: the main loop (ring buffer, resync) went round recently."""
        stalled = time.monotonic() - self._heartbeat
        if self._stop.is_set():
            return False, "stopping"
        if stalled > LIVENESS_STALL_S:
            return False, f"main loop stalled for {stalled:.0f}s"
        return True, "ok"

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            _log.info("agent_stopping", signal=signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def shutdown(self) -> None:
        with self._lock:
            if getattr(self, "api", None) is not None:
                self.api.stop()
            if getattr(self, "metrics_server", None) is not None and self.metrics_server:
                self.metrics_server.stop()
            if getattr(self, "seccomp_listener", None) is not None:
                self.seccomp_listener.stop()
            if getattr(self, "guard", None) is not None:
                self._flush()  # drains the ring buffer first
                self.guard.close()  # pinned: enforcement continues without us
            if self.producer is not None:
                drained = self.producer.close(drain_s=SHUTDOWN_DRAIN_S)
                if not drained:
                    _log.info(
                        "spool_kept",
                        records=self.producer.spool.records,
                        why="not acknowledged yet: the next agent sends them",
                    )
            # Containers whose listener fd we held get ENOSYS for denied socket kinds
            # from now on: still refused, no longer reported.
            self.notify.stop()
            if getattr(self, "events", None) is not None:
                self.events.close()
        _log.info("agent_stopped")

    def stop(self) -> None:
        self._stop.set()

    # -------------------------------------------------------------- policies ---
    def _watch_policies(self) -> None:
        while not self._stop.is_set():
            try:
                if self.store.wait_for_change(0.5):
                    self._policy_changed.set()
            except Exception as err:  # the watcher must not die silently
                _log.warning("policy_watch_failed", error=str(err))
                time.sleep(1)

    def fail_closed_namespaces(self) -> list[str]:
        """Namespaces whose new containers the runtime hook refuses while no agent answers:
        every namespace a policy selects ("*" when a policy selects by labels only) plus
        the configured ones."""
        names = set(self.config.fail_closed_namespaces)
        for lp in self.enforcer.policies.values():
            selector = lp.policy.spec.selector
            if selector is None:
                continue
            if selector.namespaces:
                names.update(selector.namespaces)
            else:
                names.add("*")
        return ["*"] if "*" in names else sorted(names)

    def _write_fail_closed(self) -> None:
        try:
            write_fail_closed_file(
                self.config.state_dir / "fail-closed-namespaces", self.fail_closed_namespaces()
            )
        except OSError as err:
            _log.warning("fail_closed_file_unwritable", error=str(err))

    def _note_policy_error(self, error: str | None) -> None:
        """Log and count a load error once per distinct error (not per re-read)."""
        if error and error != self._last_policy_error:
            self.metrics.policy_load_errors.inc()
            _log.error("policy_load_failed", error=error, kept="last good policies")
        elif not error and self._last_policy_error:
            _log.info("policy_load_recovered")
        self._last_policy_error = error

    def _watch_cgroups(self) -> None:
        watch = PodCgroupWatch(self.mount)
        try:
            while not self._stop.is_set():
                try:
                    if watch.wait(0.5):
                        self._pods_changed.set()
                except OSError as err:
                    _log.warning("cgroup_watch_failed", error=str(err))
                    time.sleep(1)
        finally:
            watch.close()

    def _reload_policies(self) -> None:
        started = time.monotonic()
        result = self.store.reload()
        self._note_policy_error(result.error)
        if result.error:
            return
        if not result.changed:
            return
        with self._lock:
            self.enforcer.apply_policies(result.policies)
            self.enforcer.reconcile([s.pod for s in self.enforcer.pods.values()])
            self._apply_sandbox()
        self._write_fail_closed()
        _log.info(
            "policies_applied",
            generation=result.generation,
            seconds=round(time.monotonic() - started, 4),
        )

    # ------------------------------------------------------------------ pods ---
    def _resync(self) -> None:
        started = time.monotonic()
        try:
            pods = self.cri.list_pods()
        except CRIError as err:
            reason = f"container runtime: {err.message}"
            if self._reasons != [reason]:  # log state changes, not every resync
                _log.warning("cri_unavailable", error=err.message)
            self._reasons = [reason]
            return
        if self._reasons:
            _log.info("cri_available")
        if self.store.generation == 0:
            # No valid policy set was ever loaded by this agent: reconciling would release
            # every pod an earlier agent guarded. Keep the kernel state exactly as adopted.
            reason = "no valid policy set loaded: kernel state kept as adopted, not reconciled"
            if reason not in self._reasons:
                _log.error("reconcile_skipped", reason=reason)
            self._reasons = [reason]
            self._ready = True
            return
        with self._lock:
            self.enforcer.reconcile(pods)
            if not self._cleaned:  # the first reconcile with a valid policy set
                stale = self.enforcer.stale_cgroup_entries()
                self.enforcer.drop_cgroup_entries(stale)
                keep = {lp.policy_id for lp in self.enforcer.policies.values()}
                removed = self.guard.gc_policies(keep)
                _log.info("state_reconciled", stale_cgroups=len(stale), stale_rules=removed)
                # Pods now run this version's programs (another version's were replaced
                # make-before-break): the old pin set, with its exec link, can go.
                for old in self._stale_pin_sets:
                    remove_pin_set(old)
                    _log.info("stale_pin_set_removed", path=str(old))
                self._stale_pin_sets = []
                self._cleaned = True
        self._reasons = []
        self._ready = True
        elapsed = time.monotonic() - started
        self.metrics.reconcile_seconds.observe(elapsed)
        self.metrics.pods_guarded.set(
            sum(1 for s in self.enforcer.pods.values() if s.policy is not None)
        )
        self.metrics.policies_loaded.set(len(self.enforcer.policies))

    def admit(self, req: AdmitRequest) -> AdmitResponse:
        """Runtime hook: make sure the pod is enforced before its container starts."""
        started = time.monotonic()
        try:
            if req.container_type == "sandbox":
                return AdmitResponse(True, False, None, "sandbox (pause) container")
            try:
                pod = self.cri.pod(req.sandbox_id)
            except CRIError as err:
                return AdmitResponse(False, False, None, f"container runtime: {err.message}")
            if pod is None:
                return AdmitResponse(False, False, None, f"pod sandbox {req.sandbox_id} unknown")
            if self.store.generation == 0:
                # Without a valid policy set the agent cannot tell what to enforce: treat
                # the pod as if no agent answered (fail closed where configured).
                allowed = pod.namespace not in self.fail_closed_namespaces() and (
                    "*" not in self.fail_closed_namespaces()
                )
                return AdmitResponse(allowed, False, None, "agent has no valid policy set")
            with self._lock:
                state = self.enforcer.ensure(pod)
            if state.selection.policy is None:
                return AdmitResponse(True, False, None, "no policy selects this pod")
            if state.policy is None:
                reason = state.error or "could not be enforced"
                return AdmitResponse(False, False, state.selection.policy.name, reason)
            loaded = self.enforcer.policies.get(state.policy)
            if loaded is not None:
                problem = admission_problem(
                    loaded.compiled,
                    self.arch,
                    req.seccomp,
                    listener=self.config.seccomp_listener_path,
                    profile_dir=self.config.seccomp_profile_dir,
                )
                if problem is not None:
                    _log.warning(
                        "container_refused_seccomp",
                        pod=pod.ref,
                        container=req.container_name,
                        policy=state.policy,
                        reason=problem,
                    )
                    return AdmitResponse(False, True, state.policy, problem)
            return AdmitResponse(True, True, state.policy, state.selection.reason)
        finally:
            self.metrics.admit_seconds.observe(time.monotonic() - started)

    # --------------------------------------------------------------- sandbox ---
    def _apply_sandbox(self) -> None:
        """After a policy change: the seccomp profiles pods reference, and the audit
        tracepoints of audited syscalls / socket families (lock held or start-up)."""
        cfg = self.config
        compiled = [lp.compiled for lp in self.enforcer.policies.values()]
        try:
            self._profiles = write_profiles(
                cfg.seccomp_profile_dir, compiled, self.arch, cfg.seccomp_listener_path
            )
            self._profile_error = None
        except OSError as err:
            self._profile_error = (
                f"seccomp profiles: cannot write {cfg.seccomp_profile_dir}: {err.strerror or err}"
            )
            _log.error("seccomp_profiles_unwritable", error=self._profile_error)
        names = sorted(
            {
                n
                for c in compiled
                if c.syscalls is not None and c.syscall_audit()
                for n in c.syscalls.names
            }
        )
        sockets = any(
            c.mode == "audit" and c.sockets is not None and bool(c.sockets.seccomp_families)
            for c in compiled
        )
        try:
            self._untraceable = self.guard.set_audit(names, sockets)
        except NodeguardError as err:
            _log.error("audit_tracepoints_failed", error=str(err))
        if self._untraceable:
            _log.warning(
                "audit_untraceable",
                syscalls=self._untraceable,
                hint="no tracepoint on this kernel: audit cannot observe them",
            )

    def _on_seccomp_fd(self, fd: int, st: ProcessState) -> None:
        """runc handed over a container's seccomp listener fd (listener thread)."""
        uid = st.annotations.get(SANDBOX_UID, "")
        named = (
            st.metadata.removeprefix(METADATA_PREFIX)
            if st.metadata.startswith(METADATA_PREFIX)
            else None
        )
        mount = self.mount
        fallback = 0
        if st.pid:
            with contextlib.suppress(OSError, NodeguardError):
                fallback = cgroup_id(own_cgroup_path(mount, st.pid))
        enforcer = self.enforcer

        def policy_of() -> tuple[int, CompiledSockets | None]:
            state = enforcer.pods.get(uid)
            name = state.policy if state is not None and state.policy else named
            loaded = enforcer.policies.get(name) if name else None
            if loaded is None:
                return 0, None
            return loaded.policy_id, loaded.compiled.sockets

        def cgroup_of(tid: int) -> int:
            try:
                return cgroup_id(own_cgroup_path(mount, tid))
            except (OSError, NodeguardError):
                return fallback

        pod = (
            f"{st.annotations.get(SANDBOX_NAMESPACE, '?')}/{st.annotations.get(SANDBOX_NAME, '?')}"
        )
        label = f"{pod}/{st.annotations.get(CONTAINER_NAME, st.container_id[:12])}"
        self.notify.add(Listener(fd, policy_of, cgroup_of, label=label))
        _log.info(
            "seccomp_listener_received",
            container=st.container_id[:12],
            pod=pod,
            policy=named,
            pid=st.pid,
        )

    def _policy_warnings(self, compiled: Any) -> tuple[str, ...]:
        syscalls = compiled.syscalls
        if syscalls is None or not compiled.syscall_audit():
            return ()
        missing = sorted(set(self._untraceable) & set(syscalls.names))
        return (_untraceable_warning(missing),) if missing else ()

    def _pump_notify(self) -> None:
        """Records the seccomp notify server made (on its thread) into the record path."""
        while True:
            try:
                data = self._notify_records.get_nowait()
            except queue.Empty:
                return
            self._on_record(data)

    def _pod_removed(self, cgid: int) -> None:
        """Flush, then drop, the aggregates of a cgroup that is gone (lock held)."""
        self.guard.drain()
        mine = [(k, v) for k, v in self.guard.aggregates() if k.cgroup_id == cgid]
        for violation in self.builder.flush(mine):
            self._emit(violation)
        table = self.guard.table("agg")
        for key, _ in mine:
            del table[key]
        self.builder.forget_cgroup(cgid)

    def _workload_of(self, cgid: int) -> Any:
        return self.enforcer.workload_of(cgid)

    # ---------------------------------------------------------------- events ---
    def _on_record(self, data: bytes) -> None:
        raw = decode(data, self.stats)
        if raw is None:
            return
        with self._lock:
            violation = self.builder.from_record(raw)
        if violation is not None:
            self._emit(violation)

    def _emit(self, v: Violation) -> None:
        w = v.workload
        with self._emit_lock:
            self.records += 1
            self.by_kind[v.kind] += v.count
            if w is not None and w.pod_uid:
                self.pod_violations[w.pod_uid] += v.count
            key = (v.kind, v.verdict, v.policy.name, (w.namespace if w else None) or "")
            self._violation_counts[key] += v.count
        if self._event_log_on:
            self.events.write(to_json_line(v))
        if self.producer is not None:
            self.producer.add_violation(v)

    def _end_round(self) -> None:
        """Once per loop round: the round's violations to the metrics and the spool."""
        if self._violation_counts:
            with self._emit_lock:
                counts, self._violation_counts = self._violation_counts, Counter()
            for (kind, verdict, policy, namespace), n in counts.items():
                self.metrics.violation(kind, verdict, policy, namespace, n)
        if self.producer is not None:
            self.producer.flush()

    def _reported_rows(self) -> list[tuple[str, int, int, int]]:
        """The tracker keys advanced since the last spool append (see checkpoint.py)."""
        return [(checkpoint.key_text(k), c, f, a) for k, c, f, a in self.builder.take_reported()]

    def _userspace_lost(self) -> int:
        """Records read from the kernel that did not make it: the local log could not
        write them, or the spool could not store them."""
        return self.events.dropped + (self.producer.lost if self.producer is not None else 0)

    def _stream_losses(self, k: dict[str, int]) -> None:
        """Kernel and user-space losses in-band, and the telemetry heartbeat when due."""
        producer = self.producer
        if producer is None:
            return
        producer.report_loss(
            pb.LOSS_REASON_KERNEL,
            k.get("ringbuf_full", 0),
            persistent=True,
            attempts_cumulative=k.get("lost_attempts", 0),
        )
        undecodable = self.stats.unknown_op + self.stats.malformed
        producer.report_loss(pb.LOSS_REASON_USERSPACE, undecodable + producer.lost)
        now = time.monotonic()
        if now >= self._next_telemetry:
            self._next_telemetry = now + self.config.telemetry_interval
            link = producer.stats()
            state = "degraded" if self._reasons else "ready"
            with self._lock:  # the pods and policies change under the API thread
                guarded = sum(1 for s in self.enforcer.pods.values() if s.policy is not None)
                policies = len(self.enforcer.policies)
            producer.add_telemetry(
                state if self._ready else "starting",
                {
                    "records": self.records,
                    "violations": sum(self.by_kind.values()),
                    "aggregated": k.get("aggregated", 0),
                    "lost_in_kernel": k.get("ringbuf_full", 0),
                    "lost_in_userspace": self._userspace_lost(),
                    "undecodable": undecodable,
                    "spool_records": link.spool_records if link else 0,
                    "spool_bytes": link.spool_bytes if link else 0,
                    "spool_dropped": link.dropped_total if link else 0,
                    "rejected": link.rejected if link else 0,
                    "pods_guarded": guarded,
                    "policies": policies,
                },
            )
        producer.flush()

    def _flush(self) -> None:
        self._pump_notify()
        with self._lock:
            self.guard.drain()
            aggregates = self.guard.aggregates() + self.notify.aggregates()
            for violation in self.builder.flush(aggregates):
                self._emit(violation)
            k = self.guard.counters()
            self.events.flush()  # records first, then the checkpoint that says so
        self._end_round()  # the round's records (residuals included) into the spool first
        with self._lock:
            try:
                checkpoint.save(self._checkpoint_path, self.builder.tracker)
            except OSError as err:
                _log.warning("checkpoint_unwritable", error=str(err))
            else:
                if self.producer is not None:
                    try:
                        self.producer.spool.clear_reported()
                    except NodeguardError as err:
                        _log.warning("spool_reported_uncleared", error=str(err))
        self._stream_losses(k)
        self.metrics.lost_total("kernel", k.get("ringbuf_full", 0))
        self.metrics.lost_total("userspace", self._userspace_lost())
        self.metrics.records_total(self.records)
        self.metrics.aggregated_total(k.get("aggregated", 0))
        self.metrics.runtime_execs_total(k.get("exec_begun_outside", 0))
        self.metrics.delivery(self.producer.stats() if self.producer is not None else None)

    # ---------------------------------------------------------------- status ---
    def kernel_counters(self) -> dict[str, int]:
        return self.guard.counters()

    def snapshot(self) -> StatusSnapshot:
        with self._lock:
            now = time.time()
            reasons = list(self._reasons)
            if self.store.last_error:
                reasons.append("policy directory: last load failed, the last good policies stay")
            if self._profile_error:
                reasons.append(self._profile_error)
            if self._collector_error:
                reasons.append(self._collector_error)
            if not self._ready:
                state: AgentState = "starting"
            else:
                state = "degraded" if reasons else "ready"
            health = AgentHealth(
                state=state,
                started_at=self.started_at,
                uptime_s=now - self.started_at,
                node=self.config.node_name,
                version=__version__,
                pid=os.getpid(),
                reasons=tuple(reasons),
            )
            counts = Counter(s.policy for s in self.enforcer.pods.values() if s.policy)
            policies = tuple(
                PolicyStatus(
                    name=name,
                    version=lp.compiled.version,
                    mode=lp.compiled.mode,
                    pods=counts.get(name, 0),
                    source_file=(lp.policy.source.file if lp.policy.source else ""),
                    seccomp_profile=(str(self._profiles[name]) if name in self._profiles else None),
                    enforcement=enforcement(
                        lp.compiled,
                        profile_path=self._profiles.get(name),
                        listener=self.config.seccomp_listener_path,
                        untraceable=self._untraceable,
                    ),
                    warnings=self._policy_warnings(lp.compiled),
                )
                for name, lp in sorted(self.enforcer.policies.items())
            )
            pods = tuple(
                PodStatus(
                    namespace=s.pod.namespace,
                    name=s.pod.name,
                    uid=s.pod.uid,
                    policy=s.policy,
                    mode=(
                        self.enforcer.policies[s.policy].compiled.mode
                        if s.policy in self.enforcer.policies
                        else "-"
                    ),
                    selection_reason=s.error or s.selection.reason,
                    violations=self.pod_violations.get(s.pod.uid, 0),
                    cgroup=str(s.cgroup or ""),
                    guarded_since=s.guarded_since,
                )
                for s in sorted(self.enforcer.pods.values(), key=lambda s: s.pod.ref)
            )
            k = self.kernel_counters()
            link = self.producer.stats() if self.producer is not None else None
            counters = Counters(
                violations_by_kind=dict(self.by_kind),
                aggregated=k.get("aggregated", 0),
                lost_in_kernel=k.get("ringbuf_full", 0),
                lost_in_userspace=self._userspace_lost(),
                undecodable=self.stats.unknown_op + self.stats.malformed,
                records=self.records,
                lost_in_spool=dict(link.dropped) if link is not None else {},
                execs_begun_outside=k.get("exec_begun_outside", 0),
            )
            pdir = PolicyDirStatus(
                path=str(self.config.policy_dir),
                generation=self.store.generation,
                last_error=self.store.last_error,
                last_error_at=self.store.last_error_at,
                last_loaded_at=self.store.snapshot().loaded_at,
            )
            collector = collector_link(link)
            if link is None and self.producer is not None:  # configured, link not started
                collector = spool_only_link(
                    self.producer.spool.stats(),
                    str(self.config.collector_address),
                    self._collector_error,
                )
            elif self._collector_error is not None:  # configured, no spool either
                collector = CollectorLink(
                    state="disconnected",
                    address=str(self.config.collector_address),
                    last_error=self._collector_error,
                )
            return StatusSnapshot(
                agent=health,
                kernel=self._kernel_info,
                policies=policies,
                pods=pods,
                counters=counters,
                policy_dir=pdir,
                collector=collector,
            )


def spool_only_link(spool: SpoolStats, address: str, error: str | None) -> CollectorLink:
    """The status view when a collector is configured but its link could not start: the
    spool still takes every record."""
    oldest = None if spool.oldest_ms is None else max(0.0, time.time() - spool.oldest_ms / 1000)
    return CollectorLink(
        state="disconnected",
        address=address,
        epoch=spool.epoch,
        rejected=spool.rejected,
        rejected_attempts=spool.rejected_attempts,
        spool_path=spool.path,
        spool_records=spool.records,
        spool_bytes=spool.bytes,
        spool_max_bytes=spool.max_bytes,
        spool_oldest_age_s=oldest,
        dropped=dict(spool.dropped),
        dropped_attempts=spool.dropped_attempts_total,
        last_error=error,
    )


def collector_link(stats: PublisherStats | None) -> CollectorLink:
    """The status view of the publisher's figures (None: no collector configured)."""
    if stats is None:
        return CollectorLink(state="not configured")
    state: CollectorState
    if stats.state in ("connected", "connecting"):
        state = "connected" if stats.state == "connected" else "connecting"
    else:
        state = "disconnected"
    return CollectorLink(
        state=state,
        address=stats.address,
        epoch=stats.epoch,
        sent=stats.sent,
        acked=stats.acked,
        duplicates=stats.duplicates,
        rejected=stats.rejected,
        rejected_attempts=stats.rejected_attempts,
        in_flight=stats.in_flight,
        spool_path=stats.spool_path,
        spool_records=stats.spool_records,
        spool_bytes=stats.spool_bytes,
        spool_max_bytes=stats.spool_max_bytes,
        spool_oldest_age_s=stats.spool_oldest_age_s,
        dropped=dict(stats.dropped),
        dropped_attempts=stats.dropped_attempts_total,
        last_error=stats.last_error,
        last_error_at=None if stats.last_error_ms is None else stats.last_error_ms / 1000,
        last_ack_at=None if stats.last_ack_ms is None else stats.last_ack_ms / 1000,
        reconnects=stats.reconnects,
    )


def _untraceable_warning(names: list[str]) -> str:
    return (
        "audit cannot observe "
        + ", ".join(names)
        + " (no tracepoint for it on this kernel); the kill action would still stop it"
    )


def teardown(config: AgentConfig, limits: GuardLimits | None = None) -> int:
    """Detach nodeguard from every cgroup it guards on this node and remove its pins."""
    from nodeguard.bpf.guard import detach_ours, remove_pin_set  # noqa: PLC0415

    mount = preflight()
    guard = Guard(limits or GuardLimits(), pin_root=config.pin_dir)
    cgids = {int(k.value) for k in guard.table("cgroup_policy").keys()}  # noqa: SIM118
    detached = 0
    for root, dirs, _files in os.walk(mount):
        for d in dirs:
            path = Path(root) / d
            try:
                if os.stat(path).st_ino not in cgids:
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            try:
                detached += detach_ours(fd)
            finally:
                os.close(fd)
    guard.close()
    for pin_set in [guard.pin_dir, *stale_pin_sets(config.pin_dir, guard.version)]:
        if pin_set is not None:
            remove_pin_set(pin_set)
    with contextlib.suppress(OSError):  # the root too, when nothing else lives there
        config.pin_dir.rmdir()
    _log.info("teardown_done", detached=detached, cgroups=len(cgids))
    print(f"nodeguard: detached {detached} programs from {len(cgids)} cgroups; pins removed")
    return 0
