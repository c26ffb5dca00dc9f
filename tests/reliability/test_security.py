"""Security: safe defaults, TLS and mutual TLS on a live exporter (spans sent by OpenTelemetry's own
OTLP exporters, metrics scraped over https), the admin API's bearer token, bad TLS files refused at
start, and an audit of the installed packages against known vulnerabilities."""

from __future__ import annotations

import json
import pathlib
import re
import ssl
import subprocess
import sys
import urllib.request

import grpc
import pytest
import requests
from certs import CA
from cryptography.hazmat.primitives import serialization
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from servers import ExporterProcess, http_get, sum_samples

from jouletrace.cli import build_parser
from jouletrace.exporter import tls
from jouletrace.exporter.powercap.actuation import token_id
from jouletrace.exporter.config import ExporterConfig
from jouletrace.exporter.daemon import Exporter

TOKEN = "adm-7f3c9e2b41d8a6"
READ_ONLY = {"GET", "HEAD"}


def config(*argv: str) -> ExporterConfig:
    return ExporterConfig.from_namespace(build_parser().parse_args(["exporter", *argv]), {})


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The exporter's CA (server and client certificates) and another CA with a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    ca, other = CA(folder, "ca"), CA(folder, "other-ca")
    return {"ca": ca.cert_file, "server": ca.issue("server", server=True), "client": ca.issue("client", server=False),
            "other_ca": other.cert_file, "other_client": other.issue("other-client", server=False), "dir": folder}


def client_context(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


@pytest.fixture(scope="module")
def exporter(pki):
    """An exporter with TLS on every listener and client certificates required on OTLP."""
    cert, key = pki["server"]
    proc = ExporterProcess("--gpu", "sim", "--tls-cert-file", cert, "--tls-key-file", key,
                           "--tls-client-ca-file", pki["ca"], tls=client_context(pki["ca"]))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def span():
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "tls-model"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("security-test").start_as_current_span("llm_request", attributes={
            "gen_ai.request.id": "r1", "gen_ai.usage.prompt_tokens": 10, "gen_ai.usage.completion_tokens": 5}):
        pass
    provider.shutdown()
    return memory.get_finished_spans()[0]


def grpc_exporter(port: int, ca: str | None, client: tuple[str, str] | None) -> GrpcExporter:
    """OTLP/gRPC to `port`: TLS trusting `ca` with the `client` certificate, or plaintext (ca None)."""
    if ca is None:
        return GrpcExporter(endpoint=f"127.0.0.1:{port}", insecure=True, timeout=2)
    cert, key = (pathlib.Path(f).read_bytes() for f in client) if client else (None, None)
    creds = grpc.ssl_channel_credentials(pathlib.Path(ca).read_bytes(), private_key=key, certificate_chain=cert)
    return GrpcExporter(endpoint=f"127.0.0.1:{port}", credentials=creds, timeout=2)


def http_exporter(port: int, ca: str | None, client: tuple[str, str] | None) -> HttpExporter:
    """OTLP/HTTP to `port`: https trusting `ca` with the `client` certificate, or http (ca None)."""
    if ca is None:
        return HttpExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", timeout=2)
    cert, key = client or (None, None)
    session = requests.Session()
    session.trust_env = False  # else requests verifies against REQUESTS_CA_BUNDLE, not `certificate_file`
    return HttpExporter(endpoint=f"https://127.0.0.1:{port}/v1/traces", certificate_file=ca,
                        client_certificate_file=cert, client_key_file=key, timeout=2, session=session)


def export(make, port: int, span, ca: str | None, client: tuple[str, str] | None = None) -> SpanExportResult:
    sdk_exporter = make(port, ca, client)
    try:
        return sdk_exporter.export([span])
    finally:
        sdk_exporter.shutdown()


def received(exporter: ExporterProcess) -> float:
    status, text = http_get(exporter.url("/metrics"), context=exporter.tls)
    assert status == 200
    return sum_samples(text, "jouletrace_spans_received_total")


# -- defaults ----------------------------------------------------------------------------------
def test_defaults_keep_otlp_on_loopback_actuation_off_and_no_tls():
    cfg = config()
    assert cfg.otlp_grpc_addr == ("127.0.0.1", 4317) and cfg.otlp_http_addr == ("127.0.0.1", 4318)
    assert not cfg.powercap_actuation
    assert tls.load(cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_client_ca_file) is None


@pytest.mark.parametrize("variable", ["JOULETRACE_FORWARD_OTLP", "JOULETRACE_ENGINE_METRICS"])
def test_a_url_option_with_credentials_is_refused_without_repeating_them(variable):
    with pytest.raises(ValueError, match="secrets go in files") as error:
        ExporterConfig.from_namespace(build_parser().parse_args(["exporter"]),
                                      {variable: "https://jouletrace:pa55word@127.0.0.1:8000/v1/traces"})
    assert "pa55word" not in str(error.value)


def test_every_route_of_the_metrics_port_is_read_only_unless_actuation_is_on(exporter):
    app = Exporter(config("--gpu", "sim")).metrics_app()
    writable = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method not in READ_ONLY}
    assert writable == {("POST", "/api/v1/powercap"), ("DELETE", "/api/v1/powercap")}
    paths = {r.resource.canonical for r in app.router.routes()}
    assert {"/metrics", "/healthz", "/readyz", "/api/v1/energy", "/diagnose"} <= paths
    for path in paths:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            status = admin_call(exporter, method, TOKEN, path=path)[0]
            assert status == (403 if (method, path) in writable else 405), (method, path, status)


