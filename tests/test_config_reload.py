"""Configuration from a TOML file, and its reload on SIGHUP or when the file changes: what can change
live changes without losing counters; the rest is logged as needing a restart; a bad file is refused
and the running configuration stays."""

from __future__ import annotations

import signal

import pytest
from servers import ExporterProcess, SimEngine, http_get, sum_samples, wait_for

from jouletrace.cli import build_parser
from jouletrace.exporter.config import ExporterConfig


def config(args: list[str], environ: dict) -> ExporterConfig:
    return ExporterConfig.from_namespace(build_parser().parse_args(["exporter", *args]), environ)


def test_flag_then_environment_then_file_then_default(tmp_path):
    f = tmp_path / "jouletrace.toml"
    f.write_text('settle-delay = 30\nwindow = 20\nengine_metrics = ["http://a:8000/metrics", "http://b:8000/metrics"]\n'
                 'log_level = "debug"\n')
    cfg = config(["--config", str(f), "--window", "5"], {"JOULETRACE_LOG_LEVEL": "warning"})
    assert (cfg.window, cfg.log_level, cfg.settle_delay) == (5.0, "warning", 30.0)
    assert cfg.engine_metrics == ("http://a:8000/metrics", "http://b:8000/metrics")
    assert cfg.retention == 2400.0  # the default
    assert config([], {"JOULETRACE_CONFIG": str(f)}).settle_delay == 30.0


@pytest.mark.parametrize("text, words", [("windw = 3", "unknown option 'windw'"), ("window = -1", "window"),
                                         ("window = [", "config file"), ("engine_metrics = ['ftp://x']", "http")])
def test_a_bad_file_gets_a_one_line_error(tmp_path, text, words):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ValueError, match=words.replace("[", r"\[")):
        config(["--config", str(f)], {})
    with pytest.raises(ValueError, match="No such file"):
        config(["--config", str(tmp_path / "missing.toml")], {})


def reloads(exporter: ExporterProcess, result: str) -> float:
    return sum_samples(http_get(exporter.url("/metrics"))[1], "jouletrace_config_reloads_total", result=result)


def test_sighup_and_file_changes_reload_without_losing_counters(tmp_path):
    f = tmp_path / "jouletrace.toml"
    f.write_text("window = 60\n")
    engine = SimEngine("--max-num-seqs", "4")
    exporter = ExporterProcess("--gpu", "sim", "--config", str(f))
    try:
        metrics = lambda: http_get(exporter.url("/metrics"))[1]  # noqa: E731
        wait_for(lambda: sum_samples(metrics(), "jouletrace_gpu_energy_joules_total") > 0, 20, "energy")
        assert "jouletrace_engine_up{" not in metrics()
        # an engine to scrape and a new window: applied live on SIGHUP
        f.write_text(f'window = 30\nengine_metrics = ["{engine.url("/metrics")}"]\n')
        exporter.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: sum_samples(metrics(), "jouletrace_engine_up", engine=engine.url("/metrics")) == 1, 15,
                 "the new engine scraped")
        energy = sum_samples(metrics(), "jouletrace_gpu_energy_joules_total")
        assert energy > 0 and reloads(exporter, "applied") >= 1
        # a change that needs a restart: the file alone (no signal) triggers the reload
        f.write_text(f'window = 30\nengine_metrics = ["{engine.url("/metrics")}"]\nretention = 3000\n')
        wait_for(lambda: reloads(exporter, "restart_needed") == 1, 15, "the file change to be seen")
        assert "needs a restart to change: retention" in exporter.output()
        # a broken file is refused; the exporter goes on, its counters grow on
        f.write_text("window = 'soon'\n")
        wait_for(lambda: reloads(exporter, "invalid") == 1, 15, "the broken file to be refused")
        assert sum_samples(metrics(), "jouletrace_gpu_energy_joules_total") >= energy
        assert sum_samples(metrics(), "jouletrace_engine_up", engine=engine.url("/metrics")) == 1
        assert exporter.proc.poll() is None
    finally:
        exporter.stop()
        engine.stop()
