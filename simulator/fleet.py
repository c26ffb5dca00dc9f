"""A simulated fleet of inference servers in accelerated time, for power-budget planning
(docs/power-budget.md#planning; benchmarks/budget_fleet.py validates the planner on it).

Each server is a node of `replicas` engines of `tp` GPUs: the simulated engine and its power model
(engine.py, perf.py) run in virtual time (offline.py). Each engine has a load of its own: the load
generator's arrival process (loadgen.arrivals: Poisson, or gamma bursts) at a rate that follows a
day, rate x (1 + amplitude x sin(2 pi (t + phase) / day)), drawn by a change of time (arrivals at
rate 1 on the load's own clock u = integral of the rate), the day compressed to `day_s` seconds.
The servers of a group share its phase (its users' day), each give or take a little.

Output (`FleetRun`): each GPU's power on the common 100 ms grid (each interval's mean, as the
exporter's timeline gives it) and every token gap of the requests; and from the grid
(`write_openmetrics`) the series the exporter exports for power budgets: at each scrape each GPU's
latest 100 ms power, its limit, each GPU's and node's greatest 100 ms power over the last
`window_s`, the node's histogram of 100 ms power and its topology, as OpenMetrics for `promtool
tsdb create-blocks-from openmetrics`. Each node is scraped at an offset of its own within the
scrape interval, as Prometheus spreads its targets. Units: W, s."""

from __future__ import annotations

import dataclasses
import math
import random
import zlib
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence, TextIO

import numpy as np

from jouletrace.exporter.gpu.nodepower import BUCKET_FRACTIONS
from jouletrace.loadgen.arrivals import arrival_offsets
from jouletrace.loadgen.plan import Sampling, plan
from jouletrace.loadgen.tasks import task

from .engine import Engine
from .lengths import OutputLengths
from .offline import simulate
from .perf import PerfModel
from .profiles import gpu_profile, model_shape

TICK_S = 0.1


@dataclasses.dataclass(frozen=True)
class Load:
    """One engine's requests: mean `rate` (requests/s), `arrival` poisson or gamma (`burstiness`:
    the gamma shape, below 1 burstier), the day's `amplitude` (0-1) and `phase_s`."""

    rate: float
    arrival: str
    burstiness: float
    amplitude: float
    phase_s: float
    seed: int


@dataclasses.dataclass(frozen=True)
class Server:
    node: str
    group: str
    loads: tuple[Load, ...]     # one per replica


@dataclasses.dataclass(frozen=True)
class Shape:
    """What every server is and how long the fleet runs."""

    model: str = "llama-3.1-70b"
    gpu: str = "h100-sxm"
    tp: int = 4
    replicas: int = 2
    max_num_seqs: int = 64
    task: str = "chat"
    day_s: float = 600.0
    duration_s: float = 1800.0

    @property
    def gpus(self) -> int:
        return self.tp * self.replicas

    @property
    def ticks(self) -> int:
        return int(round(self.duration_s / TICK_S))


def make_servers(counts: dict[str, int], shape: Shape, seed: int = 0, rate: tuple[float, float] = (0.2, 1.6),
                 start: dict[str, int] | None = None) -> list[Server]:
    """`counts[group]` servers per group with loads drawn from `seed`: rates uniform in `rate`
    (requests/s per replica), Poisson or gamma bursts, a day of amplitude 0.5-0.9 whose phase is
    the group's within a twelfth of a day. `start[group]`: the first server's number (to add servers)."""
    out = []
    for g, (group, n) in enumerate(sorted(counts.items())):
        group_rng = random.Random(f"{seed}/{group}")
        phase = group_rng.uniform(0, shape.day_s)
        for i in range((start or {}).get(group, 0), (start or {}).get(group, 0) + n):
            rng = random.Random(f"{seed}/{group}/{i}")
            loads = []
            for r in range(shape.replicas):
                bursty = rng.random() < 0.5
                loads.append(Load(rng.uniform(*rate), "gamma" if bursty else "poisson",
                                  rng.uniform(0.3, 0.8) if bursty else 1.0, rng.uniform(0.5, 0.9),
                                  phase + rng.uniform(-shape.day_s / 12, shape.day_s / 12), rng.randrange(1 << 30)))
            out.append(Server(f"{group}-n{i:02d}", group, tuple(loads)))
    return out