# -- TLS and mutual TLS --------------------------------------------------------------------------
def test_spans_over_mutual_tls_from_the_sdk_exporters_and_metrics_over_https(exporter, pki, span):
    before = received(exporter)
    assert export(grpc_exporter, exporter.grpc_port, span, pki["ca"], pki["client"]) == SpanExportResult.SUCCESS
    assert export(http_exporter, exporter.http_port, span, pki["ca"], pki["client"]) == SpanExportResult.SUCCESS
    assert received(exporter) == before + 2
    assert http_get(exporter.url("/readyz"), context=client_context(pki["ca"]))[0] == 200


@pytest.mark.parametrize("make", [grpc_exporter, http_exporter], ids=["grpc", "http"])
@pytest.mark.parametrize("case", ["plaintext", "server_from_another_ca", "no_client_certificate",
                                  "client_certificate_from_another_ca"])
def test_otlp_refuses_plaintext_untrusted_server_and_missing_or_foreign_client_certificates(
        exporter, pki, span, make, case):
    ca, client = {"plaintext": (None, None), "server_from_another_ca": (pki["other_ca"], pki["client"]),
                  "no_client_certificate": (pki["ca"], None),
                  "client_certificate_from_another_ca": (pki["ca"], pki["other_client"])}[case]
    port = exporter.grpc_port if make is grpc_exporter else exporter.http_port
    before = received(exporter)
    assert export(make, port, span, ca, client) == SpanExportResult.FAILURE
    assert received(exporter) == before


def test_metrics_refuse_plaintext_and_a_client_trusting_another_ca(exporter, pki):
    assert http_get(exporter.url("/metrics").replace("https://", "http://"))[0] == 0
    assert http_get(exporter.url("/metrics"), context=client_context(pki["other_ca"]))[0] == 0
    assert exporter.proc.poll() is None


# -- bad TLS files ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encrypted_key(pki):
    path = pki["dir"] / "encrypted.key"
    key = serialization.load_pem_private_key(pathlib.Path(pki["server"][1]).read_bytes(), None)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"passphrase")))
    return str(path)


@pytest.mark.parametrize("case", ["key_without_cert", "cert_without_key", "missing_cert", "key_as_cert",
                                  "key_of_another_cert", "encrypted_key", "key_as_client_ca"])
