"""Energy per image and per video on a real GPU: diffusers pipelines with random weights at the
study's shapes (benchmarks/diffusion_models.py) behind `jouletrace serve diffusion`, measured by
`jouletrace exporter --gpu nvml --engine-metrics` (the server's `vllm:num_requests_running`;
`--no-engine-metrics`: the span-adapted delay alone) from the server's spans while `jouletrace
loadgen` runs a closed loop at each batch size. Changes no GPU setting.

    python benchmarks/diffusion_gpu.py --out DIR [--image-batches 1,4] [--video-batches 1,2] [--i2v-batches 1]
        [--video-model wan21_t2v_1_3b --video-size 832x480 --seconds 5 --fps 16]

Per (task, batch): one server with `--max-batch` = batch (a batch starts once that many requests
wait, up to 10 s), warmed up by one batch at 2 steps, then batch x `--rounds` (`--video-rounds` for
either kind of video) requests at the full step count; image-to-video (`--i2v-batches`,
CogVideoX-5b-I2V's shapes) sends the load generator's synthetic image with each job. `--models tiny`
runs the same pipelines a few channels wide; `--video-model` names another text-to-video factory of
benchmarks/diffusion_models.py (Wan2.1-T2V-1.3B's shapes: 832x480, 81 frames at 16 fps). Three
figures of energy per image (video):
- `jouletrace_j`: the exporter's attribution, the rise of `jouletrace_model_energy_joules_total`
  over the run's requests divided by the rise of `jouletrace_model_images_total` (videos);
- `loadgen_j`: the load generator's, the exporter's window energy over the run / items in it;
- `reference_j`: an independent reading of the NVML counter (edges back to back, interpolated) over
  each request, start to end as the client saw it, divided by the batch size, averaged over the
  requests: the study's energy of a batch / batch size.
Writes DIR/<task>-b<batch>.json (the load generator's result) and DIR/summary.json.

    python benchmarks/diffusion_gpu.py --plot RESULTS_DIR

draws RESULTS_DIR/diffusion.png from the summary*.json files under RESULTS_DIR (each settlement's
runs), one panel per model and shape, beside the study's figures (STUDY_B200_J)."""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

import pynvml
from gpu_validation import METRICS, Edges, get, metric, stop, wait

from jouletrace.serving.pipeline import clip_frames

SERVER = "http://127.0.0.1:8000"
HERE = pathlib.Path(__file__).resolve().parent
TASKS = {"image": ("text-to-image", "images"), "video": ("text-to-video", "videos"),
         "image-to-video": ("image-to-video", "videos")}  # server kind: load-generator task, counter
MODELS = {"study": {"image": "sd35_medium", "video": "cogvideox_2b", "image-to-video": "cogvideox_5b_i2v"},
          "tiny": {"image": "tiny_image", "video": "tiny_video", "image-to-video": "tiny_i2v"}}


def model_series(text: str, name: str, model: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and s.labels.get("model") == model)


def settled(model: str, counter: str, items: float, after: float, timeout_s: float = 120.0) -> str:
    """/metrics once the exporter counted `items` of `model` and attributed energy past `after`."""
    deadline = time.time() + timeout_s
    while True:
        text = get(METRICS + "/metrics")[1]
        if (model_series(text, f"jouletrace_model_{counter}_total", model) >= items
                and metric(text, "jouletrace_gpu_finalized_timestamp_seconds") > after) or time.time() > deadline:
            return text
        time.sleep(1.0)


def loadgen(args: list[str], out: pathlib.Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "jouletrace", "loadgen", "run", "--base-url", SERVER, "--quiet",
                           "--out", str(out), *args], capture_output=True, text=True, timeout=900)
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr[-1500:]}")
    return json.loads(pathlib.Path(done.stdout.strip().splitlines()[-1]).read_text())


