"""Llama-3.1-70B-shaped steps at tensor parallel N, one process per GPU: step time, the all-reduces' share,
each GPU's power computing and waiting, energy per token, and jouletrace's attribution beside NVML.

    # a host with N GPUs: the exporter samples exactly the ranks' GPUs and takes the spans
    jouletrace exporter --gpu nvml --gpus 0,1 &
    python benchmarks/tp_run.py --nproc 2 --out DIR --otlp http://127.0.0.1:4318 --exporter http://127.0.0.1:9464
    # the same code on the CPU with tiny shapes (no NVML: the rows' power is null)
    python benchmarks/tp_run.py --nproc 2 --backend gloo --device cpu --tiny --out DIR [--otlp ... --exporter ...]

Processes. The script starts `--nproc` processes (torch.multiprocessing), rank r on GPU r (in PCI bus
order, as nvidia-smi and the exporter number them; NVML readings by the CUDA device's UUID), joined
by torch.distributed (NCCL on CUDA, gloo on the CPU). NVLink multicast stays off: SAFE_ENV
(NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1) is set before any
process starts, over any other value in the caller's environment (said on stderr). Nothing here
changes a GPU setting: NVML is only read.

Model. Each rank builds its slice of the shape (benchmarks/tp_model.py, `Shard` at tp = N) and sums
the partial outputs of every layer's attention output projection and MLP down projection across
the ranks (torch.distributed.all_reduce on the compute stream, between the layer's kernels, as vLLM
runs them), after the vocabulary-parallel embedding's all-reduce that starts each step (a copy of
the step's input stands for the embedding's partial output): 2 x layers + 1 all-reduces of
tokens x hidden, the count the simulator charges. The LM head's logits are not gathered.

Per configuration (tp_shard.py's sweep; `--quick` a few; `--tiny` the tiny shape's), every rank runs
three phases, each captured as a CUDA graph (eager with `--eager`, and on the CPU) and run back to
back for at least `--seconds`, the replay count agreed among the ranks:

    step       the TP step with its all-reduces
    compute    the same step with the all-reduces left out: the GPU's own work
    allreduce  the step's all-reduces alone (2 x layers + 1 of tokens x hidden)

Step time: CUDA events around the replays / replays (rank 0's; the collectives keep the ranks in
lockstep). All-reduce share: CUDA events recorded inside the graph around each all-reduce and
around the step, read after each of up to SHARE_RUNS runs (as many as fit in `--seconds`) of
SHARE_REPLAYS back-to-back replays (the first replay of a run absorbs the ranks' launch skew, the
last is read): the all-reduces' sum / the step, averaged. Power per GPU and phase: NVML's
POWER_INSTANT polled every 20 ms from a thread, the samples split by the phases' Unix timestamps,
and the energy counter's delta / the phase's duration (the counter moves every ~100 ms: a phase's counter energy is good to ~0.1 s x its power).
"Computing" is the compute phase; "waiting" the allreduce phase (the GPU in the collective, its
tensor cores idle: the simulator's idle + clock power). Energy per token: the step phase's counter
energy over all GPUs / (replays x tokens).

Spans. With `--otlp` (an OTLP/HTTP base URL), rank 0 sends one span per step phase through the
OpenTelemetry SDK's OTLP exporter, as the phase ends: name `tp_step`, the phase's start and
end, `gen_ai.request.model` (`--model-name`, default the shape's name), `gen_ai.request.id` (the
configuration), `gen_ai.usage.input_tokens` (prefill) or `gen_ai.usage.output_tokens` (decode):
the tokens its replays processed. jouletrace places a span on GPUs from its own GPU selection, not
from the span: outside node mode each request runs on every GPU the exporter samples
(docs/attribution.md), so the exporter samples exactly the ranks' GPUs (`--gpus 0,1`) and each
span gets the energy of all N over its time. On GPUs the script stops before the sweep where the
exporter samples other GPUs than the ranks'. The attribute `tp_run.gpus` lists the ranks' GPU
UUIDs for the trace's reader; the exporter does not read it.

jouletrace against NVML. With `--exporter` (the exporter's metrics URL), rank 0 reads /metrics before
the sweep and, after it, once the exporter has settled every GPU past the run's end: each GPU's
measured, attributed and idle energy and the model's energy, requests and request-energy histogram
(deltas over the run); per step span, the energy jouletrace measured on each GPU over its window
(/api/v1/energy: all of it is the span's, which ran alone); and each GPU's energy over the whole
run (/api/v1/energy), beside each rank's NVML counter over the same times.

Output: DIR/tp_run.jsonl: a `run` line (shape, backend, devices, idle power), one `config` line per
configuration, then a `jouletrace` line (with `--exporter`); DIR/summary.md, also printed.
benchmarks/tp_run_compare.py puts the rows beside the simulator."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tp_model import TINY, Replay, Shard, Step, configurations

from jouletrace.loadgen.energy import exporter_energy
from jouletrace.simulator.profiles import LLAMA_3_1_70B

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
PHASES = ("step", "compute", "allreduce")
WARM_S = 0.3            # replays before a phase's timed run, to reach steady clocks and power
SHARE_RUNS, SHARE_REPLAYS = 5, 2   # at most, and within --seconds
SETTLE_POLL_S = 0.5


class Marks:
    """Times at numbered points of a step: CUDA events on a GPU (inside a captured graph, external event
    nodes, which replays record again), the host's clock on the CPU."""

    def __init__(self, n: int, cuda: bool):
        self.events = [torch.cuda.Event(enable_timing=True, external=True) for _ in range(n)] if cuda else None
        self.host = [0.0] * n

    def mark(self, i: int) -> None:
        if self.events is not None:
            self.events[i].record()
        else:
            self.host[i] = time.perf_counter()

    def seconds(self, i: int, j: int) -> float:
        if self.events is not None:
            return self.events[i].elapsed_time(self.events[j]) / 1000
        return self.host[j] - self.host[i]


