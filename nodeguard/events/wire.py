"""The canonical violation <-> its ``nodeguard.v1`` protobuf (lossless both ways).

``from_proto(to_proto(v)) == v`` for every :class:`Violation`; the collector stores the
protobuf and computes the OCSF projection from :func:`from_proto` when a sink or a query
needs it.
"""

from __future__ import annotations

from typing import Literal, cast

from nodeguard.errors import NodeguardError
from nodeguard.events.model import (
    EgressDetail,
    ExecDetail,
    Kind,
    LimitDetail,
    PolicyRef,
    ProcessInfo,
    SocketDetail,
    SyscallDetail,
    Verdict,
    Violation,
    WorkloadRef,
)
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb

KIND_TO_PB: dict[Kind, int] = {
    "egress": pb.KIND_EGRESS,
    "exec": pb.KIND_EXEC,
    "syscall": pb.KIND_SYSCALL,
    "socket": pb.KIND_SOCKET,
    "limit": pb.KIND_LIMIT,
}
KIND_FROM_PB: dict[int, Kind] = {v: k for k, v in KIND_TO_PB.items()}
VERDICT_TO_PB: dict[Verdict, int] = {"blocked": pb.VERDICT_BLOCKED, "audited": pb.VERDICT_AUDITED}
VERDICT_FROM_PB: dict[int, Verdict] = {v: k for k, v in VERDICT_TO_PB.items()}


class WireFormatError(NodeguardError):
    """A protobuf violation that cannot be a :class:`Violation` (missing or unknown kind,
    verdict or detail)."""


def priority_of(v: Violation) -> int:
    """Spool priority: audited records go before blocked ones when space runs out."""
    return pb.PRIORITY_AUDIT if v.verdict == "audited" else pb.PRIORITY_VIOLATION


def to_proto(v: Violation, out: pb.Violation | None = None) -> pb.Violation:
    m = out if out is not None else pb.Violation()
    _fill_varying(m, v)
    _fill_common(m, v)
    return m


def _fill_varying(m: pb.Violation, v: Violation) -> None:
    """The fields that change from record to record (and the detail)."""
    m.uid = v.uid
    m.sequence = v.sequence
    m.kind = KIND_TO_PB[v.kind]  # type: ignore[assignment]
    m.time_ms = v.time_ms
    m.first_time_ms = v.first_time_ms
    m.count = v.count
    m.verdict = VERDICT_TO_PB[v.verdict]  # type: ignore[assignment]
    m.cgroup_id = v.cgroup_id
    if v.egress is not None:
        e = v.egress
        me = m.egress
        me.ip, me.port, me.protocol, me.family, me.hook = e.ip, e.port, e.protocol, e.family, e.hook
    elif v.exec is not None:
        m.exec.path = v.exec.path
        m.exec.truncated = v.exec.truncated
        m.exec.SetInParent()
    elif v.syscall is not None:
        s = v.syscall
        ms = m.syscall
        ms.name, ms.number, ms.arch, ms.mechanism = s.name, s.number, s.arch, s.mechanism
    elif v.socket is not None:
        so = v.socket
        mso = m.socket
        mso.family = so.family
        mso.family_number = so.family_number
        mso.type = so.type
        mso.type_number = so.type_number
        mso.protocol = so.protocol
        if so.protocol_name is not None:
            mso.protocol_name = so.protocol_name
        mso.hook = so.hook
    elif v.limit is not None:
        li = v.limit
        ml = m.limit
        ml.limit = li.limit
        if li.budget is not None:
            ml.budget = li.budget
        if li.burst is not None:
            ml.burst = li.burst
        if li.observed_processes is not None:
            ml.observed_processes = li.observed_processes
        ml.SetInParent()


def _fill_common(m: pb.Violation, v: Violation) -> None:
    """The fields records of one process of one pod under one policy share."""
    p = v.process
    mp = m.process
    mp.pid = p.pid
    mp.tid = p.tid
    mp.name = p.name
    if p.path is not None:
        mp.path = p.path
    if p.cmd_line is not None:
        mp.cmd_line = p.cmd_line
    if p.ppid is not None:
        mp.ppid = p.ppid
    pol = m.policy
    pol.name = v.policy.name
    pol.uid = v.policy.uid
    pol.version = v.policy.version
    pol.mode = v.policy.mode
    w = v.workload
    if w is not None:
        mw = m.workload
        mw.SetInParent()
        if w.namespace is not None:
            mw.namespace = w.namespace
        if w.pod_name is not None:
            mw.pod_name = w.pod_name
        if w.pod_uid is not None:
            mw.pod_uid = w.pod_uid
        if w.pod_labels:
            mw.pod_labels.update(w.pod_labels)
        if w.container_id is not None:
            mw.container_id = w.container_id
        if w.container_name is not None:
            mw.container_name = w.container_name
        if w.image is not None:
            mw.image = w.image
        if w.image_id is not None:
            mw.image_id = w.image_id
    if v.node is not None:
        m.node = v.node


