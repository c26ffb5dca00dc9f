"""The sweep plots from hand-made result JSON files, through `jouletrace loadgen plot`."""

from __future__ import annotations

import json
import subprocess
import sys

from jouletrace.loadgen.plots import ENERGY_VS_BATCH, FRONTIER, load_results, write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def result(b: int, itl_ms: float, jpt: float, **extra) -> dict:
    return {"task": "chat", "model_id": "hand-made", "max_num_seqs": b, "request_rate": "inf",
            "median_itl_ms": itl_ms, "energy_per_token_j": jpt, "interrupted": False, "stable": True,
            "completed": 10, "num_prompts": 10, **extra}


HAND_MADE = [result(8, 20.0, 1.0), result(16, 25.0, 0.6), result(32, 40.0, 0.7, stable=False),
             result(64, 60.0, 0.35), result(128, 120.0, 0.3)]


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000


def test_write_plots_makes_both_pngs(tmp_path):
    paths, skipped = write_plots(HAND_MADE, tmp_path, [50.0, 100.0, 10.0])
    assert skipped == ""
    assert sorted(p.name for p in paths) == sorted([ENERGY_VS_BATCH, FRONTIER])
    for p in paths:
        assert_png(p)


def test_rate_sweep_results_skip_the_batch_plot(tmp_path):
    rs = [result(64, 30.0 + i, 0.5 - 0.1 * i, request_rate=r) for i, r in enumerate((1.0, 2.0, "inf"))]
    paths, skipped = write_plots(rs, tmp_path)
    assert [p.name for p in paths] == [FRONTIER] and ENERGY_VS_BATCH in skipped
    assert_png(paths[0])


def test_no_energy_means_no_plots(tmp_path):
    paths, skipped = write_plots([result(8, 20.0, None)], tmp_path)
    assert paths == [] and "energy" in skipped


def test_plot_command_redraws_from_saved_json(tmp_path):
    for r in HAND_MADE + [result(256, 10.0, 0.01, interrupted=True)]:
        (tmp_path / f"run-b{r['max_num_seqs']}.json").write_text(json.dumps(r))
    (tmp_path / "other.json").write_text(json.dumps({"not": "a result"}))
    (tmp_path / "broken.json").write_text("{")
    assert len(load_results(tmp_path)) == 6
    out = tmp_path / "png"
    done = subprocess.run([sys.executable, "-m", "jouletrace", "loadgen", "plot", str(tmp_path), "--out", str(out),
                           "--itl-deadlines-ms", "50,100,250"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert_png(out / ENERGY_VS_BATCH)
    assert_png(out / FRONTIER)
    assert sorted(done.stdout.split()) == sorted([str(out / ENERGY_VS_BATCH), str(out / FRONTIER)])


def test_plot_command_on_an_empty_directory_fails(tmp_path):
    done = subprocess.run([sys.executable, "-m", "jouletrace", "loadgen", "plot", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no run results" in done.stderr