class TPShard(Shard):
    """This rank's slice; its partial sums are all-reduced across the ranks while `communicate`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.communicate = True
        self.allreduces = 2 * self.shape.layers + 1
        self.marks = Marks(2 + 2 * self.allreduces, self.device.type == "cuda")
        self._next = 0

    def reduce(self, partial: torch.Tensor) -> torch.Tensor:
        if not self.communicate:
            return partial
        i = 2 + 2 * self._next
        self._next += 1
        self.marks.mark(i)
        dist.all_reduce(partial)
        self.marks.mark(i + 1)
        return partial

    def step(self, method, inputs: tuple) -> Step:
        """The step `method(*inputs)` after the embedding's all-reduce, between marks 0 and 1."""
        x, rest = inputs[0], inputs[1:]

        def run() -> torch.Tensor:
            self._next = 0
            self.marks.mark(0)
            out = method(self.reduce(x.clone()), *rest)
            self.marks.mark(1)
            return out
        return run

    def reduces_only(self, tokens: int) -> Step:
        """The step's all-reduces alone, on a buffer of zeros (which they leave zero)."""
        buf = torch.zeros(tokens, self.shape.hidden, device=self.device, dtype=self.dtype)

        def run() -> torch.Tensor:
            for _ in range(self.allreduces):
                dist.all_reduce(buf)
            return buf
        return run

    def allreduce_share(self) -> float:
        """Share of the last recorded step spent in its all-reduces."""
        total = sum(self.marks.seconds(2 + 2 * k, 3 + 2 * k) for k in range(self.allreduces))
        return total / self.marks.seconds(0, 1)


