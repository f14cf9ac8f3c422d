"""A small private PKI for the collector link: a CA, server and node (client) certificates.

Used by ``nodeguard collector certs`` (users who have no PKI of their own yet), by the
demo and by the tests. A node certificate names its node in the subject CN (and a
``nodeguard-node:<name>`` URI SAN); the collector accepts events for that node only.
Keys are ECDSA P-256; files are PEM, keys written 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_URI_PREFIX = "nodeguard-node:"


@dataclass(frozen=True, slots=True)
class CertFiles:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nodeguard"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)


def make_ca(directory: Path, name: str = "nodeguard test CA", *, days: int = 365) -> CA:
    """A self-signed CA in ``directory/ca.crt`` + ``ca.key``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "ca.crt"
    _write_cert(cert_path, cert)
    _write_key(directory / "ca.key", key)
    return CA(cert=cert, key=key, cert_path=cert_path)


def load_ca(directory: Path) -> CA:
    cert_path = directory / "ca.crt"
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / 'ca.key'}: not an ECDSA key")
    return CA(cert=cert, key=key, cert_path=cert_path)


def _issue(
    ca: CA,
    directory: Path,
    stem: str,
    *,
    cn: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> CertFiles:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    files = CertFiles(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    _write_cert(files.cert, cert)
    _write_key(files.key, key)
    return files


def _host_san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_server(
    ca: CA, directory: Path, hosts: list[str], *, stem: str = "server", days: int = 365
) -> CertFiles:
    """A TLS server certificate valid for ``hosts`` (DNS names or IP addresses)."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or address")
    return _issue(
        ca,
        directory,
        stem,
        cn=hosts[0],
        sans=[_host_san(h) for h in hosts],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        days=days,
    )


def issue_node(
    ca: CA, directory: Path, node: str, *, stem: str | None = None, days: int = 365
) -> CertFiles:
    """A client certificate for node ``node`` (CN and URI SAN ``nodeguard-node:<node>``)."""
    return _issue(
        ca,
        directory,
        stem or f"node-{node}",
        cn=node,
        sans=[x509.UniformResourceIdentifier(NODE_URI_PREFIX + node)],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        days=days,
    )


def issue_client(
    ca: CA, directory: Path, cn: str, *, stem: str = "client", days: int = 365
) -> CertFiles:
    """A plain client certificate (for sinks that want one, e.g. syslog over TLS)."""
    return _issue(
        ca, directory, stem, cn=cn, sans=[], usage=ExtendedKeyUsageOID.CLIENT_AUTH, days=days
    )
