"""Token counts of the simulated model: prompts as its tokenizer would count them, outputs as long
as it would choose to answer."""

from __future__ import annotations

import dataclasses
import math
import random

from jouletrace.loadgen.datasets import estimate_tokens
from jouletrace.loadgen.requests import PlannedRequest

MESSAGE_TEMPLATE_TOKENS = 5   # a chat template's role header and end-of-turn tokens per message
PROMPT_START_TOKENS = 5       # begin-of-text and the assistant header that opens the answer


def chat_prompt_tokens(texts: list[str]) -> int:
    """Prompt tokens of a chat whose messages hold `texts`, with the chat template's tokens."""
    return PROMPT_START_TOKENS + sum(estimate_tokens(t) + MESSAGE_TEMPLATE_TOKENS for t in texts)


def completion_prompt_tokens(text: str) -> int:
    """Prompt tokens of a raw completion prompt (begin-of-text included)."""
    return 1 + estimate_tokens(text)


def prompt_tokens(r: PlannedRequest) -> int:
    """Prompt tokens the engine counts for a planned request."""
    if r.api == "completion":
        return completion_prompt_tokens(r.prompt)
    return chat_prompt_tokens([str(m.get("content", "")) for m in r.history] + [r.prompt])


@dataclasses.dataclass(frozen=True)
class OutputLengths:
    """How long the simulated model answers when nothing stops it first: log-normal, tokens."""

    mean: float = 397.0
    sigma: float = 0.9
    source: str = ("mean: Llama-3.1-8B-Instruct on text conversation in the ML.ENERGY study "
                   "(J/response / J/token of its reference table); shape assumed")

    def draw(self, key: str) -> int:
        """The natural length of request `key` (the same for the same key)."""
        rng = random.Random(key)
        mu = math.log(max(self.mean, 1.0)) - self.sigma * self.sigma / 2
        return max(1, round(rng.lognormvariate(mu, self.sigma)))