def agree(value: float, device: torch.device) -> float:
    """The largest of the ranks' values (also a point all ranks pass together)."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


class Spans:
    """Rank 0's step spans, sent over OTLP/HTTP by the OpenTelemetry SDK as each phase ends."""

    def __init__(self, base_url: str, model: str, gpus: list[str]):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        self.provider = TracerProvider(resource=Resource.create({"service.name": "tp_run"}))
        self.provider.add_span_processor(SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=base_url.rstrip("/") + "/v1/traces")))
        self.tracer = self.provider.get_tracer("tp_run")
        self.model, self.gpus = model, gpus

    def step(self, row: dict, t0: float, t1: float, replays: int) -> None:
        tokens = replays * row["tokens"]
        kind = "gen_ai.usage.input_tokens" if row["phase"] == "prefill" else "gen_ai.usage.output_tokens"
        span = self.tracer.start_span("tp_step", start_time=int(t0 * 1e9), attributes={
            "gen_ai.request.model": self.model, "gen_ai.request.id": row["id"], kind: tokens,
            **({"tp_run.gpus": self.gpus} if self.gpus else {})})
        span.end(end_time=int(t1 * 1e9))

    def close(self) -> None:
        self.provider.shutdown()


class Exporter:
    """Readings from a jouletrace exporter's metrics port: /metrics and the window energy API."""

    def __init__(self, url: str, model: str, timeout_s: float):
        self.url, self.model, self.timeout_s = url.rstrip("/"), model, timeout_s

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def metrics(self) -> dict:
        """Per GPU uuid: measured, attributed, idle joules and the finalized time; the model's series; the
        spans that came after their time was split (late)."""
        from prometheus_client.parser import text_string_to_metric_families

        status, text = self._get("/metrics")
        if status != 200:
            raise RuntimeError(f"{self.url}/metrics answered {status}")
        gpus: dict[str, dict] = {}
        late = 0.0
        model = {"energy_j": 0.0, "requests": 0.0, "request_energy_sum_j": 0.0, "request_energy_count": 0.0}
        per_gpu = {"jouletrace_gpu_energy_joules_total": "measured_j",
                   "jouletrace_gpu_attributed_energy_joules_total": "attributed_j",
                   "jouletrace_gpu_idle_energy_joules_total": "idle_j",
                   "jouletrace_gpu_finalized_timestamp_seconds": "finalized_s"}
        per_model = {"jouletrace_model_energy_joules_total": "energy_j", "jouletrace_model_requests_total": "requests",
                     "jouletrace_request_energy_joules_sum": "request_energy_sum_j",
                     "jouletrace_request_energy_joules_count": "request_energy_count"}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in per_gpu:
                    g = gpus.setdefault(s.labels["uuid"], {"index": int(s.labels["gpu"]), "uuid": s.labels["uuid"]})
                    g[per_gpu[s.name]] = g.get(per_gpu[s.name], 0.0) + s.value
                elif s.name in per_model and s.labels.get("model") == self.model:
                    model[per_model[s.name]] += s.value
                elif s.name == "jouletrace_spans_late_total":
                    late += s.value
        return {"gpus": gpus, "model": model, "spans_late": late}

    def settled(self, until: float) -> dict:
        """/metrics once every GPU's energy is final past `until` (Unix s)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            m = self.metrics()
            if m["gpus"] and min(g.get("finalized_s", 0.0) for g in m["gpus"].values()) >= until:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}: energy not final up to {until:.1f} after {self.timeout_s:g} s")
            time.sleep(SETTLE_POLL_S)

    def windows(self, spans: list[tuple[float, float]]) -> list[dict[str, float]]:
        """Per (t0, t1) (Unix s): the joules jouletrace measured on each GPU (by uuid) over it, from the
        window energy API (the load generator's client, which waits out 503s)."""
        async def answers() -> list[dict]:
            async with aiohttp.ClientSession() as session:
                return [await exporter_energy(session, self.url, t0, t1, self.timeout_s) for t0, t1 in spans]

        return [{g["uuid"]: g["joules"] for g in answer["gpus"]} for answer in asyncio.run(answers())]


def phase(replay: Replay, reps: int, power, device: torch.device) -> dict:
    """One phase's timed run on this rank: its Unix start and end, step seconds, and this GPU's power."""
    agree(0, device)
    e0 = power.energy_j() if power else None
    t0 = time.time()
    step_s = replay.timed(reps)
    t1 = time.time()
    out = {"t0": t0, "t1": t1, "step_s": step_s}
    if power:
        clock = power.sm_clock_mhz()
        energy = power.energy_j() - e0
        out.update(energy_j=energy, counter_w=energy / (t1 - t0), instant_w=power.mean_between(t0, t1),
                   sm_clock_mhz=clock)
    return out


def measure(shard: TPShard, config: dict, method, inputs: tuple, args, power,
            spans: Spans | None) -> tuple[dict, dict]:
    """This rank's three phases of one configuration: (rank 0's row fields, this rank's GPU readings).
    The step phase's span leaves as soon as the phase ends, so that it reaches the exporter well
    before the exporter splits the energy of its time."""
    device = shard.device
    fns = {"step": shard.step(method, inputs), "compute": shard.step(method, inputs),
           "allreduce": shard.reduces_only(config["tokens"])}
    if power:
        power.start()
    row, mine, reps = {}, {}, {}
    for name in PHASES:
        shard.communicate = name != "compute"
        replay = Replay(fns[name], device, graph=not args.eager)
        once = agree(max(1e-5, replay.timed(1)), device)
        replay.timed(max(1, int(min(WARM_S, args.seconds) / once)))
        reps[name] = max(3, int(args.seconds / once))
        mine[name] = phase(replay, reps[name], power, device)
        if name == "step":
            if spans:
                spans.step(config, mine[name]["t0"], mine[name]["t1"], reps[name])
            shares = []
            for _ in range(max(1, min(SHARE_RUNS, int(args.seconds / (SHARE_REPLAYS * once))))):
                replay.timed(SHARE_REPLAYS)
                shares.append(shard.allreduce_share())
            row["allreduce_share"] = sum(shares) / len(shares)
        del replay
    if power:
        power.stop()
    shard.communicate = True
    row.update({f"{name}_ms": mine[name]["step_s"] * 1000 for name in PHASES})
    row.update(replays=reps, t0=mine["step"]["t0"], t1=mine["step"]["t1"])
    return row, mine


def gpu_row(rank: int, uuid: str | None, mine: dict) -> dict:
    out = {"rank": rank, "uuid": uuid}
    for name in PHASES:
        out[name] = {k: mine[name].get(k) for k in ("energy_j", "counter_w", "instant_w", "sm_clock_mhz")}
    return out


def open_rank(rank: int, args: argparse.Namespace):
    """This rank's device, joined to the others; on a GPU its NVML readings (found by the CUDA device's
    UUID) and idle power read before anything runs. (device, Power or None, this rank's device line)."""
    if args.device == "cpu":
        torch.set_num_threads(1)
        dist.init_process_group(args.backend, rank=rank, world_size=args.nproc)
        return torch.device("cpu"), None, {"rank": rank, "name": "cpu", "uuid": None}
    from nvml_power import Power

    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dist.init_process_group(args.backend, rank=rank, world_size=args.nproc, device_id=device)
    power = Power(uuid=f"GPU-{torch.cuda.get_device_properties(rank).uuid}")
    info = power.device()
    e0 = power.start()
    time.sleep(args.idle_seconds)
    e1, idle_instant = power.stop()
    info.update(rank=rank, idle_counter_w=(e1 - e0) / args.idle_seconds, idle_instant_w=idle_instant)
    return device, power, info


def sweep(shard: TPShard, args: argparse.Namespace, power, info: dict, write, spans: Spans | None) -> list[dict]:
    """Every configuration measured on this rank; rank 0 writes the rows and sends the spans."""
    rows = []
    sweep_name = "tiny" if args.tiny else ("quick" if args.quick else "full")
    for config, method, inputs in configurations(shard, sweep_name):
        config["id"] = f"{config['phase']}-b{config['batch']}-c{config['context']}-tp{args.nproc}"
        row, mine = measure(shard, config, method, inputs, args, power, spans)
        gathered = [None] * args.nproc
        dist.all_gather_object(gathered, gpu_row(info["rank"], info["uuid"], mine))
        row = {"kind": "config", **config, **row}
        if power:
            row["power"] = gathered
            row["j_per_token"] = sum(g["step"]["energy_j"] for g in gathered) / (row["replays"]["step"] * row["tokens"])
        else:
            row.update(power=None, power_note="no NVML on the CPU: no power or energy")
        write(row)
        rows.append(row)
        del inputs
        if power:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    return rows


def worker(rank: int, args: argparse.Namespace) -> None:
    device, power, info = open_rank(rank, args)
    devices = [None] * args.nproc
    dist.all_gather_object(devices, info)
    shape = TINY if args.tiny else LLAMA_3_1_70B
    model = args.model_name or shape.name
    torch.manual_seed(rank)
    shard = TPShard(shape, args.nproc, args.distinct_layers, device)
    lead = rank == 0
    jsonl = Path(args.out) / "tp_run.jsonl"
    uuids = [d["uuid"] for d in devices if d["uuid"]]
    exporter = Exporter(args.exporter, model, args.settle_timeout) if lead and args.exporter else None
    before = exporter.metrics() if exporter else None
    if before and uuids and set(before["gpus"]) != set(uuids):
        raise RuntimeError(f"the exporter samples GPUs {sorted(before['gpus'])}, the ranks run on {sorted(uuids)}: "
                           "start it on exactly the ranks' GPUs (--gpus), or each span's energy is not theirs")
    spans = Spans(args.otlp, model, uuids) if lead and args.otlp else None
    with open(jsonl, "w") if lead else open(os.devnull, "w") as f:
        def write(row: dict) -> None:
            f.write(json.dumps(row) + "\n")
            f.flush()
            if lead and row["kind"] == "config":
                print(f"tp_run: {row['id']} step {row['step_ms']:.3f} ms, all-reduce share "
                      f"{row['allreduce_share']:.1%}", file=sys.stderr, flush=True)

        write({"kind": "run", "shape": dataclasses.asdict(shape), "model": model, "tp": args.nproc,
               "backend": args.backend, "device": args.device, "graphs": power is not None and not args.eager,
               "distinct_layers": args.distinct_layers, "seconds": args.seconds, "torch": torch.__version__,
               "env": {k: os.environ.get(k) for k in SAFE_ENV}, "devices": devices})
        e0 = power.energy_j() if power else None
        t0 = time.time()
        rows = sweep(shard, args, power, info, write, spans)
        t1 = time.time()
    nvml_run = [None] * args.nproc
    dist.all_gather_object(nvml_run, {"rank": rank, "uuid": info["uuid"],
                                      "energy_j": power.energy_j() - e0 if power else None})
    dist.destroy_process_group()   # the ranks part together; rank 0 alone reads the exporter
    if not lead:
        return
    if spans:
        spans.close()
    if exporter:
        with open(jsonl, "a") as f:
            f.write(json.dumps(jouletrace_line(exporter, before, rows, t0, t1, nvml_run)) + "\n")
    summary = summarize(jsonl)
    (jsonl.parent / "summary.md").write_text(summary)
    print(summary, flush=True)


def jouletrace_line(exporter: Exporter, before: dict, rows: list[dict], t0: float, t1: float,
                    nvml_run: list[dict]) -> dict:
    """What the exporter made of the run, beside the ranks' NVML counters over the run."""
    after = exporter.settled(t1)
    gpus = []
    for uuid, g in after["gpus"].items():
        b = before["gpus"].get(uuid, {})
        gpus.append({"index": g["index"], "uuid": uuid,
                     **{k: g.get(k, 0.0) - b.get(k, 0.0) for k in ("measured_j", "attributed_j", "idle_j")}})
    model = {k: v - before["model"][k] for k, v in after["model"].items()}
    *per_span, run_window = exporter.windows([(r["t0"], r["t1"]) for r in rows] + [(t0, t1)])
    spans = [{"id": r["id"], "t0": r["t0"], "t1": r["t1"], "gpus": g} for r, g in zip(rows, per_span)]
    return {"kind": "jouletrace", "exporter": exporter.url, "model_name": exporter.model, "t0": t0, "t1": t1,
            "gpus": sorted(gpus, key=lambda g: g["index"]), "run_window": run_window,
            "spans_late": after["spans_late"] - before["spans_late"],
            "model": model, "spans": spans, "nvml_run": nvml_run}


def summarize(jsonl: Path) -> str:
    """The run in short: per configuration, and jouletrace's run totals beside NVML's."""
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    run = lines[0]
    out = [(f"tp_run: {run['model']} at TP {run['tp']}, {run['backend']} on {run['device']}, "
            f"{'CUDA graphs' if run['graphs'] else 'eager'}\n"),
           ("| id | step ms | compute ms | all-reduces alone ms | all-reduce share | W per GPU step / computing / "
            "waiting | J/token |"), "|---|---:|---:|---:|---:|---|---:|"]
    for r in (x for x in lines if x["kind"] == "config"):
        if r["power"] is None:
            watts, jpt = "n/a (no NVML)", "n/a"
        else:
            watts = ", ".join("/".join(f"{g[p]['counter_w']:.0f}" for p in PHASES) for g in r["power"])
            jpt = f"{r['j_per_token']:.3f}"
        out.append(f"| {r['id']} | {r['step_ms']:.3f} | {r['compute_ms']:.3f} | {r['allreduce_ms']:.3f} | "
                   f"{r['allreduce_share']:.1%} | {watts} | {jpt} |")
    for j in (x for x in lines if x["kind"] == "jouletrace"):
        out.append(f"\njouletrace ({j['exporter']}), run {j['t1'] - j['t0']:.1f} s: model {j['model_name']} "
                   f"{j['model']['requests']:.0f} requests ({j['spans_late']:.0f} late), "
                   f"{j['model']['energy_j']:.1f} J attributed")
        nvml = {n["uuid"]: n["energy_j"] for n in j["nvml_run"] if n["uuid"]}
        for g in j["gpus"]:
            counter = nvml.get(g["uuid"])
            vs = f", NVML counter {counter:.1f} J" if counter is not None else " (no NVML counter for this GPU)"
            out.append(f"- GPU {g['index']} {g['uuid']}: run window {j['run_window'].get(g['uuid'], 0):.1f} J"
                       f"{vs}; attributed {g['attributed_j']:.1f} J, idle {g['idle_j']:.1f} J")
    return "\n".join(out) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--nproc", type=int, default=2, help="processes, one per GPU: the tensor-parallel degree")
    ap.add_argument("--backend", default="nccl", choices=("nccl", "gloo"))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="the tiny shape and sweep (the CPU check)")
    ap.add_argument("--quick", action="store_true", help="a few configurations of the 70B shape")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs")
    ap.add_argument("--distinct-layers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.5, help="each phase's timed run, at least")
    ap.add_argument("--idle-seconds", type=float, default=1.5, help="idle power read before anything runs")
    ap.add_argument("--otlp", default="", help="OTLP/HTTP base URL for the step spans (none: no spans)")
    ap.add_argument("--exporter", default="", help="the jouletrace exporter's metrics URL (none: no comparison)")
    ap.add_argument("--model-name", default="", help="the spans' gen_ai.request.model (default: the shape's name)")
    ap.add_argument("--settle-timeout", type=float, default=180.0, help="seconds to wait for the exporter to settle")
    args = ap.parse_args()
    if (args.device == "cuda") != (args.backend == "nccl"):
        ap.error("NCCL runs on --device cuda, gloo on --device cpu")
    if args.device == "cuda" and torch.cuda.device_count() < args.nproc:
        ap.error(f"--nproc {args.nproc}: only {torch.cuda.device_count()} GPUs visible")
    for key, value in SAFE_ENV.items():
        if os.environ.get(key, value) != value:
            print(f"tp_run: {key}={os.environ[key]} overridden: {value} (NVLink multicast stays off)", file=sys.stderr)
    os.environ.update(SAFE_ENV)
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")   # rank r on nvidia-smi's (and the exporter's) GPU r
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    mp.spawn(worker, args=(args,), nprocs=args.nproc)


if __name__ == "__main__":
    main()
