"""The container image, built and run for real. Debian's buildah (daemonless: vfs storage, chroot
isolation) builds the Dockerfile on a base root filesystem that Debian's debootstrap makes and that
is imported locally, since no container registry is reachable here (`--build-arg PYTHON_IMAGE`).
Nor is a package index reachable from inside a build, so the wheels are built outside, for the
base's Python, and taken from the build context (`--build-arg WHEELS=prebuilt`). In the image:
`jouletrace --help`, the C decoder, every subcommand working or naming its extra in one line, and
the exporter running as UID 10001, serving /metrics, taking an OTLP span and stopping cleanly on
SIGTERM. The base (its tarball and the image imported from it) is kept under .cache/image/ between
runs. Needs root and `scripts/setup.sh --test`'s Debian packages: it fails, saying so, without them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import free_port, http_get, sum_samples, wait_for

from jouletrace import __version__
from jouletrace.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "image"
SUITES = {(3, 11): "bookworm", (3, 13): "trixie"}  # Debian's release whose python3 is the wheels' Python
BASE_PACKAGES = "python3,python3-pip,python-is-python3"  # `python` and `pip`, as the Python image has them
MIRROR = "http://deb.debian.org/debian"
IMAGE = "localhost/jouletrace:test"
UID = 10001


def tool(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        pytest.fail(f"{name} is not installed: `scripts/setup.sh --test` (the README's test command) installs it")
    return found


def run(*cmd: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(cmd[:6])} … exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def buildah(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run(tool("buildah"), "--storage-driver", "vfs", "--root", str(CACHE / "storage"),
               "--runroot", str(CACHE / "run"), *args, **kwargs)


def base_image() -> str:
    """The base: debootstrap's minimal Debian with Python, made once and kept (tarball and image)."""
    suite = SUITES.get(sys.version_info[:2])
    if suite is None:
        pytest.fail(f"no Debian release has Python {sys.version_info.major}.{sys.version_info.minor}, the "
                    f"wheels' Python: run the tests with one of {sorted(SUITES)}")
    key = hashlib.sha256(f"{suite} {BASE_PACKAGES} {MIRROR}".encode()).hexdigest()[:12]
    name = f"localhost/jouletrace-base:{suite}-{key}"
    if buildah("images", "--quiet", name, check=False).returncode == 0:
        return name
    tarball = CACHE / f"base-{suite}-{key}.tar"
    if not tarball.exists():
        rootfs = CACHE / f"rootfs-{suite}-{key}"
        shutil.rmtree(rootfs, ignore_errors=True)
        run(tool("debootstrap"), "--variant=minbase", f"--include={BASE_PACKAGES}", suite, str(rootfs), MIRROR)
        run("tar", "--create", "--file", f"{tarball}.part", "--directory", str(rootfs), ".")
        os.replace(f"{tarball}.part", tarball)
        shutil.rmtree(rootfs)
    container = buildah("from", "scratch").stdout.strip()
    try:
        run("tar", "--extract", "--file", str(tarball), "--directory", buildah("mount", container).stdout.strip())
        buildah("umount", container)
        # Debian's pip installs into the system only when told (PEP 668); the Python image's does
        buildah("config", "--env", "PIP_BREAK_SYSTEM_PACKAGES=1", container)
        buildah("commit", "--quiet", container, name)
    finally:
        buildah("rm", container, check=False)
    return name


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("building the image needs root (debootstrap, buildah's vfs storage): run the tests as root")
    context = tmp_path_factory.mktemp("context")
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(context / "wheels"), str(ROOT))
    base = base_image()
    buildah("build", "--isolation", "chroot", "--format", "docker", "--build-arg", f"PYTHON_IMAGE={base}",
            "--build-arg", "WHEELS=prebuilt", "--tag", IMAGE, "--file", str(ROOT / "Dockerfile"), str(context))
    yield lambda: buildah("from", IMAGE).stdout.strip()  # a new container of the image
    # the storage is this test's own: every container goes (the build leaves one for its `wheels`
    # stage), then the image and the stages' images; the base stays
    buildah("rm", "--all", check=False)
    buildah("rmi", IMAGE, check=False)
    buildah("rmi", "--prune", check=False)


BUILDAH_LINES = ("subprocess exited ", "Error: exit status ")  # what `buildah run` adds to a failed command's stderr


