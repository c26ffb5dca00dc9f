"""Import architecture, read statically (`ast`, imports inside functions included) from the files of
jouletrace/, exporter/, loadgen/, simulator/, serving/ and grafana/:

- layers, each importing only its own and lower ones: the cli modules (`jouletrace.cli`, `run`,
  `diagnose`, `__main__`) -> the tools (`loadgen`, `simulator`, `serving`, `grafana`, `budget`) -> `exporter` -> the base
  (`jouletrace.planning`, and the `jouletrace` package itself: its version);
- `jouletrace.planning` imports no other jouletrace module;
- no import cycle between modules;
- at run time, importing the exporter's daemon loads no tool.

Every checker is also run on a small made-up graph that breaks its rule, so that it can fail."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: import name -> the folder its files are in (jouletrace/ links to the others: only its own files)
PACKAGES = {"jouletrace": ROOT / "jouletrace", "jouletrace.exporter": ROOT / "exporter",
            "jouletrace.loadgen": ROOT / "loadgen", "jouletrace.simulator": ROOT / "simulator",
            "jouletrace.serving": ROOT / "serving", "jouletrace.grafana": ROOT / "grafana",
            "jouletrace.budget": ROOT / "jouletrace" / "budget"}
CLI = ("jouletrace.cli", "jouletrace.run", "jouletrace.diagnose", "jouletrace.__main__")
TOOLS = ("jouletrace.loadgen", "jouletrace.simulator", "jouletrace.serving", "jouletrace.grafana", "jouletrace.budget")
BASE = ("jouletrace", "jouletrace.planning")


def layer(module: str) -> int:
    """3 cli, 2 tools, 1 exporter, 0 base."""
    if module in CLI:
        return 3
    if within(module, TOOLS):
        return 2
    if within(module, ("jouletrace.exporter",)):
        return 1
    assert module in BASE, f"{module} belongs to no layer: add it to one in {__file__}"
    return 0


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def modules() -> dict[str, tuple[pathlib.Path, bool]]:
    """Every module: name -> (file, whether it is a package's __init__)."""
    out = {}
    for prefix, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if prefix == "jouletrace" and len(parts) > 1:
                continue  # jouletrace/<tool>/ is read under its own prefix
            package = parts[-1] == "__init__"
            out[".".join([prefix, *parts[:-1 if package else None]])] = (path, package)
    return out


def imports(module: str, source: str, package: bool, known: set[str]) -> set[str]:
    """The jouletrace modules `source` (module `module`) imports, anywhere in it. `from P import n`
    is module P.n where that is a module, else P."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if within(a.name, ("jouletrace",)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module if package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            if within(base, ("jouletrace",)):
                out.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    out.discard(module)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, path.read_text(), package, set(mods)) for m, (path, package) in mods.items()}


def wrong_way(g: dict[str, set[str]]) -> list[str]:
    """The edges that import a higher layer."""
    return [f"{a} -> {b}" for a, targets in sorted(g.items()) for b in sorted(targets) if layer(a) < layer(b)]


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def loaded_after(module: str, packages: tuple[str, ...]) -> list[str]:
    """The modules of `packages` in sys.modules after importing `module` in a fresh interpreter."""
    code = (f"import sys, {module}\n"
            f"print('\\n'.join(m for m in sys.modules if m.startswith({tuple(p + '.' for p in packages)!r})"
            f" or m in {packages!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return sorted(done.stdout.split())


@pytest.fixture(scope="module")
def tree() -> dict[str, set[str]]:
    return graph()


def test_every_module_is_read_and_placed(tree):
    assert {"jouletrace.planning", "jouletrace.exporter.daemon", "jouletrace.loadgen.cli",
            "jouletrace.simulator.cli", "jouletrace.serving.cli", "jouletrace.grafana.cli", "jouletrace.budget.plan",
            "jouletrace.cli"} <= set(tree)
    assert "jouletrace.loadgen.sweep" in tree["jouletrace.run"]  # `from jouletrace.loadgen.sweep import ...`
    for m in tree:
        layer(m)


def test_the_exporter_imports_no_tool_and_no_cli(tree):
    bad = [f"{a} -> {b}" for a, targets in sorted(tree.items()) if within(a, ("jouletrace.exporter",))
           for b in sorted(targets) if within(b, TOOLS) or b in CLI]
    assert not bad, "the exporter imports a tool or a cli module:\n" + "\n".join(bad)


def test_planning_imports_no_other_jouletrace_module(tree):
    assert tree["jouletrace.planning"] == set()


def test_imports_go_down_the_layers(tree):
    bad = wrong_way(tree)
    assert not bad, "imports against the layers (cli -> tools -> exporter -> base):\n" + "\n".join(bad)


def test_no_import_cycle(tree):
    cycle = find_cycle(tree)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_exporter_daemon_loads_no_tool():
    assert loaded_after("jouletrace.exporter.daemon", ("jouletrace.loadgen", "jouletrace.simulator",
                                                       "jouletrace.serving", "jouletrace.budget")) == []


def test_the_checkers_find_what_they_look_for():
    source = "import os\nfrom jouletrace.exporter.ledger import ledger\n\ndef f():\n    from .sweep import x\n"
    known = {"jouletrace.exporter.ledger.ledger", "jouletrace.loadgen.sweep"}
    assert imports("jouletrace.loadgen.cli", source, False, known) == known
    assert imports("jouletrace.loadgen", "from . import sweep", True, known) == {"jouletrace.loadgen.sweep"}
    g = {"jouletrace.exporter.a": {"jouletrace.loadgen.b"}, "jouletrace.loadgen.b": {"jouletrace.planning"},
         "jouletrace.planning": set()}
    assert wrong_way(g) == ["jouletrace.exporter.a -> jouletrace.loadgen.b"]
    assert find_cycle(g) is None
    g["jouletrace.planning"] = {"jouletrace.exporter.a"}
    assert find_cycle(g) == ["jouletrace.exporter.a", "jouletrace.loadgen.b", "jouletrace.planning",
                             "jouletrace.exporter.a"]
    assert "jouletrace.loadgen.plan" in loaded_after("jouletrace.simulator.whatif", ("jouletrace.loadgen",))
