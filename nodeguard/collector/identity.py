"""Which node a producer is, from its TLS client certificate.

A node certificate (``nodeguard.pki.issue_node``) names its node twice: in a URI SAN
``nodeguard-node:<name>`` and in the subject CN. The URI SAN wins when present (a CN is
free text in many PKIs); without one, the CN is the node name. The collector accepts
records for that node only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from nodeguard.pki import NODE_URI_PREFIX

# grpc auth-context property names (grpc/grpc_security_constants.h).
PEM_CERT = "x509_pem_cert"
COMMON_NAME = "x509_common_name"
PEER_URI = "peer_uri"


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The node a certificate names, and where the name came from."""

    node: str
    source: str  # "uri_san" | "common_name"


class IdentityError(Exception):
    """The peer presented no usable node identity. ``reason`` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _first_text(values: Sequence[bytes] | None) -> str | None:
    if not values:
        return None
    return values[0].decode("utf-8", errors="replace")


def _node_uris(uris: Sequence[str]) -> list[str]:
    return sorted({u[len(NODE_URI_PREFIX) :] for u in uris if u.startswith(NODE_URI_PREFIX)})


def identity_from_certificate(cert: x509.Certificate) -> PeerIdentity:
    """The node a certificate names (URI SAN first, then CN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    nodes = _node_uris(uris)
    if len(nodes) > 1:
        raise IdentityError(
            "ambiguous_cert",
            f"the client certificate names {len(nodes)} nodes ({', '.join(nodes)}) in "
            f"{NODE_URI_PREFIX}* URI SANs; issue one certificate per node",
        )
    if nodes and nodes[0]:
        return PeerIdentity(nodes[0], "uri_san")
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    if not cn:
        raise IdentityError(
            "no_identity",
            f"the client certificate names no node: it has neither a {NODE_URI_PREFIX}<node> "
            "URI SAN nor a subject CN; issue it with `nodeguard collector certs --node NAME`",
        )
    return PeerIdentity(cn, "common_name")


def identity_from_auth_context(auth: Mapping[str, Sequence[bytes]]) -> PeerIdentity:
    """The node of a gRPC peer, from ``context.auth_context()`` of a mutual-TLS call."""
    pem = _first_text(auth.get(PEM_CERT))
    if pem is not None:
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
        except ValueError:
            cert = None
        if cert is not None:
            return identity_from_certificate(cert)
    # No PEM in the context (older gRPC): the peer properties carry the same names.
    nodes = _node_uris([v.decode("utf-8", errors="replace") for v in auth.get(PEER_URI, ())])
    if len(nodes) == 1 and nodes[0]:
        return PeerIdentity(nodes[0], "uri_san")
    cn = _first_text(auth.get(COMMON_NAME))
    if cn:
        return PeerIdentity(cn, "common_name")
    raise IdentityError(
        "no_cert",
        "no client certificate: the collector requires mutual TLS; configure the producer "
        "with its node certificate and key",
    )
