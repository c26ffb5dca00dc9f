"""One configuration run end to end: check the server, plan, load, window, energy, result files."""

from __future__ import annotations

import asyncio
import signal
import dataclasses
import json
import math
import re
from pathlib import Path

import aiohttp

from jouletrace.exporter.grid import GridValues

from .clock import now
from .datasets import load_dataset
from .energy import EnergyUnavailable, NvmlEnergy, exporter_energy
from .engine import BatchScraper
from .load import LoadConfig, run_load
from .plan import DEFAULT_FIM_TEMPLATE, Sampling, plan
from .progress import Progress
from .report import append_csv, build_result
from .requests import DiffusionParams
from .stats import DEFAULT_PERCENTILES
from .tasks import task
from .tracing import ClientTracer
from .window import steady_state_window, whole_run_window


class ServerUnreachable(RuntimeError):
    """The inference server did not answer (one-line reason)."""


@dataclasses.dataclass
class RunConfig:
    base_url: str
    task: str = "chat"
    num_requests: int = 100
    model: str | None = None
    max_num_seqs: int | None = None
    rate: float = math.inf
    arrival: str = "poisson"
    burstiness: float = 1.0
    concurrency: int | None = None
    exporter: str | None = None        # jouletrace exporter metrics URL; None: NVML here
    no_energy: bool = False            # skip energy (latency-only run)
    dataset: str | None = None
    dataset_format: str = "jsonl"
    media_root: str | None = None      # dataset media paths are relative to it; None: the file's directory
    fim_template: str = DEFAULT_FIM_TEMPLATE
    prompt_scale: float = 1.0          # multiplies synthetic prompt lengths
    sampling: Sampling = Sampling()
    stream: bool = True
    seed: int = 0
    slos: dict = dataclasses.field(default_factory=dict)
    percentiles: tuple = DEFAULT_PERCENTILES
    out_dir: str = "loadgen-results"
    otlp_endpoint: str | None = None
    request_timeout_s: float = 3600.0
    metrics_url: str | None = None     # engine /metrics; default <base-url>/metrics
    progress: bool = True
    energy_wait_s: float = 180.0
    diffusion: DiffusionParams = DiffusionParams()  # image and video tasks
    power_limit_w: float | None = None  # the GPUs' power limit during the run, recorded (power sweeps set it)
    grid: GridValues = GridValues()    # electricity price and carbon intensity per kWh: cost and CO2e figures


async def server_model(session: aiohttp.ClientSession, base_url: str) -> str:
    """The first model `GET /v1/models` lists; ServerUnreachable when the server does not answer."""
    try:
        async with session.get(base_url + "/v1/models", timeout=aiohttp.ClientTimeout(total=15)) as resp:
            if resp.status != 200:
                raise ServerUnreachable(f"{base_url}/v1/models answered {resp.status}")
            data = await resp.json(content_type=None)
            return data["data"][0]["id"]
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise ServerUnreachable(f"cannot reach the server at {base_url}: {e or type(e).__name__}") from e
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ServerUnreachable(f"{base_url}/v1/models lists no model") from e


async def reachable(session: aiohttp.ClientSession, base_url: str) -> None:
    """ServerUnreachable unless the server answers `GET /v1/models` at all (any status: some servers
    cannot list a local model directory, and the model is named already)."""
    try:
        async with session.get(base_url + "/v1/models", timeout=aiohttp.ClientTimeout(total=15)):
            pass
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise ServerUnreachable(f"cannot reach the server at {base_url}: {e or type(e).__name__}") from e


