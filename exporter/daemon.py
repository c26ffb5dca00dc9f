"""The exporter daemon: GPU samplers, span intake, the ledger and the Prometheus endpoint, wired."""

from __future__ import annotations

import asyncio
import collections
import ctypes
import inspect
import logging
import os
import signal
import socket
import time
from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from jouletrace.exporter import diagnose, tls
from jouletrace.exporter.config import ExporterConfig
from jouletrace.exporter.engine import EngineScraper
from jouletrace.exporter.gpu import backends, simulated
from jouletrace.exporter.gpu.device import UNRESOLVED, GPUDevice, Selection
from jouletrace.exporter.gpu.nodepower import NodePower
from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.grid import Grid
from jouletrace.exporter.intake.core import IntakeStats, Receiver
from jouletrace.exporter.intake.otlp_grpc import GrpcIntake
from jouletrace.exporter.intake.otlp_http import HttpIntake
from jouletrace.exporter.kubernetes.placement import PodPlacement
from jouletrace.exporter.ledger.ledger import Ledger
from jouletrace.exporter.lifecycle import Components, Step, Worker
from jouletrace.exporter.powercap.advisor import PowerCap, PowerCapConfig
from jouletrace.exporter.sinks import energy_api
from jouletrace.exporter.sinks.forward import Forwarder, hold_seconds
from jouletrace.exporter.sinks.prometheus.registry import build_registry, collectors

log = logging.getLogger(__name__)

FORWARD_GRACE_S = 3.0  # at stop, time given to forward what is held
FINAL_READING_WAIT_S = 2.0  # at stop, time given to the samplers for a last counter reading
CONFIG_POLL_S = 2.0  # how often the config file is checked for changes
GPUS_FILE_POLL_S = 1.0  # how often the GPUs file (--gpus-file) is checked for changes
GRID_FILE_POLL_S = 1.0  # how often the grid file (--grid-file) is checked for changes
# glibc's malloc arenas the exporter uses (glibc's own cap: 8 per core); MALLOC_ARENA_MAX overrides
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # mallopt's parameter, from glibc's malloc.h


