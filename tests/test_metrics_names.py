"""The exposition with every feature on (engine scrape, span forwarding, power capping, node mode)
passes `promtool check metrics`, Prometheus's naming and HELP rules, but for the families kept one
release under their old names (HELP "DEPRECATED: use <new name>"), some of which break those rules
by design; each of those repeats its new name's samples."""

import re
import shutil
import subprocess

from prometheus_client import generate_latest
from rig import Rig, every_collector

from jouletrace.exporter.sinks.prometheus.registry import build_registry

DEPRECATED = {"jouletrace_gpu_counter_resets_total": "jouletrace_gpu_energy_resets_total",
              "jouletrace_gpu_counter_rejected_total": "jouletrace_gpu_energy_jumps_rejected_total",
              "jouletrace_gpu_energy_counter_reads_total": "jouletrace_gpu_energy_reads_total",
              "jouletrace_model_prompt_tokens_total": "jouletrace_model_input_tokens_total",
              "jouletrace_model_completion_tokens_total": "jouletrace_model_output_tokens_total"}


def exposition(clock, tmp_path) -> str:
    """With a text, an image and a video request, and a grid file: every family has samples."""
    rig = Rig(clock)
    rig.run(3.0)
    rig.submit([rig.request(0.5, 1.0), rig.request(0.6, 1.0, model="sd", completion=0, output_kind="image",
                                                   output_count=2),
                rig.request(0.7, 1.0, model="wan", completion=0, output_kind="video", output_count=1)])
    rig.run(8.0)
    grid_file = tmp_path / "grid.json"
    grid_file.write_text('{"electricity_price": 0.2, "currency": "EUR"}')
    return generate_latest(build_registry(every_collector(rig, str(grid_file)))).decode()


def without_deprecated(text: str) -> str:
    """`text` without the lines of the families whose HELP says DEPRECATED."""
    gone = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ") and " DEPRECATED: " in line}
    assert gone == set(DEPRECATED)
    name = lambda line: line.split()[2] if line.startswith("#") else re.match(r"[\w:]+", line).group(0)
    return "".join(line + "\n" for line in text.splitlines() if name(line) not in gone)


def test_promtool_accepts_every_family_but_the_deprecated(clock, tmp_path):
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: it comes with Debian's prometheus package (`make test` installs it)"
    result = subprocess.run([binary, "check", "metrics"], input=without_deprecated(exposition(clock, tmp_path)).encode(),
                            capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_each_deprecated_name_repeats_its_new_name(clock, tmp_path):
    text = exposition(clock, tmp_path)
    for old, new in DEPRECATED.items():
        assert f"# HELP {old} DEPRECATED: use {new} " in text
        old_samples = [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith(old + "{")]
        new_samples = [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith(new + "{")]
        assert old_samples and old_samples == new_samples
