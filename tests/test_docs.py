"""The docs stay in step with the code: docs/ documents every option, metric and dependency, the
reliability page names only tests that exist, every relative link in the READMEs and docs/ resolves,
and the README stays short enough to read."""

import collections
import pathlib
import re

from rig import Rig, every_collector

from jouletrace.exporter.config import OPTIONS
from jouletrace.serving.metrics import OUTCOMES, REFUSALS

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_BYTES = 20_000


def page(name: str) -> str:
    return (DOCS / name).read_text()


def test_every_option_is_documented_with_its_default():
    table = page("configuration.md")
    for opt in OPTIONS:
        row = re.search(rf"^\| `{opt.flag}` \| `{opt.env}` \| `([^`]*)` \|", table, re.M)
        assert row, f"{opt.flag} missing from docs/configuration.md"
        assert row.group(1) == opt.default, f"{opt.flag}: docs say {row.group(1)}, code says {opt.default}"


def exposed(family) -> tuple[str, str]:
    """A family's name and type as the text exposition writes them, and docs/metrics.md lists them."""
    if family.type == "counter":
        return family.name + "_total", "counter"
    if family.type == "info":
        return family.name + "_info", "gauge"
    return family.name, family.type

def test_every_metric_is_documented(clock):
    """docs/metrics.md's table lists exactly the families the collectors declare, with their types."""
    documented = dict(re.findall(r"^\| `(jouletrace_\w+)` \| (\w+) \|", page("metrics.md"), re.M))
    declared = dict(exposed(f) for c in every_collector(Rig(clock)) for f in c.describe())
    assert len(declared) > 60
    assert documented == declared


def test_the_serving_page_lists_every_refusal_reason_and_outcome():
    """docs/serving.md's tables of the adapter's counters name exactly its refusal reasons, each with
    its HTTP status, and its outcomes."""
    text = page("serving.md")
    assert {r: int(s) for r, s in re.findall(r"^\| `(\w+)` \| (\d{3}) \|", text, re.M)} == REFUSALS
    row = re.search(r"^\| `jouletrace_serving_requests_total` \|.*$", text, re.M).group(0)
    assert tuple(re.findall(r"`(\w+)` \(", row)) == OUTCOMES


def test_every_direct_dependency_says_what_it_is_for():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    section = page("operations.md").split("\n## Dependencies\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([^`]+)` \|[^|]*\| (\S[^|]*) \|$", section, re.M))
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
        assert name in rows, f"{name} is not in the Dependencies table of docs/operations.md"


def test_every_test_the_reliability_page_names_exists():
    text = page("reliability.md")
    named = re.findall(r"`([\w/]+\.py)::(\w+)", text)
    assert len(named) > 30
    for path, name in named:
        source = pathlib.Path(__file__).resolve().parent / path
        assert source.exists() and f"def {name}(" in source.read_text(), f"docs/reliability.md names {path}::{name}"


def test_the_readme_stays_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes: move detail into docs/"


def prose(text: str) -> str:
    """Markdown without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def anchors(path: pathlib.Path) -> set[str]:
    """The heading anchors GitHub gives a Markdown file: lower case, punctuation dropped, spaces as
    hyphens, a repeated heading numbered from -1."""
    seen, out = collections.Counter(), set()
    for heading in re.findall(r"^#{1,6} +(.+?)[ #]*$", prose(path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        out.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return out


def relative_links(path: pathlib.Path) -> list[str]:
    """The targets of a Markdown file's links that name no scheme, code left out."""
    text = re.sub(r"`[^`\n]*`", "", prose(path.read_text()))
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z][a-z+.-]*:", t)]


def test_every_relative_link_of_the_readmes_and_docs_resolves():
    readmes = [ROOT / "README.md", ROOT / "k8s" / "README.md", ROOT / "grafana" / "README.md"]
    pages = [*readmes, *sorted(DOCS.glob("*.md"))]
    assert len(pages) > 10
    for source in pages:
        for link in relative_links(source):
            target, _, anchor = link.partition("#")
            resolved = (source.parent / target).resolve() if target else source
            where = f"{source.relative_to(ROOT)}: {link}"
            assert resolved.exists(), f"{where}: no such file"
            if anchor and resolved.suffix == ".md":
                assert anchor in anchors(resolved), f"{where}: no such heading"


def test_the_readme_indexes_every_docs_page():
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in relative_links(ROOT / "README.md")}
    for doc in DOCS.glob("*.md"):
        assert doc.resolve() in linked, f"docs/{doc.name} is not linked from the README"
