"""The few bpf(2) and perf_event_open(2) calls BCC's Python API does not offer.

Used to pin the exec tracepoint as a BPF link (so it outlives the agent process), to find
the programs attached to a cgroup (so a restarted agent never attaches twice), and to
detach them. Attribute layouts are the kernel's UAPI (linux/bpf.h, linux/perf_event.h);
unused fields stay zero, as the kernel requires.
"""

from __future__ import annotations

import ctypes as ct
import os
import platform
import struct
from pathlib import Path

from nodeguard.errors import BpfLoadError

# syscall numbers
_SYS = {
    "x86_64": {"bpf": 321, "perf_event_open": 298},
    "aarch64": {"bpf": 280, "perf_event_open": 241},
}

# bpf commands (enum bpf_cmd)
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_LINK_CREATE = 28
BPF_RAW_TRACEPOINT_OPEN = 17

BPF_PERF_EVENT = 41  # enum bpf_attach_type
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5

_ATTR_SIZE = 128  # generous bpf_attr buffer; bytes past a command's fields must be 0

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


def _nr(name: str) -> int:
    table = _SYS.get(platform.machine())
    if table is None:
        raise BpfLoadError(f"unsupported architecture {platform.machine()} for raw bpf() calls")
    return table[name]


def _bpf(cmd: int, attr: ct.Array[ct.c_char]) -> int:
    res = int(_libc.syscall(_nr("bpf"), cmd, attr, len(attr)))
    if res < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def _attr(*fields: tuple[int, str, int]) -> ct.Array[ct.c_char]:
    """A zeroed bpf_attr with (offset, struct format, value) fields written in."""
    buf = ct.create_string_buffer(_ATTR_SIZE)
    for offset, fmt, value in fields:
        struct.pack_into(fmt, buf, offset, value)
    return buf


def obj_pin(fd: int, path: Path) -> None:
    cpath = ct.create_string_buffer(os.fsencode(path))
    _bpf(BPF_OBJ_PIN, _attr((0, "Q", ct.addressof(cpath)), (8, "I", fd)))


def obj_get(path: Path) -> int:
    cpath = ct.create_string_buffer(os.fsencode(path))
    return _bpf(BPF_OBJ_GET, _attr((0, "Q", ct.addressof(cpath))))


def tracepoint_id(category: str, name: str, tracefs: Path = Path("/sys/kernel/tracing")) -> int:
    return int((tracefs / "events" / category / name / "id").read_text())


def perf_event_open_tracepoint(tp_id: int) -> int:
    """A perf event on a tracepoint (all CPUs: BPF on tracepoints is not per-CPU)."""
    attr = ct.create_string_buffer(PERF_ATTR_SIZE)
    struct.pack_into("IIQQ", attr, 0, PERF_TYPE_TRACEPOINT, PERF_ATTR_SIZE, tp_id, 1)
    struct.pack_into("I", attr, 48, 1)  # wakeup_events
    fd = int(_libc.syscall(_nr("perf_event_open"), attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ct.get_errno()
        raise OSError(err, f"perf_event_open(tracepoint {tp_id}): {os.strerror(err)}")
    return fd


def link_create_perf_event(prog_fd: int, perf_fd: int) -> int:
    """A BPF link binding a program to a perf event; pin it to make it outlive us."""
    return _bpf(
        BPF_LINK_CREATE,
        _attr((0, "I", prog_fd), (4, "I", perf_fd), (8, "I", BPF_PERF_EVENT)),
    )


def raw_tracepoint_open(prog_fd: int, name: str) -> int:
    """Attach a raw tracepoint program; the fd is a BPF link (pin it to keep it)."""
    cname = ct.create_string_buffer(name.encode())
    return _bpf(BPF_RAW_TRACEPOINT_OPEN, _attr((0, "Q", ct.addressof(cname)), (8, "I", prog_fd)))


def prog_query(target_fd: int, attach_type: int, capacity: int = 64) -> list[int]:
    """Ids of the programs attached to a cgroup for one attach type."""
    ids = (ct.c_uint32 * capacity)()
    attr = _attr(
        (0, "I", target_fd),
        (4, "I", attach_type),
        (16, "Q", ct.addressof(ids)),
        (24, "I", capacity),
    )
    _bpf(BPF_PROG_QUERY, attr)
    count = struct.unpack_from("I", attr, 24)[0]
    return [int(ids[i]) for i in range(min(count, capacity))]


def prog_get_fd_by_id(prog_id: int) -> int:
    return _bpf(BPF_PROG_GET_FD_BY_ID, _attr((0, "I", prog_id)))


def _prog_info(prog_fd: int) -> bytes:
    info = ct.create_string_buffer(256)
    _bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        _attr((0, "I", prog_fd), (4, "I", len(info)), (8, "Q", ct.addressof(info))),
    )
    return info.raw


def prog_name(prog_fd: int) -> str:
    """The program's name (bpf_prog_info.name, offset 64, 16 bytes)."""
    return _prog_info(prog_fd)[64:80].split(b"\0", 1)[0].decode(errors="replace")


def prog_tag(prog_fd: int) -> bytes:
    """The program's tag (bpf_prog_info.tag, offset 8): a hash of its instructions, so
    two loads of the same program share it and another version does not."""
    return _prog_info(prog_fd)[8:16]


def attached_programs(cgroup_fd: int, attach_type: int) -> list[tuple[int, str, bytes]]:
    """(id, name, tag) of every program attached to the cgroup for ``attach_type``."""
    out: list[tuple[int, str, bytes]] = []
    for prog_id in prog_query(cgroup_fd, attach_type):
        try:
            fd = prog_get_fd_by_id(prog_id)
        except OSError:
            continue  # detached meanwhile
        try:
            info = _prog_info(fd)
            out.append(
                (prog_id, info[64:80].split(b"\0", 1)[0].decode(errors="replace"), info[8:16])
            )
        finally:
            os.close(fd)
    return out


def prog_detach(cgroup_fd: int, prog_fd: int, attach_type: int) -> None:
    _bpf(BPF_PROG_DETACH, _attr((0, "I", cgroup_fd), (4, "I", prog_fd), (8, "I", attach_type)))


BPF_MAP_LOOKUP_ELEM = 1


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """Value for ``key`` in a map (e.g. one opened with :func:`obj_get`), None if absent."""
    kbuf = ct.create_string_buffer(key, len(key))
    vbuf = ct.create_string_buffer(value_size)
    try:
        _bpf(
            BPF_MAP_LOOKUP_ELEM,
            _attr((0, "I", map_fd), (8, "Q", ct.addressof(kbuf)), (16, "Q", ct.addressof(vbuf))),
        )
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == 2:
            return None
        raise
    return vbuf.raw
