"""prometheus/: promtool accepts the rules and the budgets template, their unit tests pass and cover
every rule, and the PrometheusRule resource is the plain rules file, valid against the
prometheus-operator CRD."""

import re
import shutil
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "prometheus" / "jouletrace-rules.yml"
RESOURCE = ROOT / "prometheus" / "prometheusrule.yaml"
BUDGETS = ROOT / "prometheus" / "power-budgets.example.yml"
UNIT_TESTS = sorted((ROOT / "prometheus" / "tests").glob("*.yml"))


def rule_names(kind: str) -> list[str]:
    """Names of the rules file's recording rules (kind "record") or alerts (kind "alert")."""
    return re.findall(rf"^\s*- {kind}: (\S+)$", RULES.read_text(), re.M)


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: it comes with Debian's prometheus package (`make test` installs it)"
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=RULES.parent)


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_budgets_template_and_it_records_only_budgets():
    result = promtool("check", "rules", BUDGETS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    import yaml

    rules = [r for g in yaml.safe_load(BUDGETS.read_text())["groups"] for r in g["rules"]]
    assert rules and {r["record"] for r in rules} == {"jouletrace_power_budget_watts"}
    assert all(len(r["labels"]) == 1 for r in rules)  # one topology key each


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", *(str(p) for p in UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_cover_every_rule():
    tests = "".join(p.read_text() for p in UNIT_TESTS)
    assert rule_names("record") and rule_names("alert")
    for name in rule_names("record"):
        assert re.search(rf"^\s*- expr: .*\b{re.escape(name)}\b", tests, re.M), f"no promql_expr_test of {name}"
    for name in rule_names("alert"):
        firing = re.search(rf"^\s*alertname: {name}\n\s*exp_alerts:", tests, re.M)
        quiet = re.search(rf"^\s*alertname: {name}\n(?!\s*exp_alerts:)", tests, re.M)
        assert firing and quiet, f"{name} needs a test where it fires and one where it stays quiet"


def test_prometheusrule_is_generated_from_the_rules_file():
    result = subprocess.run([sys.executable, str(ROOT / "prometheus" / "build.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_prometheusrule_spec_is_the_rules_file():
    """(tests/deploy/test_k8s.py validates the resource against the PrometheusRule CRD.)"""
    import yaml

    resource = yaml.safe_load(RESOURCE.read_text())
    assert (resource["apiVersion"], resource["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert resource["spec"] == yaml.safe_load(RULES.read_text())
