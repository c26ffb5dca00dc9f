"""The study's steady-state measurement window, and the output tokens generated inside it.

The window opens when `max_num_seqs` requests have received their first token (the batch is
full) and closes when the number of finished requests reaches N - max_num_seqs - 1 (the batch
starts to drain). Times are unix seconds."""

from __future__ import annotations

import dataclasses

from .client import RequestResult


@dataclasses.dataclass(frozen=True)
class Window:
    start: float
    end: float
    rule: str              # "steady_state" or "whole_run"

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.end - self.start


def steady_state_window(results: list[RequestResult], n: int, max_num_seqs: int) -> tuple[Window | None, str]:
    """(the window, "") or (None, why there is none) for `n` requests sent to a server whose batch
    size is `max_num_seqs`. Only successful requests count as having a first token or finishing."""
    if max_num_seqs < 1:
        return None, "max_num_seqs must be >= 1"
    firsts = sorted(r.first_token for r in results if r.ok and r.first_token is not None)
    ends = sorted(r.end for r in results if r.ok and r.end is not None)
    close_at = n - max_num_seqs - 1
    if close_at < 1:
        return None, f"{n} requests are too few for max_num_seqs {max_num_seqs} (need >= {max_num_seqs + 2})"
    if len(firsts) < max_num_seqs:
        return None, f"only {len(firsts)} requests got a first token, fewer than max_num_seqs {max_num_seqs}"
    if len(ends) < close_at:
        return None, f"only {len(ends)} requests finished, fewer than {close_at}"
    start, end = firsts[max_num_seqs - 1], ends[close_at - 1]
    if end <= start:
        return None, "the batch drained before it was full: the window is empty"
    return Window(start, end, "steady_state"), ""


def whole_run_window(results: list[RequestResult], start: float) -> Window | None:
    """From `start` (the first request sent) to the last successful request's end."""
    ends = [r.end for r in results if r.ok and r.end is not None]
    return Window(start, max(ends), "whole_run") if ends and max(ends) > start else None


def tokens_in_window(r: RequestResult, w: Window) -> float:
    """Output tokens of `r` generated in (w.start, w.end]. With one streamed chunk per token the
    chunks are counted; otherwise its tokens are taken as spread evenly from its first token (or
    its start) to its end."""
    if not r.ok or not r.output_tokens or r.end is None:
        return 0.0
    if len(r.token_times) == r.output_tokens:
        return float(sum(1 for t in r.token_times if w.start < t <= w.end))
    a = r.first_token if r.first_token is not None else r.start
    if r.end <= a:
        return float(r.output_tokens) if w.start < r.end <= w.end else 0.0
    overlap = max(0.0, min(r.end, w.end) - max(a, w.start))
    return r.output_tokens * overlap / (r.end - a)
