from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    KIND_EGRESS: _ClassVar[Kind]
    KIND_EXEC: _ClassVar[Kind]
    KIND_SYSCALL: _ClassVar[Kind]
    KIND_SOCKET: _ClassVar[Kind]
    KIND_LIMIT: _ClassVar[Kind]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_BLOCKED: _ClassVar[Verdict]
    VERDICT_AUDITED: _ClassVar[Verdict]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_TELEMETRY: _ClassVar[Priority]
    PRIORITY_AUDIT: _ClassVar[Priority]
    PRIORITY_VIOLATION: _ClassVar[Priority]
    PRIORITY_LOSS: _ClassVar[Priority]

class LossReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOSS_REASON_UNSPECIFIED: _ClassVar[LossReason]
    LOSS_REASON_SPOOL_FULL: _ClassVar[LossReason]
    LOSS_REASON_KERNEL: _ClassVar[LossReason]
    LOSS_REASON_USERSPACE: _ClassVar[LossReason]
    LOSS_REASON_REJECTED: _ClassVar[LossReason]
KIND_UNSPECIFIED: Kind
KIND_EGRESS: Kind
KIND_EXEC: Kind
KIND_SYSCALL: Kind
KIND_SOCKET: Kind
KIND_LIMIT: Kind
VERDICT_UNSPECIFIED: Verdict
VERDICT_BLOCKED: Verdict
VERDICT_AUDITED: Verdict
PRIORITY_UNSPECIFIED: Priority
PRIORITY_TELEMETRY: Priority
PRIORITY_AUDIT: Priority
PRIORITY_VIOLATION: Priority
PRIORITY_LOSS: Priority
LOSS_REASON_UNSPECIFIED: LossReason
LOSS_REASON_SPOOL_FULL: LossReason
LOSS_REASON_KERNEL: LossReason
LOSS_REASON_USERSPACE: LossReason
LOSS_REASON_REJECTED: LossReason

