"""spec.sockets: the vocabulary (checked against the C headers when installed), parsing,
masks, schema errors with file:line: path, versions, flags and ``policy show``."""

from __future__ import annotations

import argparse
import re
import textwrap
from pathlib import Path

import pytest

from nodeguard.bpf.abi import SOCK_ALL, PolicyFlag
from nodeguard.cli import policy as policy_cli
from nodeguard.policy import CompiledPolicy, compile_policy, parse_policy_text
from nodeguard.policy.compiled import CompiledSockets, SocketDeny
from nodeguard.policy.sockets import (
    FAMILIES,
    FAMILY_TYPES,
    NETLINK_PROTOCOLS,
    SOCK_TYPES,
    SocketKindError,
    compile_socket_denies,
    describe_deny,
    effective_family,
    family_name,
    kind_name,
    netlink_protocol_name,
    parse_socket_kind,
    type_name,
)

HEAD = "apiVersion: nodeguard.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: p}\n"
SOCKET_H = Path("/usr/include/x86_64-linux-gnu/bits/socket.h")
NETLINK_H = Path("/usr/include/linux/netlink.h")

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_VSOCK = 1, 2, 10, 16, 17, 40
STREAM, DGRAM, RAW, SEQPACKET, PACKET = 1, 2, 3, 5, 10
FORMS = "'<family>', '<family>:<type>' (unix, inet, inet6, packet) or 'netlink:<protocol>'"


def bit(n: int) -> int:
    return 1 << n


def text(spec: str) -> str:
    return HEAD + "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  ")


def compiled(spec: str) -> CompiledPolicy:
    policies, problems = parse_policy_text(text(spec), "p.yaml")
    assert problems == [], [p.render() for p in problems]
    return compile_policy(policies[0])


def sockets(*entries: str) -> CompiledSockets:
    quoted = ", ".join(f'"{e}"' for e in entries)
    result = compiled(f"sockets: {{deny: [{quoted}]}}\n").sockets
    assert result is not None
    return result


def problems(spec: str) -> list[str]:
    _, found = parse_policy_text(text(spec), "p.yaml")
    return [p.render() for p in found]


# -------------------------------------------------------------- vocabulary --


def test_families_match_the_c_header() -> None:
    if not SOCKET_H.exists():
        pytest.skip("glibc headers not installed")
    header = dict(re.findall(r"#define\s+PF_(\w+)\s+(\d+)", SOCKET_H.read_text()))
    from_header = {name.lower(): int(n) for name, n in header.items() if name not in ("MAX",)}
    from_header.pop("unspec")
    assert from_header.pop("local") == 1  # AF_UNIX is an alias of AF_LOCAL there
    assert {**from_header, "unix": 1} == dict(FAMILIES)


def test_netlink_protocols_match_the_c_header() -> None:
    if not NETLINK_H.exists():
        pytest.skip("kernel UAPI headers not installed")
    found = dict(re.findall(r"#define\s+NETLINK_(\w+)\s+(\d+)\s", NETLINK_H.read_text()))
    # NETLINK_UNUSED (1) is not a protocol; the socket-option constants come later.
    expected = {k.lower(): int(v) for k, v in found.items() if int(v) <= 22 and k != "UNUSED"}
    for name, number in NETLINK_PROTOCOLS.items():
        assert expected.get(name) == number, name
    assert set(NETLINK_PROTOCOLS) <= set(expected)


def test_socket_type_numbers() -> None:
    assert dict(SOCK_TYPES) == {
        "stream": 1,
        "dgram": 2,
        "raw": 3,
        "rdm": 4,
        "seqpacket": 5,
        "dccp": 6,
        "packet": 10,
    }


def test_reverse_lookups() -> None:
    assert family_name(AF_PACKET) == "packet"
    assert family_name(42) == "qipcrtr"
    assert family_name(46) == "af46"
    assert type_name(RAW) == "raw"
    assert type_name(RAW | 0o4000 | 0o2000000) == "raw"  # SOCK_NONBLOCK | SOCK_CLOEXEC
    assert type_name(7) == "type7"
    assert netlink_protocol_name(9) == "audit"
    assert netlink_protocol_name(1) == "protocol1"
    assert kind_name(AF_INET6, RAW, 255) == "inet6:raw"
    assert kind_name(AF_NETLINK, RAW, 9) == "netlink:audit"
    assert kind_name(AF_VSOCK, STREAM, 0) == "vsock:stream"
    assert kind_name(99, STREAM, 0) == "af99:stream"


