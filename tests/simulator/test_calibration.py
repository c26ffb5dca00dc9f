"""The simulator against the ML.ENERGY study's reference table (Llama-3.1-8B-Instruct, 1 x H100,
text conversation, vLLM 0.11.1): a closed-loop chat sweep through the load generator's workload and
measurement code, in virtual time, within 15 % on every row."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from jouletrace.loadgen.tasks import task
from jouletrace.simulator.lengths import OutputLengths
from jouletrace.simulator.profiles import H100_SXM, LLAMA_3_1_8B
from jouletrace.simulator.whatif import run_point

REFERENCE = Path(__file__).resolve().parents[2] / "benchmarks" / "mlenergy_reference.csv"
TOLERANCE = 0.15

with open(REFERENCE) as f:
    ROWS = list(csv.DictReader(f))


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"b{r['max_num_seqs']}")
def test_simulated_sweep_reproduces_the_reference_row(row):
    point, result = run_point(LLAMA_3_1_8B, H100_SXM, 1, task("chat"), int(row["max_num_seqs"]),
                              H100_SXM.max_power_limit_w, OutputLengths())
    got = {"energy_per_token_j": point.energy_per_token_j, "median_itl_ms": point.median_itl_ms,
           "avg_power_w": point.avg_power_w, "tokens_per_s": point.tokens_per_s}
    for key, value in got.items():
        assert value == pytest.approx(float(row[key]), rel=TOLERANCE), key
    assert result["window"]["rule"] == "steady_state"
    assert point.mean_running_batch >= 0.85 * point.max_num_seqs
