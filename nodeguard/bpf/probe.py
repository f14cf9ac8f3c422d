"""Kernel feature probes behind ``nodeguard doctor``.

Every probe runs for real and on its own (one failing probe never hides another):
privileges, BCC, kernel headers, mounts, and then the BPF programs and maps the guard
uses, compiled once from ``bpf/probe.bpf.c`` and *loaded* (verified by the kernel) with
the program type and expected attach type the guard needs. Nothing is ever attached to a
cgroup, a tracepoint or an LSM hook: loading is enough to know whether it would work, and
the loaded programs are closed again before :func:`run_probes` returns.

The result is a :class:`Report`: a list of :class:`Feature` rows plus the enforcement
:class:`Mechanism` picked per policy feature from what the probes found.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from nodeguard import log
from nodeguard.bpf.abi import HEADER_PATH
from nodeguard.bpf.guard import EXEC_ORIGIN_TRACEPOINTS
from nodeguard.errors import BccMissingError
from nodeguard.identity.cgroupfs import find_cgroup2_mount

PROBE_SOURCE = HEADER_PATH.parents[1] / "probe.bpf.c"
INCLUDE_DIR = HEADER_PATH.parent

TRACEFS = Path("/sys/kernel/tracing")
BPFFS = Path("/sys/fs/bpf")
BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")
JIT_SYSCTL = Path("/proc/sys/net/core/bpf_jit_enable")
LSM_LIST = Path("/sys/kernel/security/lsm")
MOUNTINFO = Path("/proc/self/mountinfo")

FIX_ROOT = "run as root (sudo nodeguard doctor)"
FIX_BCC = (
    "apt-get install python3-bpfcc bpfcc-tools libbpfcc, and run nodeguard from a venv made "
    "with /usr/bin/python3 -m venv --system-site-packages (scripts/setup.sh does both)"
)
FIX_HEADERS = (
    "apt-get install linux-headers-$(uname -r); when the distribution has none for this "
    "kernel, scripts/setup.sh links its newest headers as /lib/modules/$(uname -r)/build"
)
SAFE_MISMATCH = (
    "safe only because nodeguard's BPF touches only UAPI contexts, tracepoint arguments "
    "and helpers, never a kernel-internal struct"
)

EGRESS_MECHANISM = "cgroup sock_addr (connect4/6, sendmsg4/6), EPERM"
EXEC_MECHANISM = "tracepoint sched_process_exec + bpf_send_signal(SIGKILL)"
SYSCALLS_MECHANISM = (
    "seccomp filter SCMP_ACT_KILL_PROCESS (run: installed before exec; pods: Localhost "
    "profile) + raw tracepoint signal_generate report; audit: per-syscall tracepoints"
)
SOCKETS_MECHANISM = (
    "inet/inet6: cgroup sock_create, EPERM; other families: seccomp user notification, "
    "EPERM from the supervisor"
)
LIMITS_MECHANISM = (
    "BPF counters (task_newtask, sched_process_exit, sched_process_exec) + bpf_send_signal(SIGKILL)"
)

_log = log.get(__name__)


@dataclass(frozen=True, slots=True)
class Feature:
    """One probed kernel or host feature.

    ``ok`` is the verdict; ``required`` says whether nodeguard can enforce without it.
    ``checked`` is False when the probe could not run (not root, or an earlier step it
    depends on failed); ``warning`` marks an ok feature with a caveat worth reading.
    """

    name: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = True
    checked: bool = True
    warning: bool = False

    @property
    def status(self) -> str:
        if not self.checked:
            return "not checked"
        if self.ok:
            return "warning" if self.warning else "ok"
        return "missing" if self.required else "unavailable"


@dataclass(frozen=True, slots=True)
class Alternative:
    """A mechanism nodeguard could use instead, and whether this kernel allows it."""

    name: str
    available: bool
    detail: str
    checked: bool = True


@dataclass(frozen=True, slots=True)
class Mechanism:
    """How one policy feature (egress, exec) is enforced on this kernel."""

    feature: str
    chosen: str | None  # None: the features it needs are missing
    needs: tuple[str, ...]
    alternatives: tuple[Alternative, ...] = ()

    @property
    def ok(self) -> bool:
        return self.chosen is not None


@dataclass(frozen=True, slots=True)
class Report:
    kernel: str
    features: tuple[Feature, ...]
    mechanisms: tuple[Mechanism, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when every required feature is ok."""
        return all(f.ok for f in self.features if f.required)

    def get(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON shape of ``nodeguard doctor --json``."""
        return {
            "ok": self.ok,
            "kernel": self.kernel,
            "features": [
                {
                    "name": f.name,
                    "ok": f.ok,
                    "required": f.required,
                    "status": f.status,
                    "checked": f.checked,
                    "warning": f.warning,
                    "detail": f.detail,
                    "fix": f.fix,
                }
                for f in self.features
            ],
            "mechanisms": {
                m.feature: {
                    "ok": m.ok,
                    "chosen": m.chosen,
                    "needs": list(m.needs),
                    "alternatives": [asdict(a) for a in m.alternatives],
                }
                for m in self.mechanisms
            },
        }


# ---------------------------------------------------------------------------------------
# helpers


def import_bcc() -> ModuleType:
    """``import bcc`` or a BccMissingError that says how to get it."""
    try:
        import bcc  # noqa: PLC0415 - optional system package, imported on demand
    except ImportError as err:
        raise BccMissingError(
            f"cannot import bcc (python {sys.executable}): {err}", fix=FIX_BCC
        ) from err
    module: ModuleType = bcc
    return module


def _mounts() -> dict[str, str]:
    """Mount point -> filesystem type, from /proc/self/mountinfo."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in MOUNTINFO.read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields = left.split(" ")
            if len(fields) > 4 and right:
                out[fields[4].replace("\\040", " ")] = right.split(" ", 1)[0]
    return out


def kernel_config(release: str) -> dict[str, str] | None:
    """CONFIG_* values from /boot/config-RELEASE or /proc/config.gz, or None."""
    text: str | None = None
    boot = Path(f"/boot/config-{release}")
    try:
        if boot.is_file():
            text = boot.read_text(errors="replace")
        elif Path("/proc/config.gz").is_file():
            text = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode(errors="replace")
    except OSError:
        return None
    if text is None:
        return None
    config: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_"):
            key, _, value = line.partition("=")
            config[key] = value.strip('"')
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            config[line[2:].split(" ", 1)[0]] = "n"
    return config


def headers_release(build: Path) -> str | None:
    """Kernel release a headers tree was built for: utsrelease.h, else the directory name."""
    uts = build / "include" / "generated" / "utsrelease.h"
    with contextlib.suppress(OSError):
        match = re.search(r'UTS_RELEASE\s+"([^"]+)"', uts.read_text())
        if match:
            return match.group(1)
    name = build.resolve().name
    if name.startswith("linux-headers-"):
        return name.removeprefix("linux-headers-")
    return None


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture file descriptor 2 (libbcc and the verifier write there, not to sys.stderr).

    Yields a list that holds the captured text once the block has finished.
    """
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode(errors="replace"))


def _why(err: BaseException, stderr: str) -> str:
    """One line saying why a BCC compile or load failed: BCC's message plus the compiler's
    first error or the verifier's last complaint from the captured stderr."""
    msg = str(err)
    if "super-user" in msg:  # BCC's wording for EPERM from bpf(BPF_PROG_LOAD)
        msg = "EPERM, operation not permitted"
    elif msg.startswith("Failed to compile BPF module"):
        msg = "compile error"
    elif match := re.match(r"Failed to load BPF program .*?: (.+)$", msg):
        msg = match.group(1)  # strerror, e.g. "Permission denied" = verifier refusal
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    compiler = [ln for ln in lines if ": error:" in ln or ": fatal error:" in ln]
    verifier = [
        ln
        for ln in lines
        if not ln.startswith(("processed ", "bpf: Failed to load", "HINT:"))
        and not re.match(r"^\d+: \(", ln)  # instruction dump
    ]
    hint = compiler[0] if compiler else (verifier[-1] if verifier else "")
    if hint and hint not in msg:
        msg = f"{msg}: {hint[:240]}"
    return msg


def _no_autoload_bpf(bcc: ModuleType) -> Any:
    """BPF class that never auto-attaches (BCC attaches kprobe__/tracepoint__/lsm__/kfunc__
    functions in its constructor; probes must only load)."""

    class ProbeBPF(bcc.BPF):  # type: ignore[misc,name-defined]
        def _trace_autoload(self) -> None:
            return None

    return ProbeBPF


# ---------------------------------------------------------------------------------------
# host probes (no bpf() calls)


def _probe_root(euid: int) -> Feature:
    if euid == 0:
        return Feature("root", True, "running as root (euid 0)")
    return Feature(
        "root",
        False,
        f"running as euid {euid}: loading BPF programs needs root "
        "(CAP_BPF + CAP_SYS_ADMIN + CAP_NET_ADMIN)",
        fix=FIX_ROOT,
    )


def _probe_bcc() -> Feature:
    try:
        bcc = import_bcc()
    except BccMissingError as err:
        return Feature("bcc", False, err.message, fix=err.fix)
    version = getattr(bcc, "__version__", "unknown version")
    return Feature("bcc", True, f"bcc {version} from {Path(bcc.__file__ or '?').parent}")


def _probe_headers(release: str) -> Feature:
    build = Path(f"/lib/modules/{release}/build")
    if not build.exists():
        return Feature(
            "kernel_headers",
            False,
            f"{build} does not exist: BCC compiles programs at run time and needs headers",
            fix=FIX_HEADERS,
        )
    target = build.resolve()
    headers = headers_release(build)
    if headers is None:
        return Feature(
            "kernel_headers",
            True,
            f"{build} -> {target}, version unknown (no include/generated/utsrelease.h); "
            f"if it does not match {release}, it is {SAFE_MISMATCH}",
            warning=True,
        )
    if headers == release:
        return Feature("kernel_headers", True, f"{build} -> {target} ({headers}), matches")
    return Feature(
        "kernel_headers",
        True,
        f"headers {headers} ({target}) used for kernel {release}: {SAFE_MISMATCH}",
        fix="install linux-headers-$(uname -r) when the distribution provides it",
        warning=True,
    )


def _probe_cgroup2() -> Feature:
    mount = find_cgroup2_mount()
    if mount is None:
        return Feature(
            "cgroup2",
            False,
            "no cgroup2 entry in /proc/self/mountinfo",
            fix="mount -t cgroup2 none /sys/fs/cgroup/unified, or boot with "
            "systemd.unified_cgroup_hierarchy=1",
        )
    mode = "pure v2" if mount == Path("/sys/fs/cgroup") else "hybrid (v1 controllers too)"
    return Feature("cgroup2", True, f"mounted at {mount}, {mode}")


def _probe_tracefs(euid: int) -> Feature:
    fix = "mount -t tracefs tracefs /sys/kernel/tracing"
    mounted = _mounts().get(str(TRACEFS)) == "tracefs"
    if not mounted:
        return Feature("tracefs", False, f"tracefs is not mounted at {TRACEFS}", fix=fix)
    try:
        has_events = (TRACEFS / "events").is_dir()
    except PermissionError:
        return Feature(
            "tracefs",
            True,
            f"mounted at {TRACEFS} (events/ not readable as euid {euid})",
            fix=FIX_ROOT,
            warning=True,
        )
    if not has_events:
        return Feature("tracefs", False, f"{TRACEFS}/events is missing", fix=fix)
    return Feature("tracefs", True, f"mounted at {TRACEFS}, events/ present")


def _probe_bpffs() -> Feature:
    if _mounts().get(str(BPFFS)) == "bpf":
        return Feature("bpffs", True, f"mounted at {BPFFS}", required=False)
    return Feature(
        "bpffs",
        False,
        f"bpffs is not mounted at {BPFFS} (needed to pin programs and maps so enforcement "
        "outlives a node agent restart)",
        fix=f"mount -t bpf bpf {BPFFS}",
        required=False,
    )


def _probe_btf() -> Feature:
    if BTF_VMLINUX.is_file():
        size = BTF_VMLINUX.stat().st_size
        return Feature("kernel_btf", True, f"{BTF_VMLINUX} present ({size} bytes)", required=False)
    return Feature(
        "kernel_btf",
        False,
        f"{BTF_VMLINUX} missing (only fentry / BPF LSM need it; nodeguard's programs do not)",
        fix="a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        required=False,
    )


def _probe_jit(config: dict[str, str] | None) -> Feature:
    always_on = bool(config and config.get("CONFIG_BPF_JIT_ALWAYS_ON") == "y")
    suffix = ", CONFIG_BPF_JIT_ALWAYS_ON=y" if always_on else ""
    try:
        value = JIT_SYSCTL.read_text().strip()
    except PermissionError:
        return Feature(
            "bpf_jit",
            False,
            f"{JIT_SYSCTL} not readable",
            fix=FIX_ROOT,
            required=False,
            checked=False,
        )
    except OSError as err:
        return Feature(
            "bpf_jit",
            False,
            f"{JIT_SYSCTL}: {err.strerror}",
            fix="a kernel with CONFIG_BPF_JIT=y",
            required=False,
        )
    if value in ("1", "2"):
        return Feature("bpf_jit", True, f"net.core.bpf_jit_enable={value}{suffix}", required=False)
    return Feature(
        "bpf_jit",
        False,
        f"net.core.bpf_jit_enable={value}: programs run interpreted (slower)",
        fix="sysctl -w net.core.bpf_jit_enable=1",
        required=False,
    )


def _probe_kprobes(config: dict[str, str] | None) -> Feature:
    events = TRACEFS / "kprobe_events"
    try:
        if events.exists():
            return Feature(
                "kprobes", True, f"{events} exists (nodeguard does not use kprobes)", required=False
            )
    except PermissionError:
        pass
    if config is not None:
        setting = config.get("CONFIG_KPROBES", "n")
        if setting == "y":
            return Feature(
                "kprobes",
                True,
                "CONFIG_KPROBES=y (nodeguard does not use kprobes)",
                required=False,
            )
        return Feature(
            "kprobes",
            False,
            "absent: CONFIG_KPROBES is not set and there is no kprobe_events "
            "(nodeguard does not need kprobes)",
            required=False,
        )
    return Feature(
        "kprobes",
        False,
        f"absent: no {events} and no kernel config to check (nodeguard does not need kprobes)",
        required=False,
    )


def _lsm_listed(config: dict[str, str] | None) -> str:
    """Whether 'bpf' is an active LSM, for the bpf_lsm detail."""
    try:
        active = LSM_LIST.read_text().strip().split(",")
    except OSError:
        pass
    else:
        return f"lsm listed in {LSM_LIST}: {'yes' if 'bpf' in active else 'no'}"
    where = f"{LSM_LIST} not readable (securityfs not mounted?)"
    with contextlib.suppress(OSError):
        for arg in Path("/proc/cmdline").read_text().split():
            if arg.startswith("lsm="):
                listed = "bpf" in arg.removeprefix("lsm=").split(",")
                answer = "yes" if listed else "no"
                return f"{where}; lsm listed on the kernel command line: {answer}"
    if config is not None and "CONFIG_LSM" in config:
        listed = "bpf" in config["CONFIG_LSM"].split(",")
        return f"{where}; lsm listed in CONFIG_LSM: {'yes' if listed else 'no'}"
    return where


# ---------------------------------------------------------------------------------------
# BPF probes (root only; load, never attach)


@dataclass(frozen=True, slots=True)
class _LoadSpec:
    feature: str
    function: str
    prog_type: str  # attribute of bcc.BPF
    attach_type: str | None  # attribute of bcc.BPFAttachType
    required: bool
    what: str


_LOADS: tuple[_LoadSpec, ...] = (
    _LoadSpec(
        "cgroup_sock_addr.connect4",
        "ng_probe_connect4",
        "CGROUP_SOCK_ADDR",
        "CGROUP_INET4_CONNECT",
        True,
        "egress TCP + connected UDP, IPv4",
    ),
    _LoadSpec(
        "cgroup_sock_addr.connect6",
        "ng_probe_connect6",
        "CGROUP_SOCK_ADDR",
        "CGROUP_INET6_CONNECT",
        True,
        "egress TCP + connected UDP, IPv6 + v4-mapped",
    ),
    _LoadSpec(
        "cgroup_sock_addr.sendmsg4",
        "ng_probe_sendmsg4",
        "CGROUP_SOCK_ADDR",
        "CGROUP_UDP4_SENDMSG",
        True,
        "egress unconnected UDP, IPv4",
    ),
    _LoadSpec(
        "cgroup_sock_addr.sendmsg6",
        "ng_probe_sendmsg6",
        "CGROUP_SOCK_ADDR",
        "CGROUP_UDP6_SENDMSG",
        True,
        "egress unconnected UDP, IPv6",
    ),
    _LoadSpec(
        "cgroup_sock.create",
        "ng_probe_sock_create",
        "CGROUP_SOCK",
        "CGROUP_INET_SOCK_CREATE",
        True,  # the guard attaches it to every guarded cgroup
        "socket kinds inet/inet6 (raw, ...): EPERM at socket()",
    ),
    _LoadSpec(
        "raw_tracepoint",
        "ng_probe_raw_tracepoint",
        "RAW_TRACEPOINT",
        None,
        True,
        "seccomp kill reports: raw tracepoint program (signal_generate)",
    ),
    _LoadSpec(
        "tracepoint",
        "ng_probe_tracepoint",
        "TRACEPOINT",
        None,
        True,
        "exec check: string read + per-CPU scratch + LPM lookup",
    ),
    _LoadSpec(
        "helper.send_signal",
        "ng_probe_send_signal",
        "TRACEPOINT",
        None,
        True,
        "exec kill: bpf_send_signal(SIGKILL) from a tracepoint",
    ),
    _LoadSpec(
        "helper.ancestor_cgroup_id",
        "ng_probe_ancestor_cgroup",
        "TRACEPOINT",
        None,
        True,
        "guarded sub-cgroups: ancestor cgroup id from a tracepoint",
    ),
    _LoadSpec(
        "map.ringbuf",
        "ng_probe_ringbuf",
        "TRACEPOINT",
        None,
        True,
        "violation records: ring buffer reserve/submit",
    ),
)

_LPM_FEATURE = "map.lpm_trie"
_COMPILE_FEATURE = "bpf_compile"

# Separate compile: a kernel without BTF / fentry / LSM must not break the main probes.
_OPTIONAL_SOURCE = r"""
struct socket;
struct sockaddr;
struct linux_binprm;

LSM_PROBE(socket_connect, struct socket *sock, struct sockaddr *address, int addrlen)
{
    return 0;
}

LSM_PROBE(bprm_check_security, struct linux_binprm *bprm)
{
    return 0;
}

KFUNC_PROBE(do_unlinkat, int dfd)
{
    return 0;
}
"""


# sys_{enter,exit}_execve(at): where each exec began (the guard attaches these)
EXEC_ORIGIN_EVENTS = tuple(tracepoint for _, _, tracepoint, _ in EXEC_ORIGIN_TRACEPOINTS)


def _probe_tracepoint_exists(
    name: str,
    category: str,
    events: str | tuple[str, ...],
    what: str,
    *,
    required: bool = True,
    fix: str = "mount tracefs (scripts/setup.sh) and use a kernel with CONFIG_TRACEPOINTS",
) -> Feature:
    """Tracepoints the guard attaches to exist in tracefs (nothing is attached here)."""
    names = (events,) if isinstance(events, str) else events
    paths = [TRACEFS / "events" / category / e for e in names]
    missing = [str(p) for p in paths if not p.is_dir()]
    if not missing:
        present = ", ".join(f"{category}/{e}" for e in names)
        return Feature(name, True, f"{what}: {present} present", required=required)
    return Feature(
        name, False, f"{what}: {', '.join(missing)} is missing", fix=fix, required=required
    )


def _seccomp_action_available(action: int) -> bool:
    """seccomp(SECCOMP_GET_ACTION_AVAIL, 0, &action) == 0."""
    import ctypes as ct  # noqa: PLC0415
    import platform  # noqa: PLC0415

    nr = {"x86_64": 317, "aarch64": 277}.get(platform.machine())
    if nr is None:
        return False
    libc = ct.CDLL(None, use_errno=True)
    libc.syscall.restype = ct.c_long
    value = ct.c_uint32(action)
    return int(libc.syscall(nr, 2, 0, ct.byref(value))) == 0  # 2: SECCOMP_GET_ACTION_AVAIL


def _probe_seccomp() -> Feature:
    """seccomp filters with the kill-process action (SECCOMP_GET_ACTION_AVAIL)."""
    if _seccomp_action_available(0x80000000):  # SECCOMP_RET_KILL_PROCESS
        return Feature("seccomp.filter", True, "seccomp filters with SECCOMP_RET_KILL_PROCESS")
    return Feature(
        "seccomp.filter",
        False,
        "seccomp filters (or SECCOMP_RET_KILL_PROCESS, Linux 4.14) are not available",
        fix="a kernel with CONFIG_SECCOMP_FILTER",
    )


def _probe_user_notif() -> Feature:
    from nodeguard.seccomp.install import user_notif_available  # noqa: PLC0415

    if user_notif_available():
        return Feature(
            "seccomp.user_notif",
            True,
            "SECCOMP_RET_USER_NOTIF: socket families other than inet/inet6 refused and reported",
        )
    return Feature(
        "seccomp.user_notif",
        False,
        "SECCOMP_RET_USER_NOTIF is not available (Linux >= 5.0 needed): policies denying "
        "socket families other than inet/inet6 cannot be enforced",
        fix="a kernel >= 5.0 with CONFIG_SECCOMP_FILTER",
    )


def _not_checked(name: str, required: bool, why: str, fix: str | None) -> Feature:
    return Feature(name, False, why, fix=fix, required=required, checked=False)


def _bpf_features(bcc: ModuleType | None, euid: int, source: Path) -> list[Feature]:
    """Compile probe.bpf.c once, load each program, exercise the LPM trie map."""
    names = [(s.feature, s.required) for s in _LOADS] + [(_LPM_FEATURE, True)]
    if euid != 0 or bcc is None:
        why = "not checked: needs root" if euid != 0 else "not checked: bcc is missing"
        fix = FIX_ROOT if euid != 0 else FIX_BCC
        return [_not_checked(_COMPILE_FEATURE, True, why, fix)] + [
            _not_checked(n, r, why, fix) for n, r in names
        ]

    bpf_cls = _no_autoload_bpf(bcc)
    try:
        with _captured_stderr() as err_text:
            prog = bpf_cls(src_file=str(source).encode(), cflags=[f"-I{INCLUDE_DIR}"])
    except Exception as err:  # BCC raises bare Exception
        why = _why(err, err_text[0] if err_text else "")
        _log.debug("probe_compile_failed", source=str(source), stderr=err_text)
        compile_fail = Feature(
            _COMPILE_FEATURE,
            False,
            f"{source.name} did not compile: {why}",
            fix="check the kernel headers row; run scripts/setup.sh",
        )
        return [compile_fail] + [
            _not_checked(n, r, "not checked: probe program did not compile", None) for n, r in names
        ]

    out = [Feature(_COMPILE_FEATURE, True, f"{source.name} compiled with BCC")]
    try:
        for spec in _LOADS:
            out.append(_load_one(bcc, prog, spec))
        out.append(_probe_lpm(prog))
    finally:
        with contextlib.suppress(Exception):
            prog.cleanup()
    return out


def _load_one(bcc: ModuleType, prog: Any, spec: _LoadSpec) -> Feature:
    prog_type = getattr(bcc.BPF, spec.prog_type)
    attach = -1 if spec.attach_type is None else getattr(bcc.BPFAttachType, spec.attach_type)
    label = spec.prog_type + (f"/{spec.attach_type}" if spec.attach_type else "")
    try:
        with _captured_stderr() as err_text:
            prog.load_func(spec.function.encode(), prog_type, attach_type=attach)
    except Exception as err:  # BCC raises bare Exception
        _log.debug("probe_load_failed", function=spec.function, stderr=err_text)
        return Feature(
            spec.feature,
            False,
            f"{spec.what}: {label} load refused: {_why(err, err_text[0] if err_text else '')}",
            fix="a kernel >= 5.15 with CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF and CONFIG_BPF_EVENTS",
            required=spec.required,
        )
    return Feature(spec.feature, True, f"{spec.what}: {label} loads", required=spec.required)


def _probe_lpm(prog: Any) -> Feature:
    """The LPM trie map exists (it was created by the compile) and answers prefix lookups."""
    try:
        table = prog[b"probe_egress"]
        key = table.Key()
        key.prefixlen = 32 + 96 + 8  # policy 7, ::ffff:10.0.0.0/8
        key.policy_id = 7
        key.addr[10] = key.addr[11] = 0xFF
        key.addr[12] = 10
        leaf = table.Leaf()
        leaf.count = 1
        table[key] = leaf
        try:
            probe = table.Key()
            probe.prefixlen = 32 + 128  # policy 7, ::ffff:10.1.2.3
            probe.policy_id = 7
            probe.addr[10] = probe.addr[11] = 0xFF
            probe.addr[12:16] = (10, 1, 2, 3)
            hit = table[probe].count == 1
        finally:
            del table[key]
    except Exception as err:  # BCC raises bare Exception / KeyError
        return Feature(
            _LPM_FEATURE,
            False,
            f"LPM trie map failed: {err!r}",
            fix="a kernel with BPF_MAP_TYPE_LPM_TRIE (>= 4.11)",
        )
    if not hit:
        return Feature(_LPM_FEATURE, False, "LPM trie lookup of an address under a prefix missed")
    return Feature(_LPM_FEATURE, True, "created; longest-prefix lookup of policy + v4-mapped works")


def _optional_features(
    bcc: ModuleType | None, euid: int, config: dict[str, str] | None
) -> list[Feature]:
    """fentry and BPF LSM: not used by nodeguard today (alternatives only).

    Loaded from a separate compile so that a kernel without them cannot break the main
    probes; never attached.
    """
    lsm_note = _lsm_listed(config)
    if euid != 0 or bcc is None:
        why = "not checked: needs root" if euid != 0 else "not checked: bcc is missing"
        fix = FIX_ROOT if euid != 0 else FIX_BCC
        return [
            _not_checked("fentry", False, why, fix),
            _not_checked("bpf_lsm", False, f"{why}; {lsm_note}", fix),
        ]
    if not BTF_VMLINUX.is_file():
        why = f"needs kernel BTF ({BTF_VMLINUX} missing)"
        return [
            Feature("fentry", False, why, required=False),
            Feature("bpf_lsm", False, f"{why}; {lsm_note}", required=False),
        ]
    try:
        with _captured_stderr() as err_text:
            prog = _no_autoload_bpf(bcc)(text=_OPTIONAL_SOURCE.encode())
    except Exception as err:  # BCC raises bare Exception
        why = f"probe did not compile: {_why(err, err_text[0] if err_text else '')}"
        return [
            Feature("fentry", False, why, required=False),
            Feature("bpf_lsm", False, f"{why}; {lsm_note}", required=False),
        ]
    try:
        fentry = _try_load(bcc, prog, "kfunc__do_unlinkat", "TRACING")
        lsm_connect = _try_load(bcc, prog, "lsm__socket_connect", "LSM")
        lsm_exec = _try_load(bcc, prog, "lsm__bprm_check_security", "LSM")
    finally:
        with contextlib.suppress(Exception):
            prog.cleanup()
    unused = "not used by nodeguard"
    lsm_ok = lsm_connect is None and lsm_exec is None
    if lsm_ok:
        lsm_detail = f"LSM programs load ({unused} yet); {lsm_note}"
    elif lsm_connect == lsm_exec:
        lsm_detail = f"LSM program load {lsm_connect}; {lsm_note}"
    else:
        lsm_detail = (
            f"socket_connect: {lsm_connect or 'loads'}, "
            f"bprm_check_security: {lsm_exec or 'loads'}; {lsm_note}"
        )
    return [
        Feature(
            "fentry",
            fentry is None,
            f"fentry program loads ({unused} yet)" if fentry is None else f"load {fentry}",
            required=False,
        ),
        Feature("bpf_lsm", lsm_ok, lsm_detail, required=False),
    ]


def _try_load(bcc: ModuleType, prog: Any, function: str, prog_type: str) -> str | None:
    """None when the program loads, else why not."""
    try:
        with _captured_stderr() as err_text:
            prog.load_func(function.encode(), getattr(bcc.BPF, prog_type))
    except Exception as err:  # BCC raises bare Exception
        return f"refused ({_why(err, err_text[0] if err_text else '')})"
    return None


# ---------------------------------------------------------------------------------------
# mechanisms and the entry point


def choose_mechanisms(features: dict[str, Feature]) -> tuple[Mechanism, ...]:
    """Pick the enforcement mechanism per policy feature from the probe results."""

    def all_ok(names: tuple[str, ...]) -> bool:
        return all(n in features and features[n].ok for n in names)

    lsm = features.get("bpf_lsm")
    lsm_ok = lsm is not None and lsm.ok
    lsm_detail = lsm.detail if lsm is not None else "not probed"
    lsm_checked = lsm is not None and lsm.checked

    egress_needs = (
        "cgroup2",
        "cgroup_sock_addr.connect4",
        "cgroup_sock_addr.connect6",
        "cgroup_sock_addr.sendmsg4",
        "cgroup_sock_addr.sendmsg6",
        "map.lpm_trie",
        "map.ringbuf",
    )
    exec_needs = (
        "cgroup2",
        "tracefs",
        "tracepoint",
        "helper.send_signal",
        "helper.ancestor_cgroup_id",
        "map.lpm_trie",
        "map.ringbuf",
    )
    syscalls_needs = ("seccomp.filter", "raw_tracepoint", "tracepoint.signal_generate")
    sockets_needs = ("cgroup2", "cgroup_sock.create", "seccomp.user_notif")
    limits_needs = (
        "tracefs",
        "tracepoint.task_newtask",
        "tracepoint",
        "helper.send_signal",
        "helper.ancestor_cgroup_id",
    )
    return (
        Mechanism(
            "egress",
            EGRESS_MECHANISM if all_ok(egress_needs) else None,
            egress_needs,
            (
                Alternative(
                    "BPF LSM socket_connect (-EPERM); not implemented",
                    lsm_ok,
                    lsm_detail,
                    lsm_checked,
                ),
            ),
        ),
        Mechanism(
            "exec",
            EXEC_MECHANISM if all_ok(exec_needs) else None,
            exec_needs,
            (
                Alternative(
                    "BPF LSM bprm_check_security (-EPERM before exec); not implemented",
                    lsm_ok,
                    lsm_detail,
                    lsm_checked,
                ),
            ),
        ),
        Mechanism(
            "syscalls",
            SYSCALLS_MECHANISM if all_ok(syscalls_needs) else None,
            syscalls_needs,
        ),
        Mechanism("sockets", SOCKETS_MECHANISM if all_ok(sockets_needs) else None, sockets_needs),
        Mechanism("limits", LIMITS_MECHANISM if all_ok(limits_needs) else None, limits_needs),
    )


def _guarded(name: str, required: bool, probe: Callable[[], Feature]) -> Feature:
    """Run one probe; a crash in it becomes a failed row, never a failed doctor."""
    try:
        return probe()
    except Exception as err:
        _log.debug("probe_crashed", feature=name, error=repr(err))
        return Feature(name, False, f"probe crashed: {err!r}", required=required)


def run_probes(*, euid: int | None = None, source: Path = PROBE_SOURCE) -> Report:
    """Probe everything. ``euid`` overrides the real one (tests: simulate non-root).

    As non-root, the probes that need bpf() are reported as not checked and bpf() is
    never called.
    """
    uid = os.geteuid() if euid is None else euid
    release = os.uname().release
    config = _guarded_config(release)

    features: list[Feature] = [
        _guarded("root", True, lambda: _probe_root(uid)),
        _guarded("bcc", True, _probe_bcc),
        _guarded("kernel_headers", True, lambda: _probe_headers(release)),
        _guarded("cgroup2", True, _probe_cgroup2),
        _guarded("tracefs", True, lambda: _probe_tracefs(uid)),
        _guarded("bpffs", False, _probe_bpffs),
        _guarded("kernel_btf", False, _probe_btf),
        _guarded("bpf_jit", False, lambda: _probe_jit(config)),
    ]
    bcc: ModuleType | None = None
    with contextlib.suppress(BccMissingError):
        bcc = import_bcc()
    try:
        features.extend(_bpf_features(bcc, uid, source))
    except Exception as err:
        features.append(Feature(_COMPILE_FEATURE, False, f"probe crashed: {err!r}"))
    features.extend(
        [
            _guarded("seccomp.filter", True, _probe_seccomp),
            _guarded("seccomp.user_notif", True, _probe_user_notif),
            _guarded(
                "tracepoint.signal_generate",
                True,
                lambda: _probe_tracepoint_exists(
                    "tracepoint.signal_generate",
                    "signal",
                    "signal_generate",
                    "seccomp kill reports",
                ),
            ),
            _guarded(
                "tracepoint.task_newtask",
                True,
                lambda: _probe_tracepoint_exists(
                    "tracepoint.task_newtask", "task", "task_newtask", "process budgets (forks)"
                ),
            ),
            _guarded(
                "tracepoint.sys_enter_execve",
                False,
                lambda: _probe_tracepoint_exists(
                    "tracepoint.sys_enter_execve",
                    "syscalls",
                    EXEC_ORIGIN_EVENTS,
                    "where each exec began",
                    required=False,
                    fix="use a kernel built with CONFIG_FTRACE_SYSCALLS; without these, an "
                    "exec that runc moves into a pod mid-way is judged where it ends (runc "
                    "may now and then fail to start a container in a pod with an exec policy)",
                ),
            ),
        ]
    )
    features.append(_guarded("kprobes", False, lambda: _probe_kprobes(config)))
    try:
        features.extend(_optional_features(bcc, uid, config))
    except Exception as err:
        features.append(Feature("bpf_lsm", False, f"probe crashed: {err!r}", required=False))

    by_name = {f.name: f for f in features}
    return Report(release, tuple(features), choose_mechanisms(by_name))


def _guarded_config(release: str) -> dict[str, str] | None:
    try:
        return kernel_config(release)
    except Exception:
        return None
