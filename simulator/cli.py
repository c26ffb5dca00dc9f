"""`jouletrace simulate`: the simulated engine as a server (`serve`), and planning by simulation (`plan`).

Exit codes: 0 done; 2 bad options (one line on stderr); 1 no configuration meets the deadline."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import sys
from pathlib import Path

from jouletrace.loadgen.report import stability_note
from jouletrace.loadgen.sweep import BATCH_LADDER, parse_list
from jouletrace.loadgen.tasks import task

from .lengths import OutputLengths
from .perf import Calibration, PerfModel
from .profiles import GPUS, MODELS, gpu_profile, model_shape

PLAN_CSV = "plan.csv"
PLAN_PNG = "power_limit_frontier.png"


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llama-3.1-8b",
                   help=f"model shape: {', '.join(MODELS)}, or a Hugging Face config.json (file or directory)")
    p.add_argument("--gpu", default="h100-sxm", help=f"GPU profile: {', '.join(GPUS)}, or a JSON profile file")
    p.add_argument("--tensor-parallel-size", "--tp", dest="tp", type=int, default=1, help="GPUs per replica")
    p.add_argument("--output-mean", type=float, default=OutputLengths.mean,
                   help="mean output length the model chooses when max_tokens does not stop it, tokens "
                        "(default: Llama-3.1-8B on the study's chat)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="simulate_command", required=True)
    s = sub.add_parser("serve", help="serve an OpenAI-compatible simulated engine that behaves like vLLM",
                       description="A simulated vLLM: continuous batching on a roofline of the model on the GPU "
                                   "profile, vLLM's /metrics and llm_request spans, GPU readings in a device file.")
    _add_model_options(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8000, help="port to listen on")
    s.add_argument("--served-model-name", help="the model name clients use (default: the shape's name)")
    s.add_argument("--max-num-seqs", type=int, default=256, help="most requests in a batch (vLLM's)")
    s.add_argument("--max-num-batched-tokens", type=int, default=8192,
                   help="most tokens one step computes, prefill chunks included (vLLM's)")
    s.add_argument("--max-model-len", type=int, default=8192, help="longest prompt + output, tokens (vLLM's)")
    s.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="fraction of GPU memory for weights, activations and KV cache (vLLM's)")
    s.add_argument("--power-limit", type=float, help="W per GPU at start (default: the profile's maximum)")
    s.add_argument("--host-overhead-ms", type=float, default=0.0,
                   help="extra host time per step outside the GPU's kernels, ms, on top of the calibrated "
                        f"{Calibration().layer_overhead_s * 1e6:.1f} us per layer (default 0); raise it to model "
                        "a slow host")
    s.add_argument("--otlp-traces-endpoint", help="where llm_request spans go (OTLP/gRPC; a .../v1/traces URL: HTTP)")
    s.add_argument("--device-file", help="publish the GPUs' readings here for `jouletrace exporter "
                                         "--gpu sim --sim-device-file`")
    s.set_defaults(func=serve_main)
    p = sub.add_parser("plan", help="simulate every batch size and power limit; pick configurations for a "
                                    "latency deadline and a power budget",
                       description="Runs the task's closed-loop workload through the simulated engine in virtual "
                                   "time for each max_num_seqs and power limit; writes plan.csv and "
                                   f"{PLAN_PNG} and prints the choices.")
    _add_model_options(p)
    p.add_argument("--task", default="chat", help="load generator task whose synthetic workload is run")
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_LADDER)), help="max_num_seqs values to simulate")
    p.add_argument("--power-limits", help="W per GPU (default: the profile's range in 100 W steps)")
    p.add_argument("--itl-deadline-ms", type=float, default=100.0, help="median ITL deadline, ms")
    p.add_argument("--budget-kw", type=float, help="power budget to provision GPUs in, kW (e.g. a rack)")
    p.add_argument("-n", "--num-requests", type=int, help="requests per configuration (default: max(4 x batch, 200))")
    p.add_argument("--out", default="jouletrace-plan", help="directory of plan.csv and the plot")
    p.set_defaults(func=plan_main)


def _shape(args: argparse.Namespace):
    model, gpu = model_shape(args.model), gpu_profile(args.gpu)
    if args.tp < 1 or args.output_mean < 1:
        raise ValueError("--tensor-parallel-size and --output-mean must be >= 1")
    return model, gpu, OutputLengths(mean=args.output_mean)


def serve_main(args: argparse.Namespace) -> int:
    import time

    from .engine import Engine
    from .gpus import SimulatedGPUs
    from .server import SimServer, serve

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model, gpu, lengths = _shape(args)
        if args.host_overhead_ms < 0:
            raise ValueError("--host-overhead-ms must be >= 0")
        calibration = Calibration(host_overhead_s=args.host_overhead_ms / 1000)
        perf = PerfModel(model, gpu, args.tp, calibration)
        engine = Engine(perf, args.max_num_seqs, args.max_num_batched_tokens, args.gpu_memory_utilization)
        used = int(gpu.memory_bytes * args.gpu_memory_utilization)
        gpus = SimulatedGPUs(perf, used, args.device_file, args.power_limit, time.time())
        engine.power_limit_w = gpus.limit_w
    except (ValueError, OSError) as e:
        print(f"jouletrace simulate serve: {e}", file=sys.stderr)
        return 2
    server = SimServer(engine, gpus, args.served_model_name or model.name, lengths, args.max_model_len,
                       args.otlp_traces_endpoint)
    logging.getLogger(__name__).info("KV cache: %d tokens; power limit %g W", engine.kv_capacity_tokens,
                                     engine.power_limit_w)
    try:
        serve(server, args.host, args.port)
    except OSError as e:
        print(f"jouletrace simulate serve: {e.strerror}; choose another --port (or --host)", file=sys.stderr)
        return 2
    return 0


def _choice(p) -> str:
    return (f"batch {p.max_num_seqs} at {p.power_limit_w:g} W: {p.energy_per_token_j:.4f} J/token, "
            f"{p.median_itl_ms:.1f} ms, {p.tokens_per_joule:.2f} tokens/s/W")


def plan_main(args: argparse.Namespace) -> int:
    from jouletrace.planning import provision

    from .engine import Engine
    from .whatif import min_energy, run_point, write_plot

    import matplotlib  # noqa: F401  the plot's, before the simulating: missing, `jouletrace` names its extra
    try:
        model, gpu, lengths = _shape(args)
        kv_tokens = Engine(PerfModel(model, gpu, args.tp), max_num_seqs=1).kv_capacity_tokens
        spec = task(args.task)
        if spec.api not in ("chat", "completion"):
            raise ValueError(f"task {spec.name}: only LLM tasks are simulated")
        batches = parse_list(args.batch_sizes, int, "--batch-sizes")
        limits = (parse_list(args.power_limits, float, "--power-limits") if args.power_limits else
                  list(range(int(gpu.min_power_limit_w), int(gpu.max_power_limit_w) + 1, 100)))
        if any(not gpu.min_power_limit_w <= w <= gpu.max_power_limit_w for w in limits):
            raise ValueError(f"--power-limits: {gpu.name} accepts {gpu.min_power_limit_w:g}-"
                             f"{gpu.max_power_limit_w:g} W")
        runs = [run_point(model, gpu, args.tp, spec, b, w, lengths, args.num_requests)
                for w in limits for b in batches]
        points = [p for p, _ in runs]
    except ValueError as e:
        print(f"jouletrace simulate plan: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / PLAN_CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in dataclasses.fields(points[0])])
        w.writeheader()
        w.writerows(dataclasses.asdict(p) for p in points)
    title = f"{model.name} on {args.tp} x {gpu.name}, {spec.name}"
    write_plot(points, args.itl_deadline_ms, out / PLAN_PNG, title)
    print(f"{title} (simulated); KV cache {kv_tokens} tokens per replica")
    print(f"{'limit W':>8} {'batch':>6} {'running':>7} {'J/token':>9} {'ITL ms':>8} {'power W':>8} {'tokens/s':>9} "
          f"{'tok/s/W':>8} {'stable':>6}")
    for p in points:
        print(f"{p.power_limit_w:8g} {p.max_num_seqs:6d} {p.mean_running_batch:7.0f} {p.energy_per_token_j:9.4f} "
              f"{p.median_itl_ms:8.1f} {p.avg_power_w:8.0f} {p.tokens_per_s:9.0f} {p.tokens_per_joule:8.2f} "
              f"{'yes' if p.stable else 'no':>6}")
    best = min_energy(points, args.itl_deadline_ms)
    if best is None:
        print(f"no configuration meets a median ITL of {args.itl_deadline_ms:g} ms")
        return 1
    print(f"least energy within {args.itl_deadline_ms:g} ms median ITL: {_choice(best)}")
    if not best.stable:
        steady = min_energy([p for p in points if p.stable], args.itl_deadline_ms)
        result = next(r for p, r in runs if p is best)
        print(f"warning: that point is {stability_note(result)}, so its figures are not a steady server's: rerun "
              "with more requests (-n)" + (f"; the least energy among stable points: {_choice(steady)}" if steady else ""))
    if args.budget_kw:
        plan = provision(points, args.tp, args.budget_kw * 1000, args.itl_deadline_ms)
        if plan.replicas == 0:
            print(f"{args.budget_kw:g} kW holds no replica of {args.tp} GPUs at {plan.point.power_limit_w:g} W")
        else:
            print(f"most throughput in {args.budget_kw:g} kW: {plan.gpus} GPUs ({plan.replicas} replicas) capped at "
                  f"{plan.point.power_limit_w:g} W, batch {plan.point.max_num_seqs}: {plan.tokens_per_s:.0f} tokens/s, "
                  f"{plan.point.energy_per_token_j:.4f} J/token, median ITL {plan.point.median_itl_ms:.1f} ms")
    print(out / PLAN_CSV)
    print(out / PLAN_PNG)
    return 0
