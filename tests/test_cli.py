"""The `jouletrace` command: a subcommand whose optional dependency is missing says in one line
which extra brings it (the container image installs none)."""

import pytest

from jouletrace.cli import main, optional_extra


def test_each_optional_module_is_named_by_its_extra():
    assert [optional_extra(m) for m in ("matplotlib", "pyarrow", "grafana_client", "grafana_foundation_sdk", "yaml")] \
        == ["loadgen", "loadgen", "grafana", "grafana-build", "grafana-build"]
    assert optional_extra("numpy") is None and optional_extra("pytest") is None  # a dependency; test only


@pytest.mark.parametrize("argv, module, extra", [
    (["simulate", "plan"], "matplotlib", "loadgen"),
    (["grafana", "build"], "grafana_foundation_sdk", "grafana-build"),
])
def test_a_missing_extra_is_one_line(monkeypatch, capsys, tmp_path, argv, module, extra):
    monkeypatch.setitem(__import__("sys").modules, module, None)  # as if not installed
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"jouletrace {argv[0]}: needs {module}: pip install 'jouletrace[{extra}]'\n"
