"""A violation as an ArcSight Common Event Format (CEF) 0 payload.

``CEF:0|nodeguard|nodeguard|<version>|<signature id>|<name>|<severity>|<extension>``

- signature id: ``<kind>-<verdict>`` (``egress-blocked``, ``syscall-audited``...), stable
  for SIEM rules; name: what happened in a few words (``Denied syscall ptrace``).
- severity: the OCSF severity of the same event (see :func:`ocsf_severity`) on CEF's
  0-10 scale (:data:`CEF_SEVERITY`).
- extension: the standard keys where CEF has one (``rt``, ``act``, ``dst``, ``dpt``,
  ``proto``, ``spid``, ``sproc``, ``fname``, ``filePath``, ``cnt``, ``dvchost``,
  ``externalId``, ``msg``...) and labelled custom strings for the rest (``cs1`` policy,
  ``cs2`` namespace, ``cs3`` pod, ``cs4`` container, ``cs5`` uid, ``cs6`` cmdLine,
  ``flexString1`` image, ``flexString2`` detail, ``cn1`` cgroupId). docs/sinks.md has
  the table.

Escaping (CEF rules): in the header ``\\`` and ``|`` are backslash-escaped; in extension
values ``\\`` and ``=`` are, and CR/LF become ``\\r``/``\\n`` (a payload never contains a
raw line break). A ``|`` in an extension value needs no escape.
"""

from __future__ import annotations

import posixpath

from nodeguard import PRODUCT, __version__
from nodeguard.events import ocsf
from nodeguard.events.model import Violation

CEF_VERSION = 0
VENDOR = PRODUCT

# OCSF severity_id -> CEF 0-10 (0-3 low, 4-6 medium, 7-8 high, 9-10 very high)
CEF_SEVERITY = {0: 0, 1: 1, 2: 3, 3: 5, 4: 8, 5: 9, 6: 10, 99: 5}

_HEADER_ESCAPES = str.maketrans({"\\": "\\\\", "|": "\\|", "\n": " ", "\r": " "})
_EXTENSION_ESCAPES = str.maketrans({"\\": "\\\\", "=": "\\=", "\n": "\\n", "\r": "\\r"})

# (key, label key, label) of the custom fields
CS_POLICY = ("cs1", "cs1Label", "policy")
CS_NAMESPACE = ("cs2", "cs2Label", "namespace")
CS_POD = ("cs3", "cs3Label", "pod")
CS_CONTAINER = ("cs4", "cs4Label", "container")
CS_UID = ("cs5", "cs5Label", "uid")
CS_CMDLINE = ("cs6", "cs6Label", "cmdLine")
FLEX_IMAGE = ("flexString1", "flexString1Label", "image")
FLEX_DETAIL = ("flexString2", "flexString2Label", "detail")
CN_CGROUP = ("cn1", "cn1Label", "cgroupId")


def escape_header(text: str) -> str:
    return text.translate(_HEADER_ESCAPES)


def escape_extension(text: str) -> str:
    return text.translate(_EXTENSION_ESCAPES)


def ocsf_severity(v: Violation) -> int:
    """The OCSF ``severity_id`` :func:`nodeguard.events.ocsf.to_ocsf` gives ``v``."""
    return ocsf.severity(v)[0]


def signature_id(v: Violation) -> str:
    return f"{v.kind}-{v.verdict}"


def event_name(v: Violation) -> str:
    if v.egress is not None:
        return "Denied egress" if v.verdict == "blocked" else "Audited egress"
    if v.exec is not None:
        return "Denied exec" if v.verdict == "blocked" else "Audited exec"
    return ocsf.finding_title(v)


def action(v: Violation) -> str:
    """``blocked`` (egress: EPERM; socket: EPERM), ``killed`` (exec, syscall, budget:
    the process got a fatal signal), ``audited`` (audit mode: nothing was stopped)."""
    if v.verdict == "audited":
        return "audited"
    if v.egress is not None:
        return "blocked"
    if v.exec is not None:
        return "killed"
    return ocsf.finding_verb(v)


def detail(v: Violation) -> str | None:
    """The finding's subject in a few words (syscall, socket kind, budget)."""
    if v.syscall is not None:
        s = v.syscall
        return f"{s.name} ({s.arch}, number {s.number}, {s.mechanism})"
    if v.socket is not None:
        return f"{ocsf.socket_text(v.socket)} ({v.socket.hook})"
    if v.limit is not None:
        return ocsf.limit_text(v.limit)
    return None


def extension_fields(v: Violation) -> list[tuple[str, str]]:
    """(key, unescaped value) pairs in a fixed order; absent values are left out."""
    out: list[tuple[str, str]] = [
        ("rt", str(v.time_ms)),
        ("start", str(v.first_time_ms)),
        ("end", str(v.time_ms)),
        ("cnt", str(v.count)),
        ("act", action(v)),
        ("cat", f"{PRODUCT}/{v.kind}"),
        ("externalId", v.uid),
    ]

    def labelled(field: tuple[str, str, str], value: str | None) -> None:
        if value:
            key, label_key, label = field
            out.append((key, value))
            out.append((label_key, label))

    if v.node:
        out.append(("dvchost", v.node))
    p = v.process
    if p.pid:
        out.append(("spid", str(p.pid)))
    if p.name:
        out.append(("sproc", p.name))
    if v.egress is not None:
        e = v.egress
        if ":" in e.ip:
            out += [("c6a4", e.ip), ("c6a4Label", "Destination IPv6 Address")]
        else:
            out.append(("dst", e.ip))
        if ocsf.has_ports(e.protocol):
            out.append(("dpt", str(e.port)))
        out.append(("proto", e.protocol.upper() if ocsf.has_ports(e.protocol) else e.protocol))
        out.append(("deviceDirection", "1"))
    if v.exec is not None:
        out.append(("fname", posixpath.basename(v.exec.path) or v.exec.path))
        out.append(("filePath", v.exec.path))
    labelled(CS_POLICY, v.policy.name)
    w = v.workload
    if w is not None:
        labelled(CS_NAMESPACE, w.namespace)
        labelled(CS_POD, w.pod_name)
        labelled(CS_CONTAINER, w.container_name or w.container_id)
    labelled(CS_UID, v.uid)
    labelled(CS_CMDLINE, p.cmd_line)
    if w is not None:
        labelled(FLEX_IMAGE, w.image)
    labelled(FLEX_DETAIL, detail(v))
    labelled(CN_CGROUP, str(v.cgroup_id) if v.cgroup_id else None)
    out.append(("msg", ocsf.message(v)))
    return out


def to_cef(v: Violation, *, product_version: str = __version__) -> str:
    """The CEF payload of one violation (one line, no trailing newline)."""
    header = "|".join(
        escape_header(part)
        for part in (
            f"CEF:{CEF_VERSION}",
            VENDOR,
            PRODUCT,
            product_version,
            signature_id(v),
            event_name(v),
            str(CEF_SEVERITY.get(ocsf_severity(v), 5)),
        )
    )
    extension = " ".join(f"{k}={escape_extension(value)}" for k, value in extension_fields(v))
    return f"{header}|{extension}"