def in_image(container: str, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`cmd` run in the container; its stderr without buildah's own lines."""
    done = buildah("run", "--isolation", "chroot", "--workingdir", "/tmp", container, "--", *cmd, timeout=timeout,
                   check=False)
    done.stderr = "".join(line for line in done.stderr.splitlines(keepends=True) if not line.startswith(BUILDAH_LINES))
    return done


def test_the_image_keeps_its_healthcheck_user_and_entrypoint(image):
    config = json.loads(buildah("inspect", "--type", "image", IMAGE).stdout)
    docker = config["Docker"]["config"]
    assert "/healthz" in " ".join(docker["Healthcheck"]["Test"])  # the Docker format keeps it; OCI drops it
    assert docker["User"] == str(UID) and docker["Entrypoint"] == ["jouletrace", "exporter"]
    assert docker["Labels"]["org.opencontainers.image.version"] == __version__


def test_help_and_the_c_decoder(image):
    container = image()
    done = in_image(container, "jouletrace", "--help")
    assert done.returncode == 0 and "exporter" in done.stdout, done.stderr
    done = in_image(container, "python", "-c", "import jouletrace.exporter.intake._otlpwire as m; print(m.__file__)")
    assert done.returncode == 0 and done.stdout.strip().endswith(".so"), done.stderr
    assert in_image(container, "id", "-u").stdout.strip() == str(UID)


def leaf_commands() -> list[list[str]]:
    """Every subcommand of `jouletrace`, as argv."""
    def leaves(parser, prefix):
        subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs:
            return [prefix]
        return [leaf for name, sub in subs[0].choices.items() for leaf in leaves(sub, [*prefix, name])]
    return leaves(build_parser(), [])


def test_every_subcommand_works_or_names_its_extra(image):
    container = image()
    commands = leaf_commands()
    assert ["simulate", "plan"] in commands and ["exporter"] in commands
    for argv in commands:
        done = in_image(container, "jouletrace", *argv, "--help")
        assert done.returncode == 0 and done.stdout.startswith("usage: jouletrace"), (argv, done.stderr)
    # the image installs no extra: these say which they need, in one line
    for argv, extra in ((["simulate", "plan"], "loadgen"), (["loadgen", "plot", "/tmp"], "loadgen"),
                        (["loadgen", "sweep", "--batch-sizes", "1"], "loadgen"), (["run"], "loadgen"),
                        (["grafana", "build", "--out", "/tmp/dashboards"], "grafana-build"),
                        (["grafana", "push", "--url", "http://127.0.0.1:9"], "grafana")):
        done = in_image(container, "jouletrace", *argv)
        lines = done.stderr.splitlines()
        assert done.returncode == 2 and len(lines) == 1 and f"pip install 'jouletrace[{extra}]'" in lines[0], \
            (argv, done.stdout, done.stderr)


def descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += [int(child), *descendants(int(child))]
    return out


def exporter_process(runner: subprocess.Popen) -> int:
    """The exporter's own process under `buildah run` (what a container runtime sends SIGTERM to)."""
    for pid in descendants(runner.pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if cmdline[0].endswith(b"python3") and b"/usr/local/bin/jouletrace" in cmdline:
            return pid
    return 0


def send_span(grpc_port: int) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "llama"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"http://127.0.0.1:{grpc_port}",
                                                                     insecure=True)))
    span = provider.get_tracer("test").start_span("llm_request", attributes={
        "gen_ai.usage.prompt_tokens": 10, "gen_ai.usage.completion_tokens": 20})
    time.sleep(0.5)
    span.end()
    provider.shutdown()


def test_the_exporter_runs_as_non_root_takes_a_span_and_stops_on_sigterm(image, tmp_path):
    container = image()
    metrics, grpc_port, http_port = free_port(), free_port(), free_port()
    log = open(tmp_path / "exporter.log", "w+")
    runner = subprocess.Popen(
        [tool("buildah"), "--storage-driver", "vfs", "--root", str(CACHE / "storage"), "--runroot", str(CACHE / "run"),
         "run", "--isolation", "chroot", container, "--", "jouletrace", "exporter", "--gpu", "sim",
         "--metrics-addr", f"127.0.0.1:{metrics}", "--otlp-grpc-addr", f"127.0.0.1:{grpc_port}",
         "--otlp-http-addr", f"127.0.0.1:{http_port}", "--shutdown-scrape-wait", "0"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: runner.poll() is not None or http_get(f"http://127.0.0.1:{metrics}/readyz")[0] == 200, 60,
                 "the exporter in the image")
        assert runner.poll() is None, log.read()
        pid = exporter_process(runner)
        assert pid, "no exporter process under `buildah run`"
        status = Path(f"/proc/{pid}/status").read_text()
        assert next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:] == [str(UID)] * 4
        send_span(grpc_port)
        text = wait_for(lambda: (t := http_get(f"http://127.0.0.1:{metrics}/metrics")[1])
                        and sum_samples(t, "jouletrace_spans_received_total") == 1 and t, 15, "the span")
        assert sum_samples(text, "jouletrace_gpu_energy_joules_total") >= 0
        os.kill(pid, signal.SIGTERM)
        assert runner.wait(30) == 0
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    log.seek(0)
    output = log.read()
    assert "stopping" in output and "final attribution done: 0 requests still without energy" in output, output
    assert "Traceback" not in output, output
