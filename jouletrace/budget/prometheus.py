"""A client of the Prometheus HTTP query API (`/api/v1/query`, `/api/v1/query_range`), as
Prometheus, Thanos, Mimir and VictoriaMetrics serve it.

A range query is asked in chunks of at most `max_points` samples (series x steps, and at most
Prometheus' 11,000 steps per series), so that a month of a thousand GPUs is read a slice of time
at a time: memory holds one chunk's answer, never the whole range. Every failure is a
`QueryError` whose message is one line that says what to do."""

from __future__ import annotations

import dataclasses
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Iterator

import numpy as np

MAX_STEPS = 11_000          # Prometheus refuses a range query of more steps per series
MAX_POINTS = 250_000        # samples of one chunk's answer (series x steps)


class QueryError(Exception):
    """A query that failed; the message is one line that says what to do."""


@dataclasses.dataclass(frozen=True)
class Series:
    """One series of an answer: its labels, and its samples' times (Unix s) and values."""

    labels: dict[str, str]
    times: np.ndarray
    values: np.ndarray


class Prometheus:
    """The query API at `url` (e.g. http://prometheus:9090, or a Thanos/Mimir query frontend's base)."""

    def __init__(self, url: str, timeout_s: float = 60.0, max_points: int = MAX_POINTS):
        if not url.startswith(("http://", "https://")):
            raise QueryError(f"--prometheus-url {url!r}: give the query API's base URL, e.g. http://prometheus:9090")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_points = max_points

    def _get(self, path: str, params: dict) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            detail = _error_of(e.read())
            raise QueryError(f"Prometheus at {self.url} answered {e.code} to {params.get('query')!r}: {detail}; "
                             "check --prometheus-url (the query API's base) and --group-label") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise QueryError(f"cannot reach Prometheus at {self.url} ({reason}): check --prometheus-url and that "
                             "Prometheus runs") from None
        try:
            answer = json.loads(body)
            if answer.get("status") != "success":
                raise ValueError(answer.get("error") or "status is not success")
            return answer["data"]
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise QueryError(f"{self.url}{path} did not answer as the Prometheus query API does ({e}): is "
                             "--prometheus-url a Prometheus-compatible query API?") from None

    def instant(self, query: str, at: float) -> list[tuple[dict[str, str], float]]:
        """Each series' (labels, value) at `at` (Unix s)."""
        data = self._get("/api/v1/query", {"query": query, "time": f"{at:.3f}"})
        return [(dict(s["metric"]), float(s["value"][1])) for s in _result(data, "vector", query)]

    def range(self, query: str, start: float, end: float, step_s: float,
              series_hint: int = 1) -> Iterator[list[Series]]:
        """The answers of `query` from `start` to `end` every `step_s`, one chunk of time after the
        other; `series_hint`: how many series to expect, which sets the chunk's steps."""
        steps = max(1, min(MAX_STEPS, self.max_points // max(1, series_hint)))
        t = start
        while t <= end:
            stop = min(end, t + (steps - 1) * step_s)
            data = self._get("/api/v1/query_range", {"query": query, "start": f"{t:.3f}", "end": f"{stop:.3f}",
                                                      "step": f"{step_s:g}"})
            yield [Series(dict(s["metric"]), *_samples(s["values"], query)) for s in _result(data, "matrix", query)]
            t = stop + step_s


def _result(data: dict, kind: str, query: str) -> list[dict]:
    if not isinstance(data, dict) or data.get("resultType") != kind or not isinstance(data.get("result"), list):
        raise QueryError(f"the answer to {query!r} is not a {kind}: is --prometheus-url a Prometheus-compatible "
                         "query API?")
    return data["result"]


def _samples(values: list, query: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        times = np.fromiter((v[0] for v in values), float, len(values))
        vals = np.fromiter((float(v[1]) for v in values), float, len(values))
    except (TypeError, ValueError, IndexError):
        raise QueryError(f"the answer to {query!r} holds samples that are not [time, value] pairs") from None
    return times, vals


def _error_of(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error"))
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace").strip() or "no detail"


def duration(text: str) -> float:
    """Seconds of a Prometheus duration (`90s`, `15m`, `2h`, `30d`, `1w`, or plain seconds)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    text = text.strip()
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            number = text[:-len(unit)]
            break
    else:
        unit, number = "s", text
    try:
        value = float(number) * units[unit]
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise ValueError(f"expected a duration such as 60s, 15m, 7d, got {text!r}")
    return value


def promql_duration(seconds: float) -> str:
    """`seconds` as a PromQL range (whole milliseconds)."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