def test_legacy_inet_packet_sockets_are_packet_sockets() -> None:
    assert effective_family(AF_INET, PACKET) == AF_PACKET
    assert effective_family(AF_INET, PACKET | 0o4000) == AF_PACKET
    assert effective_family(AF_INET, RAW) == AF_INET
    assert effective_family(AF_INET6, PACKET) == AF_INET6


# ----------------------------------------------------------------- parsing --


def test_issue_example_compiles_to_merged_masks() -> None:
    result = sockets(
        "raw", "packet", "netlink", "netlink:audit", "vsock", "inet6:raw", "unix:dgram"
    )
    assert result.deny == (
        SocketDeny(AF_UNIX, bit(DGRAM) | bit(RAW), SOCK_ALL, ("unix:dgram",)),
        SocketDeny(AF_INET, bit(RAW), SOCK_ALL, ("raw",)),
        SocketDeny(AF_INET6, bit(RAW), SOCK_ALL, ("inet6:raw", "raw")),
        SocketDeny(AF_NETLINK, SOCK_ALL, SOCK_ALL, ("netlink", "netlink:audit")),
        SocketDeny(AF_PACKET, SOCK_ALL, SOCK_ALL, ("packet",)),
        SocketDeny(AF_VSOCK, SOCK_ALL, SOCK_ALL, ("vsock",)),
    )
    assert [d.family for d in result.cgroup_families] == [AF_INET, AF_INET6]
    assert [d.family for d in result.seccomp_families] == [
        AF_UNIX,
        AF_NETLINK,
        AF_PACKET,
        AF_VSOCK,
    ]


def test_types_and_protocols_merge_per_family() -> None:
    result = sockets("inet:dgram", "inet:raw", "netlink:route", "netlink:audit", "packet:raw")
    assert result.deny == (
        SocketDeny(AF_INET, bit(DGRAM) | bit(RAW), SOCK_ALL, ("inet:dgram", "inet:raw")),
        SocketDeny(AF_NETLINK, SOCK_ALL, bit(0) | bit(9), ("netlink:audit", "netlink:route")),
        SocketDeny(AF_PACKET, bit(RAW), SOCK_ALL, ("packet:raw",)),
    )


def test_order_and_duplicates_do_not_matter() -> None:
    assert sockets("packet", "raw", "packet") == sockets("raw", "packet")


def test_masks_decide_what_is_denied() -> None:
    result = sockets("raw", "netlink:audit", "unix:dgram", "packet:dgram")
    assert result.denied(AF_INET, RAW, 1)
    assert result.denied(AF_INET6, RAW | 0o2000000, 58)  # SOCK_CLOEXEC ignored
    assert not result.denied(AF_INET, STREAM, 6)
    assert not result.denied(AF_INET, DGRAM, 17)
    assert result.denied(AF_NETLINK, RAW, 9)
    assert not result.denied(AF_NETLINK, RAW, 0)
    assert not result.denied(AF_NETLINK, RAW, 40)  # protocols >= 32 only match "every"
    assert result.denied(AF_UNIX, DGRAM, 0)
    assert result.denied(AF_UNIX, RAW, 0)  # created as a dgram socket by the kernel
    assert not result.denied(AF_UNIX, STREAM, 0)
    assert result.denied(AF_PACKET, DGRAM, 0)
    assert not result.denied(AF_PACKET, RAW, 0)
    assert not result.denied(AF_VSOCK, STREAM, 0)


@pytest.mark.parametrize(
    ("entry", "parts"),
    [
        ("packet", ((AF_PACKET, SOCK_ALL, SOCK_ALL),)),
        ("raw", ((AF_INET, bit(RAW), SOCK_ALL), (AF_INET6, bit(RAW), SOCK_ALL))),
        ("inet:stream", ((AF_INET, bit(STREAM), SOCK_ALL),)),
        ("inet6:seqpacket", ((AF_INET6, bit(SEQPACKET), SOCK_ALL),)),
        ("unix:stream", ((AF_UNIX, bit(STREAM), SOCK_ALL),)),
        ("packet:packet", ((AF_PACKET, bit(PACKET), SOCK_ALL),)),
        ("netlink:sock_diag", ((AF_NETLINK, SOCK_ALL, bit(4)),)),
        ("netlink:kobject_uevent", ((AF_NETLINK, SOCK_ALL, bit(15)),)),
        ("alg", ((38, SOCK_ALL, SOCK_ALL),)),
        ("unix", ((AF_UNIX, SOCK_ALL, SOCK_ALL),)),
    ],
)
def test_parse(entry: str, parts: tuple[tuple[int, int, int], ...]) -> None:
    kind = parse_socket_kind(entry)
    assert kind.text == entry
    assert kind.parts == parts


