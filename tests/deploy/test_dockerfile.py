"""The container image's recipe, as text (tests/deploy/test_image.py builds and runs it): it copies
every package directory the wheel is built from, installs only that wheel, runs as a non-root user,
its entrypoint is the package's own console script, and by default it builds the wheels itself."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def stages() -> list[str]:
    return re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]


def test_the_build_stage_copies_every_package_directory():
    copied = {m.group(1).rstrip("/") for m in re.finditer(r"^COPY (?!--from)(\S+) \./\S*$", stages()[0], re.M)}
    # the import root, and the top-level folders its links stand for
    root = ROOT / "jouletrace"
    package_dirs = {"jouletrace"} | {str(p.resolve().relative_to(ROOT)) for p in root.iterdir() if p.is_symlink()}
    assert {"exporter", "loadgen", "simulator", "grafana"} <= package_dirs
    assert package_dirs <= copied, f"not copied into the image: {package_dirs - copied}"
    assert {"pyproject.toml", "README.md"} <= {f for line in re.findall(r"^COPY (.+) \./$", stages()[0], re.M)
                                                for f in line.split()}


def test_the_runtime_stage_installs_the_wheel_only_and_runs_as_non_root():
    runtime = stages()[-1]
    assert "gcc" not in runtime and "apt-get install" not in runtime  # no compilers in the final image
    assert re.search(r"pip install --no-cache-dir --no-index /wheels/\*\.whl", runtime)
    user = re.search(r"^USER (\S+)$", runtime, re.M)
    assert user and user.group(1) not in ("root", "0")
    assert "vllm" not in DOCKERFILE.lower()  # the sidecar image stays small
    version = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', runtime)
    assert version and version.group(1) == PYPROJECT["project"]["version"]


def test_the_entrypoint_is_the_packages_console_script_and_the_healthcheck_its_route():
    entry = re.search(r'^ENTRYPOINT \["(\S+)", "(\S+)"\]$', DOCKERFILE, re.M)
    assert entry and entry.group(1) in PYPROJECT["project"]["scripts"] and entry.group(2) == "exporter"
    assert "/healthz" in re.search(r"^HEALTHCHECK .*$", DOCKERFILE, re.M).group(0)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+\.\d+-slim-\w+$", DOCKERFILE, re.M), \
        "the base image is pinned to a patch release"


def test_the_wheels_come_from_the_build_stage_unless_prebuilt_ones_are_asked_for():
    assert re.search(r"^ARG WHEELS=build$", DOCKERFILE, re.M)
    assert re.search(r"^FROM scratch AS prebuilt\nCOPY wheels/ /wheels/$", DOCKERFILE, re.M)
    assert re.search(r"^FROM \$\{WHEELS\} AS wheels$", DOCKERFILE, re.M)
    assert "COPY --from=wheels /wheels /wheels" in stages()[-1]