def test_a_bad_tls_option_or_file_is_one_line_that_shows_no_key(pki, encrypted_key, case):
    (cert, key), (_, client_key) = pki["server"], pki["client"]
    args, reason = {
        "key_without_cert": (("", key, ""), "need --tls-cert-file"),
        "cert_without_key": ((cert, "", ""), "needs --tls-key-file"),
        "missing_cert": ((cert + ".missing", key, ""), "No such file"),
        "key_as_cert": ((key, key, ""), "not a PEM certificate and its private key"),
        "key_of_another_cert": ((cert, client_key, ""), "not a PEM certificate and its private key"),
        "encrypted_key": ((cert, encrypted_key, ""), "is encrypted"),
        "key_as_client_ca": ((cert, key, key), "--tls-client-ca-file"),
    }[case]
    with pytest.raises(ValueError, match=reason) as error:
        tls.load(*args)
    message = str(error.value)
    assert "\n" not in message and "PRIVATE KEY" not in message


def test_the_exporter_stops_at_start_with_one_line_for_a_bad_tls_file(pki):
    cert, key = pki["server"]
    done = subprocess.run([sys.executable, "-m", "jouletrace", "exporter", "--gpu", "sim", "--tls-cert-file", key,
                           "--tls-key-file", key], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "cannot run: --tls-cert-file" in lines[0], lines
    assert "PRIVATE KEY" not in lines[0]


# -- the admin API's token ---------------------------------------------------------------------
def admin_call(exporter: ExporterProcess, method: str, token: str | None, body=None,
               path: str = "/api/v1/powercap") -> tuple[int, dict]:
    request = urllib.request.Request(exporter.url(path), method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=exporter.tls) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


def test_the_admin_api_needs_the_token_over_https_and_never_logs_it(pki, tmp_path):
    token_file = tmp_path / "admin-token"
    token_file.write_text(f"# admin tokens\n{TOKEN}\n")
    cert, key = pki["server"]
    admin = ExporterProcess("--gpu", "sim", "--powercap-actuation", "on", "--powercap-token-file", str(token_file),
                            "--tls-cert-file", cert, "--tls-key-file", key, "--log-level", "debug",
                            tls=client_context(pki["ca"]))
    try:
        limit = admin_call(admin, "GET", None)[1]["gpus"][0]["limit_w"]
        wrong = TOKEN[:-1] + "0"
        for method in ("POST", "DELETE"):
            for token in (None, "", wrong, TOKEN + "x", TOKEN[:8]):
                status, _ = admin_call(admin, method, token, {"watts": limit - 50})
                assert status == 401, (method, token, status)
        status, answer = admin_call(admin, "POST", TOKEN, {"watts": limit - 50, "reason": "security test"})
        assert status == 200 and answer["changes"][0]["to_w"] == limit - 50
        assert admin_call(admin, "DELETE", TOKEN)[0] == 200
    finally:
        admin.stop()
        output = admin.output()
    assert re.search(rf"token:{token_id(TOKEN)} from 127\.0\.0\.1", output)  # audited, by its id only
    assert "without a valid admin token" in output
    assert TOKEN not in output and wrong not in output


# -- dependency audit ------------------------------------------------------------------------
NETWORK_ERROR = re.compile(r"requests\.exceptions\.(ConnectionError|ProxyError|ConnectTimeout|ReadTimeout|SSLError)")


def test_no_installed_package_has_a_known_vulnerability():
    """pip-audit over this environment, against the Python Packaging Advisory Database (through the
    package index's JSON API): needs the package index; skipped, saying so, where it is unreachable."""
    done = subprocess.run([sys.executable, "-m", "pip_audit", "--local", "--skip-editable", "--progress-spinner",
                           "off", "--timeout", "20"], capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    if done.returncode != 0 and NETWORK_ERROR.search(output):
        pytest.skip(f"the vulnerability service is unreachable: {NETWORK_ERROR.search(output).group(0)}")
    assert done.returncode == 0, f"pip-audit found known vulnerabilities (upgrade these packages):\n{output}"
    assert "No known vulnerabilities found" in output