def test_every_name_parses() -> None:
    for family in FAMILIES:
        if family in ("inet", "inet6"):
            continue
        assert parse_socket_kind(family).parts[0][0] == FAMILIES[family]
    for family, types in FAMILY_TYPES.items():
        for t in types:
            parse_socket_kind(f"{family}:{t}")
    for protocol in NETLINK_PROTOCOLS:
        parse_socket_kind(f"netlink:{protocol}")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "inet",
            "'inet' alone would refuse every inet socket, TCP and UDP included; restrict "
            "where connections go with 'egress' rules, and deny only the kinds you mean, such "
            "as 'inet:raw'",
        ),
        (
            "inet6",
            "'inet6' alone would refuse every inet6 socket, TCP and UDP included; restrict "
            "where connections go with 'egress' rules, and deny only the kinds you mean, such "
            "as 'inet6:raw'",
        ),
        (
            "pakcet",
            "unknown socket family 'pakcet' (did you mean 'packet'?); families are the "
            "kernel's AF_* names in lower case (unix, inet, inet6, netlink, packet, vsock, "
            "...; docs/policy.md lists them)",
        ),
        (
            "af_vsock",
            "unknown socket family 'af_vsock' (did you mean 'vsock'?); families are the "
            "kernel's AF_* names in lower case (unix, inet, inet6, netlink, packet, vsock, "
            "...; docs/policy.md lists them)",
        ),
        ("AF_PACKET", "'AF_PACKET': socket kinds are written in lower case; write 'packet'"),
        ("Inet6:RAW", "'Inet6:RAW': socket kinds are written in lower case; write 'inet6:raw'"),
        ("INET", "'INET': socket kinds are written in lower case"),
        (
            "stream",
            "'stream' is a socket type, not a family; write it after its family, e.g. "
            "'unix:stream', 'inet:stream', 'inet6:stream'",
        ),
        (
            "inet:rwa",
            "unknown socket type 'rwa' (did you mean 'raw'?); inet types: stream, dgram, raw, "
            "seqpacket, dccp",
        ),
        (
            "inet:rdm",
            "'inet:rdm': the kernel has no inet sockets of type rdm; inet types: stream, "
            "dgram, raw, seqpacket, dccp",
        ),
        (
            "unix:raw",
            "'unix:raw': the kernel creates unix sockets of type raw as dgram sockets; write "
            "'unix:dgram' (it covers both)",
        ),
        (
            "inet:packet",
            "'inet:packet': the kernel turns socket(AF_INET, SOCK_PACKET) into a packet "
            "socket; write 'packet' (it covers this legacy form too)",
        ),
        (
            "vsock:stream",
            "'vsock:stream': socket types can only be given for unix, inet, inet6, packet; "
            "deny 'vsock' as a whole",
        ),
        (
            "netlink:audti",
            "unknown netlink protocol 'audti' (did you mean 'audit'?); netlink protocols: "
            + ", ".join(NETLINK_PROTOCOLS),
        ),
        (
            "netlink:raw",
            "'netlink:raw': netlink entries name a protocol, not a socket type; deny "
            "'netlink' as a whole or one protocol such as 'netlink:audit'",
        ),
        ("inet:raw:x", f"'inet:raw:x' is not a socket kind; write {FORMS}"),
        ("", f"empty socket kind; write {FORMS}"),
        ("inet: raw", f"'inet: raw' contains spaces; write {FORMS} without spaces"),
    ],
)
def test_parse_errors(entry: str, message: str) -> None:
    with pytest.raises(SocketKindError) as info:
        parse_socket_kind(entry)
    assert info.value.message == message


def test_describe_deny() -> None:
    denies = compile_socket_denies(
        parse_socket_kind(e) for e in ("packet", "unix:dgram", "inet:raw", "netlink:audit")
    )
    assert [describe_deny(d) for d in denies] == [
        "type dgram",
        "type raw",
        "protocol audit",
        "every socket",
    ]


