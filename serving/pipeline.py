"""A `diffusers` pipeline as the diffusion server runs it: loaded once, called once per batch, its
outputs turned into files.

`torch` and `diffusers` (pyproject's `diffusion` extra) are imported on first use, so the rest of
jouletrace runs without them; a missing one raises ModuleNotFoundError naming it, which the
`jouletrace` command turns into one line naming the extra.

Sizes are pixels; `fps` is frames per second of a clip."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import io
import os
import pathlib

import numpy as np

DTYPES = ("bfloat16", "float16", "float32")
KINDS = {"image": "image", "video": "video", "image-to-video": "video"}  # a server's kind -> its output type


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the requests of one batch share: the pipeline runs them in one call."""

    kind: str                 # the output: "image" or "video"
    width: int
    height: int
    steps: int | None         # num_inference_steps; None: the pipeline's default
    per_prompt: int = 1       # images per prompt (the images API's `n`); 1 for videos
    frames: int | None = None  # frames per video


def clip_frames(seconds: float, fps: float) -> int:
    """Frames of a clip of `seconds` s at `fps`: both ends included (6 s at 8 fps: CogVideoX's 49)."""
    return round(seconds * fps) + 1


def load(spec: str, device: str, dtype: str):
    """The pipeline `spec` names, on `device`, progress bars off. `spec` is a directory that
    `diffusers.DiffusionPipeline.from_pretrained` reads, or `FILE.py:FUNCTION` / `MODULE:FUNCTION`,
    a function called with `device=` and `dtype=` (a torch dtype) that returns a pipeline on that
    device: how a pipeline with random weights is built from configs (tests, benchmarks)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    import torch

    torch_dtype = getattr(torch, dtype)
    target, sep, function = spec.rpartition(":")
    if sep and not os.path.isdir(spec) and function.isidentifier():
        pipe = getattr(_module(target), function)(device=device, dtype=torch_dtype)
    else:
        from diffusers import DiffusionPipeline

        if not os.path.isdir(spec):
            raise ValueError(f"pipeline {spec!r}: not a directory, nor FILE.py:FUNCTION or MODULE:FUNCTION")
        pipe = DiffusionPipeline.from_pretrained(spec, torch_dtype=torch_dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _module(target: str):
    if not target.endswith(".py"):
        return importlib.import_module(target)
    path = pathlib.Path(target).resolve()
    if not path.is_file():
        raise ValueError(f"pipeline factory {target!r}: no such file")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def takes_image(pipe) -> bool:
    """Whether `pipe` generates from an input image: its `__call__` has a required `image` argument
    (diffusers' image-to-video pipelines: CogVideoXImageToVideoPipeline, WanImageToVideoPipeline)."""
    image = inspect.signature(pipe.__call__).parameters.get("image")
    return image is not None and image.default is inspect.Parameter.empty


def size_multiple(pipe) -> int:
    """Pixels a width and a height must be a multiple of: the VAE's spatial downscaling
    (`vae_scale_factor_spatial`, else `vae_scale_factor`) times the denoiser's spatial patch
    (`transformer.config.patch_size`, its last entry for a (t, h, w) patch; 1 for a UNet). A size
    off it fails inside the pipeline (CogVideoX: 360 px is 45 latent columns, not whole patches).
    1 for a callable with neither attribute."""
    vae = getattr(pipe, "vae_scale_factor_spatial", None) or getattr(pipe, "vae_scale_factor", None) or 1
    patch = getattr(getattr(getattr(pipe, "transformer", None), "config", None), "patch_size", None) or 1
    if isinstance(patch, (tuple, list)):
        patch = patch[-1]
    return int(vae) * int(patch)


def generate(pipe, shape: Shape, prompts: list[str], seeds: list[int], images: list | None = None
             ) -> list[list[np.ndarray]]:
    """Runs one batch: for each prompt, its `shape.per_prompt` images (H, W, 3 uint8) or its one
    video (F, H, W, 3 uint8). Request i's outputs are drawn from generators seeded `seeds[i]`; an
    image-to-video batch passes `images` (PIL images of the shape's size, one per prompt)."""
    import torch

    per = shape.per_prompt
    generators = [torch.Generator(device=pipe.device).manual_seed(s) for s in seeds for _ in range(per)]
    kwargs = dict(prompt=list(prompts), height=shape.height, width=shape.width, output_type="np",
                  generator=generators)
    if shape.steps is not None:
        kwargs["num_inference_steps"] = shape.steps
    if images and images[0] is not None:
        kwargs["image"] = list(images)
    if shape.kind == "image":
        images = _uint8(pipe(num_images_per_prompt=per, **kwargs).images)
        return [list(images[i * per:(i + 1) * per]) for i in range(len(prompts))]
    videos = _uint8(pipe(num_frames=shape.frames, **kwargs).frames)
    return [[v] for v in videos]


def _uint8(x) -> np.ndarray:
    """Pixels in [0, 1] (what `output_type="np"` returns) as bytes; NaN (random weights) as 0."""
    return (np.clip(np.nan_to_num(np.asarray(x, dtype=np.float32)), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    """One image (H, W, 3 uint8) as PNG (fastest compression: the encoding is host time)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def gif(video: np.ndarray, fps: float) -> bytes:
    """One clip (F, H, W, 3 uint8) as an animated GIF at `fps`."""
    from PIL import Image

    frames = [Image.fromarray(f) for f in video]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    return out.getvalue()
