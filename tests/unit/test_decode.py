"""decode(): ring buffer bytes -> RawEgress / RawExec, never raising on bad input."""

from __future__ import annotations

import ctypes as ct
import dataclasses
import ipaddress
import random

import pytest

from nodeguard.bpf import abi
from nodeguard.events.decode import (
    AF_INET,
    AF_INET6,
    EGRESS_SIZE,
    EXEC_SIZE,
    DecodeStats,
    RawEgress,
    RawExec,
    RawHeader,
    decode,
    encode,
)


def mapped(ip: str) -> bytes:
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return ipaddress.IPv6Address(f"::ffff:{ip}").packed
    return addr.packed


def header(op: abi.Op = abi.Op.EGRESS, **fields: object) -> RawHeader:
    base = RawHeader(
        op=int(op),
        size=EGRESS_SIZE if op == abi.Op.EGRESS else EXEC_SIZE,
        policy_id=7,
        ts_ns=5_000_000_000,
        cgroup_id=0x1234,
        pid=4242,
        tid=4243,
        verdict=int(abi.Verdict.BLOCKED),
        count_total=1,
        first_ns=5_000_000_000,
        comm="curl",
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def egress(ip: str = "10.1.2.3", **fields: object) -> RawEgress:
    return RawEgress(
        hdr=header(abi.Op.EGRESS, **fields),
        addr=mapped(ip),
        port=443,
        protocol=6,
        family=AF_INET,
        hook=int(abi.Hook.CONNECT4),
    )


def exec_record(path: bytes = b"/usr/bin/nc", **fields: object) -> RawExec:
    return RawExec(
        hdr=header(abi.Op.EXEC, **fields),
        old_pid=4242,
        path_len=len(path) + 1,
        path=path.decode("utf-8", errors="replace"),
        path_bytes=path,
    )


def test_egress_round_trip() -> None:
    stats = DecodeStats()
    raw = egress()
    assert decode(encode(raw), stats) == raw
    assert stats.as_dict() == {"decoded": 1, "unknown_op": 0, "malformed": 0}


def test_egress_fields_from_ctypes_struct() -> None:
    # Built directly with ctypes, independent of encode().
    ev = abi.EgressEvent()
    ev.hdr.op = abi.Op.EGRESS
    ev.hdr.size = ct.sizeof(ev)
    ev.hdr.policy_id = 3
    ev.hdr.ts_ns = 99
    ev.hdr.cgroup_id = 1 << 40
    ev.hdr.pid = 10
    ev.hdr.tid = 11
    ev.hdr.verdict = abi.Verdict.AUDITED
    ev.hdr.count_total = 17
    ev.hdr.first_ns = 42
    ev.hdr.comm = b"python3"
    ct.memmove(ev.addr, mapped("2001:db8::1"), 16)
    ev.port = 8443
    ev.protocol = 17
    ev.family = AF_INET6
    ev.hook = abi.Hook.SENDMSG6
    raw = decode(bytes(ev))
    assert isinstance(raw, RawEgress)
    assert raw.hdr == RawHeader(
        op=1,
        size=ct.sizeof(ev),
        policy_id=3,
        ts_ns=99,
        cgroup_id=1 << 40,
        pid=10,
        tid=11,
        verdict=2,
        count_total=17,
        first_ns=42,
        comm="python3",
    )
    assert raw.addr == mapped("2001:db8::1")
    assert (raw.port, raw.protocol, raw.family, raw.hook) == (8443, 17, AF_INET6, 4)


def test_exec_round_trip_and_path() -> None:
    raw = exec_record(b"/opt/agent/bin/tool", verdict=int(abi.Verdict.AUDITED))
    got = decode(encode(raw))
    assert got == raw
    assert isinstance(got, RawExec)
    assert got.path == "/opt/agent/bin/tool"
    assert not got.truncated


def test_exec_path_stops_at_nul_and_keeps_bytes() -> None:
    ev = abi.ExecEvent()
    ev.hdr.op = abi.Op.EXEC
    ev.hdr.size = ct.sizeof(ev)
    ev.hdr.verdict = abi.Verdict.BLOCKED
    data = bytearray(bytes(ev))
    path_off = abi.ExecEvent.path.offset
    data[path_off : path_off + 12] = b"/bin/sh\0junk"
    raw = decode(bytes(data))
    assert isinstance(raw, RawExec)
    assert raw.path == "/bin/sh"
    assert raw.path_bytes == b"/bin/sh"


def test_exec_invalid_utf8_is_replaced() -> None:
    raw = decode(encode(exec_record(b"/tmp/\xff\xfeevil")))
    assert isinstance(raw, RawExec)
    assert raw.path == "/tmp/\ufffd\ufffdevil"
    assert raw.path_bytes == b"/tmp/\xff\xfeevil"


def test_exec_truncated_path() -> None:
    long_path = b"/" + b"a" * (abi.PATH_MAX - 2)  # 247 bytes + NUL = PATH_MAX
    raw = dataclasses.replace(exec_record(long_path), path_len=abi.PATH_MAX)
    got = decode(encode(raw))
    assert isinstance(got, RawExec)
    assert got.truncated
    assert got.path_bytes == long_path


def test_comm_full_length_and_invalid_utf8() -> None:
    ev = abi.EgressEvent.from_buffer_copy(encode(egress()))
    ev.hdr.comm = b"\xffabcdefghijklmn"  # 15 bytes + NUL
    raw = decode(bytes(ev))
    assert raw is not None
    assert raw.hdr.comm == "\ufffdabcdefghijklmn"


def test_trailing_padding_is_ignored() -> None:
    raw = egress()
    assert decode(encode(raw) + bytes(8)) == raw


def test_larger_size_for_known_op_is_accepted() -> None:
    # A newer kernel may append fields: size covers them, the known part still decodes.
    raw = egress()
    bigger = dataclasses.replace(raw, hdr=dataclasses.replace(raw.hdr, size=EGRESS_SIZE + 8))
    got = decode(encode(bigger) + bytes(8))
    assert isinstance(got, RawEgress)
    assert got.addr == raw.addr


def test_memoryview_and_bytearray_inputs() -> None:
    data = encode(egress())
    assert decode(bytearray(data)) == decode(memoryview(data)) == egress()


def test_unknown_op_is_counted() -> None:
    stats = DecodeStats()
    raw = egress()
    data = encode(dataclasses.replace(raw, hdr=dataclasses.replace(raw.hdr, op=99)))
    assert decode(data, stats) is None
    assert stats.as_dict() == {"decoded": 0, "unknown_op": 1, "malformed": 0}


@pytest.mark.parametrize("length", [0, 1, ct.sizeof(abi.EventHdr) - 1])
def test_shorter_than_header_is_malformed(length: int) -> None:
    stats = DecodeStats()
    assert decode(encode(egress())[:length], stats) is None
    assert stats.malformed == 1


def test_truncated_body_is_malformed() -> None:
    stats = DecodeStats()
    data = encode(exec_record())
    assert decode(data[: ct.sizeof(abi.EventHdr) + 8], stats) is None
    assert decode(data[:-1], stats) is None
    assert stats.malformed == 2
    assert stats.decoded == 0


def test_size_larger_than_buffer_is_malformed() -> None:
    stats = DecodeStats()
    raw = egress()
    data = encode(dataclasses.replace(raw, hdr=dataclasses.replace(raw.hdr, size=EGRESS_SIZE + 64)))
    assert decode(data, stats) is None
    assert stats.malformed == 1


def test_size_smaller_than_struct_is_malformed() -> None:
    stats = DecodeStats()
    raw = egress()
    data = encode(dataclasses.replace(raw, hdr=dataclasses.replace(raw.hdr, size=EGRESS_SIZE - 8)))
    assert decode(data, stats) is None
    assert stats.malformed == 1


@pytest.mark.parametrize(
    "change",
    [
        {"hook": 0},
        {"hook": 9},
        {"family": 0},
        {"family": 17},
    ],
)
def test_invalid_egress_fields_are_malformed(change: dict[str, int]) -> None:
    stats = DecodeStats()
    assert decode(encode(dataclasses.replace(egress(), **change)), stats) is None  # type: ignore[arg-type]
    assert stats.malformed == 1


@pytest.mark.parametrize("verdict", [0, 3, 0xFFFFFFFF])
def test_invalid_verdict_is_malformed(verdict: int) -> None:
    stats = DecodeStats()
    assert decode(encode(exec_record(verdict=verdict)), stats) is None
    assert stats.malformed == 1


def test_garbage_never_raises() -> None:
    stats = DecodeStats()
    rng = random.Random(1234)  # noqa: S311 (a reproducible fuzz, not crypto)
    for n in range(2000):
        length = rng.randrange(0, EXEC_SIZE + 16)
        data = bytes(rng.randrange(256) for _ in range(length))
        if n % 2 and length >= 4:  # make a known op with a plausible size likelier
            data = bytes([rng.choice([1, 2]), 0]) + data[2:]
        decode(data, stats)
    assert stats.decoded + stats.unknown_op + stats.malformed == 2000


def test_stats_default_does_not_raise() -> None:
    assert decode(b"") is None
