"""The study's tasks: which API each uses, its output cap and the length statistics of the
synthetic defaults.

Output means for chat (717 tokens) and problem solving (6,988) are the ML.ENERGY study's
(B200 minimum-energy configurations); the other lengths are assumptions of the synthetic
defaults, stated in `source` and written into every result."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    api: str                  # "chat" (/v1/chat/completions), "completion" (/v1/completions), "image", "video"
    output_cap: int           # max_tokens sent when the output length is the model's own, tokens
    output_mean: int          # mean output length of the synthetic default, tokens
    prompt_mean: int          # mean prompt length of the synthetic default, words
    images: int = 0           # images per request
    frames: int = 0           # video frames per request
    source: str = ""          # where output_mean and prompt_mean come from


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("chat", "chat", 4096, 717, 40, source="output mean: study (text conversation); prompt: LMSYS-Chat-1M's "
             "69.5 tokens per prompt (Zheng et al., 2023), ~40 words"),
    TaskSpec("reasoning", "chat", 32768, 6988, 250,
             source="output mean: study (problem solving, GPQA); prompt: assumed"),
    TaskSpec("code", "completion", 2048, 64, 600, source="assumed (fill-in-the-middle completions are short)"),
    TaskSpec("image-chat", "chat", 4096, 400, 40, images=1, source="assumed"),
    TaskSpec("video-chat", "chat", 4096, 300, 30, frames=32, source="assumed; 32 frames as in the study"),
    TaskSpec("text-to-image", "image", 0, 0, 40, source="assumed"),
    TaskSpec("text-to-video", "video", 0, 0, 40, source="assumed"),
    TaskSpec("image-to-video", "video", 0, 0, 30, images=1, source="assumed"),
)}

ALIASES = {
    "text-conversation": "chat", "conversation": "chat",
    "problem-solving": "reasoning", "gpqa": "reasoning",
    "code-completion": "code", "fim": "code",
    "image": "text-to-image", "video": "text-to-video",
}


def task(name: str) -> TaskSpec:
    """The task called `name` (or one of its aliases); ValueError naming the known ones."""
    key = ALIASES.get(name, name)
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[key]
