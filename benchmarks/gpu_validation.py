"""Real-GPU validation: a Llama-3.1-8B-shaped model (random BF16 weights, built from its configuration)
served by `transformers serve --continuous-batching` on GPU 0 (which takes no `ignore_eos`; random weights
rarely emit EOS, so outputs run to max_tokens), measured by `jouletrace exporter
--gpu nvml` while the load generator's closed-loop chat workload runs at several concurrencies, its
client spans sent to the exporter. Changes no GPU setting.

    python benchmarks/gpu_validation.py --out DIR [--batch-sizes 8,32,128,256] [--max-tokens 256]

Writes DIR/runs/*.json (the load generator's results), DIR/summary.json and the logs. Per batch:
the load generator's figures; the exporter's window energy against an independent reading of the
NVML counter (counter edges back to back, about every 100 ms, interpolated to the window's ends); at the end,
conservation (attributed + idle vs measured energy) and the sampler's CPU per GPU-second against
naive 10 Hz counter polling that ran for the whole sweep in this process."""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
import threading
import time
import urllib.request

import pynvml
from nvml_reference import counter_edge
from prometheus_client.parser import text_string_to_metric_families

LLAMA_3_1_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192)
METRICS = "http://127.0.0.1:9464"
SERVER = "http://127.0.0.1:8000"


