"""`jouletrace loadgen sweep` and `plot`: one closed-loop run per batch size against a server
launched from a command template, or one run per request rate against a running server; with
`--power-limits`, those points at each GPU power limit (loadgen/powersweep.py); then the sweep's
plots.

Server mode: for each max_num_seqs, the template (shlex-split; `{port}` and `{max_num_seqs}`
substituted) is started in its own process group with its output in `server-b<N>.log`, polled
until `GET /health` answers 200, loaded by the single-run runner, and stopped (SIGTERM to the
group, SIGKILL after a grace). Ctrl-C stops the current point and its server; what is done is
written and plotted.

Exit codes: 0 done; 1 a point failed (server did not start, its run failed, or its power limit
did not hold); 2 bad options, no energy source, or the exporter cannot set the power limits; 130
interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from jouletrace.planning import Deadline

from .datasets import DatasetError
from .energy import EnergyUnavailable
from .options import add_run_options, run_config
from .plots import DEFAULT_DEADLINES_MS, load_results, write_plots
from .powersweep import PowerCapError, PowerLimits, add_advise_parser, print_advice
from .report import stability_note
from .runner import RunConfig, ServerUnreachable, run, until_signalled

BATCH_LADDER = (8, 16, 32, 64, 96, 128, 192, 256, 384, 512)


class ServerStartError(RuntimeError):
    """The launched server died or did not answer /health in time; the message ends with its log tail."""


def parse_list(text: str, kind=int, name: str = "list") -> list:
    """`8,16,32` as numbers; ValueError with a one-line reason. Rates accept `inf`."""
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a comma-separated list of numbers") from None
    if not values or any(not v > 0 for v in values):
        raise ValueError(f"{name}: values must be > 0")
    return values


def server_command(template: str, port: int, max_num_seqs: int) -> list[str]:
    """The template's argv with `{port}` and `{max_num_seqs}` replaced (other braces are kept)."""
    argv = shlex.split(template)
    return [a.replace("{port}", str(port)).replace("{max_num_seqs}", str(max_num_seqs)) for a in argv]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty server log)"


class Server:
    """One launched server process group."""

    def __init__(self, argv: list[str], log_path: Path, cwd: str | None = None):
        self.argv, self.log_path = argv, log_path
        self.log = open(log_path, "w")
        try:
            self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=cwd)
        except OSError as e:
            self.log.close()
            raise ServerStartError(f"cannot start {shlex.join(argv)}: {e}") from e

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_healthy(self, base_url: str, timeout_s: float, stop: asyncio.Event) -> bool:
        """True once `GET /health` answers 200; False when `stop` is set first. ServerStartError
        when the process exits or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while True:
                if stop.is_set():
                    return False
                try:
                    async with session.get(base_url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return True
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                code = self.proc.poll()
                if code is not None:
                    raise ServerStartError(f"the server exited with code {code} before answering /health "
                                           f"({self.log_path}):\n{log_tail(self.log_path)}")
                if time.monotonic() > deadline:
                    raise ServerStartError(f"the server did not answer {base_url}/health within {timeout_s:g} s "
                                           f"({self.log_path}):\n{log_tail(self.log_path)}")
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM to the process group, SIGKILL after `grace_s` s; returns the exit code."""
        try:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    pass
            try:  # the leader may be gone while its group lives on
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            return self.proc.returncode
        finally:
            self.log.close()


@dataclasses.dataclass
class SweepPoint:
    max_num_seqs: int | None
    rate: float
    result: dict | None = None
    path: Path | None = None
    error: str = ""
    server_pid: int | None = None
    server_exit: int | None = None
    power_limit_w: float | None = None


@dataclasses.dataclass
class SweepConfig:
    base: RunConfig                     # options of every run (max_num_seqs, rate, base_url replaced)
    server_cmd: str | None = None
    batch_sizes: tuple = BATCH_LADDER
    rates: tuple = (math.inf,)
    host: str = "127.0.0.1"
    port: int | None = None             # None: a free port per point
    server_timeout_s: float = 1200.0
    stop_grace_s: float = 30.0
    server_cwd: str | None = None
    power_limits: tuple = ()            # W per GPU, set through the exporter's admin API; empty: left alone
    admin_token_file: str | None = None


def _say(cfg: SweepConfig, msg: str) -> None:
    print(f"jouletrace loadgen sweep: {msg}", file=sys.stderr, flush=True)


