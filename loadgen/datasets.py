"""Loaders for local dataset files in the public datasets' published formats.

A file is Parquet (`.parquet`, as Hugging Face publishes datasets; needs pyarrow), JSONL, JSON (a
list of rows, or an object with a `data`/`rows` list), CSV, or text (`.txt`: one `prompt` per
non-empty line). Media paths are relative to the media root (`--media-root`; default: the dataset
file's directory). A media entry is a path or a Hugging Face Image struct `{"bytes", "path"}`:
its bytes where inline, else the file at its path.

Field mapping, by format:

- `sharegpt` (anon8231489123/ShareGPT_Vicuna_unfiltered): `conversations`, a list of
  `{"from": "human"|"gpt", "value": str}`. The first human turn answered by a gpt turn is the
  prompt; the answer gives the expected output length. Rows without such a pair are skipped.
- `arena` (lmarena-ai/arena-human-preference-100k, lmarena-ai/VisionArena-Chat): `conversation_a` or
  `conversation`, a list of `{"role": "user"|"assistant", "content": str or OpenAI content parts}`
  (VisionArena-Chat nests them in [user, assistant] pairs). Each user turn is one request carrying
  the turns before it as history; the assistant turn after it gives the expected output length.
  `images` (VisionArena-Chat: Image structs) go with the first user turn's request.
- `llava-video` (lmms-lab/LLaVA-Video-178K): `video` (a path) and `conversations` as in ShareGPT.
  One request per row: the first human turn answered by gpt, without its `<image>`/`<video>`
  placeholders, with the video file as its clip (MIME type from the file name, else video/mp4);
  the answer gives the expected output length. Rows without such a pair are skipped.
- `prompts` (data-is-better-together/open-image-preferences-v1, RaphaelLiu/EvalCrafter_T2V_Dataset
  and its `.txt` prompt list, image-to-video prompt sets): `prompt`, else `caption`, else `text`.
  Image-to-video also needs `image`, its input image; other tasks ignore it.
- `gpqa` (Idavidrein/gpqa, gpqa_diamond): `Question`, `Correct Answer`, `Incorrect Answer 1..3`.
  The prompt is the question and the four answers in a seeded order, lettered A-D.
- `fim` (sourcegraph/context-aware-fim-code-completions): `prefix`, `suffix`, optional `middle`
  (expected output). The prompt is `--fim-template` filled with prefix and suffix.
- `jsonl` (generic): `prompt` (str), optional `output_tokens` (int), `images` (media entries),
  `video_frames` (paths of one clip: its frames, or a single video file), `history` (chat
  messages), `timestamp` (s, for trace replay).

Without a tokenizer, an expected output length from text is estimated as characters / 4 tokens."""

from __future__ import annotations

import csv
import io
import itertools
import json
import mimetypes
import random
import re
from pathlib import Path

from .requests import Media, PlannedRequest
from .tasks import TaskSpec

PROMPT_FIELDS = ("prompt", "caption", "text")
PLACEHOLDERS = re.compile(r"<(?:image|video)>\s*")
IMAGE_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