def arrivals(load: Load, duration_s: float, day_s: float) -> list[float]:
    """Send times (s) before `duration_s`: the load generator's process on the day's clock."""
    t = np.linspace(0.0, duration_s, int(duration_s / TICK_S) + 1)
    w = 2 * math.pi / day_s
    clock = load.rate * (t + load.amplitude / w * (math.cos(w * load.phase_s) - np.cos(w * (t + load.phase_s))))
    n = int(clock[-1] * 1.3) + 20
    u = np.asarray(arrival_offsets(n, 1.0, load.arrival, load.burstiness, load.seed))
    return np.interp(u[u < clock[-1]], clock, t).tolist()


@dataclasses.dataclass(frozen=True)
class ReplicaRun:
    power: np.ndarray     # W per GPU, one per 100 ms tick
    gaps: np.ndarray      # s between consecutive tokens of a request, before the end


def run_replica(load: Load, shape: Shape, limit_w: float | None = None) -> ReplicaRun:
    """One engine under `load` for the shape's duration, its GPUs limited to `limit_w` (None: the maximum)."""
    perf = PerfModel(model_shape(shape.model), gpu_profile(shape.gpu), shape.tp)
    engine = Engine(perf, shape.max_num_seqs, power_limit_w=limit_w)
    times = arrivals(load, shape.duration_s, shape.day_s)
    requests = plan(task(shape.task), len(times), load.seed, Sampling())
    run = simulate(engine, requests, times, OutputLengths())
    edges = np.arange(shape.ticks + 1) * TICK_S
    idle = perf.gpu.idle_w * shape.tp
    p = run.power
    if p.starts:  # contiguous segments from 0 (idle ones between requests); idle after the last
        bounds = np.array([p.starts[0], *p.ends])
        joules = np.concatenate([[0.0], np.cumsum(np.array(p.watts) * (np.array(p.ends) - np.array(p.starts)))])
        energy = np.interp(edges, bounds, joules) + idle * np.clip(edges - bounds[-1], 0, None)
    else:
        energy = idle * edges
    gaps = [np.diff([t for t in r.token_times if t <= shape.duration_s]) for r in run.outcome.results]
    return ReplicaRun(np.diff(energy) / TICK_S / shape.tp, np.concatenate([g for g in gaps if len(g)] or [np.zeros(0)]))


@dataclasses.dataclass
class FleetRun:
    servers: list[Server]
    shape: Shape
    limit_w: float              # every GPU's limit
    power: np.ndarray           # W: servers x GPUs x ticks
    gaps: list[np.ndarray]      # per server: its token gaps (s)

    def group_power(self, group: str) -> np.ndarray:
        """The group's 100 ms power: its GPUs summed at each tick."""
        rows = [k for k, s in enumerate(self.servers) if s.group == group]
        return self.power[rows].sum(axis=(0, 1))

    def groups(self) -> list[str]:
        return sorted({s.group for s in self.servers})


def _replica(args):
    return run_replica(*args)


def run_fleet(servers: Sequence[Server], shape: Shape, cap_w: float | None = None, processes: int = 1) -> FleetRun:
    """Every server's engines under their loads, each GPU capped at `cap_w` (None: its maximum)."""
    jobs = [(load, shape, cap_w) for s in servers for load in s.loads]
    if processes > 1:
        with ProcessPoolExecutor(processes) as pool:
            runs = list(pool.map(_replica, jobs, chunksize=1))
    else:
        runs = [_replica(j) for j in jobs]
    power = np.empty((len(servers), shape.gpus, shape.ticks))
    gaps = []
    for k in range(len(servers)):
        mine = runs[k * shape.replicas:(k + 1) * shape.replicas]
        power[k] = np.repeat(np.stack([r.power for r in mine]), shape.tp, axis=0)
        gaps.append(np.concatenate([r.gaps for r in mine]))
    limit = cap_w if cap_w is not None else gpu_profile(shape.gpu).max_power_limit_w
    return FleetRun(list(servers), shape, limit, power, gaps)


def scrape_ticks(node: str, scrape_s: float, ticks: int) -> np.ndarray:
    """The ticks after which `node` is scraped: every `scrape_s`, at an offset of its own."""
    every = int(round(scrape_s / TICK_S))
    return np.arange(every + zlib.crc32(node.encode()) % every, ticks + 1, every)


