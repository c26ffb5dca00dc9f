"""The `jouletrace` command."""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib.metadata
import logging
import re
import sys

from . import __version__


def _exporter(args: argparse.Namespace) -> int:
    from jouletrace.exporter.config import ExporterConfig
    from jouletrace.exporter.daemon import serve
    from jouletrace.exporter.gpu.device import BackendUnavailable

    try:
        cfg = ExporterConfig.from_namespace(args)
    except ValueError as exc:
        print(f"jouletrace exporter: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(cfg, reread=lambda: ExporterConfig.from_namespace(args)))
    except BackendUnavailable as exc:
        print(f"jouletrace exporter: no GPU driver for --gpu {cfg.gpu} ({exc}): run it where the NVIDIA driver "
              "is installed (in Kubernetes, with the NVIDIA runtime class), or use --gpu sim for simulated GPUs",
              file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, OSError) as exc:
        hint = ("; another process listens there: stop it, or move this exporter (--metrics-addr, --otlp-grpc-addr, "
                "--otlp-http-addr)") if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE else ""
        logging.getLogger("jouletrace").error("cannot run: %s%s", exc, hint)
        return 1
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, unless it has none (None, False) or the help tells it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Help shows the defaults; bad usage is one line that names the help to read, exit code 2
    (subcommands' parsers too)."""

    def __init__(self, *args, formatter_class=_HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.__dict__.setdefault("_subcommand", self.prog)  # the innermost parser returns first
        return namespace, extras

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        prog = namespace.__dict__.pop("_subcommand")
        if extras:  # named by the subcommand that was given them, whose help lists what it takes
            self.exit(2, f"{prog}: unrecognized arguments: {' '.join(extras)} (see {prog} --help)\n")
        return namespace

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from jouletrace.exporter.config import add_arguments

    parser = _Parser(prog="jouletrace", description="Where an inference fleet's joules go.")
    parser.add_argument("--version", action="version", version=f"jouletrace {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from jouletrace.run import add_arguments as add_run_arguments

    run = sub.add_parser("run", help="the whole pipeline: exporter, engine (simulated by default) and load generator",
                         description="Runs a jouletrace exporter, the simulated engine on a simulated H100 (or "
                                     "measures --engine-url on real GPUs) and the load generator's chat workload "
                                     "at a few batch sizes; shows live J/token and writes results and plots.")
    add_run_arguments(run)
    from jouletrace.diagnose import add_arguments as add_diagnose_arguments

    diagnose = sub.add_parser("diagnose", help="ask a running exporter where the joules go and what to change",
                              description="Reads a running exporter's /diagnose: the latent factors (batch, queue, "
                                          "KV cache, GPU utilization, power) over a window and ranked findings, "
                                          "each with its evidence, expected effect and action.")
    add_diagnose_arguments(diagnose)
    exporter = sub.add_parser("exporter", help="run the daemon: sample GPU energy, take OTLP spans, serve /metrics",
                              description="Samples GPU energy, receives OTLP spans, attributes energy to requests "
                                          "and serves Prometheus metrics. Every option can also be set by the "
                                          "environment variable named in its help.")
    add_arguments(exporter)
    exporter.set_defaults(func=_exporter)
    from jouletrace.loadgen.cli import add_arguments as add_loadgen_arguments

    loadgen = sub.add_parser("loadgen", help="replay the ML.ENERGY workloads against a server, report time and energy",
                             description="Load generator: replays the ML.ENERGY study's workloads against an "
                                         "OpenAI-compatible server and reports time and energy per configuration.")
    add_loadgen_arguments(loadgen)
    from jouletrace.simulator.cli import add_arguments as add_simulate_arguments

    simulate = sub.add_parser("simulate", help="a simulated vLLM engine and GPU; planning by simulation",
                              description="The calibrated simulator: `serve` runs an engine that behaves like vLLM "
                                          "on a simulated GPU; `plan` simulates batch sizes and power limits.")
    add_simulate_arguments(simulate)
    from jouletrace.serving.cli import add_arguments as add_serve_arguments

    serve = sub.add_parser("serve", help="an inference server instrumented for jouletrace (diffusion pipelines)",
                           description="Inference servers that send one OpenTelemetry span per request, with the "
                                       "attributes jouletrace attributes energy by: `diffusion` serves a diffusers "
                                       "pipeline behind the OpenAI images or video-jobs API.")
    add_serve_arguments(serve)
    from jouletrace.grafana.cli import add_arguments as add_grafana_arguments

    grafana = sub.add_parser("grafana", help="Grafana dashboards: regenerate them from code, push them to a Grafana",
                             description="The jouletrace dashboards: `build` regenerates their JSON and provisioning "
                                         "files from code; `push` creates or updates them in a Grafana.")
    add_grafana_arguments(grafana)
    from jouletrace.budget.cli import add_arguments as add_plan_arguments

    plan = sub.add_parser("plan", help="plan from measured data: `budget`, servers and caps within a power budget",
                          description="Planning from what the exporters measured: `budget` answers how many "
                                      "servers a rack's, row's or PDU's power budget holds, and which per-GPU caps "
                                      "keep it, from the power the group drew together.")
    add_plan_arguments(plan)
    return parser


def optional_extra(module: str) -> str | None:
    """The extra of jouletrace's package (pyproject's optional dependencies, `test` aside) that
    brings top-level module `module` (a distribution named as the module, or `py` + it: pyyaml)."""
    names = {module.lower().replace("_", "-"), "py" + module.lower()}
    for requirement in importlib.metadata.requires("jouletrace") or ():
        found = re.match(r"([\w.-]+).*;\s*extra\s*==\s*['\"]([\w-]+)['\"]", requirement)
        if found and found.group(1).lower() in names and found.group(2) != "test":
            return found.group(2)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:  # an optional dependency: one line, naming its extra
        module = (exc.name or "").partition(".")[0]
        extra = optional_extra(module) if module else None
        if extra is None:
            raise
        print(f"jouletrace {args.command}: needs {module}: pip install 'jouletrace[{extra}]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