class DatasetError(ValueError):
    """A dataset file that cannot be read or has no usable row; the message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def estimate_tokens(text: str) -> int:
    """Token count estimate of `text`: characters / 4, at least 1."""
    return max(1, round(len(text) / 4))


def read_rows(path: Path) -> list[dict]:
    """Rows of a .parquet, .csv, .txt (one `prompt` per non-empty line), .json (a list, or an
    object with a `data`/`rows` list) or JSONL file."""
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from e
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from e
    if path.suffix == ".csv":
        return list(csv.DictReader(io.StringIO(text, newline="")))
    if path.suffix == ".txt":
        return [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]
    if path.suffix != ".json" and not text.lstrip().startswith("["):
        return [_json_line(path, n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}: not JSON: {e.msg}") from e
    if isinstance(data, dict):
        data = data.get("data", data.get("rows"))
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of rows")
    return data


def _json_line(path: Path, n: int, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{n}: not JSON: {e.msg}") from e


def _parquet_rows(path: Path) -> list[dict]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise DatasetError(f"{path}: reading Parquet needs pyarrow: pip install 'jouletrace[loadgen]'") from None
    try:
        return pyarrow.parquet.read_table(path).to_pylist()
    except (OSError, pyarrow.ArrowException) as e:
        raise DatasetError(f"cannot read {path} as Parquet: {e}") from e


def _content(value) -> str:
    if isinstance(value, list):  # OpenAI content parts
        return " ".join(p.get("text", "") for p in value if isinstance(p, dict))
    return str(value or "")


def _mime(data: bytes, name: str | None, default: str) -> str:
    """The MIME type of a media file: from its first bytes (PNG, JPEG, GIF), else an image or video
    type from its name, else `default`."""
    sniffed = next((mime for magic, mime in IMAGE_MAGIC if data.startswith(magic)), None)
    guessed = mimetypes.guess_type(name)[0] if name else None
    return sniffed or (guessed if guessed and guessed.startswith(("image/", "video/")) else default)


def _media_item(item, root: Path, default_mime: str = "image/png") -> Media:
    """One media entry: a path relative to `root`, or a Hugging Face Image struct `{"bytes", "path"}`."""
    path = item
    if isinstance(item, dict):
        data, path = item.get("bytes"), item.get("path")
        if data:
            if not isinstance(data, bytes):
                raise DatasetError(f"media entry with `bytes` of type {type(data).__name__}, not binary")
            return Media(data, _mime(data, path, default_mime))
    if not isinstance(path, str) or not path:
        raise DatasetError(f"media entry {item!r:.80}: expected a path, or a {{bytes, path}} struct with either")
    f = root / path
    try:
        data = f.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read media file {f}: {e.strerror or e}") from e
    return Media(data, _mime(data, f.name, default_mime))


def _media(items, root: Path, default_mime: str = "image/png") -> list[Media]:
    return [_media_item(item, root, default_mime) for item in items or []]


def _request(spec: TaskSpec, prompt: str, **fields) -> PlannedRequest:
    return PlannedRequest(0, spec.name, spec.api, spec.output_cap, prompt=prompt, **fields)


def _exchange(turns) -> tuple[str, int] | None:
    """The first ShareGPT human turn answered by a gpt turn, and the answer's estimated tokens."""
    for t, nxt in zip(turns, turns[1:]):
        if t.get("from") == "human" and nxt.get("from") == "gpt":
            return str(t.get("value", "")), estimate_tokens(str(nxt.get("value", "")))
    return None


def _sharegpt(rows, spec, root, seed, fim):
    for row in rows:
        pair = _exchange(row.get("conversations") or [])
        if pair:
            yield _request(spec, pair[0], expected_output_tokens=pair[1])


def _llava_video(rows, spec, root, seed, fim):
    for n, row in enumerate(rows, 1):
        if not row.get("video"):
            raise DatasetError(f"row {n}: llava-video rows need `video`, the clip's path")
        pair = _exchange(row.get("conversations") or [])
        if pair:
            yield _request(spec, PLACEHOLDERS.sub("", pair[0]).strip(), expected_output_tokens=pair[1],
                           frames=[_media_item(row["video"], root, "video/mp4")])


def _messages(conv) -> list[dict]:
    """The messages of an arena conversation, flattening VisionArena-Chat's [user, assistant] pairs."""
    return [m for turn in conv for m in (turn if isinstance(turn, list) else [turn])]


def _arena(rows, spec, root, seed, fim):
    for row in rows:
        conv = _messages(row.get("conversation_a") or row.get("conversation") or [])
        images = _media(row.get("images"), root)
        for i, m in enumerate(conv):
            if m.get("role") != "user":
                continue
            nxt = conv[i + 1] if i + 1 < len(conv) else None
            history = [{"role": h["role"], "content": _content(h.get("content"))} for h in conv[:i]]
            yield _request(spec, _content(m.get("content")), history=history, images=images,
                           expected_output_tokens=estimate_tokens(_content(nxt.get("content")))
                           if nxt and nxt.get("role") == "assistant" else None)
            images = []


