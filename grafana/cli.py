"""`jouletrace grafana`: `build` regenerates the dashboards and provisioning files from code; `push` puts the
dashboards into a Grafana through its HTTP API.

Exit codes: 0 done; 2 bad options (one line on stderr); 1 Grafana unreachable, refusing, or lacking a
Prometheus datasource (one line on stderr)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .build import FOLDER, HERE


def build_main(args: argparse.Namespace) -> int:
    from .build import write

    changed = write(args.out)  # without the SDK, `jouletrace` names its extra
    print("\n".join(f"wrote {args.out / name}" for name in changed) or "up to date")
    return 0


def push_main(args: argparse.Namespace) -> int:
    from .push import PushError, push

    try:
        token = args.token
        if args.token_file:
            try:
                token = Path(args.token_file).read_text().strip()
            except OSError as exc:
                raise PushError(f"--token-file: {exc.strerror}: {args.token_file}", 2) from None
        if not args.url:
            raise PushError("no Grafana URL: give --url or JOULETRACE_GRAFANA_URL", 2)
        push(args.url, token or os.environ.get("JOULETRACE_GRAFANA_TOKEN"), args.folder)
    except PushError as exc:
        print(f"jouletrace grafana push: {exc}", file=sys.stderr)
        return exc.code
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="grafana_command", required=True)
    b = sub.add_parser("build", help="regenerate the dashboards' JSON, the provisioning file and the ConfigMap",
                       description="Builds the dashboards from grafana/definitions.py and writes their JSON, the "
                                   "Grafana provisioning provider and the Kubernetes ConfigMap; only changed files "
                                   "are written.")
    b.add_argument("--out", type=Path, default=HERE, help="directory to write into (default: %(default)s)")
    b.set_defaults(func=build_main)
    p = sub.add_parser("push", help="create or update the jouletrace folder and dashboards in a Grafana",
                       description="Creates or updates the folder and the dashboards through Grafana's HTTP API, "
                                   "leaving alone what already matches. Grafana needs a Prometheus datasource; the "
                                   "dashboards choose it with their datasource variable.")
    p.add_argument("--url", default=os.environ.get("JOULETRACE_GRAFANA_URL"),
                   help="Grafana's root URL, e.g. https://grafana.example.com (env JOULETRACE_GRAFANA_URL)")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token-file", help="file holding the service account token (Editor role), e.g. a mounted "
                                            "secret; or set env JOULETRACE_GRAFANA_TOKEN")
    token.add_argument("--token", help="the token itself: visible to other users (ps) and kept in shell history, "
                                       "so prefer --token-file or JOULETRACE_GRAFANA_TOKEN")
    p.add_argument("--folder", default=FOLDER, help="folder title (default: %(default)s)")
    p.set_defaults(func=push_main)
