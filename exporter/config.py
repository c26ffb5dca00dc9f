"""Exporter configuration: every option is a flag and a `JOULETRACE_*` environment variable."""

from __future__ import annotations

import argparse
import os
import re
import tomllib
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable

from jouletrace.exporter.grid import GridValues, currency_code, optional_rate
from jouletrace.planning import Deadline, deadlines, optional_deadline


def address(text: str) -> tuple[str, int] | None:
    """`host:port` (IPv6 as `[::1]:port`); empty or `off` disables the listener."""
    text = text.strip()
    if text.lower() in ("", "off", "none"):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse


def sim_load(text: str) -> str | float:
    if text == "wave":
        return text
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"sim load is `wave` or a fraction in [0, 1], got {text!r}")
    return value


def switch(text: str) -> bool:
    """`on`/`off` (also true/false, 1/0, yes/no)."""
    value = text.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no", ""):
        return False
    raise ValueError(f"expected on or off, got {text!r}")


def non_negative(text: str) -> float:
    """A number >= 0 (W or s; 0 often means "not set")."""
    value = float(text)
    if not value >= 0:
        raise ValueError(f"expected a number >= 0, got {text!r}")
    return value


def optional_seconds(text: str) -> float | None:
    """A positive number of seconds, or `auto` (None)."""
    if text.strip().lower() in ("auto", ""):
        return None
    return positive(float)(text)


LOG_LEVELS = ("debug", "info", "warning", "error")


