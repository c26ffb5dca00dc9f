"""What the serving tests run and check: `jouletrace loadgen run` as a user runs it, and the exporter's
images, videos and energy per item once every request is attributed."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from servers import http_get, sum_samples, wait_for


def loadgen(*args: str) -> dict:
    """The result of `jouletrace loadgen run --quiet ARGS` (which must succeed)."""
    done = subprocess.run([sys.executable, "-m", "jouletrace", "loadgen", "run", "--quiet", *args],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    with open(done.stdout.strip().splitlines()[-1]) as f:
        return json.load(f)


def attributed(exporter, images: tuple[str, int], *videos: tuple[str, int]) -> str:
    """The exporter's /metrics once it counted `images` (model, count) and each of `videos` and settled
    past the moment of the call; checks that each model's energy per item is its attributed energy / its items."""
    called = time.time()

    def counted():
        text = http_get(exporter.url("/metrics"))[1]
        done = (sum_samples(text, "jouletrace_model_images_total", model=images[0]) == images[1]
                and all(sum_samples(text, "jouletrace_model_videos_total", model=m) == n for m, n in videos)
                and sum_samples(text, "jouletrace_gpu_finalized_timestamp_seconds") > called)
        return text if done else None

    text = wait_for(counted, 60, f"{images[1]} images and videos {videos} attributed")
    for (model, n), kind in ((images, "image"), *((v, "video") for v in videos)):
        energy = sum_samples(text, "jouletrace_model_energy_joules_total", model=model)
        assert energy > 0
        assert sum_samples(text, f"jouletrace_model_energy_per_{kind}_joules", model=model) == pytest.approx(energy / n,
                                                                                                          rel=0.02)
        assert sum_samples(text, "jouletrace_model_requests_total", model=model) >= 1
    return text
