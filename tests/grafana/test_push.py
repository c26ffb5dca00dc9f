"""`jouletrace grafana push` against a stand-in for Grafana's HTTP API: no Grafana server can be installed
here, so an aiohttp app serves the endpoints grafana-client calls for a push (frontend settings, folders,
dashboards by uid, dashboards/db) with bearer-token auth, and records every call."""

import copy

import pytest
from aiohttp import web
from servers import BackgroundApp, free_port

from jouletrace.cli import main
from jouletrace.grafana.push import dashboards

EDITOR, VIEWER = "editor-token", "viewer-token"


class StandInGrafana:
    """Grafana's HTTP API as far as a push uses it. EDITOR may read and write, VIEWER only read; any other
    token is answered 401."""

    def __init__(self, datasource_types=("prometheus",)):
        self.datasources = {f"ds{i}": {"type": t, "uid": f"ds{i}"} for i, t in enumerate(datasource_types)}
        self.calls: list[tuple[str, str]] = []
        self.folders: dict[str, dict] = {}
        self.boards: dict[str, tuple[dict, str]] = {}  # uid -> (dashboard as stored, folder uid)
        app = web.Application(middlewares=[self.auth])
        app.router.add_get("/api/frontend/settings", self.settings)
        app.router.add_get("/api/folders", self.list_folders)
        app.router.add_post("/api/folders", self.create_folder)
        app.router.add_get("/api/dashboards/uid/{uid}", self.get_dashboard)
        app.router.add_post("/api/dashboards/db", self.save_dashboard)
        self.server = BackgroundApp(app)
        self.url = self.server.url

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] != "GET"]

    @web.middleware
    async def auth(self, request, handler):
        self.calls.append((request.method, request.path))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in (EDITOR, VIEWER):
            return web.json_response({"message": "invalid API key"}, status=401)
        if token == VIEWER and request.method != "GET":
            return web.json_response({"message": "You'll need additional permissions to perform this action."},
                                     status=403)
        return await handler(request)

    async def settings(self, request):
        return web.json_response({"datasources": self.datasources, "buildInfo": {"version": "11.6.0"}})

    async def list_folders(self, request):
        return web.json_response(list(self.folders.values()))

    async def create_folder(self, request):
        body = await request.json()
        folder = self.folders[body["uid"]] = {"id": len(self.folders) + 1, "uid": body["uid"], "title": body["title"]}
        return web.json_response(folder)

    async def get_dashboard(self, request):
        if request.match_info["uid"] not in self.boards:
            return web.json_response({"message": "Dashboard not found"}, status=404)
        board, folder = self.boards[request.match_info["uid"]]
        return web.json_response({"dashboard": board, "meta": {"folderUid": folder, "version": board["version"]}})

    async def save_dashboard(self, request):
        body = await request.json()
        board = body["dashboard"]
        version = self.boards[board["uid"]][0]["version"] + 1 if board["uid"] in self.boards else 1
        self.boards[board["uid"]] = {**board, "id": 7, "version": version}, body["folderUid"]
        return web.json_response({"id": 7, "uid": board["uid"], "status": "success", "version": version})


@pytest.fixture
def grafana():
    g = StandInGrafana()
    yield g
    g.server.stop()


def push(capsys, *args: str) -> tuple[int, list[str], str]:
    code = main(["grafana", "push", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and err.count("\n") <= 1, err
    return code, out.splitlines(), err.strip()


def test_first_push_creates_the_folder_and_dashboards_and_a_second_writes_nothing(grafana, capsys):
    uids = {b["uid"] for b in dashboards()}
    code, out, _ = push(capsys, "--url", grafana.url, "--token", EDITOR)
    assert code == 0
    assert out[0] == "folder jouletrace: created" and all(line.endswith(": created") for line in out[1:])
    assert grafana.writes() == [("POST", "/api/folders")] + [("POST", "/api/dashboards/db")] * len(uids)
    assert grafana.folders["jouletrace"]["title"] == "jouletrace"
    assert {uid: folder for uid, (_, folder) in grafana.boards.items()} == dict.fromkeys(uids, "jouletrace")

    grafana.calls.clear()
    code, out, _ = push(capsys, "--url", grafana.url, "--token", EDITOR)
    assert code == 0 and all(line.endswith(": unchanged") for line in out), out
    assert grafana.writes() == []


def test_a_dashboard_edited_in_grafana_is_put_back_alone(grafana, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("JOULETRACE_GRAFANA_URL", grafana.url)
    monkeypatch.setenv("JOULETRACE_GRAFANA_TOKEN", EDITOR)
    assert push(capsys)[0] == 0
    board, folder = grafana.boards["jouletrace-overview"]
    grafana.boards["jouletrace-overview"] = {**copy.deepcopy(board), "title": "edited by hand"}, folder
    grafana.calls.clear()
    token_file = tmp_path / "token"
    token_file.write_text(EDITOR + "\n")
    code, out, _ = push(capsys, "--token-file", str(token_file))
    assert code == 0 and "dashboard jouletrace / Fleet overview (jouletrace-overview): updated" in out
    assert grafana.writes() == [("POST", "/api/dashboards/db")]
    assert grafana.boards["jouletrace-overview"][0]["version"] == board["version"] + 1


def test_no_prometheus_datasource(capsys):
    grafana = StandInGrafana(datasource_types=("loki",))
    try:
        code, _, err = push(capsys, "--url", grafana.url, "--token", EDITOR)
    finally:
        grafana.server.stop()
    assert code == 1 and "has no Prometheus datasource" in err
    assert grafana.writes() == []


@pytest.mark.parametrize("token,status,says", [("wrong", 401, "the token is not valid"),
                                               (VIEWER, 403, "the token's role may not do that")])
def test_grafana_refuses_the_token(grafana, capsys, token, status, says):
    code, _, err = push(capsys, "--url", grafana.url, "--token", token)
    assert code == 1 and f"({status})" in err and says in err, err


def test_unreachable_grafana(capsys):
    code, _, err = push(capsys, "--url", f"http://127.0.0.1:{free_port()}", "--token", EDITOR)
    assert code == 1 and err.startswith("jouletrace grafana push: cannot reach Grafana at http://127.0.0.1:"), err


@pytest.mark.parametrize("args,says", [
    (["--url", "grafana.example.com", "--token", EDITOR], "is not an http(s) URL"),
    (["--url", "http://127.0.0.1:port", "--token", EDITOR], "is not an http(s) URL"),
    (["--url", "http://127.0.0.1:3000"], "no token"),
    (["--url", "http://127.0.0.1:3000", "--token-file", "/nonexistent/token"], "--token-file"),
    (["--token", EDITOR], "no Grafana URL"),
    (["--url", "http://127.0.0.1:3000", "--token", EDITOR, "--folder", "//"], "--folder"),
])
def test_bad_options(capsys, monkeypatch, args, says):
    monkeypatch.delenv("JOULETRACE_GRAFANA_URL", raising=False)
    monkeypatch.delenv("JOULETRACE_GRAFANA_TOKEN", raising=False)
    code, _, err = push(capsys, *args)
    assert code == 2 and says in err, err


def test_help_steers_the_token_off_the_command_line(capsys):
    with pytest.raises(SystemExit):
        main(["grafana", "push", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--token-file" in text and "JOULETRACE_GRAFANA_TOKEN" in text and "prefer --token-file" in text