def cap_malloc_arenas() -> None:
    """Cap glibc's malloc arenas at MALLOC_ARENAS, unless MALLOC_ARENA_MAX is set. With an arena per
    thread (gRPC's, the decode executor's), the memory a flood of large messages freed stayed
    scattered over many arenas and the resident set grew with every burst (benchmarks/RESULTS.md).
    No effect where the C library has no mallopt."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def gpu_selection(cfg: ExporterConfig) -> Selection:
    """The GPUs this exporter is asked to sample (Selection.discover), before any is opened."""
    return Selection.discover(cfg.gpus, cfg.pod, cfg.pod_resources_socket, cfg.gpus_file)


def open_configured_devices(cfg: ExporterConfig, selection: Selection | None = None) -> list[GPUDevice]:
    load = simulated.wave_load if cfg.sim_load == "wave" else float(cfg.sim_load)
    selection = selection or gpu_selection(cfg)
    return backends.open_devices(cfg.gpu, selection,
                            sim_options={"count": cfg.sim_gpus, "seed": cfg.sim_seed, "load": load},
                            sim_device_file=cfg.sim_device_file)


def open_selected(cfg: ExporterConfig, selection: Selection) -> tuple[Selection, list[GPUDevice]]:
    """The selection as applied, and its devices. It fails closed: a selection that cannot tell this
    pod's GPUs (unresolved, or a GPUs file naming GPUs not visible here) takes the only GPU visible,
    and none where several are: then nothing is sampled or attributed, and the reason is logged."""
    if selection.source != UNRESOLVED:
        try:
            devices = open_configured_devices(cfg, selection)
        except ValueError as e:
            if selection.source != "gpus-file":
                raise
            selection = Selection.unresolved(f"the GPUs file {cfg.gpus_file}: {e}")
        else:
            log.info("GPUs: %s (from %s)", ",".join(selection.items) or "all", selection.source)
            return selection, devices
    visible = open_configured_devices(cfg, Selection())
    selection = selection.resolve([(d.index, d.uuid) for d in visible])
    if selection.source != UNRESOLVED:
        log.warning("GPUs: %s, the only one visible (%s)", selection.items[0], selection.reason)
        return selection, visible
    log.error("GPU selection unresolved: %s. %d GPUs are visible and this pod's are unknown: sampling none, "
              "attributing nothing, /readyz not ready. Name them with --gpus, or let the server's container "
              "write them to --gpus-file (k8s/overlays/sidecar), or run where the kubelet's PodResources socket "
              "is readable (node mode, as root): docs/kubernetes.md", selection.reason, len(visible))
    return selection, []


class Exporter:
    """Start with `await start()`, stop with `await stop()`; `ports` holds the bound ports."""

    def __init__(self, cfg: ExporterConfig, devices: list[GPUDevice] | None = None,
                 selection: Selection | None = None):
        """`devices`: these GPUs instead of the configured ones. `selection`: the GPUs asked for, when
        already discovered (gpu_selection)."""
        self.cfg = cfg
        self.tls = tls.load(cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_client_ca_file)
        if cfg.powercap_actuation and self.tls is None:
            log.warning("power-cap actuation is on without TLS: admin tokens cross the network in the clear "
                        "(--tls-cert-file)")
        self.requested = (selection or gpu_selection(cfg)) if devices is None else Selection()
        self.selection, self.devices = (self.requested, devices) if devices is not None \
            else open_selected(cfg, self.requested)
        if not self.devices and self.selection.source != UNRESOLVED:
            raise RuntimeError("no GPU selected")
        self.samplers = [GPUSampler(d, retention_s=cfg.retention, power_interval_s=cfg.power_interval,
                                    counter_interval_s=cfg.counter_interval, status_interval_s=cfg.status_interval,
                                    peak_window_s=cfg.power_peak_window)
                         for d in self.devices]
        self.node_power = NodePower(self.samplers, interval_s=cfg.power_interval, window_s=cfg.power_peak_window)
        self.forwarder = None
        if cfg.forward_otlp:
            self.forwarder = Forwarder(cfg.forward_otlp, gpu_uuids=self.gpu_uuids,
                                       hold_s=hold_seconds(cfg.longest_hold, cfg.counter_interval),
                                       buffer_bytes=cfg.forward_buffer_bytes, timeout_s=cfg.forward_timeout,
                                       retry_max_s=cfg.forward_retry_max)
        self.ledger = Ledger(self.samplers, settle_delay_s=cfg.settle_delay, max_hold_s=cfg.max_hold, window_s=cfg.window,
                             max_pending=cfg.max_pending, max_models=cfg.max_models, max_pods=cfg.max_pods,
                             on_results=self.forwarder.on_results if self.forwarder else None)
        self.powercap = PowerCap(PowerCapConfig.from_config(cfg), self.samplers, self.ledger)
        self.intake_stats = IntakeStats()
        self.engines = self._engine_scraper(cfg)
        self.history = diagnose.History(self.samplers, self.ledger, lambda: self.engines.states)
        self.config_reloads: collections.Counter = collections.Counter()
        self.placement = None
        if cfg.node_mode:
            self.placement = PodPlacement(self.ledger, self.gpu_uuids, cfg.pod_resources_socket, cfg.pod_refresh)
        self.grid = None
        if cfg.grid_configured:
            self.grid = Grid(cfg.grid, cfg.grid_file, self.ledger.model_energy)
        self.registry = build_registry(collectors(
            self.samplers, self.ledger, self.intake_stats.snapshot, engine_states=lambda: self.engines.states,
            powercap=self.powercap, forward_snapshot=self.forwarder.snapshot if self.forwarder else None,
            placement=self.placement, selection=self.selection, config_reloads=self.config_reloads,
            node_name=cfg.node_name or socket.gethostname(), grid=self.grid, node_power=self.node_power,
            topology=dict(cfg.topology)))
        self.ports: dict[str, int] = {}
        self._metrics_runner: web.AppRunner | None = None
        self._final = asyncio.Event()     # set when the final attribution is done
        self._final_scraped = asyncio.Event()
        self._scrape_wait_s = 0.0
        self.components = self._components()

    # -- lifecycle ------------------------------------------------------------------------
    def _components(self) -> Components:
        """Every component, in start order; `stop()` stops them in reverse: the span intake first,
        then the engine scrape and the ledger's consumers, the final attribution (while the samplers
        still read), forwarding what it released, the last scrape, and the samplers last."""
        cfg, c = self.cfg, Components()
        for s in self.samplers:
            c.add(Worker(f"sampler-gpu{s.device.index}", s.run))
        if self.grid is not None and cfg.grid_file:
            c.add(self._grid_file_watch(self.grid))
        if cfg.metrics_addr:
            c.add(Step("metrics", lambda: self._serve_metrics(*cfg.metrics_addr), self._stop_metrics))
        if not self.samplers:  # the selection failed closed: only the metrics port, saying why
            return c
        if self.forwarder is not None:
            forwarder = self.forwarder
            c.add(Step("forwarding", forwarder.start, lambda: forwarder.stop(FORWARD_GRACE_S)))
        c.add(Step("final attribution", stop=self._final_attribution))
        c.add(Worker("attribution", self.ledger.run))
        c.add(Worker("powercap", self.powercap.run, after_stop=self.powercap.restore))
        c.add(Worker("diagnosis", self.history.run))
        if self.placement is not None:
            c.add(Worker("placement", self.placement.run))
        c.add(Step("engine scrape", self._start_engines, lambda: self.engines.stop()))
        receiver = Receiver(self.ledger, self.intake_stats, max_bytes=cfg.max_message_bytes,
                            default_model=cfg.default_model, forward=self.forwarder)
        if cfg.otlp_http_addr:
            c.add(HttpIntake(*cfg.otlp_http_addr, receiver, ssl_context=self.tls.otlp_http if self.tls else None))
        if cfg.otlp_grpc_addr:
            c.add(GrpcIntake(*cfg.otlp_grpc_addr, receiver, credentials=self.tls.otlp_grpc if self.tls else None))
        return c

    @staticmethod
    def _grid_file_watch(grid: Grid) -> Step:
        """Reads the grid file at start, then again whenever it changes, appears or goes."""
        watch: list[asyncio.Task] = []

        async def start() -> None:
            grid.reload()
            watch.append(asyncio.get_running_loop().create_task(
                _watch(grid.path, grid.reload, GRID_FILE_POLL_S, appear=True)))

        async def stop() -> None:
            for task in watch:
                task.cancel()

        return Step("grid file", start, stop)

    async def start(self) -> None:
        for d in self.devices:
            log.info("GPU %d: %s %s (backend %s)", d.index, d.uuid, d.name, d.backend)
        await self.components.start()
        log.info("settlement: %s", self.ledger.settlement.describe())
        for intake in self.components.of_type(HttpIntake, GrpcIntake):
            self.ports[intake.name] = intake.port
        log.info("listening: %s (%s)", ", ".join(f"{k}={v}" for k, v in self.ports.items()),
                 "plaintext" if self.tls is None else
                 "TLS, OTLP clients need a certificate" if self.tls.mutual else "TLS")

    async def _start_engines(self) -> None:
        self.engines.start()

    def reload(self, new: ExporterConfig) -> None:
        """Applies the options of `new` that can change live; logs and counts the others."""
        live, restart = self.cfg.changes(new)
        if "log_level" in live:
            logging.getLogger().setLevel(new.log_level.upper())
        if "window" in live:
            self.ledger.window_s = new.window
        if {"engine_metrics", "engine_interval", "engine_timeout"} & set(live):
            old = self.engines
            self.engines = self._engine_scraper(new)
            asyncio.get_running_loop().create_task(old.stop())
            self.engines.start()
        kept = {f: getattr(self.cfg if f in restart else new, f) for f in self.cfg.__dataclass_fields__}
        self.cfg = ExporterConfig(**kept)
        if restart:
            log.warning("configuration reloaded; needs a restart to change: %s", ", ".join(restart))
        else:
            log.info("configuration reloaded: %s", ", ".join(live) or "no change")
        self.config_reloads["restart_needed" if restart else "applied"] += 1

    def gpu_uuids(self) -> list[str]:
        """The sampled GPUs' UUIDs, as the devices know them now."""
        return [d.uuid for d in self.devices]

    def _engine_scraper(self, cfg: ExporterConfig) -> EngineScraper:
        self.ledger.watch_engines(list(cfg.engine_metrics))
        return EngineScraper(list(cfg.engine_metrics), self.ledger.completion_tokens, interval_s=cfg.engine_interval,
                             timeout_s=cfg.engine_timeout, max_models=cfg.max_models,
                             on_scrape=self.ledger.engine_sample)

    async def stop(self, scrape_wait_s: float = 0.0) -> None:
        """Graceful stop: close the span intake, restore the power limits the exporter changed, take
        a last counter reading of every GPU, attribute everything received up to it (without waiting
        the settle delay: no span can come any more), forward what that released, then keep serving
        /metrics until one scrape has seen the final numbers or `scrape_wait_s` has passed."""
        self._scrape_wait_s = scrape_wait_s
        await self.components.stop()

    async def _stop_metrics(self) -> None:
        if self._scrape_wait_s > 0:
            try:
                await asyncio.wait_for(self._final_scraped.wait(), self._scrape_wait_s)
            except asyncio.TimeoutError:
                log.info("no final scrape within %g s", self._scrape_wait_s)
        await self._metrics_runner.cleanup()

    async def _final_attribution(self) -> None:
        await asyncio.to_thread(self._settle_finally)
        self._final.set()

    def _settle_finally(self) -> None:
        t_stop = time.time()
        for s in self.samplers:
            s.read_counter_soon()
        deadline = time.monotonic() + FINAL_READING_WAIT_S
        while time.monotonic() < deadline and any(s.healthy and s.timeline.started and s.timeline.settled_until < t_stop
                                                  for s in self.samplers):
            time.sleep(0.05)
        self.ledger.settle(final=True)
        log.info("final attribution done: %d requests still without energy", self.ledger.pending)

    # -- HTTP: metrics and health ---------------------------------------------------------
    def metrics_app(self) -> web.Application:
        """The metrics port's routes: all read-only but the power-cap admin API's POST and DELETE."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/api/v1/energy", energy_api.handler(self.samplers))
        self.powercap.add_routes(app)
        app.router.add_get("/diagnose", diagnose.handler(self.history))
        return app

    async def _serve_metrics(self, host: str, port: int) -> None:
        runner = web.AppRunner(self.metrics_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=self.tls.metrics if self.tls else None).start()
        self._metrics_runner = runner
        self.ports["metrics"] = _bound_port(runner)

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        final = self._final.is_set()
        body = encoder(self.registry)
        if final:
            self._final_scraped.set()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        alive = all(w.alive for w in self.components.of_type(Worker))
        return web.Response(status=200 if alive else 503, text="ok\n" if alive else "a worker thread died\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.selection.source == UNRESOLVED:
            return web.Response(status=503, text=f"GPU selection unresolved: {self.selection.reason}; sampling no "
                                                 "GPU and attributing nothing (docs/kubernetes.md)\n")
        waiting = [str(s.device.index) for s in self.samplers if not s.timeline.started]
        if waiting:
            return web.Response(status=503, text=f"waiting for the first energy reading of GPU {','.join(waiting)}\n")
        return web.Response(text="ready\n")


def _file_stamp(path: str) -> tuple[int, int] | None:
    """The file's modification time and size, None where it is missing."""
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size
    except OSError:
        return None


