"""Socket kinds for ``spec.sockets.deny``: the vocabulary, parsing and the deny masks.

An entry names what ``socket(family, type, protocol)`` calls to refuse:

- ``<family>``: every socket of that address family (``packet``, ``netlink``, ``vsock``);
- ``<family>:<type>`` for ``unix``, ``inet``, ``inet6`` and ``packet``: one socket type
  (``inet6:raw``, ``unix:dgram``);
- ``netlink:<protocol>``: one netlink protocol (``netlink:audit``);
- ``raw``: ``inet:raw`` and ``inet6:raw``.

Names are lower case, as in the kernel's ``AF_*``/``SOCK_*``/``NETLINK_*`` constants
without the prefix. ``inet``/``inet6`` alone are refused: denying every TCP and UDP
socket is surely a mistake (egress rules restrict where they connect).

Pure functions, no kernel access; :func:`compile_socket_denies` builds the
:class:`~nodeguard.policy.compiled.SocketDeny` entries of a policy.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from nodeguard.bpf.abi import SOCK_ALL
from nodeguard.errors import NodeguardError
from nodeguard.policy.compiled import SocketDeny

# linux/socket.h (AF_*), 6.1: every family the kernel knows, by its lower-case name.
FAMILIES: Final[Mapping[str, int]] = MappingProxyType(
    {
        "unix": 1,
        "inet": 2,
        "ax25": 3,
        "ipx": 4,
        "appletalk": 5,
        "netrom": 6,
        "bridge": 7,
        "atmpvc": 8,
        "x25": 9,
        "inet6": 10,
        "rose": 11,
        "decnet": 12,
        "netbeui": 13,
        "security": 14,
        "key": 15,
        "netlink": 16,
        "packet": 17,
        "ash": 18,
        "econet": 19,
        "atmsvc": 20,
        "rds": 21,
        "sna": 22,
        "irda": 23,
        "pppox": 24,
        "wanpipe": 25,
        "llc": 26,
        "ib": 27,
        "mpls": 28,
        "can": 29,
        "tipc": 30,
        "bluetooth": 31,
        "iucv": 32,
        "rxrpc": 33,
        "isdn": 34,
        "phonet": 35,
        "ieee802154": 36,
        "caif": 37,
        "alg": 38,
        "nfc": 39,
        "vsock": 40,
        "kcm": 41,
        "qipcrtr": 42,
        "smc": 43,
        "xdp": 44,
        "mctp": 45,
    }
)

# linux/net.h (enum sock_type).
SOCK_TYPES: Final[Mapping[str, int]] = MappingProxyType(
    {"stream": 1, "dgram": 2, "raw": 3, "rdm": 4, "seqpacket": 5, "dccp": 6, "packet": 10}
)

# linux/netlink.h (NETLINK_*).
NETLINK_PROTOCOLS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "route": 0,
        "usersock": 2,
        "firewall": 3,
        "sock_diag": 4,
        "nflog": 5,
        "xfrm": 6,
        "selinux": 7,
        "iscsi": 8,
        "audit": 9,
        "fib_lookup": 10,
        "connector": 11,
        "netfilter": 12,
        "ip6_fw": 13,
        "dnrtmsg": 14,
        "kobject_uevent": 15,
        "generic": 16,
        "scsitransport": 18,
        "ecryptfs": 19,
        "rdma": 20,
        "crypto": 21,
        "smc": 22,
    }
)

AF_UNIX: Final = FAMILIES["unix"]
AF_INET: Final = FAMILIES["inet"]
AF_INET6: Final = FAMILIES["inet6"]
AF_NETLINK: Final = FAMILIES["netlink"]
AF_PACKET: Final = FAMILIES["packet"]
SOCK_DGRAM: Final = SOCK_TYPES["dgram"]
SOCK_RAW: Final = SOCK_TYPES["raw"]
SOCK_PACKET: Final = SOCK_TYPES["packet"]
SOCK_TYPE_MASK: Final = 0xF  # socket(2)'s type without SOCK_NONBLOCK / SOCK_CLOEXEC

# Families whose entries may name a type, and the types the kernel creates for each
# (unix_create, inet_create with TCP/UDP/raw/SCTP/DCCP, packet_create).
FAMILY_TYPES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "unix": ("stream", "dgram", "seqpacket"),
        "inet": ("stream", "dgram", "raw", "seqpacket", "dccp"),
        "inet6": ("stream", "dgram", "raw", "seqpacket", "dccp"),
        "packet": ("dgram", "raw", "packet"),
    }
)

# Entries that stand for several.
ALIASES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({"raw": ("inet:raw", "inet6:raw")})

# Families that may not be denied as a whole, and what to write instead.
_WHOLE_FAMILY_REFUSED: Final = frozenset({"inet", "inet6"})

_FORMS = "'<family>', '<family>:<type>' (unix, inet, inet6, packet) or 'netlink:<protocol>'"
_PREFIXES = ("af_", "pf_", "sock_", "netlink_")


class SocketKindError(NodeguardError, ValueError):
    """A ``spec.sockets.deny`` entry that is not a socket kind (message says why and how
    to fix it)."""


@dataclass(frozen=True, slots=True)
class SocketKind:
    """One parsed deny entry: per family it covers, the type and protocol masks (bit
    ``1 << SOCK_*`` / ``1 << protocol``, ``SOCK_ALL`` for every one)."""

    text: str
    parts: tuple[tuple[int, int, int], ...]  # (family, types, protocols)

    def __str__(self) -> str:
        return self.text


# -------------------------------------------------------------------- names --


def family_name(family: int) -> str:
    """``17`` -> ``"packet"``; an unknown family -> ``"af<N>"``."""
    return _FAMILY_NAMES.get(family, f"af{family}")


def type_name(sock_type: int) -> str:
    """``3`` -> ``"raw"`` (SOCK_NONBLOCK / SOCK_CLOEXEC ignored); unknown -> ``"type<N>"``."""
    bare = sock_type & SOCK_TYPE_MASK
    return _TYPE_NAMES.get(bare, f"type{bare}")


def netlink_protocol_name(protocol: int) -> str:
    """``9`` -> ``"audit"``; an unknown protocol -> ``"protocol<N>"``."""
    return _NETLINK_NAMES.get(protocol, f"protocol{protocol}")


def kind_name(family: int, sock_type: int, protocol: int) -> str:
    """How a policy would spell one socket() call: ``"inet6:raw"``, ``"netlink:audit"``,
    ``"vsock:stream"``."""
    if family == AF_NETLINK:
        return f"netlink:{netlink_protocol_name(protocol)}"
    return f"{family_name(family)}:{type_name(sock_type)}"


def effective_family(family: int, sock_type: int) -> int:
    """The family the kernel creates the socket in: ``socket(AF_INET, SOCK_PACKET, ...)``
    is turned into a packet socket (__sock_create), so it is ``AF_PACKET``'s business."""
    if family == AF_INET and sock_type & SOCK_TYPE_MASK == SOCK_PACKET:
        return AF_PACKET
    return family


