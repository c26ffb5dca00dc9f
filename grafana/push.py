"""`jouletrace grafana push`: puts the dashboards into a Grafana folder through Grafana's HTTP API
(grafana-client). What already matches is left alone, so a second push writes nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from importlib.resources import files
from urllib.parse import urlsplit

TIMEOUT_S = 10.0
MESSAGE = "jouletrace grafana push"


class PushError(Exception):
    """A one-line reason; `code` is the exit status: 2 for bad options, 1 when Grafana fails or refuses."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def dashboards() -> list[dict]:
    """The generated dashboards, as shipped with the package."""
    folder = files("jouletrace.grafana") / "dashboards"
    return [json.loads(f.read_text()) for f in sorted(folder.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".json")]


def folder_uid(title: str) -> str:
    uid = re.sub(r"[^a-z0-9_-]+", "-", title.lower()).strip("-")[:40]
    if not uid:
        raise PushError(f"--folder {title!r} has no letter or digit to make a folder uid of", 2)
    return uid


class Grafana:
    """The calls the push makes, each turning grafana-client's and the network's failures into a PushError."""

    def __init__(self, url: str, token: str | None):
        try:
            from grafana_client import GrafanaApi
        except ImportError:
            raise PushError("grafana push needs grafana-client: pip install 'jouletrace[grafana]'", 2) from None
        parts = urlsplit(url)
        try:
            port = parts.port
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:  # a port that is not a number
            valid = False
        if not valid:
            raise PushError(f"--url {url!r} is not an http(s) URL of a Grafana server", 2)
        credential = token or ((parts.username, parts.password) if parts.username and parts.password else None)
        if not credential:
            raise PushError("no token: give --token, --token-file or JOULETRACE_GRAFANA_TOKEN "
                            "(or user:password in --url)", 2)
        prefix = parts.path.strip("/")
        self.where = f"{parts.scheme}://{parts.hostname}{f':{port}' if port else ''}/{prefix}".rstrip("/")
        self.api = GrafanaApi(credential, host=parts.hostname, port=port, protocol=parts.scheme,
                              url_path_prefix=f"{prefix}/" if prefix else "", timeout=TIMEOUT_S)

    def call(self, doing: str, method: Callable, *args, missing_ok: bool = False, **kwargs):
        """`method(*args, **kwargs)`; None for a 404 when `missing_ok`."""
        from grafana_client.client import GrafanaException, GrafanaTimeoutError

        try:
            return method(*args, **kwargs)
        except GrafanaTimeoutError:
            raise PushError(f"Grafana at {self.where} did not answer within {TIMEOUT_S:g} s while {doing}") from None
        except GrafanaException as exc:
            status = exc.status_code
            if status == 404 and missing_ok:
                return None
            if status in (401, 403):
                what = "the token is not valid" if status == 401 else "the token's role may not do that (use an Editor)"
                raise PushError(f"Grafana at {self.where} refused {doing} ({status}): {what}") from None
            if status == 0:  # a connection failure wrapped by grafana-client
                raise PushError(f"cannot reach Grafana at {self.where}: {_reason(exc)}") from None
            raise PushError(f"Grafana at {self.where} answered {status} while {doing}: {_reason(exc)}") from None
        except ValueError:  # an answer that is not JSON: not Grafana's API
            raise PushError(f"{self.where} does not answer as Grafana's HTTP API while {doing}") from None
        except OSError as exc:  # niquests' connection errors
            raise PushError(f"cannot reach Grafana at {self.where}: {_reason(exc)}") from None


ROOT_CAUSE = re.compile(r"\[(?:Errno -?\d+|SSL: \w+)\][^'\"()]*|Failed to resolve '[^']*'")


def _reason(exc: Exception) -> str:
    """The root cause of a network error (`[Errno 111] Connection refused`, `Failed to resolve 'host'`, a TLS
    error) out of the nested exceptions' text, on one line."""
    text = str(getattr(exc, "message", None) or exc)
    cause = ROOT_CAUSE.search(text)
    return (cause.group(0) if cause else text).replace("\n", " ").strip()


def push(url: str, token: str | None, folder: str, say: Callable[[str], None] = print) -> None:
    """Creates or updates `folder` and the dashboards in it; says what it did with each."""
    grafana = Grafana(url, token)
    uid = folder_uid(folder)
    call = grafana.call
    settings = call("reading its settings", grafana.api.client.GET, "/frontend/settings", missing_ok=True)
    if not isinstance(settings, dict):
        raise PushError(f"{grafana.where} does not answer as Grafana's HTTP API: is --url Grafana's root URL?")
    if not any(ds.get("type") == "prometheus" for ds in settings.get("datasources", {}).values()):
        raise PushError(f"Grafana at {grafana.where} has no Prometheus datasource: add the Prometheus that scrapes "
                        "the exporters, then push again")
    existing = call("listing folders", grafana.api.folder.get_all_folders)
    found = next((f for f in existing if f["uid"] == uid or f["title"] == folder), None)
    if found is None:
        found = call(f"creating folder {folder!r}", grafana.api.folder.create_folder, folder, uid=uid)
        say(f"folder {folder}: created")
    else:
        say(f"folder {folder}: unchanged")
    for board in dashboards():
        name = f"dashboard {board['title']} ({board['uid']})"
        current = call(f"reading {name}", grafana.api.dashboard.get_dashboard, board["uid"], missing_ok=True)
        if current is not None and current["meta"].get("folderUid") == found["uid"] and \
                {k: v for k, v in current["dashboard"].items() if k not in ("id", "version")} == board:
            say(f"{name}: unchanged")
            continue
        call(f"saving {name}", grafana.api.dashboard.update_dashboard,
             {"dashboard": board, "folderUid": found["uid"], "overwrite": True, "message": MESSAGE})
        say(f"{name}: {'updated' if current is not None else 'created'}")
