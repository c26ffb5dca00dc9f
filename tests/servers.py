"""Real processes for integration tests: the exporter, the simulated engine and a Prometheus server, on loopback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0, context=None) -> tuple[int, str]:
    """(status, body); status 0 when no answer came. `context`: the client's ssl.SSLContext for https."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def samples(text: str) -> list:
    from prometheus_client.parser import text_string_to_metric_families

    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def sum_samples(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` (counters: with or without `_total`) whose labels match."""
    names = {name, name.removesuffix("_total"), name + "_total"}
    return sum(s.value for s in samples(text)
               if s.name in names and all(s.labels.get(k) == v for k, v in labels.items()))


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{pid}/statm") as f:
        rss_pages = int(f.read().split()[1])
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"), rss_pages * os.sysconf("SC_PAGE_SIZE")


def wait_for(predicate, timeout_s: float, what: str, period_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


class ExporterProcess:
    """`jouletrace exporter` in a subprocess on free loopback ports."""

    def __init__(self, *args: str, env: dict | None = None, ports: tuple[int, int, int] | None = None,
                 tls=None, ready: bool = True):
        """`ports`: metrics, OTLP/gRPC and OTLP/HTTP (a stopped exporter's `ports`, to restart it on
        them); free ones by default. `tls`: the ssl.SSLContext to reach an exporter serving https.
        `ready`: wait until /readyz answers 200; else until /healthz does."""
        self.tls = tls
        self.metrics_port, self.grpc_port, self.http_port = ports or (free_port(), free_port(), free_port())
        cmd = [sys.executable, "-m", "jouletrace", "exporter",
               "--metrics-addr", f"127.0.0.1:{self.metrics_port}",
               "--otlp-grpc-addr", f"127.0.0.1:{self.grpc_port}",
               "--otlp-http-addr", f"127.0.0.1:{self.http_port}", "--shutdown-scrape-wait", "0", *args]
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        try:
            route = "/readyz" if ready else "/healthz"
            wait_for(lambda: self.proc.poll() is not None or http_get(self.url(route), context=tls)[0] == 200, 60,
                     f"exporter {route}")  # a busy 2-core machine: start-up imports alone can take seconds
        except TimeoutError as e:
            self.stop()
            raise TimeoutError(f"{e}; exporter output:\n{self.output()[-3000:]}") from None
        if self.proc.poll() is not None:
            raise RuntimeError(f"exporter exited {self.proc.returncode}:\n{self.output()}")

    @property
    def ports(self) -> tuple[int, int, int]:
        return self.metrics_port, self.grpc_port, self.http_port

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.metrics_port}{path}"

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class SimEngine:
    """`jouletrace simulate serve` in a subprocess (its output in `proc.stdout`)."""

    def __init__(self, *args: str, port: int | None = None, env: dict | None = None):
        self.port = port or free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "jouletrace", "simulate", "serve", "--port",
                                      str(self.port), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, **(env or {})})
        wait_for(lambda: self.proc.poll() is not None or http_get(self.url("/health"))[0] == 200, 30,
                 "the simulated engine")
        assert self.proc.poll() is None, self.proc.stdout.read()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # a busy machine: it is the engine's last seconds, not the test's
            self.proc.kill()
            self.proc.wait(10)


def backfill(openmetrics: str, data: str) -> None:
    """TSDB blocks in `data` from the OpenMetrics file `openmetrics` (`promtool tsdb
    create-blocks-from openmetrics`, Debian's prometheus package)."""
    binary = shutil.which("promtool")
    if binary is None:
        raise RuntimeError("promtool is not installed: the README's test command installs it (apt prometheus)")
    done = subprocess.run([binary, "tsdb", "create-blocks-from", "openmetrics", openmetrics, data],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"promtool backfill failed: {done.stderr or done.stdout}")


class PrometheusProcess:
    """A real Prometheus server (Debian package) scraping `targets` every `interval`; with `data`,
    serving that TSDB directory (e.g. `backfill`ed) instead of a fresh one."""

    def __init__(self, targets: list[str], interval: str = "1s", rule_files: list[str] | None = None,
                 labels: dict[str, str] | None = None, data: str | None = None):
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: the README's test command installs it (apt)")
        self.dir = tempfile.mkdtemp(prefix="prom-")
        self.port = free_port()
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [{"job_name": "jouletrace",
                                "static_configs": [{"targets": targets, "labels": labels or {}}]}],
        }
        if rule_files:
            config["rule_files"] = rule_files
        path = os.path.join(self.dir, "prometheus.yml")
        with open(path, "w") as f:
            json.dump(config, f)  # JSON is YAML
        self.log = open(os.path.join(self.dir, "log"), "w+")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={data or self.dir + '/data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: http_get(f"http://127.0.0.1:{self.port}/-/ready")[0] == 200, 60, "prometheus readiness")

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        """The instant query's result at Unix time `at` (now by default)."""
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(params)
        status, body = http_get(url)
        if status != 200:
            raise RuntimeError(f"query {promql!r} answered {status}: {body}")
        return json.loads(body)["data"]["result"]

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


async def serve_app(app) -> tuple:
    """An aiohttp application served on a free loopback port from the running event loop: (runner, port)."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


class BackgroundApp:
    """An aiohttp application served on a free loopback port from a thread of its own (stand-ins)."""

    def __init__(self, app):
        import asyncio
        import threading

        from aiohttp import web

        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve():
            asyncio.set_event_loop(self.loop)
            self.runner = web.AppRunner(app)
            self.loop.run_until_complete(self.runner.setup())
            self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("stand-in server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