# ------------------------------------------------------------------ schema --


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "sockets:\n  deny: [raw, inet]\n",
            "p.yaml:6: spec.sockets.deny[1]: 'inet' alone would refuse every inet socket, TCP "
            "and UDP included; restrict where connections go with 'egress' rules, and deny "
            "only the kinds you mean, such as 'inet:raw'",
        ),
        (
            "sockets:\n  deny:\n    - raw\n    - 'netlink:audti'\n",
            "p.yaml:8: spec.sockets.deny[1]: unknown netlink protocol 'audti' (did you mean "
            "'audit'?); netlink protocols: " + ", ".join(NETLINK_PROTOCOLS),
        ),
        (
            "sockets:\n  deny: [17]\n",
            "p.yaml:6: spec.sockets.deny[0]: 17 is a number; write the family name 'packet' "
            "(AF_PACKET = 17)",
        ),
        (
            "sockets:\n  deny: [99]\n",
            f"p.yaml:6: spec.sockets.deny[0]: 99 is not a socket kind; write {FORMS}",
        ),
        (
            "sockets:\n  deny: [null]\n",
            "p.yaml:6: spec.sockets.deny[0]: expected a socket kind such as 'packet' or "
            "'inet:raw', got nothing (null)",
        ),
        (
            "sockets:\n  deny: []\n",
            "p.yaml:6: spec.sockets.deny: 'deny: []' denies nothing; list socket kinds (e.g. "
            "[raw, packet]), or remove 'sockets'",
        ),
        (
            "sockets: {}\n",
            "p.yaml:5: spec.sockets.deny: missing required key 'deny'; list what to deny, "
            "e.g. 'deny: [raw, packet]'",
        ),
        (
            "sockets:\n",
            "p.yaml:5: spec.sockets: 'sockets:' is empty; list what to deny (e.g. 'sockets: "
            "{deny: [raw, packet]}'), or remove 'sockets'",
        ),
        (
            "sockets:\n  deny: [raw]\n  allow: [unix]\n",
            "p.yaml:7: spec.sockets.allow: unknown key 'allow'; allowed here: deny",
        ),
        (
            "sockets:\n  deny: raw\n",
            "p.yaml:6: spec.sockets.deny: expected a list, got a string ('raw')",
        ),
        (
            "socket: {deny: [raw]}\n",
            "p.yaml:5: spec.socket: unknown key 'socket' (did you mean 'sockets'?); allowed "
            "here: selector, mode, egress, exec, syscalls, sockets, limits",
        ),
    ],
)
def test_schema_errors(spec: str, expected: str) -> None:
    assert problems(spec) == [expected]


# --------------------------------------------------------- version, flags --


def test_version_ignores_order_duplicates_and_aliases() -> None:
    base = compiled("sockets: {deny: [raw, packet]}\n").version
    for spec in (
        "sockets: {deny: [packet, raw, raw]}\n",
        "sockets: {deny: ['inet:raw', 'inet6:raw', packet]}\n",
        "sockets: {deny: [raw, packet, 'packet:raw']}\n",
    ):
        assert compiled(spec).version == base, spec


@pytest.mark.parametrize(
    "spec",
    [
        "sockets: {deny: [raw]}\n",
        "sockets: {deny: ['inet:raw', packet]}\n",
        "sockets: {deny: [raw, 'packet:raw']}\n",
        "sockets: {deny: [raw, packet, vsock]}\n",
        "{}\n",
    ],
)
def test_version_changes_with_the_deny_list(spec: str) -> None:
    assert compiled(spec).version != compiled("sockets: {deny: [raw, packet]}\n").version


def test_flags() -> None:
    assert PolicyFlag.SOCKETS in compiled("sockets: {deny: [packet]}\n").flags()
    assert PolicyFlag.SOCKETS not in compiled("{}\n").flags()
    assert compiled("{}\n").sockets is None


# -------------------------------------------------------------------- show --


def test_show(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text("sockets: {deny: [raw, packet, 'netlink:audit', 'unix:dgram']}\n"))
    parser = argparse.ArgumentParser(prog="nodeguard")
    policy_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["policy", "show", str(path)])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("  sockets (5 families; socket() of these kinds refused (EPERM)):")
    assert [re.sub(" +", " ", line) for line in lines[start + 1 : start + 6]] == [
        " unix type dgram (unix:dgram)",
        " inet type raw (raw)",
        " inet6 type raw (raw)",
        " netlink protocol audit (netlink:audit)",
        " packet every socket (packet)",
    ]
