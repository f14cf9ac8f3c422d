"""`nodeguard run`: one command in a fresh cgroup under one policy, from its first instruction.

Order matters: the policy is parsed and compiled before anything touches the kernel; the
cgroup is created and guarded before the command is started; the command's process
joins the cgroup between fork and exec (so even its own exec is checked). On the way out,
whatever the command left in the cgroup is killed, the ring buffer is drained, the
aggregates are flushed so every attempt is counted, and everything is detached and
removed, also after Ctrl-C, SIGTERM or an error.

With ``--collector`` the violations are also published to a collector, as the node
agent does (spool + publisher, :mod:`nodeguard.delivery`): the spool is a temporary
file, the epoch is the run's start, the node is the one the client certificate names.
At the end the run waits up to ``--collector-wait`` seconds for every record to be
acknowledged; what is not is left in the spool file, whose path the summary prints.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from nodeguard import log
from nodeguard.bpf.guard import Guard, GuardLimits
from nodeguard.delivery.producer import Producer
from nodeguard.delivery.publisher import Publisher, PublisherTLS, certificate_node
from nodeguard.delivery.spool import Spool, new_epoch
from nodeguard.errors import CommandError, NodeguardError
from nodeguard.events.aggregate import CountTracker
from nodeguard.events.build import ViolationBuilder
from nodeguard.events.clock import MonotonicClock
from nodeguard.events.decode import DecodeStats, decode
from nodeguard.events.model import PolicyRef, Violation
from nodeguard.events.ocsf import to_json_line
from nodeguard.identity.cgroupfs import cgroup_id, kill_all, own_cgroup_path
from nodeguard.policy import compile_policy, load_policy_file
from nodeguard.policy.compiled import CompiledPolicy, Mode
from nodeguard.policy.syscalls import host_arch
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb
from nodeguard.runner.cgroup import create_run_cgroup, remove_run_cgroup, sweep_stale
from nodeguard.runner.identity import RunAs, describe, resolve_user
from nodeguard.runner.preflight import preflight, require_root
from nodeguard.runner.report import (
    DeliveryReport,
    RunReport,
    describe_violation,
    render_delivery,
    render_summary,
)
from nodeguard.seccomp import filter as seccomp_filter
from nodeguard.seccomp.install import install as install_seccomp
from nodeguard.seccomp.notify import SocketNotifier

EXIT_VIOLATION = 3
POLL_MS = 100
SIGINT_GRACE_S = 2.0  # Ctrl-C from a terminal already reached the command's process group
STOP_GRACE_S = 5.0  # after forwarding a signal, wait this long before killing the cgroup

_log = log.get("nodeguard.runner")


@dataclass(frozen=True, slots=True)
class Sandbox:
    """The seccomp side of a run: the filter the child installs before exec, and what
    the supervisor needs to serve its socket notifications."""

    program: bytes
    plan: seccomp_filter.SeccompPlan
    policy: CompiledPolicy
    policy_id: int


@dataclass(frozen=True, slots=True)
class CollectorOptions:
    """Where ``--collector`` publishes: ``host:port``, mutual TLS, and how long the end of
    the run waits for the collector to acknowledge everything."""

    address: str
    tls: PublisherTLS
    wait_s: float = 10.0


@dataclass(frozen=True, slots=True)
class RunOptions:
    policy_file: Path
    command: list[str]
    policy_name: str | None = None
    mode: Mode | None = None
    events: str | None = None  # path, "-" for stdout, None for none
    fail_on_violation: bool = False
    quiet: bool = False
    user: str | None = None  # None: the sudo caller, else the current user
    limits: GuardLimits = field(default_factory=GuardLimits)
    collector: CollectorOptions | None = None


def select_policy(path: Path, name: str | None) -> CompiledPolicy:
    policies = load_policy_file(path)
    if name is not None:
        chosen = [p for p in policies if p.metadata.name == name]
        if not chosen:
            names = ", ".join(p.metadata.name for p in policies)
            raise NodeguardError(f"{path}: no policy named {name!r}", fix=f"choose one of: {names}")
        return compile_policy(chosen[0])
    if len(policies) > 1:
        names = ", ".join(p.metadata.name for p in policies)
        raise NodeguardError(
            f"{path} holds {len(policies)} policies ({names})",
            fix="pick one with --name NAME",
        )
    return compile_policy(policies[0])


def resolve_command(command: list[str]) -> str:
    """Absolute path of the program, as the exec allowlist will see it."""
    if not command:
        raise CommandError("no command given", fix="nodeguard run --policy FILE -- CMD [ARG...]")
    prog = command[0]
    found = prog if "/" in prog else shutil.which(prog)
    if found is None or not os.access(found, os.X_OK) or os.path.isdir(found):
        raise CommandError(
            f"command not found or not executable: {prog}",
            fix="give a path, or a program name that is on PATH",
        )
    return os.path.abspath(found)


def _open_events(target: str | None) -> IO[str] | None:
    if target is None:
        return None
    if target == "-":
        return None  # stdout, handled by the writer
    try:
        return open(target, "a", encoding="utf-8", buffering=1)
    except OSError as err:
        raise NodeguardError(
            f"cannot open the events file {target}: {err.strerror}",
            fix="give a writable path, or '-' for stdout",
        ) from err


class _Signals:
    """Turns SIGINT/SIGTERM/SIGHUP into flags the run loop acts on."""

    WATCHED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)

    def __enter__(self) -> _Signals:
        for sig in self.WATCHED:
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


class RunSession:
    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.report = RunReport()
        self.stats = DecodeStats()
        self._out: IO[str] | None = None
        self._stdout = opts.events == "-"
        self._records: queue.SimpleQueue[bytes] = queue.SimpleQueue()  # from the notifier
        self._notifier: SocketNotifier | None = None
        self._mount = Path("/")
        self._producer: Producer | None = None
        self._spool_dir: Path | None = None

    # --------------------------------------------------------------- events ---
    def _emit(self, violation: Violation) -> None:
        self.report.add(violation)
        if self._producer is not None:
            self._producer.add_violation(violation)
        if self._stdout or self._out is not None:
            line = to_json_line(violation)
            if self._stdout:
                print(line, flush=True)
            elif self._out is not None:
                self._out.write(line + "\n")
        if not self.opts.quiet:
            print(f"nodeguard: {describe_violation(violation)}", file=sys.stderr, flush=True)

    def _on_record(self, builder: ViolationBuilder, data: bytes) -> None:
        raw = decode(data, self.stats)
        if raw is None:
            return
        violation = builder.from_record(raw)
        if violation is not None:
            self._emit(violation)

    # ------------------------------------------------------------ collector ---
    def _start_publishing(self, collector: CollectorOptions) -> str:
        """Spool and publisher for ``--collector``; returns the node the certificate
        names (the node the collector accepts this run's records for)."""
        node = certificate_node(collector.tls.cert, collector.tls.names[1])
        started_ms = time.time_ns() // 1_000_000
        spool_dir = Path(tempfile.mkdtemp(prefix="nodeguard-run-spool-"))
        spool = Spool(spool_dir / "spool.db", epoch=new_epoch(started_ms))
        publisher = Publisher(
            spool, collector.address, node=node, tls=collector.tls, producer="run"
        )
        try:
            collector.tls.read()  # a clear error now; the thread starts after the fork
        except NodeguardError:
            spool.close()
            shutil.rmtree(spool_dir, ignore_errors=True)
            raise
        self._spool_dir = spool_dir
        self._producer = Producer(spool, publisher)
        _log.info("run_publishing", collector=collector.address, node=node, epoch=spool.epoch)
        return node

    def _finish_publishing(self, wait_s: float) -> DeliveryReport | None:
        """Wait up to ``wait_s`` for the collector to acknowledge everything; remove the
        spool when it did, keep it (and say where) when not."""
        producer, spool_dir = self._producer, self._spool_dir
        if producer is None or producer.publisher is None or spool_dir is None:
            return None
        self._producer = None
        publisher = producer.publisher
        producer.flush()
        if not publisher.started:
            publisher.start()
        drained = wait_s > 0 and publisher.wait_drained(wait_s)
        stats = publisher.stats()
        publisher.stop()
        left = producer.spool.records
        producer.spool.close()
        kept: Path | None = None
        if drained or left == 0:
            shutil.rmtree(spool_dir, ignore_errors=True)
        else:
            kept = spool_dir / "spool.db"
        return DeliveryReport(
            address=publisher.address,
            node=publisher.node,
            records=producer.appended,
            acked=stats.acked,
            stored=stats.stored,
            duplicates=stats.duplicates,
            rejected=stats.rejected,
            undelivered=left,
            lost=producer.lost,
            waited_s=wait_s,
            last_error=stats.last_error,
            spool=kept,
        )

    def _stream_losses(self) -> None:
        """What the run knows it lost, in-band (the summary says it too)."""
        if self._producer is None:
            return
        lost = self.report.kernel.get("ringbuf_full", 0)
        self._producer.report_loss(pb.LOSS_REASON_KERNEL, lost)
        self._producer.report_loss(pb.LOSS_REASON_USERSPACE, self.report.undecodable)
        self._producer.flush()

    # ------------------------------------------------------------------ run ---
    def run(self) -> int:
        opts = self.opts
        require_root()
        compiled = select_policy(opts.policy_file, opts.policy_name)
        executable = resolve_command(opts.command)
        run_as = resolve_user(opts.user)
        mount = preflight()
        self._mount = mount
        sweep_stale(mount)
        node = socket.gethostname()
        if opts.collector is not None:
            node = self._start_publishing(opts.collector)
        try:
            return self._run(compiled, executable, run_as, mount, node)
        finally:
            if self._producer is not None:  # an error before the end: keep what is spooled
                self._abandon_publishing()

    def _abandon_publishing(self) -> None:
        producer, spool_dir = self._producer, self._spool_dir
        self._producer = None
        if producer is None or spool_dir is None:
            return
        with contextlib.suppress(NodeguardError):
            producer.flush()
        if producer.publisher is not None and producer.publisher.started:
            producer.publisher.stop()
        left = producer.spool.records
        producer.spool.close()
        if left == 0:
            shutil.rmtree(spool_dir, ignore_errors=True)
        else:
            print(
                f"nodeguard: {left:,} records for the collector were not delivered; they are "
                f"kept in {spool_dir / 'spool.db'}",
                file=sys.stderr,
                flush=True,
            )

    def _run(
        self, compiled: CompiledPolicy, executable: str, run_as: RunAs, mount: Path, node: str
    ) -> int:
        opts = self.opts
        self._out = _open_events(opts.events)
        mode: Mode = opts.mode or compiled.mode
        self.report.policy = compiled
        self.report.mode = mode

        guard: Guard | None = None
        cgroup: Path | None = None
        try:
            # assembled before anything touches the kernel: a filter error changes nothing
            plan = seccomp_filter.plan(compiled, mode)
            program = seccomp_filter.assemble(plan, host_arch()) if plan is not None else None
            guard = Guard(opts.limits)
            policy_id = guard.load_policy(compiled)
            sandbox = (
                Sandbox(program, plan, compiled, policy_id)
                if plan is not None and program is not None
                else None
            )
            cgroup = create_run_cgroup(mount)
            cgid = guard.guard(mount, cgroup, policy_id, mode)
            self._set_audit(guard, compiled, mode)
            if compiled.limits is not None:
                guard.add_processes(cgid, 1)  # the command joins from outside
            ref = PolicyRef(
                name=compiled.name, uid=compiled.uid, version=compiled.version, mode=mode
            )
            builder = ViolationBuilder(
                policies={policy_id: ref},
                clock=MonotonicClock(),
                tracker=CountTracker(),
                node=node,
                enrich=True,
            )
            guard.on_record(lambda data: self._on_record(builder, data))
            _log.info(
                "run_started",
                policy=compiled.name,
                mode=mode,
                cgroup=str(cgroup),
                user=describe(run_as),
            )
            status = self._supervise(
                guard, cgroup, executable, run_as, sandbox, lambda: self._round(builder)
            )
            # Final accounting: every attempt the kernel counted becomes part of a record.
            guard.drain()
            self._pump(builder)
            residuals = guard.aggregates()
            if self._notifier is not None:
                residuals += self._notifier.aggregates()
            for key, value in residuals:
                residual = builder.from_residual(key, value)
                if residual is not None:
                    self._emit(residual)
            self.report.kernel = guard.counters()
            self.report.undecodable = self.stats.unknown_op + self.stats.malformed
            self._stream_losses()
        finally:
            if self._notifier is not None:
                self._notifier.stop()
            if guard is not None:
                guard.close()
            if cgroup is not None:
                remove_run_cgroup(mount, cgroup)
            if self._out is not None:
                self._out.close()

        self.report.exit_status = status
        if opts.collector is not None:
            self.report.delivery = self._finish_publishing(opts.collector.wait_s)
        delivery = self.report.delivery
        if not opts.quiet or self.report.attempts:
            print(render_summary(self.report), file=sys.stderr, flush=True)
        elif delivery is not None and delivery.undelivered:
            print(render_delivery(delivery), file=sys.stderr, flush=True)
        if opts.fail_on_violation and self.report.attempts:
            return EXIT_VIOLATION
        return status

    def _round(self, builder: ViolationBuilder) -> None:
        """Once per supervision round: the notifier's records in, the round's records to
        the spool (one transaction)."""
        self._pump(builder)
        if self._producer is not None:
            self._producer.flush()

    def _pump(self, builder: ViolationBuilder) -> None:
        """Records the seccomp notifier made (on its thread) into the stream, here."""
        while True:
            try:
                data = self._records.get_nowait()
            except queue.Empty:
                return
            self._on_record(builder, data)

    def _set_audit(self, guard: Guard, compiled: CompiledPolicy, mode: Mode) -> None:
        """Audit of syscalls / non-inet sockets: per-syscall tracepoints, only now."""
        names = (
            compiled.syscalls.names
            if compiled.syscalls is not None and compiled.syscall_audit(mode)
            else ()
        )
        sockets = mode == "audit" and bool(
            compiled.sockets is not None and compiled.sockets.seccomp_families
        )
        missing = guard.set_audit(names, sockets)
        if missing:
            print(
                "nodeguard: warning: audit cannot observe "
                + ", ".join(missing)
                + " (no tracepoint for it on this kernel); the kill action would still "
                "stop it (seccomp)",
                file=sys.stderr,
                flush=True,
            )

    def _start_notifier(self, sandbox: Sandbox, sock: socket.socket, cgroup: Path) -> None:
        sock.settimeout(10)
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(sock, 1, 1)
        except OSError as err:
            raise CommandError(f"did not receive the seccomp listener: {err}") from err
        if not fds or sandbox.policy.sockets is None:
            raise CommandError("the command started without a seccomp listener")
        mount = self._mount
        fallback = cgroup_id(cgroup)

        def cgroup_of(tid: int) -> int:
            try:
                return cgroup_id(own_cgroup_path(mount, tid))
            except (OSError, NodeguardError):
                return fallback

        self._notifier = SocketNotifier(
            fds[0],
            sandbox.policy.sockets,
            sandbox.policy_id,
            cgroup_of=cgroup_of,
            emit=self._records.put,
        )
        self._notifier.start()

    def _supervise(  # noqa: PLR0917 - one call site, all needed
        self,
        guard: Guard,
        cgroup: Path,
        executable: str,
        run_as: RunAs,
        sandbox: Sandbox | None,
        pump: Callable[[], None],
    ) -> int:
        procs = cgroup / "cgroup.procs"
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

        def join_cgroup() -> None:  # runs in the child between fork and exec
            with open(procs, "w") as f:
                f.write("0")
            run_as.apply()  # after joining: an unprivileged user could not join
            if sandbox is not None:  # last: the filter also applies to what follows
                fd = install_seccomp(sandbox.program, listener=sandbox.plan.needs_listener)
                if fd is not None:
                    socket.send_fds(child_sock, [b"L"], [fd])
                    os.close(fd)

        with _Signals() as signals, parent_sock, child_sock:
            try:
                child = subprocess.Popen(
                    self.opts.command,
                    executable=executable,
                    # safe: nodeguard runs no threads yet; the child must be in the cgroup
                    # before exec (no posix_spawn/clone3 cgroup option in Python)
                    preexec_fn=join_cgroup,  # noqa: PLW1509
                )
            except (OSError, subprocess.SubprocessError) as err:
                raise CommandError(f"cannot start {self.opts.command[0]}: {err}") from err
            if self._producer is not None and self._producer.publisher is not None:
                # after the fork: gRPC's threads must not exist while preexec_fn runs
                self._producer.publisher.start()
            if sandbox is not None and sandbox.plan.needs_listener:
                self._start_notifier(sandbox, parent_sock, cgroup)
            forward_at: float | None = None
            kill_at: float | None = None
            while True:
                guard.poll(POLL_MS)
                pump()
                status = child.poll()
                if status is not None:
                    break
                now = time.monotonic()
                while signals.received:
                    sig = signals.received.pop(0)
                    if kill_at is not None:  # second signal: stop now
                        kill_at = now
                    elif sig == signal.SIGINT:
                        forward_at = now + SIGINT_GRACE_S
                        kill_at = now + SIGINT_GRACE_S + STOP_GRACE_S
                    else:
                        child.send_signal(sig)
                        kill_at = now + STOP_GRACE_S
                    _log.info("run_signal", signal=signal.Signals(sig).name)
                if forward_at is not None and now >= forward_at:
                    child.send_signal(signal.SIGINT)
                    forward_at = None
                if kill_at is not None and now >= kill_at:
                    kill_all(cgroup)
                    kill_at = None
            # What the command left behind (daemons, stragglers) does not outlive the run.
            kill_all(cgroup)
            guard.poll(0)
        return status if status >= 0 else 128 - status


def run(opts: RunOptions) -> int:
    return RunSession(opts).run()
