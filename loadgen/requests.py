"""One planned request: what the client sends, independent of when."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Media:
    """An image, a video frame or a video file, as encoded bytes and a MIME type (`image/png`,
    `image/jpeg`, `video/mp4`)."""
    data: bytes
    mime: str = "image/png"


DIFFUSION_APIS = ("openai", "xdit")


@dataclasses.dataclass(frozen=True)
class DiffusionParams:
    """What every diffusion request asks for, and how the client waits for a video job.

    `api` "openai": `POST /v1/images/generations` for images; for videos the asynchronous job API,
    `POST /v1/videos` then `GET /v1/videos/{id}` every `poll_interval_s` s until `completed` or
    `failed` (and `GET /v1/videos/{id}/content` with `fetch_content`). `api` "xdit": xDiT's HTTP
    service, `POST /generate` (images) or `POST /generate_video` (text-to-video)."""
    api: str = "openai"
    size: str = "1024x1024"          # WxH, pixels
    n: int = 1                       # images per request (OpenAI images API)
    seconds: str = "4"               # clip length, s (OpenAI video API; sent as a string, as OpenAI's)
    steps: int | None = None         # num_inference_steps; None: the server's default
    num_frames: int | None = None    # xDiT video frames; None: the server's default
    seed: int | None = None          # request i sends seed + i; None: the server's default
    poll_interval_s: float = 1.0     # video job status polls
    fetch_content: bool = False      # download each finished video once (not timed)

    def __post_init__(self):
        if self.api not in DIFFUSION_APIS:
            raise ValueError(f"diffusion API {self.api!r}: use one of {', '.join(DIFFUSION_APIS)}")
        w, sep, h = self.size.partition("x")
        if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
            raise ValueError(f"size {self.size!r}: use WIDTHxHEIGHT, e.g. 1024x1024")
        if self.n < 1 or (self.steps is not None and self.steps < 1) or self.poll_interval_s <= 0:
            raise ValueError("n and steps must be >= 1 and the poll interval > 0")

    @property
    def width(self) -> int:
        return int(self.size.partition("x")[0])

    @property
    def height(self) -> int:
        return int(self.size.partition("x")[2])


@dataclasses.dataclass
class PlannedRequest:
    index: int
    task: str
    api: str                                   # see TaskSpec.api
    max_tokens: int                            # sent as max_tokens (LLM tasks)
    prompt: str = ""                           # completion prompt, or the last user turn
    history: list[dict] = dataclasses.field(default_factory=list)   # earlier chat messages
    images: list[Media] = dataclasses.field(default_factory=list)
    frames: list[Media] = dataclasses.field(default_factory=list)   # one clip: frames, or one video file
    expected_output_tokens: int | None = None  # the dataset's output length, tokens
    arrival_s: float | None = None             # trace replay: seconds after the first request
    diffusion: DiffusionParams | None = None   # image and video tasks: the generation parameters

    @property
    def prompt_words(self) -> int:
        """Words in the prompt and history (a tokenizer-free size estimate)."""
        return len(self.prompt.split()) + sum(len(str(m.get("content", "")).split()) for m in self.history)