def _prompts(rows, spec, root, seed, fim):
    for n, row in enumerate(rows, 1):
        prompt = next((row[k] for k in PROMPT_FIELDS if isinstance(row.get(k), str) and row[k].strip()), None)
        if prompt is None:
            raise DatasetError(f"row {n}: needs a `prompt`, `caption` or `text` string")
        if spec.images and row.get("image") is None:
            raise DatasetError(f"row {n}: task {spec.name} needs an `image` (a path or an Image struct)")
        yield _request(spec, prompt.strip(), images=[_media_item(row["image"], root)] if spec.images else [])


def _gpqa(rows, spec, root, seed, fim):
    rng = random.Random(seed)
    for row in rows:
        if "Question" not in row:
            raise DatasetError("gpqa rows need `Question`, `Correct Answer`, `Incorrect Answer 1..3`")
        answers = [row.get("Correct Answer", "")] + [row.get(f"Incorrect Answer {k}", "") for k in (1, 2, 3)]
        rng.shuffle(answers)
        choices = "\n".join(f"{'ABCD'[k]}) {str(a).strip()}" for k, a in enumerate(answers))
        yield _request(spec, f"{str(row['Question']).strip()}\n\n{choices}\n\n"
                             "Think step by step, then answer with the letter of the correct choice.")


def _fim(rows, spec, root, seed, fim):
    for row in rows:
        if "prefix" not in row or "suffix" not in row:
            raise DatasetError("fim rows need `prefix` and `suffix`")
        middle = row.get("middle")
        yield _request(spec, fim.format(prefix=row["prefix"], suffix=row["suffix"]),
                       expected_output_tokens=estimate_tokens(middle) if middle else None)


def _jsonl(rows, spec, root, seed, fim):
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise DatasetError(f"row {n}: needs a string `prompt`")
        tokens = row.get("output_tokens")
        if tokens is not None and (not isinstance(tokens, int) or tokens < 1):
            raise DatasetError(f"row {n}: `output_tokens` must be a positive integer")
        ts = row.get("timestamp")
        if ts is not None and not isinstance(ts, (int, float)):
            raise DatasetError(f"row {n}: `timestamp` must be a number (seconds)")
        yield _request(spec, row["prompt"], history=list(row.get("history") or []),
                       images=_media(row.get("images"), root), frames=_media(row.get("video_frames"), root),
                       expected_output_tokens=tokens, arrival_s=float(ts) if ts is not None else None)


LOADERS = {"jsonl": _jsonl, "sharegpt": _sharegpt, "arena": _arena, "llava-video": _llava_video,
           "prompts": _prompts, "gpqa": _gpqa, "fim": _fim}
FORMATS = tuple(LOADERS)


def load_dataset(path: str | Path, fmt: str, spec: TaskSpec, seed: int = 0,
                 fim_template: str = "{prefix}{suffix}", media_root: str | Path | None = None,
                 limit: int | None = None) -> list[PlannedRequest]:
    """The requests the file yields for task `spec` (the first `limit` of them; media of later rows
    are not read), indexed in file order; trace timestamps are made relative to the first row's.
    Media paths are relative to `media_root` (default: the file's directory). Raises DatasetError
    with a one-line reason."""
    path = Path(path)
    if fmt not in LOADERS:
        raise DatasetError(f"unknown dataset format {fmt!r}; known: {', '.join(FORMATS)}")
    if not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist")
    root = Path(media_root) if media_root is not None else path.parent
    rows = read_rows(path)
    try:
        out = list(itertools.islice(LOADERS[fmt](rows, spec, root, seed, fim_template), limit))
    except DatasetError as e:
        raise DatasetError(f"{path}: {e}") from e
    except (AttributeError, TypeError, KeyError) as e:
        raise DatasetError(f"{path}: rows are not in the {fmt} format ({e})") from e
    if not out:
        raise DatasetError(f"{path}: no usable {fmt} row")
    stamps = [r.arrival_s for r in out if r.arrival_s is not None]
    t0 = min(stamps) if stamps else 0.0
    for i, r in enumerate(out):
        r.index = i
        if r.arrival_s is not None:
            r.arrival_s -= t0
    return out
