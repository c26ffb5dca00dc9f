"""The request list of a run: synthetic or from a dataset, with max_tokens set per the sampling rules."""

from __future__ import annotations

import dataclasses

from .requests import PlannedRequest
from .synthetic import synthetic_requests
from .tasks import TaskSpec

DEFAULT_FIM_TEMPLATE = "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"


@dataclasses.dataclass(frozen=True)
class Sampling:
    """What every LLM request asks for: the study's temperature 0.8 and top_p 0.95."""
    temperature: float = 0.8
    top_p: float = 0.95
    ignore_eos: bool = False     # generate exactly max_tokens
    max_tokens: int | None = None  # a cap below the task's, tokens


def plan(spec: TaskSpec, n: int, seed: int, sampling: Sampling,
         source: list[PlannedRequest] | None = None,
         fim_template: str = DEFAULT_FIM_TEMPLATE, prompt_scale: float = 1.0) -> list[PlannedRequest]:
    """`n` requests: the first `n` of `source` (repeated in order where it has fewer), else
    synthetic ones. max_tokens is the task's cap; with ignore_eos it is the request's expected
    output length where known, so that outputs follow the workload's length distribution;
    `sampling.max_tokens` caps both."""
    if source is None:
        base = synthetic_requests(spec, n, seed, fim_template, prompt_scale)
    else:
        base = [dataclasses.replace(source[i % len(source)], index=i) for i in range(n)]
        period = (max(r.arrival_s or 0.0 for r in source) + 1.0) if source[0].arrival_s is not None else 0.0
        for i, r in enumerate(base):  # a repeated trace continues after its end
            if r.arrival_s is not None:
                r.arrival_s += period * (i // len(source))
    for r in base:
        cap = spec.output_cap
        if sampling.ignore_eos and r.expected_output_tokens:
            cap = min(cap, r.expected_output_tokens)
        if sampling.max_tokens:
            cap = min(cap, sampling.max_tokens)
        r.max_tokens = cap
    return base