async def _watch(path: str, on_change: Callable[[], Awaitable[None] | None], period_s: float = CONFIG_POLL_S,
                 appear: bool = False) -> None:
    """Calls `on_change` (awaiting it where it is a coroutine function's) when the file's modification
    time or size changes; with `appear`, also when it appears."""
    last = _file_stamp(path)
    while True:
        await asyncio.sleep(period_s)
        now = _file_stamp(path)
        if now != last and (now is not None or appear):
            result = on_change()
            if inspect.isawaitable(result):
                await result
        last = now


def _bound_port(runner: web.AppRunner) -> int:
    return runner.addresses[0][1]


async def serve(cfg: ExporterConfig, reread: Callable[[], ExporterConfig] | None = None) -> None:
    """Run the exporter until SIGINT or SIGTERM. `reread` gives the configuration anew (flags,
    environment, config file): on SIGHUP, and when the config file changes, it is reloaded."""
    cap_malloc_arenas()
    exporter = Exporter(cfg)
    await exporter.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watchers = []
    if reread is not None:
        def reload() -> None:
            try:
                new = reread()
            except ValueError as exc:
                log.error("configuration not reloaded: %s", exc)
                exporter.config_reloads["invalid"] += 1
                return
            exporter.reload(new)

        loop.add_signal_handler(signal.SIGHUP, reload)
        if cfg.config:
            watchers.append(loop.create_task(_watch(cfg.config, reload)))
    if cfg.gpus_file and exporter.requested.source in ("gpus-file", UNRESOLVED):
        async def follow_gpus_file() -> None:
            """A changed GPUs file restarts the exporter on the GPUs it names now."""
            nonlocal exporter
            selection = gpu_selection(exporter.cfg)
            if selection == exporter.requested:
                return
            log.warning("the GPUs file %s changed (%s): restarting on its GPUs", cfg.gpus_file,
                        ",".join(selection.items) or selection.reason)
            await exporter.stop()
            exporter = Exporter(exporter.cfg, selection=selection)
            await exporter.start()

        watchers.append(loop.create_task(_watch(cfg.gpus_file, follow_gpus_file, GPUS_FILE_POLL_S, appear=True)))
    await stop.wait()
    for watcher in watchers:
        watcher.cancel()
    log.info("stopping")
    await exporter.stop(cfg.shutdown_scrape_wait)
