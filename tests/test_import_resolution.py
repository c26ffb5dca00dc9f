"""Editors and type checkers follow every `jouletrace.*` import, from a fresh checkout and from the
development install: pyright (configured in pyproject.toml) resolves them all, and the install is a
plain path entry, not an import hook that static tools cannot read."""

import json
import pathlib
import shutil
import site
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
UNRESOLVED_RULES = {"reportMissingImports", "reportAttributeAccessIssue"}


def _jouletrace_import(diagnostic: dict) -> bool:
    """Whether the diagnostic is on a statement that imports from jouletrace."""
    path = pathlib.Path(diagnostic["file"])
    lines = path.read_text().splitlines()
    line = lines[diagnostic["range"]["start"]["line"]].strip()
    return line.startswith(("from jouletrace", "import jouletrace"))


def _pyright() -> str:
    exe = pathlib.Path(sys.executable).with_name("pyright")
    found = str(exe) if exe.exists() else shutil.which("pyright")
    if found is None:
        pytest.fail("pyright is not installed: `make test` installs it with the test extras")
    return found


@pytest.fixture(scope="module")
def diagnostics() -> list[dict]:
    out = subprocess.run([_pyright(), "--outputjson", "--project", str(ROOT)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    report = json.loads(out.stdout)
    assert report["summary"]["filesAnalyzed"] > 50, report["summary"]
    return report["generalDiagnostics"]


def test_pyright_resolves_every_module_of_the_package(diagnostics):
    package = ROOT / "jouletrace"
    errors = [d for d in diagnostics if d["severity"] == "error" and pathlib.Path(d["file"]).is_relative_to(package)]
    assert errors == [], "\n".join(f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}" for d in errors)


def test_pyright_resolves_every_jouletrace_import_of_tests_and_benchmarks(diagnostics):
    unresolved = [d for d in diagnostics if d.get("rule") in UNRESOLVED_RULES and _jouletrace_import(d)]
    assert unresolved == [], "\n".join(f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
                                       for d in unresolved)


def test_the_checker_reports_an_unresolved_jouletrace_import(tmp_path):
    """The check above can fail: a module importing a name that does not exist is reported."""
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.pyright]\nextraPaths = ["{ROOT}"]\ntypeCheckingMode = "off"\nreportMissingImports = "error"\n'
        'reportAttributeAccessIssue = "error"\n')
    (tmp_path / "broken.py").write_text("from jouletrace.exporter.ledger import no_such_module\n"
                                        "import jouletrace.exporter.no_such_package\n")
    out = subprocess.run([_pyright(), "--outputjson", "--project", str(tmp_path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    found = [d for d in json.loads(out.stdout)["generalDiagnostics"] if _jouletrace_import(d)]
    assert {d["range"]["start"]["line"] for d in found} == {0, 1}


def test_development_install_is_a_plain_path_entry():
    """`make` installs jouletrace in editable mode as a path entry to the checkout (no import hook)."""
    pth = [p for d in site.getsitepackages() for p in pathlib.Path(d).glob("__editable__*jouletrace*.pth")]
    if not pth:
        pytest.skip("jouletrace is not installed in editable mode here")
    entries = [line for p in pth for line in p.read_text().splitlines() if line.strip()]
    assert entries == [str(ROOT)], entries
