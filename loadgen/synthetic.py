"""Seeded synthetic workloads shipped with the package: no download.

Prompt lengths (words) and output lengths (tokens) are log-normal with the task's means
(tasks.py); media are small generated PNGs. Same seed, same requests."""

from __future__ import annotations

import math
import random

from .media import synthetic_frames, synthetic_image
from .requests import Media, PlannedRequest
from .tasks import TaskSpec

WORDS = ("energy joule token batch decode prefill cache memory kernel tensor model request latency "
         "throughput power watt clock bandwidth schedule queue prompt answer explain compare why how "
         "what proof integral function array string python rust graph tree sort search design").split()
SIGMA = 0.7  # log-normal shape of both length distributions


def lognormal_int(rng: random.Random, mean: float, lo: int, hi: int, sigma: float = SIGMA) -> int:
    """A log-normal draw with the given mean, rounded and clipped to [lo, hi]."""
    mu = math.log(max(mean, 1e-9)) - sigma * sigma / 2
    return max(lo, min(hi, round(rng.lognormvariate(mu, sigma))))


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _code(rng: random.Random, words: int) -> tuple[str, str]:
    lines = [f"def f{i}(x):\n    return x * {rng.randrange(100)}  # {_text(rng, 3)}"
             for i in range(max(2, words // 12))]
    cut = rng.randrange(1, len(lines))
    return "\n".join(lines[:cut]) + "\n", "\n" + "\n".join(lines[cut:]) + "\n"


def synthetic_requests(spec: TaskSpec, n: int, seed: int, fim_template: str,
                       prompt_scale: float = 1.0) -> list[PlannedRequest]:
    """`n` requests of task `spec`; max_tokens is the output cap (set later, see plan.py).
    `prompt_scale` multiplies every prompt length (small test models have short contexts)."""
    rng = random.Random(f"{spec.name}:{seed}")
    mean = max(2.0, spec.prompt_mean * prompt_scale)
    out = []
    for i in range(n):
        words = lognormal_int(rng, mean, 2, round(20 * mean))
        r = PlannedRequest(index=i, task=spec.name, api=spec.api, max_tokens=spec.output_cap)
        if spec.output_mean:
            r.expected_output_tokens = lognormal_int(rng, spec.output_mean, 1, spec.output_cap)
        if spec.name == "code":
            prefix, suffix = _code(rng, words)
            r.prompt = fim_template.format(prefix=prefix, suffix=suffix)
        else:
            r.prompt = _text(rng, words)
        if spec.name == "chat" and rng.random() < 0.3:  # a later turn of a conversation
            for _ in range(rng.randint(1, 2)):
                r.history += [{"role": "user", "content": _text(rng, lognormal_int(rng, 40 * prompt_scale, 1, 400))},
                              {"role": "assistant",
                               "content": _text(rng, lognormal_int(rng, 150 * prompt_scale, 1, 1500))}]
        r.images = [Media(synthetic_image(rng.getrandbits(32))) for _ in range(spec.images)]
        if spec.frames:
            r.frames = [Media(f) for f in synthetic_frames(rng.getrandbits(32), spec.frames, 32, 32)]
        out.append(r)
    return out
