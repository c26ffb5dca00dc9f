"""The README documents every option and every metric the exporter exposes."""

import pathlib
import re

from rig import Rig, every_collector

from jouletrace.exporter.config import OPTIONS

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_option_is_documented_with_its_default():
    for opt in OPTIONS:
        row = re.search(rf"^\| `{opt.flag}` \| `{opt.env}` \| `([^`]*)` \|", README, re.M)
        assert row, f"{opt.flag} missing from the README's configuration table"
        assert row.group(1) == opt.default, f"{opt.flag}: README says {row.group(1)}, code says {opt.default}"


def exposed(family) -> tuple[str, str]:
    """A family's name and type as the text exposition writes them, and the README lists them."""
    if family.type == "counter":
        return family.name + "_total", "counter"
    if family.type == "info":
        return family.name + "_info", "gauge"
    return family.name, family.type


def test_every_metric_is_documented(clock):
    """The README's metric table lists exactly the families the collectors declare, with their types."""
    section = README.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    documented = dict(re.findall(r"^\| `(jouletrace_\w+)` \| (\w+) \|", section, re.M))
    declared = dict(exposed(f) for c in every_collector(Rig(clock)) for f in c.describe())
    assert len(declared) > 60
    assert documented == declared


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
