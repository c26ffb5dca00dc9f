"""The `jouletrace` command: a subcommand whose optional dependency is missing says in one line
which extra brings it (the container image installs none); bad input and a missing GPU driver are
one line that says what to do, exit code 2, no traceback."""

import argparse
import os
import socket
import subprocess
import sys

import pytest

from jouletrace.cli import build_parser, main, optional_extra


def test_each_optional_module_is_named_by_its_extra():
    assert [optional_extra(m) for m in ("matplotlib", "pyarrow", "grafana_client", "grafana_foundation_sdk", "yaml",
                                        "diffusers", "torch")] \
        == ["loadgen", "loadgen", "grafana", "grafana-build", "grafana-build", "diffusion", "diffusion"]
    assert optional_extra("numpy") is None and optional_extra("pytest") is None  # a dependency; test only


@pytest.mark.parametrize("argv, module, extra", [
    (["simulate", "plan"], "matplotlib", "loadgen"),
    (["plan", "budget", "--budget-w", "40000"], "matplotlib", "loadgen"),
    (["grafana", "build"], "grafana_foundation_sdk", "grafana-build"),
])
def test_a_missing_extra_is_one_line(monkeypatch, capsys, tmp_path, argv, module, extra):
    monkeypatch.setitem(__import__("sys").modules, module, None)  # as if not installed
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"jouletrace {argv[0]}: needs {module}: pip install 'jouletrace[{extra}]'\n"


@pytest.mark.parametrize("argv, env, says", [
    (["exporter", "--log-level", "loud"], {}, "--log-level: expected debug, info, warning or error, got 'loud'"),
    (["exporter"], {"JOULETRACE_LOG_LEVEL": "loud"}, "JOULETRACE_LOG_LEVEL: log_level: expected debug"),
    (["exporter", "--gpu", "nvml"], {}, "no GPU driver for --gpu nvml"),
    (["exporter", "--gpu", "tpu"], {}, "--gpu must be auto, nvml or sim, not 'tpu'"),
    (["exporter", "--metrics-addr", "nowhere"], {}, "--metrics-addr: expected host:port"),
    (["exporter", "--config", "/nonexistent.toml"], {}, "config file /nonexistent.toml"),
    (["loadgen", "run"], {}, "required: --base-url (see jouletrace loadgen run --help)"),
    (["loadgen", "run", "--base-url", "http://h", "--bogus"], {}, "jouletrace loadgen run: unrecognized arguments: --bogus (see jouletrace loadgen run --help)"),
    (["simulate"], {}, "the following arguments are required"),
])
def test_bad_input_is_one_line_exit_2(argv, env, says):
    """Run as a user would (a subprocess, no NVIDIA driver on the test machine)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JOULETRACE_")} | env
    done = subprocess.run([sys.executable, "-m", "jouletrace.cli", *argv], capture_output=True, text=True,
                          env=environ, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr


def _subparsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _subparsers(sub)


def test_every_option_has_help_and_help_shows_defaults(capsys):
    parsers = list(_subparsers(build_parser()))
    assert [(p.prog, a.dest) for p in parsers for a in p._actions
            if not a.help and not isinstance(a, argparse._SubParsersAction)] == []
    with pytest.raises(SystemExit):
        main(["simulate", "serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "most requests in a batch (vLLM's) (default: 256)" in text and "(default: None)" not in text


def test_a_port_in_use_says_to_move_the_exporter():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "jouletrace.cli", "exporter", "--gpu", "sim", "--metrics-addr",
                               f"127.0.0.1:{port}", "--otlp-grpc-addr", "127.0.0.1:0", "--otlp-http-addr",
                               "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "address already in use; another process listens there: stop it, or move this exporter" in done.stderr
