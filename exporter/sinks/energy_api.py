"""`GET /api/v1/energy?start=S&end=S`: measured GPU energy over a window, for load generators.

Answers JSON `{"start", "end", "joules", "gpus": [{"index", "uuid", "backend", "method", "joules"}]}`
(times in Unix seconds, energy in joules, from each GPU's counter-anchored timeline); 503 with
`Retry-After` while the window's end is not yet settled on every GPU; 416 when its start fell out
of retention; 400 for a malformed window.
"""

from __future__ import annotations

import math

from aiohttp import web

from jouletrace.exporter.gpu.sampler import GPUSampler


class NotYetSettled(Exception):
    """The window ends after some GPU's latest settlement; `retry_after_s` says when to ask again."""

    def __init__(self, retry_after_s: float):
        super().__init__(f"not settled yet; retry in {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


class OutOfRetention(Exception):
    """The window starts before some GPU's oldest retained energy."""


def window_energy(samplers: list[GPUSampler], start: float, end: float) -> dict:
    """Energy of every sampled GPU from `start` to `end` (Unix seconds)."""
    gpus = []
    for s in samplers:
        with s.lock:
            tl = s.timeline
            if tl.started and start < tl.oldest:
                raise OutOfRetention(f"GPU {s.device.index} keeps energy from {tl.oldest:.3f} on; "
                                     f"the window starts at {start:.3f}")
            if not tl.started or end > tl.settled_until:
                wait = s.counter_interval_s if not tl.started else end - tl.settled_until + s.counter_interval_s
                raise NotYetSettled(min(max(wait, 0.5), 60.0))
            joules = tl.energy(start, end)
            method = s.method
        d = s.device
        gpus.append({"index": d.index, "uuid": d.uuid, "backend": d.backend, "method": method, "joules": joules})
    return {"start": start, "end": end, "joules": sum(g["joules"] for g in gpus), "gpus": gpus}


def handler(samplers: list[GPUSampler]):
    """The aiohttp handler for GET /api/v1/energy."""
    async def energy(request: web.Request) -> web.Response:
        try:
            start, end = float(request.query["start"]), float(request.query["end"])
            if not (math.isfinite(start) and math.isfinite(end) and start < end):
                raise ValueError
        except (KeyError, ValueError):
            return web.json_response({"error": "give start and end as Unix seconds, start < end"}, status=400)
        try:
            return web.json_response(window_energy(samplers, start, end))
        except NotYetSettled as exc:
            return web.json_response({"error": str(exc)}, status=503,
                                     headers={"Retry-After": str(math.ceil(exc.retry_after_s))})
        except OutOfRetention as exc:
            return web.json_response({"error": str(exc)}, status=416)
    return energy
