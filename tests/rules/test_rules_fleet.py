"""End to end: a real Prometheus loads prometheus/jouletrace-rules.yml and scrapes a simulated fleet
(tests/integration/fleet.py) whose targets carry `namespace`, `pod`, `container` and `node` labels.
Every recording rule records series with data and the labels of its level; every alert's expression
runs, and the value it compares has data. The last test stalls the fleet's GPU."""

from __future__ import annotations

import json
import os
import re
import signal
from functools import partial
from pathlib import Path

import pytest
from integration import fleet as fleet_module
from integration.fleet import MODEL, Fleet
from servers import http_get, wait_for

RULES = Path(__file__).resolve().parents[2] / "prometheus" / "jouletrace-rules.yml"
NODE = fleet_module.TARGET_LABELS["node"]
# the label that each recording rule's level names (`level:metric:operations`), and its value on the fleet
LEVEL_LABELS = {"model": MODEL, "namespace": fleet_module.TARGET_LABELS["namespace"], "node": NODE,
                **fleet_module.TOPOLOGY}
# the power of a rack, row or PDU is all of it, simulated or not: no `backend`
GROUP_POWER = {f"{key}:jouletrace_node_power_max_watts:sum" for key in fleet_module.TOPOLOGY}
COMPARISON = re.compile(r" (==|!=|>=|<=|>|<) ")
# Alerts whose value has no series on a healthy simulated fleet: test_a_stalled_gpu_trips_its_alerts
# makes the first; the others, a pod's unknown GPUs and a GPU sampled twice (never simulated ones),
# are made in prometheus/tests/alerts.yml.
FAILURE_ONLY = {"JouletraceGPUReadErrors", "JouletraceGPUSelectionUnresolved", "JouletraceGPUMeasuredTwice"}


@pytest.fixture(scope="module")
def fleet():
    f = Fleet(rule_files=[str(RULES)])
    yield f
    f.stop()


@pytest.fixture(scope="module")
def rules(fleet) -> dict[str, dict]:
    """The rules Prometheus loaded from the rules file (the fleet's budgets aside), by name, as
    /api/v1/rules gives them, once each has been evaluated."""
    def evaluated():
        status, body = http_get(f"http://127.0.0.1:{fleet.prometheus.port}/api/v1/rules")
        assert status == 200, body
        loaded = {r["name"]: r for g in json.loads(body)["data"]["groups"] if g["file"] == str(RULES)
                  for r in g["rules"]}
        return loaded if all(r["health"] != "unknown" for r in loaded.values()) else None
    return wait_for(evaluated, 30, "the rules' first evaluation")


def value_part(query: str) -> str:
    """What an alert compares: its expression up to the first comparison outside (), {} and []."""
    depth = 0
    for i, char in enumerate(query):
        depth += (char in "([{") - (char in ")]}")
        if depth == 0 and COMPARISON.match(query, i):
            return query[:i]
    raise ValueError(f"no comparison outside brackets in {query!r}")


def test_prometheus_loads_every_rule_healthy(rules):
    in_file = re.findall(r"^\s*- (?:record|alert): (\S+)$", RULES.read_text(), re.M)
    assert sorted(rules) == sorted(in_file)
    for name, rule in rules.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"


def test_every_recording_rule_records_its_level(fleet, rules):
    for name, rule in rules.items():
        if rule["type"] != "recording":
            continue
        series = wait_for(partial(fleet.query, name), 30, f"{name} in Prometheus")
        level = name.split(":")[0]
        assert [s["metric"][level] for s in series] == [LEVEL_LABELS[level]], series
        assert all(s["metric"].get("backend") == (None if name in GROUP_POWER else "sim") for s in series), series
        assert all(float(s["value"][1]) >= 0 for s in series), series


def test_every_alert_runs_and_its_value_has_data(fleet, rules):
    for name, rule in rules.items():
        if rule["type"] != "alerting":
            continue
        fleet.query(rule["query"])  # raises where Prometheus answers an error
        if name in FAILURE_ONLY:
            continue
        # the fleet has no week of history: a week-over-week value looks 20 s back instead
        value = re.sub(r"offset \w+", "offset 20s", value_part(rule["query"]))
        assert wait_for(partial(fleet.query, value), 30, f"data for {name}: {value}")


def test_a_stalled_gpu_trips_its_alerts(fleet, rules):
    """The simulated engine writes the GPU's readings: paused, they go stale, reads fail (code "stale")
    and the last power sample ages. Both alerts' conditions hold (their `for` aside)."""
    conditions = {name: rules[name]["query"] for name in ("JouletraceGPUReadErrors", "JouletraceSampleAgeHigh")}
    os.kill(fleet.engine.proc.pid, signal.SIGSTOP)
    try:
        for name, condition in conditions.items():
            series = wait_for(partial(fleet.query, condition), 30, f"{name}'s condition")
            assert [(s["metric"]["pod"], s["metric"]["node"], s["metric"]["gpu"]) for s in series] == [
                (fleet_module.TARGET_LABELS["pod"], NODE, "0")]
        assert {s["metric"]["code"] for s in fleet.query(conditions["JouletraceGPUReadErrors"])} == {"stale"}
    finally:
        os.kill(fleet.engine.proc.pid, signal.SIGCONT)
    # resumed, the engine writes readings again (the requests that queued meanwhile may take a while
    # on a busy machine: the fleet's stop does not wait for them)
    wait_for(lambda: fleet.query("jouletrace_gpu_up == 1"), 90, "the GPU back up")
