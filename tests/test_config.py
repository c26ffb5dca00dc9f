"""Flags, environment variables and their errors."""

import subprocess
import sys

import pytest

from jouletrace.cli import build_parser
from jouletrace.exporter.config import ExporterConfig


def parse(argv, monkeypatch=None, env=None):
    if env:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    return ExporterConfig.from_namespace(build_parser().parse_args(["exporter", *argv]))


def test_defaults():
    cfg = parse([])
    assert cfg.gpu == "auto" and cfg.gpus == "all"
    assert cfg.metrics_addr == ("0.0.0.0", 9464)
    assert cfg.otlp_grpc_addr == ("127.0.0.1", 4317) and cfg.otlp_http_addr == ("127.0.0.1", 4318)
    assert cfg.settle_delay is None and cfg.counter_interval == 5.0 and cfg.max_message_bytes == 4 << 20
    assert (cfg.max_hold, cfg.retention, cfg.longest_hold) == (1800.0, 2400.0, 1800.0)


def test_environment_and_flags(monkeypatch):
    cfg = parse(["--window", "30"], monkeypatch, {"JOULETRACE_GPU": "sim", "JOULETRACE_SIM_GPUS": "4",
                                                  "JOULETRACE_OTLP_GRPC_ADDR": "off", "JOULETRACE_WINDOW": "90",
                                                  "JOULETRACE_METRICS_ADDR": "[::1]:9000"})
    assert cfg.gpu == "sim" and cfg.sim_gpus == 4
    assert cfg.otlp_grpc_addr is None
    assert cfg.window == 30.0  # the flag wins
    assert cfg.metrics_addr == ("::1", 9000)


@pytest.mark.parametrize("argv,message", [
    (["--settle-delay", "700", "--retention", "600"], "--settle-delay .* must be shorter than --retention"),
    (["--max-hold", "3000"], "--max-hold .* must be shorter than --retention"),
    (["--gpu", "tpu"], "--gpu must be auto, nvml or sim"),
    (["--counter-interval", "0.01"], "--counter-interval must not be shorter"),
])
def test_inconsistent_values_are_refused(argv, message):
    with pytest.raises(ValueError, match=message):
        parse(argv)


@pytest.mark.parametrize("argv", [["--metrics-addr", "nowhere"], ["--window", "-1"], ["--sim-load", "2"],
                                  ["--max-pending", "many"]])
def test_malformed_values_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["exporter", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jouletrace exporter: argument {argv[0]}: ") and err.count("\n") == 1


def test_command_reports_bad_environment_and_exits_2():
    env = {"JOULETRACE_SETTLE_DELAY": "2500", "PATH": ""}
    out = subprocess.run([sys.executable, "-m", "jouletrace", "exporter"], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "--settle-delay (2500.0s) must be shorter than --retention" in out.stderr


def test_command_refuses_a_port_in_use():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "jouletrace", "exporter", "--gpu", "sim",
                              "--metrics-addr", f"127.0.0.1:{port}", "--otlp-grpc-addr", "off",
                              "--otlp-http-addr", "off"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "cannot run" in out.stderr


def test_off_given_as_a_flag_disables_a_listener():
    cfg = parse(["--otlp-http-addr", "off", "--otlp-grpc-addr", "none"])
    assert cfg.otlp_http_addr is None and cfg.otlp_grpc_addr is None
    assert parse([]).otlp_http_addr == ("127.0.0.1", 4318)


def test_engine_timeout_is_read_and_changes_live():
    old, new = parse([]), parse(["--engine-timeout", "0.5"])
    assert (old.engine_timeout, new.engine_timeout) == (2.0, 0.5)
    assert old.changes(new) == (["engine_timeout"], [])


def test_topology_from_flags_environment_and_the_config_file(monkeypatch, tmp_path):
    assert parse([]).topology == () and parse([]).power_peak_window == 30.0
    assert parse(["--topology", "rack=r12", "--topology", "pdu = b12-1"]).topology == (("rack", "r12"), ("pdu", "b12-1"))
    config = tmp_path / "jouletrace.toml"
    config.write_text('topology = ["rack=r3"]\npower_peak_window = 90\n')
    cfg = parse(["--config", str(config)])
    assert (cfg.topology, cfg.power_peak_window) == ((("rack", "r3"),), 90.0)
    assert parse([], monkeypatch, {"JOULETRACE_TOPOLOGY": "rack=r12,row=b"}).topology == (("rack", "r12"), ("row", "b"))


@pytest.mark.parametrize("value", ["rack", "rack=", "=r12", "rack-id=r12", "__rack=r12", "node=n1", "9rack=r12"])
def test_a_malformed_topology_exits_with_a_message(value, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["exporter", "--topology", value])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("jouletrace exporter: argument --topology: ")


def test_a_topology_key_given_twice_and_a_short_peak_window_are_refused():
    with pytest.raises(ValueError, match="--topology names a key twice: rack"):
        parse(["--topology", "rack=r1", "--topology", "rack=r2"])
    with pytest.raises(ValueError, match="--power-peak-window must not be shorter than --power-interval"):
        parse(["--power-peak-window", "0.05"])