async def sweep(cfg: SweepConfig, stop: asyncio.Event | None = None) -> tuple[list[SweepPoint], bool]:
    """Runs every point in order; returns (points, interrupted). Each run writes its JSON and its
    summary.csv row (the runner's). ValueError, DatasetError, EnergyUnavailable and PowerCapError
    (the options are wrong for every point) propagate after the current server is stopped and the
    power limits are put back."""
    stop = stop or asyncio.Event()
    out = Path(cfg.base.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    points: list[SweepPoint] = []
    if cfg.server_cmd:
        inner = [(b, cfg.base.rate) for b in cfg.batch_sizes]
    else:
        inner = [(cfg.base.max_num_seqs, r) for r in cfg.rates]
    todo = [(w, b, rate) for w in (cfg.power_limits or (None,)) for b, rate in inner]
    limits = (PowerLimits(cfg.base.exporter, cfg.admin_token_file, cfg.power_limits) if cfg.power_limits
              else contextlib.nullcontext())
    async with limits:
        for k, (watts, b, rate) in enumerate(todo):
            if stop.is_set():
                return points, True
            point = SweepPoint(b, rate, power_limit_w=watts)
            points.append(point)
            what = f"max_num_seqs {b}" if cfg.server_cmd else f"rate {rate:g}/s"
            what = what if watts is None else f"{watts:g} W, {what}"
            _say(cfg, f"point {k + 1}/{len(todo)}: {what}")
            if watts is not None and not await limits.apply(watts, stop):
                point.error = "interrupted while the power limit was set"
                return points, True
            if not await _run_point(cfg, point, what, out, stop):
                return points, True
            if watts is not None and point.result is not None and not await limits.holds(watts):
                point.error = "the power limit changed during the run (the exporter's latency guard rolled it back?)"
                _say(cfg, f"{what}: {point.error}")
    return points, stop.is_set()


async def _run_point(cfg: SweepConfig, point: SweepPoint, what: str, out: Path, stop: asyncio.Event) -> bool:
    """Runs one point (launching its server with --server-cmd); False when interrupted."""
    server = None
    base_url = cfg.base.base_url
    b = point.max_num_seqs
    try:
        if cfg.server_cmd:
            port = cfg.port or free_port()
            base_url = f"http://{cfg.host}:{port}"
            log_name = f"server-b{b}" + (f"-{point.power_limit_w:g}W" if point.power_limit_w else "") + ".log"
            server = Server(server_command(cfg.server_cmd, port, b), out / log_name, cfg.server_cwd)
            point.server_pid = server.pid
            if not await server.wait_healthy(base_url, cfg.server_timeout_s, stop):
                point.error = "interrupted while the server started"
                return False
        run_cfg = dataclasses.replace(cfg.base, base_url=base_url, max_num_seqs=b, rate=point.rate,
                                      power_limit_w=point.power_limit_w)
        point.result, point.path = await run(run_cfg, stop)
        if point.result.get("interrupted"):
            return False
        if point.result["completed"] == 0:
            point.error = "no request succeeded"
        elif point.result.get("energy_error") and not cfg.base.no_energy:
            point.error = f"energy: {point.result['energy_error']}"
    except (ServerStartError, ServerUnreachable) as e:
        point.error = str(e)
        _say(cfg, f"{what}: {e}")
    finally:
        if server is not None:
            point.server_exit = await asyncio.to_thread(server.stop, cfg.stop_grace_s)
    if point.result is not None:
        r = point.result
        jpt = f"{r['energy_per_token_j']:.4f} J/token" if r.get("energy_per_token_j") else "no energy"
        _say(cfg, f"{what}: {r['completed']}/{r['num_prompts']} completed, {jpt}, "
                  f"median ITL {r['median_itl_ms']:.1f} ms, {stability_note(r)}; {point.path}")
    return True


async def _main(cfg: SweepConfig) -> tuple[list[SweepPoint], bool]:
    return await until_signalled(lambda stop: sweep(cfg, stop))


def add_sweep_parsers(sub) -> None:
    """The `sweep`, `plot` and `advise` subcommands."""
    p = sub.add_parser("sweep", help="one run per batch size (launching the server) or per request rate",
                       description="Sweeps max_num_seqs by launching the server from --server-cmd for each "
                                   "batch size, or sweeps --rates against the running server at --base-url; "
                                   "writes every run's JSON, summary.csv and the plots.")
    add_run_options(p, False)
    p.add_argument("--server-cmd", help="server command template with {port} and {max_num_seqs}, e.g. "
                   "'python -m vllm.entrypoints.openai.api_server --model M --port {port} "
                   "--max-num-seqs {max_num_seqs}'")
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_LADDER)),
                   help="max_num_seqs values with --server-cmd (default: the study's ladder)")
    p.add_argument("--rates", help="request rates (req/s, `inf` = closed loop) with --base-url")
    p.add_argument("--power-limits", help="GPU power limits, W: every point at each, set through the --exporter's "
                   "admin API (its --powercap-actuation on); the limits found at the start are put back at the end")
    p.add_argument("--admin-token-file", help="file holding the exporter's admin bearer token (--power-limits)")
    p.add_argument("--host", default="127.0.0.1", help="the launched server's host, for /health and the load")
    p.add_argument("--port", type=int, help="the launched server's port (default: a free one per point)")
    p.add_argument("--server-timeout", type=float, default=1200.0, help="s to wait for the server's /health")
    p.add_argument("--stop-grace", type=float, default=30.0, help="s between SIGTERM and SIGKILL")
    p.add_argument("--itl-deadlines-ms", default=",".join(f"{d:g}" for d in DEFAULT_DEADLINES_MS),
                   help="median-ITL deadlines marked on the frontier plot")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    p.set_defaults(func=main)
    q = sub.add_parser("plot", help="redraw a sweep's plots from the result JSON in a directory",
                       description="Draws energy_per_token_vs_batch.png and time_energy_frontier.png from the "
                                   "run results saved in RESULTS_DIR.")
    q.add_argument("results_dir", metavar="RESULTS_DIR", help="directory of a run's or a sweep's result JSON")
    q.add_argument("--itl-deadlines-ms", default=",".join(f"{d:g}" for d in DEFAULT_DEADLINES_MS),
                   help="median-ITL deadlines marked on the frontier plot")
    q.add_argument("--out", help="directory of the PNGs (default: RESULTS_DIR)")
    q.set_defaults(func=plot_main)
    add_advise_parser(sub)


