"""The README documents every option and every metric the exporter exposes."""

import pathlib
import re

from prometheus_client import generate_latest
from rig import Rig

from jouletrace.exporter.config import OPTIONS
from jouletrace.exporter.intake.core import IntakeStats
from jouletrace.exporter.sinks.prometheus import JouletraceCollector
from jouletrace.exporter.kubernetes.placement import PodPlacement

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_option_is_documented_with_its_default():
    for opt in OPTIONS:
        row = re.search(rf"^\| `{opt.flag}` \| `{opt.env}` \| `([^`]*)` \|", README, re.M)
        assert row, f"{opt.flag} missing from the README's configuration table"
        assert row.group(1) == opt.default, f"{opt.flag}: README says {row.group(1)}, code says {opt.default}"


def test_every_metric_is_documented(clock):
    rig = Rig(clock)
    rig.run(3.0)
    rig.submit([rig.request(0.5, 1.0)])
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(JouletraceCollector(rig.samplers, rig.ledger, IntakeStats().snapshot, clock=clock))
    registry.register(PodPlacement(rig.ledger, list, "", 1.0).collector)
    text = generate_latest(registry).decode()
    families = set(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
    assert len(families) > 30
    for name, kind in families:
        documented = name
        if kind == "counter" and not name.endswith("_total"):
            documented += "_total"
        if kind == "info" and not name.endswith("_info"):
            documented += "_info"
        assert f"`{documented}`" in README, f"{documented} ({kind}) is not in the README's metric reference"


def test_every_direct_dependency_says_what_it_is_for():
    import tomllib

    project = tomllib.loads((pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    section = README.split("\n## Dependencies\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([^`]+)` \|[^|]*\| (\S[^|]*) \|$", section, re.M))
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
        assert name in rows, f"{name} is not in the README's Dependencies table"


def test_every_test_reliability_md_names_exists():
    text = (pathlib.Path(__file__).resolve().parents[1] / "RELIABILITY.md").read_text()
    named = re.findall(r"`([\w/]+\.py)::(\w+)", text)
    assert len(named) > 30
    for path, name in named:
        source = pathlib.Path(__file__).resolve().parent / path
        assert source.exists() and f"def {name}(" in source.read_text(), f"RELIABILITY.md names {path}::{name}"