class WireEncoder:
    """Serialized ``pb.Violation`` bytes, fast: the part records share (process, policy,
    workload, node: fields 9-12) is serialized once per distinct set of those objects and
    reused; only the rest is serialized per record. Protobuf parses concatenated
    serializations as one merged message and the two parts share no field, so
    ``pb.Violation.FromString(encode(v)) == to_proto(v)``. Cache entries hold the objects
    they were made from and are checked by identity, so a recycled ``id()`` never
    matches. Safe to call from several threads (the worst case is a duplicate entry)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._cache: dict[
            tuple[int, int, int, str | None], tuple[object, object, object, bytes]
        ] = {}

    def encode(self, v: Violation) -> bytes:
        key = (id(v.policy), id(v.workload), id(v.process), v.node)
        hit = self._cache.get(key)
        if (
            hit is None
            or hit[0] is not v.policy
            or hit[1] is not v.workload
            or hit[2] is not v.process
        ):
            common = pb.Violation()
            _fill_common(common, v)
            if len(self._cache) >= self._max:
                self._cache.clear()
            hit = (v.policy, v.workload, v.process, common.SerializeToString())
            self._cache[key] = hit
        m = pb.Violation()
        _fill_varying(m, v)
        return hit[3] + m.SerializeToString()


def _opt(msg: object, name: str) -> object | None:
    return getattr(msg, name) if msg.HasField(name) else None  # type: ignore[attr-defined]


def from_proto(m: pb.Violation) -> Violation:
    """The :class:`Violation` a protobuf record carries; :class:`WireFormatError` when it
    is not a complete record (unknown kind or verdict, no detail, detail of another kind,
    no uid or no policy)."""
    kind = KIND_FROM_PB.get(m.kind)
    if kind is None:
        raise WireFormatError(f"violation {m.uid or '?'}: unknown kind {m.kind}")
    verdict = VERDICT_FROM_PB.get(m.verdict)
    if verdict is None:
        raise WireFormatError(f"violation {m.uid or '?'}: unknown verdict {m.verdict}")
    which = m.WhichOneof("detail")
    if which != kind:
        raise WireFormatError(
            f"violation {m.uid or '?'}: kind {kind} carries detail {which or 'none'}"
        )
    if not m.uid:
        raise WireFormatError("violation without uid")
    if not m.HasField("policy") or not m.policy.name:
        raise WireFormatError(f"violation {m.uid}: no policy")
    if m.count < 1:
        raise WireFormatError(f"violation {m.uid}: count {m.count} < 1")
    mode: Literal["enforce", "audit"]
    if m.policy.mode == "enforce":
        mode = "enforce"
    elif m.policy.mode == "audit":
        mode = "audit"
    else:
        raise WireFormatError(f"violation {m.uid}: policy mode {m.policy.mode!r}")
    p = m.process
    process = ProcessInfo(
        pid=p.pid,
        tid=p.tid,
        name=p.name,
        path=cast(str | None, _opt(p, "path")),
        cmd_line=cast(str | None, _opt(p, "cmd_line")),
        ppid=cast(int | None, _opt(p, "ppid")),
    )
    workload = None
    if m.HasField("workload"):
        w = m.workload
        workload = WorkloadRef(
            namespace=cast(str | None, _opt(w, "namespace")),
            pod_name=cast(str | None, _opt(w, "pod_name")),
            pod_uid=cast(str | None, _opt(w, "pod_uid")),
            pod_labels=dict(w.pod_labels),
            container_id=cast(str | None, _opt(w, "container_id")),
            container_name=cast(str | None, _opt(w, "container_name")),
            image=cast(str | None, _opt(w, "image")),
            image_id=cast(str | None, _opt(w, "image_id")),
        )
    egress = exec_ = syscall = socket = limit = None
    if kind == "egress":
        e = m.egress
        if e.family not in (4, 6):
            raise WireFormatError(f"violation {m.uid}: egress family {e.family}")
        egress = EgressDetail(
            ip=e.ip,
            port=e.port,
            protocol=e.protocol,
            family=4 if e.family == 4 else 6,
            hook=e.hook,  # type: ignore[arg-type]
        )
    elif kind == "exec":
        exec_ = ExecDetail(path=m.exec.path, truncated=m.exec.truncated)
    elif kind == "syscall":
        s = m.syscall
        syscall = SyscallDetail(
            name=s.name,
            number=s.number,
            arch=s.arch,
            mechanism=s.mechanism,  # type: ignore[arg-type]
        )
    elif kind == "socket":
        so = m.socket
        socket = SocketDetail(
            family=so.family,
            family_number=so.family_number,
            type=so.type,
            type_number=so.type_number,
            protocol=so.protocol,
            protocol_name=cast(str | None, _opt(so, "protocol_name")),
            hook=so.hook,  # type: ignore[arg-type]
        )
    else:
        li = m.limit
        limit = LimitDetail(
            limit=li.limit,
            budget=cast(int | None, _opt(li, "budget")),
            burst=cast(int | None, _opt(li, "burst")),
            observed_processes=cast(int | None, _opt(li, "observed_processes")),
        )
    return Violation(
        uid=m.uid,
        sequence=m.sequence,
        kind=kind,
        time_ms=m.time_ms,
        first_time_ms=m.first_time_ms,
        count=m.count,
        verdict=verdict,
        cgroup_id=m.cgroup_id,
        process=process,
        policy=PolicyRef(name=m.policy.name, uid=m.policy.uid, version=m.policy.version, mode=mode),
        egress=egress,
        exec=exec_,
        workload=workload,
        node=cast(str | None, _opt(m, "node")),
        syscall=syscall,
        socket=socket,
        limit=limit,
    )
