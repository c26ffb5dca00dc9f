"""Power-limit sweeps and power-cap advice from run results.

`loadgen sweep --power-limits W,...` sets each GPU power limit through a jouletrace exporter's
admin API (`/api/v1/powercap` on the `--exporter` URL, with the bearer token in
`--admin-token-file`; exporter/powercap/actuation.py), runs the sweep's points at it, records
`power_limit_w` in each result and puts the limits found at the start back at the end: after
success, an error or Ctrl-C. A change the exporter refuses as too large (`--powercap-max-step`)
is made in steps; one refused for its cool-down waits the Retry-After it gives. At the end the
limits go back by `DELETE /api/v1/powercap` (which passes the step and cool-down guards) when the
exporter's record of the original limits agrees with those found at the start, else in steps.

`loadgen advise RESULTS_DIR` prints the power-cap advice (jouletrace/planning.py) of the results in a
directory: per model, the limit with the least J/token within each deadline."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys

import aiohttp

from jouletrace.exporter.config import non_negative
from jouletrace.planning import Deadline, advise, deadlines, describe, point_from_result

from .plots import load_results

SAME_LIMIT_W = 0.5  # a limit read back within this of the one asked for is it


class PowerCapError(RuntimeError):
    """The exporter cannot or will not set the power limit (one-line reason)."""


def read_token(path: str) -> str:
    """The first token in the file (one per line, `#` comments)."""
    try:
        with open(path) as f:
            tokens = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    except OSError as exc:
        raise PowerCapError(f"--admin-token-file {path}: {exc.strerror}") from None
    if not tokens:
        raise PowerCapError(f"--admin-token-file {path} holds no token")
    return tokens[0]


def _say(msg: str) -> None:
    print(f"jouletrace loadgen sweep: {msg}", file=sys.stderr, flush=True)


class PowerLimits:
    """`async with PowerLimits(url, token_file, limits) as pl:` checks that the exporter may set
    every limit of `limits`; `await pl.apply(W, stop)` sets one; leaving puts back the limits
    found on entry."""

    def __init__(self, exporter_url: str, token_file: str, limits: tuple[float, ...]):
        self.url = exporter_url.rstrip("/") + "/api/v1/powercap"
        self.token = read_token(token_file)
        self.limits = limits
        self.found: dict[int, float] = {}

    async def __aenter__(self) -> "PowerLimits":
        self.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.token}"},
                                             timeout=aiohttp.ClientTimeout(total=30))
        try:
            state = await self.state()
            if not state.get("actuation"):
                raise PowerCapError(f"{self.url}: the exporter does not allow power-limit changes "
                                    "(start it with --powercap-actuation on)")
            for g in state["gpus"]:
                if "error" in g:
                    raise PowerCapError(f"{self.url}: GPU {g['index']}: {g['error']}")
                bad = [w for w in self.limits if not g["min_w"] <= w <= g["max_w"]]
                if bad:
                    raise PowerCapError(f"--power-limits: {bad[0]:g} W is outside GPU {g['index']}'s allowed range "
                                        f"{g['min_w']:g}-{g['max_w']:g} W")
            self.found = {g["index"]: g["limit_w"] for g in state["gpus"]}
        except BaseException:
            await self.session.close()
            raise
        _say("power limits at the start: " + ", ".join(f"GPU {i} {w:g} W" for i, w in self.found.items()))
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            await self.restore()
        except PowerCapError as e:
            _say(f"COULD NOT RESTORE the power limits ({e}); set them back by hand: "
                 + ", ".join(f"GPU {i} {w:g} W" for i, w in self.found.items()))
            if exc[0] is None:
                raise PowerCapError(f"the power limits were not restored: {e}") from None
        finally:
            await self.session.close()

    async def _call(self, method: str, body: dict | None = None) -> tuple[int, dict, float]:
        """(status, JSON answer, Retry-After s) of one call to the admin API."""
        try:
            async with self.session.request(method, self.url, json=body) as resp:
                try:
                    answer = await resp.json(content_type=None)
                except ValueError:
                    answer = {"error": (await resp.text())[:300]}
                return resp.status, answer, float(resp.headers.get("Retry-After", "1"))
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise PowerCapError(f"cannot reach the exporter at {self.url}: {e or type(e).__name__}") from None

    async def state(self) -> dict:
        status, answer, _ = await self._call("GET")
        if status != 200:
            raise PowerCapError(f"{self.url} answered {status}: {answer.get('error')}")
        return answer

    async def _change(self, method: str, body: dict) -> float | None:
        """One POST or DELETE; the seconds to wait when the exporter is cooling down, else None."""
        status, answer, retry_after = await self._call(method, body)
        if status == 200:
            return None
        if status == 429:
            return retry_after
        raise PowerCapError(f"{method} {self.url} answered {status}: {answer.get('error')}")

    async def _wait(self, seconds: float, stop: asyncio.Event | None) -> bool:
        """Sleep `seconds`; False when `stop` is set first."""
        _say(f"waiting {seconds:.0f} s for the exporter's cool-down")
        if stop is None:
            await asyncio.sleep(seconds)
            return True
        try:
            await asyncio.wait_for(stop.wait(), seconds)
            return False
        except asyncio.TimeoutError:
            return True

    async def apply(self, watts: float, stop: asyncio.Event | None = None, gpus: list[int] | None = None) -> bool:
        """Set `watts` on `gpus` (None: all), in steps of the exporter's --powercap-max-step;
        False when `stop` is set while waiting for a cool-down."""
        while True:
            state = await self.state()
            current = [g["limit_w"] for g in state["gpus"] if gpus is None or g["index"] in gpus]
            farthest = max(current, key=lambda w: abs(w - watts))
            if abs(farthest - watts) <= SAME_LIMIT_W:
                return True
            step = state["policy"]["max_step_w"]
            target = watts if abs(watts - farthest) <= step else farthest + math.copysign(step, watts - farthest)
            body = {"watts": target, "reason": "jouletrace loadgen sweep --power-limits"}
            if gpus is not None:
                body["gpus"] = gpus
            wait = await self._change("POST", body)
            if wait is not None and not await self._wait(wait, stop):
                return False

    async def holds(self, watts: float) -> bool:
        """Whether every GPU's limit is still `watts` (the exporter's guard may have rolled it back)."""
        return all(abs(g["limit_w"] - watts) <= SAME_LIMIT_W for g in (await self.state())["gpus"])

    async def restore(self) -> None:
        """Put back the limits found on entry: by DELETE where the exporter's originals are those,
        the rest in steps."""
        originals = {g["index"]: g["original_w"] for g in (await self.state())["gpus"]}
        if (any(w is not None for w in originals.values())
                and all(originals.get(i) in (None, w) for i, w in self.found.items())):
            await self._change("DELETE", {"reason": "end of jouletrace loadgen sweep"})
        for i, w in self.found.items():
            await self.apply(w, None, [i])
        _say("power limits restored: " + ", ".join(f"GPU {i} {w:g} W" for i, w in self.found.items()))


def print_advice(results: list[dict], deadline_list: list[Deadline], budget_w: float = 0.0,
                 max_gpus: int | None = None) -> bool:
    """Print the power-cap advice of `results`, one line each; False when no result has a power
    limit and energy."""
    points = [p for p in map(point_from_result, results) if p is not None]
    if not points:
        print("no result with a power limit and energy: run `loadgen sweep --power-limits ...` first")
        return False
    for line in describe(advise(points, deadline_list, budget_w, max_gpus)):
        print(line)
    return True


def add_advise_parser(sub) -> None:
    p = sub.add_parser("advise", help="power-cap advice from the results of a power-limit sweep",
                       description="Reads the run results in RESULTS_DIR (a `sweep --power-limits`) and prints, per "
                                   "model, the power limit with the least energy per token within each deadline, "
                                   "and with --budget-w the limit that serves the most within the budget.")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="directory of a `sweep --power-limits`'s result JSON")
    p.add_argument("--deadlines", default="median_itl:50,median_itl:100,median_itl:250",
                   help="deadlines [basis:]ms, basis median_itl (if omitted), p99_tpot or generation_latency")
    p.add_argument("--budget-w", type=non_negative, default=0.0, help="power budget, W (GPUs count at their limit)")
    p.add_argument("--gpus", type=int, help="GPUs available under the budget (default: as many as it holds)")
    p.set_defaults(func=advise_main)


def advise_main(args: argparse.Namespace) -> int:
    try:
        deadline_list = deadlines(args.deadlines)
    except ValueError as e:
        print(f"jouletrace loadgen advise: --deadlines: {e}", file=sys.stderr)
        return 2
    results = load_results(args.results_dir)
    if not results:
        print(f"jouletrace loadgen advise: no run results in {args.results_dir}", file=sys.stderr)
        return 1
    return 0 if print_advice(results, deadline_list, args.budget_w, args.gpus) else 1