def log_level(text: str) -> str:
    """One of LOG_LEVELS (any case), lower-cased."""
    value = text.strip().lower()
    if value not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected {', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]}, got {text!r}")
    return value


def pod_name(text: str) -> str:
    """`namespace/name` of a pod, or empty."""
    text = text.strip()
    namespace, sep, name = text.partition("/")
    if text and not (sep and namespace and name and "/" not in name):
        raise argparse.ArgumentTypeError(f"expected namespace/name, got {text!r}")
    return text


TOPOLOGY_RESERVED = ("node",)  # label names the topology series carries already


def label_name(key: str) -> bool:
    """Whether `key` is a Prometheus label name a user may set (none of the reserved `__` ones)."""
    return re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", key) is not None and not key.startswith("__")


def topology_pair(text: str) -> tuple[str, str]:
    """`key=value`: where the node sits, as a Prometheus label (`rack=r12`)."""
    key, sep, value = text.strip().partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not value or not label_name(key):
        raise argparse.ArgumentTypeError(f"expected key=value with key a label name (rack=r12), got {text!r}")
    if key in TOPOLOGY_RESERVED:
        raise argparse.ArgumentTypeError(f"{key!r} is the node's own label, not a topology key")
    return key, value


def _no_credentials(text: str) -> str:
    """`text`, a URL, unless it holds credentials (`user:password@`): secrets never go in a flag's
    value, and the error does not repeat them."""
    if "@" in urllib.parse.urlsplit(text).netloc:
        raise argparse.ArgumentTypeError("a URL with credentials (user:password@) is refused: secrets go in files")
    return text


def url(text: str) -> str:
    text = text.strip()
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {text!r}")
    return _no_credentials(text)


def forward_url(text: str) -> str:
    """Upstream OTLP endpoint: `grpc://host:port` (`grpcs://` with TLS) or an `http(s)://` URL; empty: off."""
    text = text.strip()
    parts = urllib.parse.urlsplit(text)
    if text and (parts.scheme not in ("grpc", "grpcs", "http", "https") or not parts.netloc):
        raise argparse.ArgumentTypeError(f"expected grpc://host:port or an http(s):// URL, got {text!r}")
    return _no_credentials(text)


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    type: Callable[[str], Any]
    default: str
    help: str
    multiple: bool = False  # the flag repeats; the environment variable separates values by commas

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "JOULETRACE_" + self.name.upper()


OPTIONS = (
    Option("config", str, "", "TOML file of options (keys as the option names); flags and environment variables "
                              "win over it. SIGHUP or a change of the file reloads what can change live"),
    Option("gpu", str, "auto", "GPU backend: auto (NVML where the NVIDIA driver exists, else simulated), nvml, sim"),
    Option("gpus", str, "all", "GPUs to sample: all, or indices/UUIDs separated by commas; `all` honours "
                               "CUDA_VISIBLE_DEVICES, then NVIDIA_VISIBLE_DEVICES"),
    Option("gpus_file", str, "", "a file where the inference server's container writes the GPU UUIDs it sees (shared "
                                 "emptyDir): the GPUs sampled with --gpus all, followed when it changes"),
    Option("pod", pod_name, "", "this pod as namespace/name (Kubernetes downward API): its GPUs are looked up in the "
                           "kubelet's PodResources API when --gpus is all and no --gpus-file is given"),
    Option("pod_resources_socket", str, "/var/lib/kubelet/pod-resources/kubelet.sock",
           "the kubelet's PodResources socket, read with --pod and in node mode"),
    Option("node_mode", switch, "off", "on: serve every pod of the node; each GPU's energy goes to the requests of "
           "the pods holding it (PodResources), spans naming their pod by k8s.namespace.name and k8s.pod.name"),
    Option("pod_refresh", positive(float), "15", "node mode: seconds between reads of the pods holding each GPU"),
    Option("node_name", str, "", "this node's name (Kubernetes downward API spec.nodeName), the Hostname and "
           "node_name of jouletrace_gpu_info that join with dcgm-exporter and Kepler (empty: the host name)"),
    Option("topology", topology_pair, "", "where this node sits, key=value (rack=r12, row=b, pdu=b12-1): a label of "
           "jouletrace_node_topology_info per key, by which the rules sum nodes into groups; repeat for several",
           multiple=True),
    Option("max_pods", positive(int), "256", "distinct pod labels of the per-pod energy at most; later ones fold "
                                             "into `other`"),
    Option("sim_gpus", positive(int), "1", "number of simulated GPUs (sim backend)"),
    Option("sim_load", sim_load, "wave", "simulated GPU load: a fraction 0-1, or `wave` (idle to full and back every 5 min)"),
    Option("sim_seed", int, "0", "seed of the simulated GPUs' power noise"),
    Option("sim_device_file", str, "", "simulated GPUs: read the first --sim-gpus slots of this device file, "
                                       "written by a simulated engine, instead of simulating load here; the file "
                                       "may appear after the exporter starts"),
    Option("metrics_addr", address, "0.0.0.0:9464", "Prometheus /metrics, /healthz, /readyz listener"),
    Option("otlp_grpc_addr", address, "127.0.0.1:4317", "OTLP/gRPC span listener (`off` disables)"),
    Option("otlp_http_addr", address, "127.0.0.1:4318", "OTLP/HTTP span listener, POST /v1/traces (`off` disables)"),
    Option("tls_cert_file", str, "", "PEM server certificate (with its chain) of the metrics/admin listener and both "
           "OTLP listeners, read at start; empty: plaintext"),
    Option("tls_key_file", str, "", "PEM private key of --tls-cert-file, unencrypted (a mounted secret)"),
    Option("tls_client_ca_file", str, "", "PEM CA certificates: the OTLP listeners require a client certificate "
           "signed by one of them (mutual TLS); empty: no client certificate asked"),
    Option("max_message_bytes", positive(int), str(4 << 20), "largest OTLP message accepted, bytes (after gunzip)"),
    Option("max_pending", positive(int), "100000", "requests held for attribution at most; beyond, senders are told to retry"),
    Option("max_models", positive(int), "50", "distinct model labels at most; later ones fold into `other`"),
    Option("default_model", str, "unknown", "model label for spans that name no model and no service"),
    Option("settle_delay", optional_seconds, "auto", "seconds energy waits for spans before it is split, fixed; auto: "
           "until the requests the engine runs (--engine-metrics) have reported, else a delay adapted to the spans' "
           "age"),
    Option("max_hold", positive(float), "1800", "auto settlement: the longest energy waits for a request still "
                                                "running, seconds; below --retention"),
    Option("retention", positive(float), "2400", "seconds of energy timeline kept per GPU"),
    Option("window", positive(float), "60", "sliding window of the energy-per-token and throughput-per-watt gauges, seconds"),
    Option("electricity_price", optional_rate, "", "electricity price per kWh in --currency: the cost gauges and "
           "totals per model (empty: none, unless --grid-file gives one)"),
    Option("currency", currency_code, "", "ISO 4217 code of --electricity-price's currency (USD, EUR), the "
                                         "`currency` label of the cost series"),
    Option("grid_carbon_intensity", optional_rate, "", "grid carbon intensity, grams CO2e per kWh: the emissions "
           "gauges and totals per model (empty: none, unless --grid-file gives one)"),
    Option("grid_file", str, "", "JSON file of electricity_price, currency and grid_carbon_intensity that an "
           "operator's job rewrites, read again when it changes; its values win over the flags"),
    Option("power_interval", positive(float), "0.1", "power sampling period, seconds (the timeline's resolution)"),
    Option("power_peak_window", positive(float), "30", "seconds over which the GPUs' and the node's 100 ms power "
           "peaks are taken; longer than the scrape interval plus --counter-interval"),
    Option("counter_interval", positive(float), "5", "energy counter read period, seconds (each read costs ~4 ms CPU on H100)"),
    Option("status_interval", positive(float), "1", "clocks/utilization/memory/temperature/GPM period, seconds"),
    Option("engine_metrics", url, "", "inference server metrics URL to scrape (vLLM's /metrics); repeat for several",
           multiple=True),
    Option("engine_interval", positive(float), "1", "engine metrics scrape period, seconds"),
    Option("engine_timeout", positive(float), "2", "seconds an engine metrics scrape may take before it counts as slow"),
    Option("forward_otlp", forward_url, "", "forward every accepted span, with its energy added, to this OTLP "
                                          "endpoint: grpc://host:port (OTLP/gRPC) or http(s)://host:port/v1/traces "
                                          "(OTLP/HTTP protobuf); empty: off"),
    Option("forward_buffer_bytes", positive(int), str(64 << 20), "span messages held for forwarding, bytes at most; "
                                                                 "beyond, the oldest are dropped and counted"),
    Option("forward_timeout", positive(float), "10", "seconds one forwarding call may take before it is retried"),
    Option("forward_retry_max", positive(float), "30", "longest wait between forwarding retries, seconds (it doubles "
                                                      "from 0.5 s); delivery resumes at most this long after the "
                                                      "target returns"),
    Option("shutdown_scrape_wait", float, "15", "after SIGTERM and the final attribution, seconds /metrics keeps "
           "serving for a last scrape (it stops at the first one); keep it below the pod's grace period"),
    Option("powercap_actuation", switch, "off", "on: the admin API (POST/DELETE /api/v1/powercap) may change the "
           "GPUs' power limits, within the guards below"),
    Option("powercap_token_file", str, "", "file of admin bearer tokens, one per line (a mounted Kubernetes "
           "secret); read on every request"),
    Option("powercap_min", non_negative, "0", "lowest power limit actuation may set, W per GPU (0: the device's)"),
    Option("powercap_max", non_negative, "0", "highest power limit actuation may set, W per GPU (0: the device's)"),
    Option("powercap_max_step", positive(float), "100", "largest change of a GPU's power limit in one request, W"),
    Option("powercap_cooldown", non_negative, "60", "seconds between two power-limit changes"),
    Option("powercap_guard_deadline", optional_deadline, "median_itl:100", "latency deadline [basis:]ms whose "
           "violation rolls a power-limit change back (off: never); basis median_itl, p99_tpot or generation_latency"),
    Option("powercap_rollback_windows", positive(int), "3", "consecutive windows (--window) over the guard "
           "deadline that roll a change back"),
    Option("powercap_audit_log", str, "", "file to append a JSON line to per power-limit change (empty: the log)"),
    Option("powercap_deadlines", deadlines, "median_itl:50,median_itl:100,median_itl:250", "latency deadlines "
           "[basis:]ms the power-cap advice answers"),
    Option("powercap_budget", non_negative, "0", "power budget of this exporter's GPUs, W: also advise the limit "
           "that serves the most within it (0: off)"),
    Option("log_level", log_level, "info", "debug, info, warning or error"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per option; values are resolved by ExporterConfig.from_namespace (flag, environment,
    config file, default, in that order)."""
    for opt in OPTIONS:
        if opt.multiple:
            parser.add_argument(opt.flag, dest=opt.name, type=opt.type, action="append", default=argparse.SUPPRESS,
                                help=f"{opt.help} [env {opt.env}, comma-separated]")
        else:  # absent flags are absent from the namespace: a flag's value may be None (`off`)
            parser.add_argument(opt.flag, dest=opt.name, type=opt.type, default=argparse.SUPPRESS,
                                help=f"{opt.help} [env {opt.env}; default {opt.default}]")


def _parse(opt: Option, text: str, where: str):
    try:
        if opt.multiple:
            return tuple(opt.type(v.strip()) for v in text.split(",") if v.strip())
        return opt.type(text)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise ValueError(f"{where}: {opt.name}: {exc}") from None


def read_config_file(path: str) -> dict[str, str]:
    """The options set in a TOML file, by option name (`settle_delay` or `settle-delay`), as text."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path}: {exc}") from None
    known = {o.name for o in OPTIONS} - {"config"}
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ValueError(f"config file {path}: unknown option {key!r}")
        out[name] = ",".join(map(str, value)) if isinstance(value, list) else str(value).lower() \
            if isinstance(value, bool) else str(value)
    return out


@dataclass(frozen=True, slots=True)
class ExporterConfig:
    """Every option of OPTIONS, resolved (from_namespace); the defaults live in OPTIONS only."""

    config: str
    gpu: str
    gpus: str
    gpus_file: str
    pod: str
    pod_resources_socket: str
    node_mode: bool
    pod_refresh: float
    node_name: str
    topology: tuple[tuple[str, str], ...]
    max_pods: int
    sim_gpus: int
    sim_load: str | float
    sim_seed: int
    sim_device_file: str
    metrics_addr: tuple[str, int] | None
    otlp_grpc_addr: tuple[str, int] | None
    otlp_http_addr: tuple[str, int] | None
    tls_cert_file: str
    tls_key_file: str
    tls_client_ca_file: str
    max_message_bytes: int
    max_pending: int
    max_models: int
    default_model: str
    settle_delay: float | None
    max_hold: float
    retention: float
    window: float
    electricity_price: float | None
    currency: str
    grid_carbon_intensity: float | None
    grid_file: str
    power_interval: float
    power_peak_window: float
    counter_interval: float
    status_interval: float
    engine_metrics: tuple[str, ...]
    engine_interval: float
    engine_timeout: float
    log_level: str
    shutdown_scrape_wait: float
    forward_otlp: str
    forward_buffer_bytes: int
    forward_timeout: float
    forward_retry_max: float
    powercap_actuation: bool
    powercap_token_file: str
    powercap_min: float
    powercap_max: float
    powercap_max_step: float
    powercap_cooldown: float
    powercap_guard_deadline: Deadline | None
    powercap_rollback_windows: int
    powercap_audit_log: str
    powercap_deadlines: tuple[Deadline, ...]
    powercap_budget: float

    @property
    def grid(self) -> GridValues:
        """The grid values the flags give (checked by from_namespace)."""
        return GridValues(self.electricity_price, self.currency, self.grid_carbon_intensity)

    @property
    def grid_configured(self) -> bool:
        """Whether cost or emissions are asked for: a price, an intensity or a grid file."""
        return bool(self.grid_file) or self.grid != GridValues()

    @property
    def longest_hold(self) -> float:
        """The longest a moment's energy may wait before it is split (s): the fixed delay or the max hold."""
        return self.max_hold if self.settle_delay is None else self.settle_delay

    RELOADABLE = ("log_level", "engine_metrics", "engine_interval", "engine_timeout", "window")  # applied live

    def changes(self, new: "ExporterConfig") -> tuple[list[str], list[str]]:
        """(options that differ and can change live, options that differ and need a restart)."""
        differ = [f for f in self.__dataclass_fields__ if getattr(self, f) != getattr(new, f)]
        return [f for f in differ if f in self.RELOADABLE], [f for f in differ if f not in self.RELOADABLE]

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace, environ=os.environ) -> "ExporterConfig":
        """Each option from its flag, else its environment variable, else the config file, else its
        default. ValueError with a one-line reason."""
        config = getattr(ns, "config", None) or environ.get("JOULETRACE_CONFIG", "")
        in_file = read_config_file(config) if config else {}
        values = {}
        for opt in OPTIONS:
            if hasattr(ns, opt.name):
                flag = getattr(ns, opt.name)
                values[opt.name] = tuple(flag) if opt.multiple else flag
            elif opt.env in environ:
                values[opt.name] = _parse(opt, environ[opt.env], opt.env)
            elif opt.name in in_file:
                values[opt.name] = _parse(opt, in_file[opt.name], config)
            else:
                values[opt.name] = _parse(opt, opt.default, "default")
        cfg = cls(**values)
        if cfg.gpu not in ("auto", "nvml", "sim"):
            raise ValueError(f"--gpu must be auto, nvml or sim, not {cfg.gpu!r}")
        if cfg.longest_hold >= cfg.retention:
            flag = "--max-hold" if cfg.settle_delay is None else "--settle-delay"
            raise ValueError(f"{flag} ({cfg.longest_hold}s) must be shorter than --retention ({cfg.retention}s)")
        cfg.grid.check()
        if cfg.counter_interval < cfg.power_interval:
            raise ValueError("--counter-interval must not be shorter than --power-interval")
        if cfg.power_peak_window < cfg.power_interval:
            raise ValueError("--power-peak-window must not be shorter than --power-interval")
        keys = [key for key, _ in cfg.topology]
        if len(set(keys)) < len(keys):
            raise ValueError(f"--topology names a key twice: {', '.join(sorted(k for k in set(keys) if keys.count(k) > 1))}")
        return cfg