_FAMILY_NAMES: Final[Mapping[int, str]] = MappingProxyType({v: k for k, v in FAMILIES.items()})
_TYPE_NAMES: Final[Mapping[int, str]] = MappingProxyType({v: k for k, v in SOCK_TYPES.items()})
_NETLINK_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {v: k for k, v in NETLINK_PROTOCOLS.items()}
)


# ------------------------------------------------------------------ parsing --


def _did_you_mean(word: str, pool: Iterable[str]) -> str | None:
    pool = sorted(pool)
    bare = word.strip().lower()
    for prefix in _PREFIXES:
        bare = bare.removeprefix(prefix)
    if bare != word and bare in pool:
        return bare
    close = difflib.get_close_matches(bare, pool, n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown(what: str, word: str, pool: Iterable[str], listing: str) -> SocketKindError:
    pool = list(pool)
    guess = _did_you_mean(word, pool)
    message = f"unknown {what} {word!r}"
    if guess is not None:
        message += f" (did you mean {guess!r}?)"
    return SocketKindError(f"{message}; {listing}")


def _family(word: str, text: str) -> str:
    if word in FAMILIES:
        return word
    if word in SOCK_TYPES and word not in ALIASES:
        hint = ", ".join(f"'{f}:{word}'" for f in FAMILY_TYPES if word in FAMILY_TYPES[f])
        where = f"{text!r}: " if text != word else ""
        raise SocketKindError(
            f"{where}{word!r} is a socket type, not a family; write it after its family, "
            f"e.g. {hint}"
        )
    raise _unknown(
        "socket family",
        word,
        [*FAMILIES, *ALIASES],
        "families are the kernel's AF_* names in lower case (unix, inet, inet6, netlink, "
        "packet, vsock, ...; docs/policy.md lists them)",
    )


def _whole_family(family: str, text: str) -> SocketKind:
    if family in _WHOLE_FAMILY_REFUSED:
        raise SocketKindError(
            f"{text!r} alone would refuse every {family} socket, TCP and UDP included; "
            f"restrict where connections go with 'egress' rules, and deny only the kinds "
            f"you mean, such as '{family}:raw'"
        )
    return SocketKind(text, ((FAMILIES[family], SOCK_ALL, SOCK_ALL),))


def _typed(family: str, word: str, text: str) -> SocketKind:
    allowed = FAMILY_TYPES[family]
    listing = f"{family} types: {', '.join(allowed)}"
    if word not in SOCK_TYPES:
        raise _unknown("socket type", word, allowed, listing)
    if family == "unix" and word == "raw":
        raise SocketKindError(
            f"{text!r}: the kernel creates unix sockets of type raw as dgram sockets; "
            "write 'unix:dgram' (it covers both)"
        )
    if family == "inet" and word == "packet":
        raise SocketKindError(
            f"{text!r}: the kernel turns socket(AF_INET, SOCK_PACKET) into a packet "
            "socket; write 'packet' (it covers this legacy form too)"
        )
    if word not in allowed:
        raise SocketKindError(
            f"{text!r}: the kernel has no {family} sockets of type {word}; {listing}"
        )
    types = 1 << SOCK_TYPES[word]
    if family == "unix" and word == "dgram":
        types |= 1 << SOCK_RAW  # unix_create turns SOCK_RAW into SOCK_DGRAM
    return SocketKind(text, ((FAMILIES[family], types, SOCK_ALL),))


def _netlink(word: str) -> SocketKind:
    if word in SOCK_TYPES and word not in NETLINK_PROTOCOLS:
        raise SocketKindError(
            f"'netlink:{word}': netlink entries name a protocol, not a socket type; deny "
            "'netlink' as a whole or one protocol such as 'netlink:audit'"
        )
    if word not in NETLINK_PROTOCOLS:
        raise _unknown(
            "netlink protocol",
            word,
            NETLINK_PROTOCOLS,
            f"netlink protocols: {', '.join(NETLINK_PROTOCOLS)}",
        )
    return SocketKind(f"netlink:{word}", ((AF_NETLINK, SOCK_ALL, 1 << NETLINK_PROTOCOLS[word]),))


def _respelled(text: str) -> str:
    """``"; write 'packet'"`` for ``AF_PACKET`` when the lower-case spelling is valid."""
    words = []
    for word in text.lower().split(":"):
        bare = word
        for prefix in _PREFIXES:
            bare = bare.removeprefix(prefix)
        words.append(bare)
    candidate = ":".join(words)
    try:
        parse_socket_kind(candidate)
    except SocketKindError:
        return ""
    return f"; write {candidate!r}"


def parse_socket_kind(text: str) -> SocketKind:
    """Parse one deny entry; :class:`SocketKindError` with the reason and the fix."""
    if not text.strip():
        raise SocketKindError(f"empty socket kind; write {_FORMS}")
    if text != text.strip() or " " in text:
        raise SocketKindError(f"{text!r} contains spaces; write {_FORMS} without spaces")
    if text in ALIASES:
        parts = tuple(part for alias in ALIASES[text] for part in parse_socket_kind(alias).parts)
        return SocketKind(text, parts)
    words = text.split(":")
    if len(words) > 2:
        raise SocketKindError(f"{text!r} is not a socket kind; write {_FORMS}")
    if text != text.lower():
        raise SocketKindError(f"{text!r}: socket kinds are written in lower case{_respelled(text)}")
    family = _family(words[0], text)
    if len(words) == 1:
        return _whole_family(family, text)
    if family == "netlink":
        return _netlink(words[1])
    if family not in FAMILY_TYPES:
        raise SocketKindError(
            f"{text!r}: socket types can only be given for {', '.join(FAMILY_TYPES)}; "
            f"deny {family!r} as a whole"
        )
    return _typed(family, words[1], text)


def number_hint(value: int) -> str:
    """Message for a number written where a socket kind belongs."""
    name = _FAMILY_NAMES.get(value)
    if name is None:
        return f"{value} is not a socket kind; write {_FORMS}"
    return f"{value} is a number; write the family name {name!r} (AF_{name.upper()} = {value})"


# ---------------------------------------------------------------- compiling --


def compile_socket_denies(kinds: Iterable[SocketKind]) -> tuple[SocketDeny, ...]:
    """One :class:`SocketDeny` per family, masks merged, sorted by family; ``spelled``
    holds the entries that produced it (sorted, unique)."""
    merged: dict[int, tuple[int, int, set[str]]] = {}
    for kind in kinds:
        for family, types, protocols in kind.parts:
            old_types, old_protocols, spelled = merged.get(family, (0, 0, set()))
            spelled.add(kind.text)
            merged[family] = (old_types | types, old_protocols | protocols, spelled)
    return tuple(
        SocketDeny(family, types, protocols, tuple(sorted(spelled)))
        for family, (types, protocols, spelled) in sorted(merged.items())
    )


def describe_deny(deny: SocketDeny) -> str:
    """``"every type"``, ``"raw, dgram"``, ``"protocols audit, route"`` for reports."""
    if deny.types == SOCK_ALL and deny.protocols == SOCK_ALL:
        return "every socket"
    parts: list[str] = []
    if deny.types != SOCK_ALL:
        names = [n for n, t in SOCK_TYPES.items() if deny.types & (1 << t)]
        if deny.family == AF_UNIX and "dgram" in names and "raw" in names:
            names.remove("raw")  # unix raw is dgram
        parts.append("type " + ", ".join(names))
    if deny.protocols != SOCK_ALL:
        protocols = [n for n, p in NETLINK_PROTOCOLS.items() if deny.protocols & (1 << p)]
        parts.append("protocol " + ", ".join(protocols))
    return "; ".join(parts)
