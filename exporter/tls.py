"""TLS of the exporter's listeners, from PEM files read once at start.

One server certificate serves the metrics/admin listener and both OTLP listeners. With a client
CA, the OTLP listeners also require a client certificate signed by it (mutual TLS); the metrics
listener does not, so that probes and scrapers without one keep working.
"""

from __future__ import annotations

import dataclasses
import ssl

import grpc


@dataclasses.dataclass(frozen=True)
class ListenerTLS:
    metrics: ssl.SSLContext      # server certificate only
    otlp_http: ssl.SSLContext    # and the client certificate, with a client CA
    otlp_grpc: grpc.ServerCredentials
    mutual: bool


def _encrypted_key() -> bytes:
    raise ValueError("--tls-key-file is encrypted; give an unencrypted key (a mounted secret)")


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"{option} {path}: {exc.strerror}") from None


def _context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_encrypted_key)
    except ssl.SSLError as exc:
        raise ValueError(f"--tls-cert-file {cert_file} and --tls-key-file {key_file} are not a PEM certificate "
                         f"and its private key: {exc.reason or exc}") from None
    return ctx


def _require_client_certificate(ctx: ssl.SSLContext, client_ca: bytes, client_ca_file: str) -> None:
    try:
        ctx.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(f"--tls-client-ca-file {client_ca_file} holds no PEM certificate: "
                         f"{getattr(exc, 'reason', None) or exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED


def load(cert_file: str, key_file: str, client_ca_file: str) -> ListenerTLS | None:
    """The listeners' TLS; None without a certificate. ValueError, one line, for a missing option
    or an unreadable or invalid file. No file's content is ever logged or put in an error."""
    if not cert_file:
        if key_file or client_ca_file:
            raise ValueError("--tls-key-file and --tls-client-ca-file need --tls-cert-file")
        return None
    if not key_file:
        raise ValueError("--tls-cert-file needs --tls-key-file")
    cert, key = _read("--tls-cert-file", cert_file), _read("--tls-key-file", key_file)
    client_ca = _read("--tls-client-ca-file", client_ca_file) if client_ca_file else None
    metrics = otlp_http = _context(cert_file, key_file)
    if client_ca is not None:
        otlp_http = _context(cert_file, key_file)
        _require_client_certificate(otlp_http, client_ca, client_ca_file)
    grpc_creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                             require_client_auth=client_ca is not None)
    return ListenerTLS(metrics, otlp_http, grpc_creds, client_ca is not None)
