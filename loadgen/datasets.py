"""Loaders for local dataset files in the public datasets' export formats.

Field mapping (a row is one JSON object: a JSONL line, an element of a JSON list, or a CSV row):

- `sharegpt`: ShareGPT JSON, `{"conversations": [{"from": "human"|"gpt", "value": str}, ...]}`.
  The first human turn is the prompt; the gpt turn after it gives the expected output length.
- `arena` (lmarena-ai/arena-human-preference-100k, VisionArena-Chat): `conversation_a`, a list of
  `{"role": "user"|"assistant", "content": str}`. Each user turn is one request carrying the
  turns before it as history; the assistant turn after it gives the expected output length.
- `gpqa` (Idavidrein/gpqa, gpqa_diamond): `Question`, `Correct Answer`, `Incorrect Answer 1..3`.
  The prompt is the question and the four answers in a seeded order, lettered A-D.
- `fim` (sourcegraph/context-aware-fim-code-completions): `prefix`, `suffix`, optional `middle`
  (expected output). The prompt is `--fim-template` filled with prefix and suffix.
- `jsonl` (generic): `prompt` (str), optional `output_tokens` (int), `images` (paths), `video_frames`
  (paths, one clip), `history` (chat messages), `timestamp` (s, for trace replay). Paths are
  relative to the file.

Without a tokenizer, an expected output length from text is estimated as characters / 4 tokens."""

from __future__ import annotations

import csv
import json
import mimetypes
import random
from pathlib import Path

from .requests import Media, PlannedRequest
from .tasks import TaskSpec

FORMATS = ("jsonl", "sharegpt", "arena", "gpqa", "fim")


class DatasetError(ValueError):
    """A dataset file that cannot be read or has no usable row."""


def estimate_tokens(text: str) -> int:
    """Token count estimate of `text`: characters / 4, at least 1."""
    return max(1, round(len(text) / 4))


def read_rows(path: Path) -> list[dict]:
    """Rows of a .jsonl, .json (list, or object with a `data`/`rows` list) or .csv file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from e
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    if path.suffix != ".json" and not text.lstrip().startswith("["):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}:{n}: not JSON: {e.msg}") from e
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}: not JSON: {e.msg}") from e
    if isinstance(data, dict):
        data = data.get("data", data.get("rows"))
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of rows")
    return data


def _content(value) -> str:
    if isinstance(value, list):  # OpenAI content parts
        return " ".join(p.get("text", "") for p in value if isinstance(p, dict))
    return str(value or "")


def _media(base: Path, paths) -> list[Media]:
    out = []
    for p in paths or []:
        f = base / p
        try:
            out.append(Media(f.read_bytes(), mimetypes.guess_type(f.name)[0] or "image/png"))
        except OSError as e:
            raise DatasetError(f"cannot read media file {f}: {e}") from e
    return out


def _sharegpt(rows, spec, base, seed, fim):
    out = []
    for row in rows:
        turns = row.get("conversations") or []
        for i, t in enumerate(turns[:-1]):
            if t.get("from") == "human" and turns[i + 1].get("from") == "gpt":
                out.append(PlannedRequest(0, spec.name, spec.api, spec.output_cap, prompt=str(t.get("value", "")),
                                          expected_output_tokens=estimate_tokens(str(turns[i + 1].get("value", "")))))
                break
    return out


def _arena(rows, spec, base, seed, fim):
    out = []
    for row in rows:
        conv = row.get("conversation_a") or row.get("conversation") or []
        for i, m in enumerate(conv):
            if m.get("role") != "user":
                continue
            nxt = conv[i + 1] if i + 1 < len(conv) else None
            history = [{"role": h["role"], "content": _content(h.get("content"))} for h in conv[:i]]
            out.append(PlannedRequest(0, spec.name, spec.api, spec.output_cap, prompt=_content(m.get("content")),
                                      history=history,
                                      expected_output_tokens=estimate_tokens(_content(nxt.get("content")))
                                      if nxt and nxt.get("role") == "assistant" else None))
    return out


def _gpqa(rows, spec, base, seed, fim):
    rng = random.Random(seed)
    out = []
    for row in rows:
        if "Question" not in row:
            raise DatasetError("gpqa rows need `Question`, `Correct Answer`, `Incorrect Answer 1..3`")
        answers = [row.get("Correct Answer", "")] + [row.get(f"Incorrect Answer {k}", "") for k in (1, 2, 3)]
        rng.shuffle(answers)
        choices = "\n".join(f"{'ABCD'[k]}) {str(a).strip()}" for k, a in enumerate(answers))
        prompt = (f"{str(row['Question']).strip()}\n\n{choices}\n\n"
                  "Think step by step, then answer with the letter of the correct choice.")
        out.append(PlannedRequest(0, spec.name, spec.api, spec.output_cap, prompt=prompt))
    return out


def _fim(rows, spec, base, seed, fim):
    out = []
    for row in rows:
        if "prefix" not in row or "suffix" not in row:
            raise DatasetError("fim rows need `prefix` and `suffix`")
        middle = row.get("middle")
        out.append(PlannedRequest(0, spec.name, spec.api, spec.output_cap,
                                  prompt=fim.format(prefix=row["prefix"], suffix=row["suffix"]),
                                  expected_output_tokens=estimate_tokens(middle) if middle else None))
    return out


def _jsonl(rows, spec, base, seed, fim):
    out = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise DatasetError(f"row {n}: needs a string `prompt`")
        tokens = row.get("output_tokens")
        if tokens is not None and (not isinstance(tokens, int) or tokens < 1):
            raise DatasetError(f"row {n}: `output_tokens` must be a positive integer")
        ts = row.get("timestamp")
        if ts is not None and not isinstance(ts, (int, float)):
            raise DatasetError(f"row {n}: `timestamp` must be a number (seconds)")
        out.append(PlannedRequest(0, spec.name, spec.api, spec.output_cap, prompt=row["prompt"],
                                  history=list(row.get("history") or []), images=_media(base, row.get("images")),
                                  frames=_media(base, row.get("video_frames")), expected_output_tokens=tokens,
                                  arrival_s=float(ts) if ts is not None else None))
    return out


LOADERS = {"sharegpt": _sharegpt, "arena": _arena, "gpqa": _gpqa, "fim": _fim, "jsonl": _jsonl}


def load_dataset(path: str | Path, fmt: str, spec: TaskSpec, seed: int = 0,
                 fim_template: str = "{prefix}{suffix}") -> list[PlannedRequest]:
    """Every request the file yields for task `spec`, indexed in file order; trace timestamps are
    made relative to the first row's. Raises DatasetError with a one-line reason."""
    path = Path(path)
    if fmt not in LOADERS:
        raise DatasetError(f"unknown dataset format {fmt!r}; known: {', '.join(FORMATS)}")
    if not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist")
    rows = read_rows(path)
    try:
        out = LOADERS[fmt](rows, spec, path.parent, seed, fim_template)
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
