"""Prometheus metrics of the node agent, and its metrics/health HTTP endpoint.

:class:`AgentMetrics` owns a private :class:`~prometheus_client.CollectorRegistry` (never
the process-global one, so tests and embedded use never collide). Exposed metrics:

======================================== ========= ==========================================
name                                     type      labels / meaning
======================================== ========= ==========================================
nodeguard_violations_total               counter   kind, verdict (blocked|audited), policy,
                                                   namespace; counts attempts, repeats included
nodeguard_events_lost_total              counter   where = kernel | userspace | spool (violation
                                                   records dropped from a full spool)
nodeguard_records_total                  counter   violation records received from the kernel
nodeguard_aggregated_total               counter   repeats folded into a record in the kernel
nodeguard_runtime_execs_total            counter   execs let through: begun before the runtime
                                                   moved the process into a guarded cgroup
nodeguard_pods_guarded                   gauge     pods under a policy now
nodeguard_policies_loaded                gauge     policies in force now
nodeguard_policy_load_errors_total       counter   policy directory loads that failed
nodeguard_reconcile_seconds              histogram one reconcile pass (CRI + cgroups + kernel)
nodeguard_admit_seconds                  histogram one runtime-hook admit, received to answered
nodeguard_agent_up                       gauge     1 while the agent runs
nodeguard_spool_records                  gauge     records waiting in the spool for the collector
nodeguard_spool_bytes                    gauge     their bytes
nodeguard_spool_dropped_total            counter   priority = telemetry | audit | violation:
                                                   records dropped because the spool was full
nodeguard_collector_up                   gauge     1 while the stream to the collector is
                                                   connected (0: disconnected or connecting)
nodeguard_publish_acked_total            counter   records the collector acknowledged
nodeguard_publish_rejected_total         counter   records the collector refused (lost)
nodeguard_agent_info                     info      version, node
======================================== ========= ==========================================

Counts that the kernel keeps cumulatively (pinned maps outlive the agent) are fed with
the ``*_total(cumulative)`` setters, which add the increase since the last call (a
decrease means the source was reset: the new value is added).

:class:`MetricsServer` serves ``/metrics``, ``/healthz`` and ``/readyz`` over HTTP (stdlib
``ThreadingHTTPServer``) for Prometheus and the kubelet's probes.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from nodeguard import __version__
from nodeguard.errors import NodeguardError

# The classic text format generate_latest() writes (newer prometheus-client versions
# advertise 1.0.0 by default, which older Prometheus servers do not know).
CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"

RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ADMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Check = Callable[[], bool | tuple[bool, str]]
SPOOL_PRIORITIES = ("telemetry", "audit", "violation")


class DeliveryFigures(Protocol):
    """What :meth:`AgentMetrics.delivery` reads (a PublisherStats fits)."""

    @property
    def state(self) -> str: ...
    @property
    def spool_records(self) -> int: ...
    @property
    def spool_bytes(self) -> int: ...
    @property
    def acked(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def dropped(self) -> Mapping[str, int]: ...


class MetricsServerError(NodeguardError):
    """The metrics address is invalid or cannot be bound."""


class AgentMetrics:
    """Every metric of the agent, registered in ``self.registry``."""

    def __init__(self, *, node: str = "", registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.violations = Counter(
            "nodeguard_violations",
            "Policy violations (every attempt, aggregated repeats included).",
            ["kind", "verdict", "policy", "namespace"],
            registry=r,
        )
        self.events_lost = Counter(
            "nodeguard_events_lost",
            "Violation events that could not be delivered (where: kernel or userspace).",
            ["where"],
            registry=r,
        )
        self.records = Counter(
            "nodeguard_records", "Violation records read from the kernel ring buffer.", registry=r
        )
        self.aggregated = Counter(
            "nodeguard_aggregated",
            "Repeated violations folded into an existing record by the kernel.",
            registry=r,
        )
        self.runtime_execs = Counter(
            "nodeguard_runtime_execs",
            "Execs let through because they began before the container runtime moved their "
            "process into a guarded cgroup (runc init's self-clone), not the workload's.",
            registry=r,
        )
        self.pods_guarded = Gauge(
            "nodeguard_pods_guarded", "Pods currently under a policy.", registry=r
        )
        self.policies_loaded = Gauge(
            "nodeguard_policies_loaded", "Policies currently in force.", registry=r
        )
        self.policy_load_errors = Counter(
            "nodeguard_policy_load_errors",
            "Policy directory loads that failed (the previous policies stayed in force).",
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "nodeguard_reconcile_seconds",
            "Duration of one reconcile pass.",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.admit_seconds = Histogram(
            "nodeguard_admit_seconds",
            "Duration of one runtime-hook admit request, received to answered.",
            buckets=ADMIT_BUCKETS,
            registry=r,
        )
        self.spool_records = Gauge(
            "nodeguard_spool_records",
            "Records waiting in the on-disk spool for the collector.",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "nodeguard_spool_bytes", "Bytes of the records waiting in the spool.", registry=r
        )
        self.spool_dropped = Counter(
            "nodeguard_spool_dropped",
            "Records dropped from the spool because it was full (lowest priority first).",
            ["priority"],
            registry=r,
        )
        self.collector_up = Gauge(
            "nodeguard_collector_up",
            "1 while the stream to the collector is connected.",
            registry=r,
        )
        self.publish_acked = Counter(
            "nodeguard_publish_acked",
            "Records the collector acknowledged (stored, or already stored).",
            registry=r,
        )
        self.publish_rejected = Counter(
            "nodeguard_publish_rejected",
            "Records the collector refused as invalid (lost).",
            registry=r,
        )
        self.agent_up = Gauge("nodeguard_agent_up", "1 while the nodeguard agent runs.", registry=r)
        self.agent_info = Info(
            "nodeguard_agent", "The nodeguard agent's build and node.", registry=r
        )
        self.agent_up.set(1)
        self.agent_info.info({"version": __version__, "node": node})
        for where in ("kernel", "userspace", "spool"):
            self.events_lost.labels(where=where)  # present (at 0) from the first scrape
        for priority in SPOOL_PRIORITIES:
            self.spool_dropped.labels(priority=priority)
        self._last_totals: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    # -- helpers for the agent

    def violation(
        self, kind: str, verdict: str, policy: str, namespace: str, count: int = 1
    ) -> None:
        if count > 0:
            self.violations.labels(
                kind=kind, verdict=verdict, policy=policy, namespace=namespace
            ).inc(count)

    def lost(self, where: str, count: int = 1) -> None:
        if count > 0:
            self.events_lost.labels(where=where).inc(count)

    def _advance(self, key: tuple[str, ...], counter: Any, cumulative: float) -> None:
        with self._lock:
            previous = self._last_totals.get(key, 0.0)
            self._last_totals[key] = cumulative
        delta = cumulative - previous if cumulative >= previous else cumulative
        if delta > 0:
            counter.inc(delta)

    def lost_total(self, where: str, cumulative: float) -> None:
        """Feed a cumulative loss count (e.g. the kernel's ring-buffer-full counter)."""
        self._advance(("lost", where), self.events_lost.labels(where=where), cumulative)

    def records_total(self, cumulative: float) -> None:
        self._advance(("records",), self.records, cumulative)

    def aggregated_total(self, cumulative: float) -> None:
        self._advance(("aggregated",), self.aggregated, cumulative)

    def runtime_execs_total(self, cumulative: float) -> None:
        self._advance(("runtime_execs",), self.runtime_execs, cumulative)

    def delivery(self, link: DeliveryFigures | None) -> None:
        """Feed the collector link's figures (None: no collector configured)."""
        if link is None:
            self.collector_up.set(0)
            return
        self.spool_records.set(link.spool_records)
        self.spool_bytes.set(link.spool_bytes)
        self.collector_up.set(1 if link.state == "connected" else 0)
        self._advance(("acked",), self.publish_acked, link.acked)
        self._advance(("rejected",), self.publish_rejected, link.rejected)
        for priority in SPOOL_PRIORITIES:
            count = link.dropped.get(priority, 0)
            self._advance(
                ("dropped", priority), self.spool_dropped.labels(priority=priority), count
            )
        lost = sum(link.dropped.get(p, 0) for p in ("audit", "violation"))
        self.lost_total("spool", lost)

    def render(self) -> bytes:
        """The text exposition of every metric (what ``/metrics`` serves)."""
        return generate_latest(self.registry)


# ---------------------------------------------------------------------- server --


def parse_address(address: str) -> tuple[str, int, socket.AddressFamily]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all interfaces). Port 0 picks a free one."""
    text = address.strip()
    host: str
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise _bad_address(address)
        host, port_text = text[1:end], text[end + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise _bad_address(address)
    try:
        port = int(port_text)
    except ValueError:
        raise _bad_address(address) from None
    if not 0 <= port <= 65535:
        raise _bad_address(address)
    if not host:
        host = "0.0.0.0"  # noqa: S104 - an explicit ":port" asks for every interface
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return host, port, family


def _bad_address(address: str) -> MetricsServerError:
    return MetricsServerError(
        f"invalid metrics address {address!r}",
        fix="use host:port, e.g. 0.0.0.0:9464, 127.0.0.1:9464 or [::]:9464",
    )


def _evaluate(check: Check, what: str) -> tuple[bool, str]:
    try:
        result = check()
    except Exception as err:
        return False, f"{what} check failed: {err}"
    if isinstance(result, tuple):
        ok, reason = result
        return bool(ok), reason
    return bool(result), "" if result else f"not {what}"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_port = False  # a second agent on the same port must fail, not share it
    owner: MetricsServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a DNS query that can hang on a
        # node without DNS); nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "nodeguard-agent"
    sys_version = ""
    timeout = 10.0

    def log_message(self, format: str, *args: Any) -> None:
        return  # probes every few seconds: not worth a log line

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.close_connection = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            pass

    def _text(self, status: int, text: str) -> None:
        self._send(status, (text + "\n").encode(), "text/plain; charset=utf-8")

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._send(200, generate_latest(owner.registry), CONTENT_TYPE_TEXT)
            elif path == "/healthz":
                ok, reason = _evaluate(owner.alive, "alive")
                self._text(200 if ok else 503, "ok" if ok else reason)
            elif path == "/readyz":
                ok, reason = _evaluate(owner.ready, "ready")
                self._text(200 if ok else 503, "ok" if ok else reason)
            else:
                self._text(404, "not found: try /metrics, /healthz or /readyz")
        except Exception as err:
            self._text(500, f"internal error: {err}")

    def do_HEAD(self) -> None:
        self.do_GET()


class MetricsServer:
    """HTTP endpoint for Prometheus (``/metrics``) and the kubelet's probes.

    ``/healthz`` is 200 while ``alive()`` is true (the agent's main loop turns), else 503;
    ``/readyz`` is 200 only when ``ready()`` is true (first reconcile done, policies
    loaded), else 503 with the reason. Either check may return ``(ok, reason)``.
    """

    def __init__(
        self,
        address: str,
        registry: CollectorRegistry,
        ready: Check,
        alive: Check = lambda: True,
    ) -> None:
        self.address = address
        self.registry = registry
        self.ready = ready
        self.alive = alive
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        if self._server is None:
            raise RuntimeError("the metrics server is not started")
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The bound port (the one the kernel picked when the address asked for 0)."""
        if self._server is None:
            raise RuntimeError("the metrics server is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        if self._server is not None:
            return
        host, port, family = parse_address(self.address)

        class _Server(_HTTPServer):
            address_family = family

        try:
            server = _Server((host, port), _Handler)
        except OSError as err:
            fix = "pick a free port for metrics_address, or stop what listens on it"
            if err.errno == errno.EADDRNOTAVAIL:
                fix = "use an address of this host, or 0.0.0.0 for every interface"
            raise MetricsServerError(
                f"cannot serve metrics on {self.address}: {err.strerror}", fix=fix
            ) from err
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="nodeguard-metrics",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            with contextlib.suppress(OSError):
                server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
