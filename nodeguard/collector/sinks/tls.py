"""TLS client contexts for the sinks (syslog over TLS, HEC over https, NATS over tls)."""

from __future__ import annotations

import ssl

from nodeguard import log
from nodeguard.collector.sinks.config import TlsClientConfig
from nodeguard.collector.sinks.sink import SinkError

_log = log.get("nodeguard.collector.sinks.tls")


def client_context(config: TlsClientConfig | None, *, sink: str) -> ssl.SSLContext:
    """A TLS 1.2+ client context: the server is checked against ``ca`` (default: the
    system trust store) unless ``insecureSkipVerify``; ``cert``/``key`` are presented
    when the server asks for a client certificate."""
    ca = None if config is None or config.ca is None else str(config.ca)
    try:
        context = ssl.create_default_context(cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if config is not None and config.cert is not None and config.key is not None:
            context.load_cert_chain(str(config.cert), str(config.key))
    except (ssl.SSLError, OSError) as err:
        raise SinkError(
            f"sink {sink}: cannot load its TLS files ({err})",
            fix="check that tls.ca, tls.cert and tls.key are PEM files and that the key "
            "belongs to the certificate",
        ) from err
    if config is not None and config.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        _log.warning(
            "sink_tls_verification_off",
            sink=sink,
            hint="insecureSkipVerify: true accepts any server certificate; set tls.ca",
        )
    return context


def server_hostname(config: TlsClientConfig | None, host: str) -> str:
    """The name the server certificate must carry: tls.serverName, else the host dialled."""
    if config is not None and config.server_name:
        return config.server_name
    return host