def measure(kind: str, batch: int, a: argparse.Namespace, edges: Edges, out: pathlib.Path) -> dict:
    task, counter = TASKS[kind]
    factory = a.video_model if kind == "video" and a.video_model else MODELS[a.models][kind]
    steps, size = {"image": (a.image_steps, a.image_size), "video": (a.video_steps, a.video_size),
                   "image-to-video": (a.i2v_steps, a.i2v_size)}[kind]
    log = open(out / f"server-{kind}-b{batch}.log", "w")
    t0 = time.time()
    server = subprocess.Popen([sys.executable, "-m", "jouletrace", "serve", "diffusion", "--pipeline",
                               f"{HERE / 'diffusion_models.py'}:{factory}", "--kind", kind, "--max-batch", str(batch),
                               "--batch-wait", "10", "--fps", str(a.fps), "--port", "8000",
                               "--otlp-endpoint", "grpc://127.0.0.1:4317"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait(SERVER + "/health", 600, server)
        entry = {"task": task, "kind": kind, "model": factory, "batch": batch, "steps": steps, "size": size,
                 "frames": None if kind == "image" else clip_frames(a.seconds, a.fps),
                 "server_ready_s": time.time() - t0}
        common = ["--task", task, "--size", size, "--seconds", str(a.seconds), "--poll-interval", "0.2",
                  "--concurrency", str(batch), "--energy-wait", "120"]
        warm = loadgen([*common, "-n", str(batch), "--steps", "2", "--no-energy"], out / "warmup")
        entry["warmup_s"] = max(warm["latencies"])
        before = settled(factory, counter, warm["completed"], time.time() + 1.0)
        n = batch * (a.rounds if kind == "image" else a.video_rounds)
        r = loadgen([*common, "-n", str(n), "--steps", str(steps), "--exporter", METRICS], out / "runs")
        (out / f"{kind}-b{batch}.json").write_text(json.dumps({k: v for k, v in r.items() if k != "token_times"}))
        ends = [s + lat for s, lat in zip(r["start_times"], r["latencies"]) if lat is not None]
        after = settled(factory, counter, warm["completed"] + r["completed"], max(ends) + 1.0)
        time.sleep(1.0)  # the reference's edges past the last end
        items = model_series(after, f"jouletrace_model_{counter}_total", factory) - \
            model_series(before, f"jouletrace_model_{counter}_total", factory)
        energy = model_series(after, "jouletrace_model_energy_joules_total", factory) - \
            model_series(before, "jouletrace_model_energy_joules_total", factory)
        per_request = [(edges.at(s + lat) - edges.at(s)) / batch for s, lat in zip(r["start_times"], r["latencies"])]
        entry.update(completed=r["completed"], failed=r["failed"], items=items,
                     jouletrace_j=energy / items if items else None,
                     loadgen_j=r.get("energy_per_item_j"), reference_j=sum(per_request) / len(per_request),
                     reference_per_request_j=per_request, avg_power_w=r.get("avg_power_w"),
                     median_latency_s=r["median_generation_latency_ms"] / 1000,
                     window_s=(r.get("window") or {}).get("duration_s"))
        mine = entry["jouletrace_j"]
        entry["error_vs_reference"] = mine / entry["reference_j"] - 1 if mine else None
        return entry
    finally:
        stop(server, 60)
        log.close()


#: The study's minimum-energy configurations on B200, J per image or video, at each model's default
#: shape (the ML.ENERGY Leaderboard v3.0 post's "Energy per image/video" figure, bar labels and
#: heights): SD 3.5 Medium ~1.6 kJ per image, CogVideoX 2B 26 kJ and Wan 2.1 1.3B 61 kJ per video.
#: Image-to-video was a task of the leaderboard's previous version: no v3.0 figure.
STUDY_B200_J = {"sd35_medium": 1620.0, "cogvideox_2b": 26000.0, "wan21_t2v_1_3b": 61000.0}
SERIES = (("jouletrace, --engine-metrics", "engine", "jouletrace_j", "C0"),
          ("jouletrace, adaptive delay only", "adaptive", "jouletrace_j", "C1"),
          ("NVML reference", "engine", "reference_j", "0.4"))


def plot(folder: pathlib.Path) -> pathlib.Path:
    """Energy per image or video by batch, one panel per (model, size, steps): jouletrace under each
    settlement, the NVML reference and the study's figure for the model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [dict(r, settlement=s.get("settlement") or "adaptive") for f in sorted(folder.rglob("summary*.json"))
            for s in [json.loads(f.read_text())] for r in s["runs"] if r.get("jouletrace_j")]
    panels = sorted({(r["kind"] != "image", r["model"], r["size"], r["steps"]) for r in runs})
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (video, model, size, steps) in zip(axes.flat, panels):
        mine = [r for r in runs if (r["model"], r["size"], r["steps"]) == (model, size, steps)]
        batches = sorted({r["batch"] for r in mine})
        for i, (label, settlement, key, color) in enumerate(SERIES):
            values = [next((r[key] / 1000 for r in mine if r["batch"] == b and r["settlement"] == settlement), 0.0)
                      for b in batches]
            ax.bar([j + (i - 1) * 0.27 for j in range(len(batches))], values, 0.27, label=label, color=color)
        if model in STUDY_B200_J:
            ax.axhline(STUDY_B200_J[model] / 1000, color="k", ls="--", lw=1, label="study, B200 minimum")
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        frames = next((f"x{r['frames']}" for r in mine if r.get("frames")), "")
        ax.set_title(f"{model}, {size}{frames}, {steps} steps", fontsize=8)
        ax.set_ylabel(f"kJ per {'video' if video else 'image'}")
        ax.legend(fontsize=6, loc="lower right")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Energy per image and per video, H100, random weights, jouletrace vs NVML", fontsize=10)
    fig.tight_layout()
    out = folder / "diffusion.png"
    fig.savefig(out, dpi=110)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--plot", help="draw RESULTS_DIR/diffusion.png from its summaries, and stop")
    ap.add_argument("--image-batches", default="1,4")
    ap.add_argument("--video-batches", default="1,2")
    ap.add_argument("--models", choices=MODELS, default="study", help="the study's shapes, or a few channels wide")
    ap.add_argument("--rounds", type=int, default=2, help="batches per measured image run")
    ap.add_argument("--video-rounds", type=int, default=1, help="batches per measured video run")
    ap.add_argument("--image-size", default="1024x1024")
    ap.add_argument("--image-steps", type=int, default=28)
    ap.add_argument("--video-size", default="720x480")
    ap.add_argument("--video-steps", type=int, default=50)
    ap.add_argument("--video-model", help="another text-to-video factory of diffusion_models.py, e.g. wan21_t2v_1_3b")
    ap.add_argument("--i2v-batches", default="", help="image-to-video batch sizes (none by default)")
    ap.add_argument("--i2v-size", default="720x480", help="CogVideoX-5b-I2V's learned positions fix its size")
    ap.add_argument("--i2v-steps", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=6.0, help="clip length: 6 s at 8 fps is 49 frames")
    ap.add_argument("--fps", type=float, default=8.0)
    ap.add_argument("--no-engine-metrics", action="store_true",
                    help="settle by the span-adapted delay alone, not the server's vllm:num_requests_running")
    a = ap.parse_args()
    if a.plot:
        print(plot(pathlib.Path(a.plot)))
        return
    if not a.out:
        ap.error("--out is required")
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    summary = {"gpu": pynvml.nvmlDeviceGetName(handle), "date": time.strftime("%Y-%m-%d"),
               "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000, "runs": []}
    elog = open(out / "exporter.log", "w")
    engine = [] if a.no_engine_metrics else ["--engine-metrics", SERVER + "/metrics"]
    summary["settlement"] = "adaptive" if a.no_engine_metrics else "engine"
    exporter = subprocess.Popen([sys.executable, "-m", "jouletrace", "exporter", "--gpu", "nvml", "--gpus", "0",
                                 "--metrics-addr", "127.0.0.1:9464", "--window", "30", *engine],
                                stdout=elog, stderr=subprocess.STDOUT)
    try:
        wait(METRICS + "/readyz", 60, exporter)
        edges = Edges(handle)
        plan = [("image", int(b)) for b in a.image_batches.split(",") if b] + \
               [("video", int(b)) for b in a.video_batches.split(",") if b] + \
               [("image-to-video", int(b)) for b in a.i2v_batches.split(",") if b]
        for kind, batch in plan:
            try:
                entry = measure(kind, batch, a, edges, out)
            except Exception as exc:  # noqa: BLE001 - one failed configuration is reported, the rest run
                entry = {"kind": kind, "batch": batch, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            summary["runs"].append(entry)
            print(json.dumps({k: v for k, v in entry.items() if k != "reference_per_request_j"}), flush=True)
            (out / "summary.json").write_text(json.dumps(summary, indent=1))
        edges.stop.set()
    finally:
        stop(exporter)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
