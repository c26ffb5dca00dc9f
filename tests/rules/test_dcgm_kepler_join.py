"""docs/metrics.md's PromQL joins of jouletrace_gpu_info with dcgm-exporter's and Kepler's labels give
the documented series on Prometheus's engine (promtool test rules), without label_replace."""

import re
from pathlib import Path

import yaml
from test_rules_files import promtool

ROOT = Path(__file__).resolve().parents[2]
ENERGY = ('jouletrace_gpu_energy_joules_total{job="jouletrace",namespace="serve",pod="a",gpu="0",uuid="GPU-a0",'
          'backend="nvml",method="counter"}')
INFO = ('jouletrace_gpu_info{job="jouletrace",namespace="serve",pod="a",gpu="0",uuid="GPU-a0",backend="nvml",'
        'UUID="GPU-a0",Hostname="n1",hostname="n1",gpu_uuid="GPU-a0",node_name="n1",gpu_model="NVIDIA H100"}')
DCGM = 'DCGM_FI_DEV_POWER_USAGE{job="dcgm",gpu="0",UUID="GPU-a0",device="nvidia0",modelName="NVIDIA H100",Hostname="n1"}'
EXPECTED = [  # the documented queries in order: jouletrace measures 500 W where dcgm-exporter reads 400 W
    ('{UUID="GPU-a0"}', 1.25),
    ('{UUID="GPU-a0",modelName="NVIDIA H100"}', 500),
    ('{job="jouletrace",namespace="serve",pod="a",gpu="0",uuid="GPU-a0",backend="nvml",method="counter",'
     'gpu_uuid="GPU-a0",node_name="n1"}', 500),
]


def documented_queries() -> list[str]:
    section = (ROOT / "docs" / "metrics.md").read_text().split("### Joining with dcgm-exporter and Kepler", 1)[1]
    block = re.search(r"```promql\n(.*?)```", section, re.S).group(1)
    return [" ".join(l.strip() for l in q.splitlines() if not l.startswith("#")) for q in block.split("\n\n")]


def test_the_documented_joins_give_the_other_exporters_labels(tmp_path):
    queries = documented_queries()
    assert len(queries) == len(EXPECTED)
    tests = {"evaluation_interval": "15s", "tests": [{
        "interval": "15s",
        "input_series": [{"series": ENERGY, "values": "0+7500x40"}, {"series": INFO, "values": "1x40"},
                         {"series": DCGM, "values": "400x40"}],
        "promql_expr_test": [{"expr": f"round({q}, 0.001)", "eval_time": "10m",
                              "exp_samples": [{"labels": labels, "value": value}]}
                             for q, (labels, value) in zip(queries, EXPECTED)]}]}
    path = tmp_path / "joins.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