class PolicyRef(_message.Message):
    __slots__ = ("name", "uid", "version", "mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    uid: str
    version: str
    mode: str
    def __init__(self, name: _Optional[str] = ..., uid: _Optional[str] = ..., version: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class ProcessInfo(_message.Message):
    __slots__ = ("pid", "tid", "name", "path", "cmd_line", "ppid")
    PID_FIELD_NUMBER: _ClassVar[int]
    TID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CMD_LINE_FIELD_NUMBER: _ClassVar[int]
    PPID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    tid: int
    name: str
    path: str
    cmd_line: str
    ppid: int
    def __init__(self, pid: _Optional[int] = ..., tid: _Optional[int] = ..., name: _Optional[str] = ..., path: _Optional[str] = ..., cmd_line: _Optional[str] = ..., ppid: _Optional[int] = ...) -> None: ...

class WorkloadRef(_message.Message):
    __slots__ = ("namespace", "pod_name", "pod_uid", "pod_labels", "container_id", "container_name", "image", "image_id")
    class PodLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    POD_UID_FIELD_NUMBER: _ClassVar[int]
    POD_LABELS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    pod_name: str
    pod_uid: str
    pod_labels: _containers.ScalarMap[str, str]
    container_id: str
    container_name: str
    image: str
    image_id: str
    def __init__(self, namespace: _Optional[str] = ..., pod_name: _Optional[str] = ..., pod_uid: _Optional[str] = ..., pod_labels: _Optional[_Mapping[str, str]] = ..., container_id: _Optional[str] = ..., container_name: _Optional[str] = ..., image: _Optional[str] = ..., image_id: _Optional[str] = ...) -> None: ...

class EgressDetail(_message.Message):
    __slots__ = ("ip", "port", "protocol", "family", "hook")
    IP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    HOOK_FIELD_NUMBER: _ClassVar[int]
    ip: str
    port: int
    protocol: str
    family: int
    hook: str
    def __init__(self, ip: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[str] = ..., family: _Optional[int] = ..., hook: _Optional[str] = ...) -> None: ...

class ExecDetail(_message.Message):
    __slots__ = ("path", "truncated")
    PATH_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    path: str
    truncated: bool
    def __init__(self, path: _Optional[str] = ..., truncated: _Optional[bool] = ...) -> None: ...

class SyscallDetail(_message.Message):
    __slots__ = ("name", "number", "arch", "mechanism")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    name: str
    number: int
    arch: str
    mechanism: str
    def __init__(self, name: _Optional[str] = ..., number: _Optional[int] = ..., arch: _Optional[str] = ..., mechanism: _Optional[str] = ...) -> None: ...

class SocketDetail(_message.Message):
    __slots__ = ("family", "family_number", "type", "type_number", "protocol", "protocol_name", "hook")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    FAMILY_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TYPE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_NAME_FIELD_NUMBER: _ClassVar[int]
    HOOK_FIELD_NUMBER: _ClassVar[int]
    family: str
    family_number: int
    type: str
    type_number: int
    protocol: int
    protocol_name: str
    hook: str
    def __init__(self, family: _Optional[str] = ..., family_number: _Optional[int] = ..., type: _Optional[str] = ..., type_number: _Optional[int] = ..., protocol: _Optional[int] = ..., protocol_name: _Optional[str] = ..., hook: _Optional[str] = ...) -> None: ...

class LimitDetail(_message.Message):
    __slots__ = ("limit", "budget", "burst", "observed_processes")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    limit: str
    budget: int
    burst: int
    observed_processes: int
    def __init__(self, limit: _Optional[str] = ..., budget: _Optional[int] = ..., burst: _Optional[int] = ..., observed_processes: _Optional[int] = ...) -> None: ...

class Violation(_message.Message):
    __slots__ = ("uid", "sequence", "kind", "time_ms", "first_time_ms", "count", "verdict", "cgroup_id", "process", "policy", "workload", "node", "egress", "exec", "syscall", "socket", "limit")
    UID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    CGROUP_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    SYSCALL_FIELD_NUMBER: _ClassVar[int]
    SOCKET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    uid: str
    sequence: int
    kind: Kind
    time_ms: int
    first_time_ms: int
    count: int
    verdict: Verdict
    cgroup_id: int
    process: ProcessInfo
    policy: PolicyRef
    workload: WorkloadRef
    node: str
    egress: EgressDetail
    exec: ExecDetail
    syscall: SyscallDetail
    socket: SocketDetail
    limit: LimitDetail
    def __init__(self, uid: _Optional[str] = ..., sequence: _Optional[int] = ..., kind: _Optional[_Union[Kind, str]] = ..., time_ms: _Optional[int] = ..., first_time_ms: _Optional[int] = ..., count: _Optional[int] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., cgroup_id: _Optional[int] = ..., process: _Optional[_Union[ProcessInfo, _Mapping]] = ..., policy: _Optional[_Union[PolicyRef, _Mapping]] = ..., workload: _Optional[_Union[WorkloadRef, _Mapping]] = ..., node: _Optional[str] = ..., egress: _Optional[_Union[EgressDetail, _Mapping]] = ..., exec: _Optional[_Union[ExecDetail, _Mapping]] = ..., syscall: _Optional[_Union[SyscallDetail, _Mapping]] = ..., socket: _Optional[_Union[SocketDetail, _Mapping]] = ..., limit: _Optional[_Union[LimitDetail, _Mapping]] = ...) -> None: ...

class Loss(_message.Message):
    __slots__ = ("reason", "priority", "count", "total", "time_ms", "first_seq", "last_seq", "attempts")
    REASON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    reason: LossReason
    priority: Priority
    count: int
    total: int
    time_ms: int
    first_seq: int
    last_seq: int
    attempts: int
    def __init__(self, reason: _Optional[_Union[LossReason, str]] = ..., priority: _Optional[_Union[Priority, str]] = ..., count: _Optional[int] = ..., total: _Optional[int] = ..., time_ms: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., attempts: _Optional[int] = ...) -> None: ...

class Telemetry(_message.Message):
    __slots__ = ("time_ms", "state", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    time_ms: int
    state: str
    counters: _containers.ScalarMap[str, int]
    def __init__(self, time_ms: _Optional[int] = ..., state: _Optional[str] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("seq", "priority", "violation", "loss", "telemetry")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    VIOLATION_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    seq: int
    priority: Priority
    violation: Violation
    loss: Loss
    telemetry: Telemetry
    def __init__(self, seq: _Optional[int] = ..., priority: _Optional[_Union[Priority, str]] = ..., violation: _Optional[_Union[Violation, _Mapping]] = ..., loss: _Optional[_Union[Loss, _Mapping]] = ..., telemetry: _Optional[_Union[Telemetry, _Mapping]] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("node", "epoch", "records", "producer", "version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    epoch: int
    records: _containers.RepeatedCompositeFieldContainer[Record]
    producer: str
    version: str
    def __init__(self, node: _Optional[str] = ..., epoch: _Optional[int] = ..., records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., producer: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class PublishAck(_message.Message):
    __slots__ = ("epoch", "first_seq", "last_seq", "stored", "duplicates", "rejected", "reject_reason")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASON_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    first_seq: int
    last_seq: int
    stored: int
    duplicates: int
    rejected: int
    reject_reason: str
    def __init__(self, epoch: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., stored: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected: _Optional[int] = ..., reject_reason: _Optional[str] = ...) -> None: ...