async def run(cfg: RunConfig, stop: asyncio.Event | None = None) -> tuple[dict, Path]:
    """Runs one configuration; returns (result, path of its JSON). Raises ServerUnreachable,
    DatasetError or ValueError (bad options) before any load is sent."""
    stop = stop or asyncio.Event()
    spec = task(cfg.task)
    diffusion = spec.api in ("image", "video")
    if diffusion and cfg.diffusion.api == "xdit" and spec.images:
        raise ValueError(f"task {spec.name}: xDiT's HTTP service takes no input image; use --diffusion-api openai")
    base = cfg.base_url.rstrip("/")
    source = (load_dataset(cfg.dataset, cfg.dataset_format, spec, cfg.seed, cfg.fim_template, cfg.media_root,
                           limit=cfg.num_requests) if cfg.dataset else None)
    requests = plan(spec, cfg.num_requests, cfg.seed, cfg.sampling, source, cfg.fim_template, cfg.prompt_scale)
    if diffusion:
        for r in requests:
            r.diffusion = cfg.diffusion
    nvml = None
    if not cfg.exporter and not cfg.no_energy:
        nvml = NvmlEnergy()  # raises EnergyUnavailable where there is none
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                    timeout=aiohttp.ClientTimeout(total=cfg.request_timeout_s))
    tracer = ClientTracer(cfg.otlp_endpoint)
    try:
        if diffusion and cfg.diffusion.api == "xdit":
            model = cfg.model or "xdit"  # xDiT serves one model and lists none
        else:
            model = cfg.model or await server_model(session, base)
            if cfg.model:
                await reachable(session, base)
        load_cfg = LoadConfig(base, model, cfg.sampling, cfg.stream, cfg.rate, cfg.arrival, cfg.burstiness,
                              cfg.concurrency, cfg.seed, cfg.request_timeout_s)
        scraper = BatchScraper(cfg.metrics_url or base + "/metrics")
        sent: list = []
        progress = Progress(len(requests), sent, now(), cfg.exporter) if cfg.progress else None
        side = [asyncio.create_task(scraper.run(session))]
        if progress:
            side.append(asyncio.create_task(progress.run(session)))
        if nvml:
            nvml.start()
        try:
            outcome = await run_load(requests, load_cfg, tracer, stop, session=session, sent=sent)
        finally:
            for t in side:
                t.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            if nvml:
                nvml.stop()
        if progress:
            progress.finish()
        window, reason = None, ""
        if cfg.max_num_seqs and not diffusion:  # diffusion: no first token; whole run at fixed concurrency
            window, reason = steady_state_window(outcome.results, cfg.num_requests, cfg.max_num_seqs)
        if window is None:
            window = whole_run_window(outcome.results, outcome.start)
        energy, energy_error = None, ""
        if window is not None and not cfg.no_energy:
            try:
                energy = (await exporter_energy(session, cfg.exporter, window.start, window.end, cfg.energy_wait_s)
                          if cfg.exporter else nvml.window(window.start, window.end))
            except EnergyUnavailable as e:
                energy_error = str(e)
        mean_batch = scraper.mean(window.start, window.end) if window else None
    finally:
        await session.close()
        tracer.shutdown()
    meta = {
        "backend": ({"chat": "openai-chat", "image": f"{cfg.diffusion.api}-images",
                     "video": f"{cfg.diffusion.api}-videos"}.get(spec.api, "openai")),
        "model_id": model, "base_url": base, "task": spec.name, "num_prompts": cfg.num_requests,
        "request_rate": "inf" if math.isinf(cfg.rate) else cfg.rate,
        "arrival": "closed" if math.isinf(cfg.rate) and cfg.arrival != "trace" else cfg.arrival,
        "burstiness": cfg.burstiness, "max_concurrency": cfg.concurrency, "stream": cfg.stream,
        "dataset": {"kind": cfg.dataset_format if cfg.dataset else "synthetic", "path": cfg.dataset,
                    "seed": cfg.seed, "prompt_scale": None if cfg.dataset else cfg.prompt_scale,
                    "lengths": None if cfg.dataset else spec.source},
        "sampling": dataclasses.asdict(cfg.sampling), "exporter": cfg.exporter,
        "energy_source": None if cfg.no_energy else ("exporter" if cfg.exporter else "nvml"),
        "engine_metrics_samples": len(scraper.samples), "power_limit_w": cfg.power_limit_w,
        **{k: v for k, v in dataclasses.asdict(cfg.grid).items() if v not in (None, "")},
    }
    if diffusion:
        meta.update({"item_kind": spec.api, "diffusion_api": cfg.diffusion.api,
                     "diffusion": dataclasses.asdict(cfg.diffusion)})
    result = build_result(outcome, meta, window, reason, energy, energy_error, mean_batch, cfg.max_num_seqs,
                          cfg.slos, cfg.percentiles, cfg.grid)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{result['date']}-{spec.name}-{_slug(model)}-n{cfg.num_requests}"
    name += f"-b{cfg.max_num_seqs}" if cfg.max_num_seqs else ""
    name += f"-{cfg.power_limit_w:g}W" if cfg.power_limit_w else ""
    name += "-partial" if outcome.interrupted else ""
    path = out / f"{name}.json"
    k = 1
    while path.exists():
        path, k = out / f"{name}-{k}.json", k + 1
    result["result_file"] = path.name
    path.write_text(json.dumps(result, indent=1))
    append_csv(out / "summary.csv", result)
    return result, path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/").split("/")[-1])[:60]


async def until_signalled(work):
    """Await `work(stop)`; SIGINT or SIGTERM sets `stop` so the work can end cleanly and keep results."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await work(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