def build_model(path: pathlib.Path) -> None:
    """Random BF16 weights of the Llama-3.1-8B shape and a word-level tokenizer over its vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(**LLAMA_3_1_8B, torch_dtype="bfloat16", bos_token_id=0, eos_token_id=1)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    vocab = {"<unk>": 0, "</s>": 1, **{f"t{i}": i for i in range(2, LLAMA_3_1_8B["vocab_size"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", bos_token="<unk>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    fast.save_pretrained(path)


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def wait(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout_s
    while get(url)[0] != 200:
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{url} did not come up (exit {proc.poll()})")
        time.sleep(1)


def stop(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Terminates `proc`, killing it after `timeout_s`."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def metric(text: str, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


class Edges:
    """Counter edges (unix s, J) of GPU 0 every `period_s` (0: back to back, one per counter update,
    about every 100 ms), from a thread."""

    def __init__(self, handle, period_s: float = 0.0):
        self.handle, self.period_s, self.points = handle, period_s, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(self.period_s):
            self.points.append(counter_edge(self.handle))

    def at(self, t: float) -> float:
        pts = self.points
        for (t0, j0), (t1, j1) in zip(pts, pts[1:]):
            if t0 <= t <= t1:
                return j0 + (j1 - j0) * (t - t0) / (t1 - t0)
        raise ValueError(f"no counter edges around {t}")


def naive_poll(handle, stop: threading.Event, out: dict) -> None:
    """Read the energy counter every 100 ms (the direct way to a 100 ms timeline); its CPU time."""
    cpu0, t0 = time.thread_time(), time.time()
    next_at = time.monotonic()
    while not stop.is_set():
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        next_at += 0.1
        stop.wait(max(0.0, next_at - time.monotonic()))
    out["cpu_s"], out["wall_s"] = time.thread_time() - cpu0, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-sizes", default="8,32,128,256")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--requests-per-batch", type=int, default=3)
    ap.add_argument("--model-dir", default="/tmp/llama-3.1-8b-random")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    model = pathlib.Path(args.model_dir)
    t0 = time.time()
    if not (model / "config.json").exists():
        build_model(model)
    summary = {"model_build_s": time.time() - t0, "gpu": None, "runs": []}
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    summary["gpu"] = pynvml.nvmlDeviceGetName(handle)
    logs = {name: open(out / f"{name}.log", "w") for name in ("exporter", "server")}
    exporter_started = time.time()
    exporter = subprocess.Popen([sys.executable, "-m", "jouletrace", "exporter", "--gpu", "nvml", "--gpus", "0",
                                 "--metrics-addr", "127.0.0.1:9464", "--settle-delay", "15", "--window", "30",
                                 "--shutdown-scrape-wait", "60"], stdout=logs["exporter"], stderr=subprocess.STDOUT)
    server = subprocess.Popen(["transformers", "serve", str(model), "--continuous-batching", "--device", "cuda:0",
                               "--dtype", "bfloat16", "--host", "127.0.0.1", "--port", "8000"],
                              stdout=logs["server"], stderr=subprocess.STDOUT)
    stop_naive, naive = threading.Event(), {}
    try:
        wait(METRICS + "/readyz", 60, exporter)
        wait(SERVER + "/health", 600, server)
        summary["server_ready_s"] = time.time() - t0
        edges = Edges(handle)
        poller = threading.Thread(target=naive_poll, args=(handle, stop_naive, naive), daemon=True)
        poller.start()
        common = ["--base-url", SERVER, "--model", str(model), "--task", "chat", "--max-tokens", str(args.max_tokens),
                  "--exporter", METRICS, "--otlp-endpoint", "grpc://127.0.0.1:4317", "--quiet",
                  "--energy-wait", "120", "--out", str(out / "runs")]
        warm = subprocess.run([sys.executable, "-m", "jouletrace", "loadgen", "run", *common, "-n", "4",
                               "--concurrency", "4", "--no-energy"], capture_output=True, text=True, timeout=600)
        summary["warmup_rc"] = warm.returncode
        for b in map(int, args.batch_sizes.split(",")):
            n = args.requests_per_batch * b
            done = subprocess.run([sys.executable, "-m", "jouletrace", "loadgen", "run", *common, "-n", str(n),
                                   "--concurrency", str(b), "--max-num-seqs", str(b)],
                                  capture_output=True, text=True, timeout=900)
            entry = {"batch": b, "rc": done.returncode, "stderr_tail": done.stderr[-600:]}
            if done.returncode in (0, 1) and done.stdout.strip():
                r = json.loads(pathlib.Path(done.stdout.strip().splitlines()[-1]).read_text())
                w = r.get("window") or {}
                entry.update({k: r.get(k) for k in ("completed", "failed", "energy_per_token_j", "energy_per_response_j",
                                                    "avg_power_w", "window_output_throughput", "median_itl_ms",
                                                    "median_ttft_ms", "output_tokens_per_joule", "stable")})
                entry["window"] = w
                if r.get("energy"):
                    time.sleep(1.0)
                    ref = edges.at(w["end"]) - edges.at(w["start"])
                    entry["exporter_j"], entry["reference_j"] = r["energy"]["joules"], ref
                    entry["energy_error"] = r["energy"]["joules"] / ref - 1
            summary["runs"].append(entry)
            print(json.dumps(entry), flush=True)
        stop_naive.set()
        poller.join(5)
        edges.stop.set()
        # conservation after a graceful stop: the exporter attributes everything up to its last reading
        t_stop = time.time()
        exporter.terminate()
        deadline = time.time() + 30
        text = get(METRICS + "/metrics")[1]
        while metric(text, "jouletrace_gpu_finalized_timestamp_seconds") < t_stop and time.time() < deadline:
            time.sleep(0.5)
            text = get(METRICS + "/metrics")[1]
        measured = metric(text, "jouletrace_gpu_energy_joules_total")
        attributed = metric(text, "jouletrace_gpu_attributed_energy_joules_total")
        idle = metric(text, "jouletrace_gpu_idle_energy_joules_total")
        summary["conservation"] = {"measured_j": measured, "attributed_j": attributed, "idle_j": idle,
                                   "error": (attributed + idle) / measured - 1 if measured else math.nan}
        sampler_cpu = metric(text, "jouletrace_gpu_sampler_cpu_seconds_total")
        uptime = t_stop - exporter_started
        per_s = sampler_cpu / uptime
        naive_per_s = naive["cpu_s"] / naive["wall_s"]
        summary["overhead"] = {"sampler_cpu_s": sampler_cpu, "exporter_uptime_s": uptime, "sampler_cpu_per_gpu_s": per_s,
                               "naive_cpu_s": naive["cpu_s"], "naive_wall_s": naive["wall_s"],
                               "naive_cpu_per_gpu_s": naive_per_s, "ratio": per_s / naive_per_s}
        (out / "metrics.txt").write_text(text)
    finally:
        for p in (server, exporter):
            stop(p)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
