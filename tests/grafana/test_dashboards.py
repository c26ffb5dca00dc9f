"""The committed dashboards, provisioning file and ConfigMap are what `grafana/definitions.py` builds, and
every panel carries what a reader needs: a unit, a description, the datasource variable."""

import json
import pathlib

import yaml

from jouletrace.cli import main
from jouletrace.grafana.build import render

GRAFANA = pathlib.Path(__file__).resolve().parents[2] / "grafana"
BOARDS = {p.name: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))}


def test_committed_files_match_the_code():
    files = render()
    for name, text in files.items():
        assert (GRAFANA / name).read_text() == text, f"grafana/{name} drifted: run `jouletrace grafana build`"
    assert {f"dashboards/{name}" for name in BOARDS} == {n for n in files if n.startswith("dashboards/")}


def test_build_writes_only_what_changed(tmp_path, capsys):
    assert main(["grafana", "build", "--out", str(tmp_path)]) == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == sorted(render())
    (tmp_path / "dashboards" / "stale.json").write_text("{}")
    capsys.readouterr()
    assert main(["grafana", "build", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'dashboards' / 'stale.json'}"
    assert not (tmp_path / "dashboards" / "stale.json").exists()


def test_stable_uids_and_a_prometheus_datasource_variable():
    assert {b["uid"] for b in BOARDS.values()} == {"jouletrace-overview", "jouletrace-deployment"}
    for board in BOARDS.values():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        assert all(v["datasource"]["uid"] == "${datasource}" for v in variables.values() if v["type"] == "query")
    drill_down = {v["name"] for v in BOARDS["jouletrace-deployment.json"]["templating"]["list"]}
    assert {"namespace", "pod", "model", "gpu"} <= drill_down


def test_every_panel_has_a_unit_a_description_and_the_datasource_variable():
    for board in BOARDS.values():
        panels = [p for p in board["panels"] if p["type"] != "row"]
        assert len({p["id"] for p in board["panels"]}) == len(board["panels"]), board["uid"]
        for p in panels:
            where = f"{board['uid']}: {p['title']}"
            assert p["fieldConfig"]["defaults"].get("unit"), f"{where} has no unit"
            if p["type"] == "heatmap":
                assert p["options"]["yAxis"].get("unit"), f"{where} has no y-axis unit"
            assert len(p.get("description", "")) > 80, f"{where} needs a description saying what to do"
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            refs = [t["refId"] for t in p["targets"]]
            assert refs and len(set(refs)) == len(refs), where


def test_provisioning_and_configmap_carry_the_dashboards():
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards.yaml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["folderUid"] == "jouletrace"
    configmap = yaml.safe_load((GRAFANA / "configmap.yaml").read_text())
    assert configmap["kind"] == "ConfigMap" and configmap["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert {name: json.loads(text) for name, text in configmap["data"].items()} == BOARDS