def sweep_config(args: argparse.Namespace) -> SweepConfig:
    if bool(args.server_cmd) == bool(args.base_url):
        raise ValueError("give exactly one of --server-cmd (batch-size sweep) and --base-url (rate sweep)")
    if args.server_cmd:
        if args.rates:
            raise ValueError("--rates sweeps a running server: use it with --base-url")
        if args.max_num_seqs:
            raise ValueError("--max-num-seqs is set per point from --batch-sizes with --server-cmd")
        if "{port}" not in args.server_cmd:
            raise ValueError("--server-cmd must contain {port}")
        if "{max_num_seqs}" not in args.server_cmd:
            raise ValueError("--server-cmd must contain {max_num_seqs}")
    elif not args.rates and not args.power_limits:
        raise ValueError("--base-url sweeps request rates or power limits: give --rates (e.g. 1,2,4,inf) or "
                         "--power-limits")
    if args.power_limits and not (args.exporter and args.admin_token_file):
        raise ValueError("--power-limits sets the limits through the exporter's admin API: give --exporter and "
                         "--admin-token-file")
    base = run_config(argparse.Namespace(**{**vars(args), "base_url": args.base_url or "http://unset"}))
    return SweepConfig(base=base, server_cmd=args.server_cmd,
                       batch_sizes=tuple(parse_list(args.batch_sizes, int, "--batch-sizes")),
                       rates=tuple(parse_list(args.rates, float, "--rates")) if args.rates else (base.rate,),
                       host=args.host, port=args.port, server_timeout_s=args.server_timeout,
                       stop_grace_s=args.stop_grace,
                       power_limits=tuple(parse_list(args.power_limits, float, "--power-limits"))
                       if args.power_limits else (),
                       admin_token_file=args.admin_token_file)


def _plots(results: list[dict], out_dir, deadlines: list[float], name: str) -> None:
    paths, skipped = write_plots(results, out_dir, deadlines)
    for p in paths:
        print(p)
    if skipped:
        print(f"jouletrace loadgen {name}: {skipped}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    if not args.no_plots:
        import matplotlib  # noqa: F401  before the runs: missing, `jouletrace` names its extra
    try:
        cfg = sweep_config(args)
        deadlines = parse_list(args.itl_deadlines_ms, float, "--itl-deadlines-ms")
        points, interrupted = asyncio.run(_main(cfg))
    except (ValueError, DatasetError, EnergyUnavailable, PowerCapError) as e:
        print(f"jouletrace loadgen sweep: {e}", file=sys.stderr)
        return 2
    for pt in points:
        if pt.path:
            print(pt.path)
    results = [pt.result for pt in points if pt.result is not None]
    if not args.no_plots and results:
        _plots(results, cfg.base.out_dir, deadlines, "sweep")
    if cfg.power_limits and results:
        print_advice(results, [Deadline("median_itl", d) for d in deadlines])
    failed = [pt for pt in points if pt.error and not interrupted]
    _say(cfg, f"{sum(1 for pt in points if pt.result)} of {len(points)} points run"
              + (f", {len(failed)} failed" if failed else "") + (" (interrupted)" if interrupted else "")
              + f"; {Path(cfg.base.out_dir) / 'summary.csv'}")
    if interrupted:
        return 130
    return 1 if failed else 0


def plot_main(args: argparse.Namespace) -> int:
    import matplotlib  # noqa: F401  missing, `jouletrace` names its extra
    try:
        deadlines = parse_list(args.itl_deadlines_ms, float, "--itl-deadlines-ms")
    except ValueError as e:
        print(f"jouletrace loadgen plot: {e}", file=sys.stderr)
        return 2
    if not Path(args.results_dir).is_dir():
        print(f"jouletrace loadgen plot: {args.results_dir} is not a directory", file=sys.stderr)
        return 2
    results = load_results(args.results_dir)
    if not results:
        print(f"jouletrace loadgen plot: no run results in {args.results_dir}", file=sys.stderr)
        return 1
    paths, skipped = write_plots(results, args.out or args.results_dir, deadlines)
    for p in paths:
        print(p)
    if skipped:
        print(f"jouletrace loadgen plot: {skipped}", file=sys.stderr)
    return 0 if paths else 1
