"""One planned request: what the client sends, independent of when."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Media:
    """An image or a clip, as encoded bytes and a MIME type (`image/png`, `image/jpeg`)."""
    data: bytes
    mime: str = "image/png"


@dataclasses.dataclass
class PlannedRequest:
    index: int
    task: str
    api: str                                   # see TaskSpec.api
    max_tokens: int                            # sent as max_tokens (LLM tasks)
    prompt: str = ""                           # completion prompt, or the last user turn
    history: list[dict] = dataclasses.field(default_factory=list)   # earlier chat messages
    images: list[Media] = dataclasses.field(default_factory=list)
    frames: list[Media] = dataclasses.field(default_factory=list)   # one clip's frames
    expected_output_tokens: int | None = None  # the dataset's output length, tokens
    arrival_s: float | None = None             # trace replay: seconds after the first request

    @property
    def prompt_words(self) -> int:
        """Words in the prompt and history (a tokenizer-free size estimate)."""
        return len(self.prompt.split()) + sum(len(str(m.get("content", "")).split()) for m in self.history)