def windowed_peaks(power: np.ndarray, window_s: float) -> np.ndarray:
    """At each tick, the greatest 100 ms value of the last `window_s`, along the last axis."""
    w = int(round(window_s / TICK_S))
    padded = np.concatenate([np.full(power.shape[:-1] + (w - 1,), -np.inf), power], axis=-1)
    return np.lib.stride_tricks.sliding_window_view(padded, w, axis=-1).max(axis=-1)


def _labels(**kw: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in kw.items()) + "}"


def write_openmetrics(run: FleetRun, out: TextIO, start_unix: float, scrape_s: float = 15.0, window_s: float = 30.0,
                      group_label: str = "rack") -> None:
    """The exporters' power-budget series of `run`, each node scraped every `scrape_s` (at its own
    offset) from `start_unix`, as OpenMetrics (one family after the other, each series in time order)."""
    gpu_peaks = windowed_peaks(run.power, window_s)
    node_power = run.power.sum(axis=1)
    node_peaks = windowed_peaks(node_power, window_s)
    maximum = gpu_profile(run.shape.gpu).max_power_limit_w
    scrapes = [scrape_ticks(s.node, scrape_s, run.shape.ticks) for s in run.servers]
    stamps = [[f"{start_unix + t * TICK_S:.3f}" for t in ticks] for ticks in scrapes]

    def target(s: Server) -> dict:
        return {"job": "jouletrace", "instance": f"{s.node}:9464", "node": s.node}

    def gpu(s: Server, i: int) -> dict:
        return {**target(s), "gpu": str(i), "uuid": f"GPU-{s.node}-{i}", "backend": "sim"}

    def family(name: str, kind: str, rows) -> None:
        out.write(f"# TYPE {name} {kind}\n")
        for k, labels, values in rows:
            for stamp, v in zip(stamps[k], values):
                out.write(f"{name}{labels} {v:.10g} {stamp}\n")

    def gpus(value):
        return ((k, _labels(**gpu(s, i)), value(k, i)) for k, s in enumerate(run.servers)
                for i in range(run.shape.gpus))

    ones = [np.ones(len(t)) for t in scrapes]
    family("jouletrace_gpu_power_watts", "gauge", gpus(lambda k, i: run.power[k, i, scrapes[k] - 1]))
    family("jouletrace_gpu_power_max_watts", "gauge", gpus(lambda k, i: gpu_peaks[k, i, scrapes[k] - 1]))
    family("jouletrace_gpu_power_limit_watts", "gauge", gpus(lambda k, i: ones[k] * run.limit_w))
    family("jouletrace_gpu_pod_info", "gauge",
           ((k, _labels(**gpu(s, i), k8s_namespace="inference", k8s_pod=f"{s.node}-r{i // run.shape.tp}",
                        container="vllm"), ones[k]) for k, s in enumerate(run.servers) for i in range(run.shape.gpus)))
    family("jouletrace_node_power_max_watts", "gauge",
           ((k, _labels(**target(s)), node_peaks[k, scrapes[k] - 1]) for k, s in enumerate(run.servers)))
    family("jouletrace_node_topology_info", "gauge",
           ((k, _labels(**target(s), **{group_label: s.group}), ones[k]) for k, s in enumerate(run.servers)))
    name = "jouletrace_node_power_watts"
    out.write(f"# TYPE {name} histogram\n")
    for k, s in enumerate(run.servers):
        p, idx = node_power[k], scrapes[k] - 1
        for le in [f * maximum * run.shape.gpus for f in BUCKET_FRACTIONS] + [math.inf]:
            labels = _labels(**target(s), le="+Inf" if math.isinf(le) else f"{le:g}")
            for stamp, c in zip(stamps[k], np.cumsum(p <= le)[idx]):
                out.write(f"{name}_bucket{labels} {c} {stamp}\n")
        for suffix, values in (("count", idx + 1), ("sum", np.cumsum(p)[idx])):
            for stamp, v in zip(stamps[k], values):
                out.write(f"{name}_{suffix}{_labels(**target(s))} {v:.10g} {stamp}\n")
    out.write("# EOF\n")
