"""`jouletrace diagnose`: asks a running exporter's `/diagnose` where the joules go, and prints the
factors and the ranked findings (or the JSON with `--json`).

Exit codes: 0 the diagnosis was printed; 2 bad options, or the exporter is unreachable or refused."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT_S = 10.0
WIDTH = 100


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exporter", default="http://127.0.0.1:9464", help="the exporter's metrics URL")
    p.add_argument("--window", type=float, help="seconds to look back (default 60, at most what the exporter holds)")
    p.add_argument("--max-num-seqs", type=int, help="the engine's max_num_seqs (vLLM does not export it; default: "
                                                    "the largest running batch seen)")
    p.add_argument("--idle-power", type=float, help="the GPUs' idle power, W (default: the lowest power seen)")
    p.add_argument("--json", action="store_true", help="print the exporter's JSON answer")
    p.set_defaults(func=main)


def _fail(message: str) -> int:
    print(f"jouletrace diagnose: {message}", file=sys.stderr)
    return 2


def fetch(exporter: str, query: dict) -> dict:
    """The exporter's diagnosis; ValueError with a one-line reason."""
    url = exporter.rstrip("/") + "/diagnose"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:
        try:
            reason = json.load(exc).get("error", "")
        except ValueError:
            reason = ""
        raise ValueError(f"{url} answered {exc.code}{': ' + reason if reason else ''}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ValueError(f"cannot reach the exporter at {exporter}: {getattr(exc, 'reason', exc)}") from None
    except ValueError:
        raise ValueError(f"{url} did not answer JSON") from None


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def _factors(f: dict) -> list[str]:
    lines = []
    if f["gpus"]:
        lines += ["", "GPUs"] + _table(
            ["gpu", "power W", "limit W", "idle W", "util", "SM occ", "capped", "static share", "idle share"],
            [[g["gpu"], _fmt(g["power_w"], ".0f"), _fmt(g["power_limit_w"], ".0f"),
              f"{g['idle_power_w']:.0f} ({g['idle_power_source']})", _fmt(g["utilization"]),
              _fmt(g["sm_occupancy"]), _fmt(g["power_cap_share"], ".0%"), _fmt(g["static_power_share"], ".0%"),
              _fmt(g["idle_energy_share"], ".0%")] for g in f["gpus"]])
    if f["engines"]:
        lines += ["", "Engines"] + _table(
            ["model", "engine", "batch (mean)", "max_num_seqs", "fill", "waiting", "KV use"],
            [[e["model"], e["engine"], f"{e['running']:.1f}", f"{e['max_num_seqs']:g} ({e['max_num_seqs_source']})",
              f"{e['batch_fill']:.0%}", f"{e['waiting']:.1f}", _fmt(e["kv_usage"], ".0%")] for e in f["engines"]])
    if f["models"]:
        lines += ["", "Models (from spans)"] + _table(
            ["model", "energy J", "output tokens", "J/token", "prefill", "decode"],
            [[m["model"], f"{m['energy_j']:.0f}", f"{m['output_tokens']:.0f}",
              _fmt(m["energy_per_output_token_j"], ".3f"), _fmt(m["prefill_share"], ".0%"),
              _fmt(m["decode_share"], ".0%")] for m in f["models"]])
    return lines


def _num(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _evidence(evidence: dict) -> str:
    items = []
    for name, e in evidence.items():
        text = f"{name.replace('_', ' ')} {_num(e['value'])}" + ("" if e["unit"] == "ratio" else f" {e['unit']}")
        items.append(text + (f" ({e['threshold']})" if "threshold" in e else ""))
    return "; ".join(items)


def _wrapped(label: str, text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=f"    {label}: ", subsequent_indent=" " * (6 + len(label)))


def report(d: dict, exporter: str) -> str:
    """The diagnosis as text: factors, ranked findings, what is missing."""
    lines = [f"jouletrace diagnosis of {exporter}, last {d['window_s']:.0f} s"]
    lines += _factors(d["factors"])
    lines += ["", "Findings" if d["findings"] else "Findings: none"]
    for i, f in enumerate(d["findings"], 1):
        lines.append(f"  {i}. [{f['severity']}] {f['title']}")
        lines += _wrapped("evidence", _evidence(f["evidence"]))
        lines += _wrapped("effect", f["effect"]) + _wrapped("action", f["action"])
    if d["missing"]:
        lines += ["", "Missing"]
        for m in d["missing"]:
            lines += textwrap.wrap(m, WIDTH, initial_indent="  - ", subsequent_indent="    ")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    query = {name: value for name, value in (("window", args.window), ("max_num_seqs", args.max_num_seqs),
                                              ("idle_power", args.idle_power)) if value is not None}
    try:
        d = fetch(args.exporter, query)
    except ValueError as exc:
        return _fail(str(exc))
    print(json.dumps(d, indent=2) if args.json else report(d, args.exporter))
    return 0
