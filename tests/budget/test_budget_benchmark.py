"""The fleet validation at CI size: benchmarks/budget_fleet.py on one rack of four servers for five
compressed minutes, end to end (the simulated fleet, its series backfilled into a real Prometheus,
`jouletrace plan budget` through the HTTP API, the planned rack re-simulated uncapped and with its
caps). Its summary must show what the plan promises: the bound at or above the true 100 ms peak
and the sample at or below it, more servers than at nameplate, the re-simulated rack over its
budget in no more than the planned share of 100 ms intervals uncapped and in none capped, every
GPU within its cap."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
RISK = 0.01


def test_the_planned_rack_keeps_the_plan_when_re_simulated(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "budget_fleet.py"), "--racks", "1", "--servers",
                           "4", "--duration", "300", "--day", "300", "--risk", str(RISK), "--processes", "1", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    [rack] = summary["groups"].values()
    assert rack["sample_peak_w"] <= rack["true_peak_w"] <= rack["bound_peak_w"]
    assert rack["servers_at_risk"] > rack["servers_at_nameplate"] == 4
    assert rack["exceedance_uncapped"] <= RISK
    assert rack["cap_w"] is not None and rack["gpu_max_capped_w"] <= rack["cap_w"] + 1e-6
    assert rack["exceedance_capped"] == 0 and rack["peak_capped_w"] <= summary["budget_w"]
    assert (tmp_path / "budget_fleet.png").stat().st_size > 0 and (tmp_path / "plan" / "caps-dynamo.sh").exists()
