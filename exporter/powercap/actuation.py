"""Guarded power-limit actuation, off unless `--powercap-actuation on`: the admin API
`POST /api/v1/powercap` (body `{"watts": W, "gpus": [index, ...], "reason": "..."}`; `gpus`
defaults to all) sets a limit, `DELETE /api/v1/powercap` puts back the limits the GPUs had before
the exporter first changed them.

Guards, in the order a request meets them (each refusal is one line of JSON, `{"error": ...}`):
- actuation off: 403;
- a bearer token listed in `--powercap-token-file` (one per line, `#` comments; read on every
  request, so a rotated Kubernetes secret takes effect), compared in constant time: 401;
- the limit within the device's constraints and the operator's range (`--powercap-min`,
  `--powercap-max`): 400;
- a change of at most `--powercap-max-step` W on every GPU: 400;
- at least `--powercap-cooldown` s since the last change: 429 with Retry-After.
GPUs are then set one by one; one that refuses (no permission, not supported) undoes the others:
502. Putting the original limits back (DELETE, rollback, stop) passes the step and cool-down guards.

Rollback: after a change, every observed window at the new limit counts when its latency (the
`--powercap-guard-deadline` basis, worst model) exceeds the deadline; `--powercap-rollback-windows`
such windows in a row put back the limits in force before the change. A window within the deadline
resets the count; windows without that latency are not counted.

Audit: every change is one JSON line per GPU (`time` ISO 8601 UTC, `unix`, `who`: `token:<id> from
<address>` or `jouletrace`, `action`: set, rollback or restore, `gpu`, `uuid`, `from_w`, `to_w`,
`why`) appended to `--powercap-audit-log`, or logged by `jouletrace.powercap.audit` when no file is
given. A token's id is the first 12 hex digits of its SHA-256; the token itself is never written.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import hashlib
import hmac
import json
import logging
import math
import threading
import time
from typing import Callable, Sequence

from aiohttp import web

from jouletrace.exporter.gpu.device import GPUDevice, GPUError
from jouletrace.planning import Deadline

log = logging.getLogger(__name__)
audit_log = logging.getLogger("jouletrace.powercap.audit")

ACTIONS = ("set", "rollback", "restore")
SAME_LIMIT_W = 0.5  # readings within this of a limit set are that limit (NVML rounds to mW)


@dataclasses.dataclass(frozen=True)
class Policy:
    min_w: float = 0.0            # the operator's range; 0: the device's bound
    max_w: float = 0.0
    max_step_w: float = 100.0     # per change and GPU
    cooldown_s: float = 60.0      # between changes
    guard: Deadline | None = None  # the latency deadline the rollback watches; None: no rollback
    rollback_windows: int = 3


class Refused(Exception):
    """An actuation request refused: HTTP `status` and a one-line `reason`."""

    def __init__(self, status: int, reason: str, retry_after_s: float | None = None):
        super().__init__(reason)
        self.status, self.reason, self.retry_after_s = status, reason, retry_after_s


class AuditLog:
    """JSON lines appended to `path`, or logged when `path` is empty."""

    def __init__(self, path: str = ""):
        self.path = path

    def write(self, record: dict) -> None:
        line = json.dumps(record)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        else:
            audit_log.info("%s", line)


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class Tokens:
    """The admin bearer tokens listed in a file, one per line."""

    def __init__(self, path: str):
        self.path = path

    def _read(self) -> list[str]:
        with open(self.path) as f:
            return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]

    def check(self) -> None:
        """ValueError unless the file lists a token."""
        if not self.path:
            raise ValueError("--powercap-actuation on needs --powercap-token-file")
        try:
            tokens = self._read()
        except OSError as exc:
            raise ValueError(f"--powercap-token-file {self.path}: {exc.strerror}") from None
        if not tokens:
            raise ValueError(f"--powercap-token-file {self.path} lists no token")

    def identify(self, authorization: str | None) -> str | None:
        """The id of the token an `Authorization: Bearer <token>` header carries; None if it lists
        none of ours. OSError when the file cannot be read."""
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return None
        given_digest = hashlib.sha256(given.strip().encode()).digest()
        match = None
        for token in self._read():  # every token compared, by digest: the time tells neither value nor length
            if hmac.compare_digest(given_digest, hashlib.sha256(token.encode()).digest()):
                match = token
        return None if match is None else token_id(match)


class Actuator:
    """Sets the power limits of `devices` under `policy`; see the module docstring."""

    def __init__(self, devices: Sequence[GPUDevice], policy: Policy, audit: AuditLog,
                 clock: Callable[[], float] = time.time):
        if policy.min_w and policy.max_w and policy.min_w > policy.max_w:
            raise ValueError(f"--powercap-min {policy.min_w:g} W is above --powercap-max {policy.max_w:g} W")
        self.devices = list(devices)
        self.policy = policy
        self.audit = audit
        self._clock = clock
        self._lock = threading.Lock()
        self._set: dict[int, float] = {}      # by position in `devices`: the limit last set here
        self.original: dict[int, float] = {}  # by position: the limit before the first change here
        self._last_change = -math.inf
        self._previous: dict[int, float] | None = None  # the limits before the latest `set`
        self._changed_at = -math.inf
        self._violations = 0
        self.changes: collections.Counter = collections.Counter()  # by action

    # -- reading ------------------------------------------------------------------------------
    def _limit(self, k: int) -> float:
        """GPU `k`'s power limit: the one set here, else the one set on the device (W)."""
        if k in self._set:
            return self._set[k]
        try:
            return self.devices[k].power_limit_w()
        except GPUError as exc:
            raise Refused(502, f"GPU {self.devices[k].index}: {exc}") from None

    def allowed(self, k: int) -> tuple[float, float]:
        """The limits GPU `k` may be given: its constraints within the operator's range (W)."""
        try:
            low, high = self.devices[k].power_limit_constraints_w()
        except GPUError as exc:
            raise Refused(502, f"GPU {self.devices[k].index}: {exc}") from None
        return max(low, self.policy.min_w or low), min(high, self.policy.max_w or high)

    def state(self) -> dict:
        """Each GPU's limit, allowed range and original limit; the policy; the cool-down left."""
        with self._lock:
            gpus = []
            for k, d in enumerate(self.devices):
                entry = {"index": d.index, "uuid": d.uuid, "original_w": self.original.get(k)}
                try:
                    entry["limit_w"] = self._limit(k)
                    entry["min_w"], entry["max_w"] = self.allowed(k)
                except Refused as exc:
                    entry["error"] = exc.reason
                gpus.append(entry)
            p = self.policy
            return {"gpus": gpus, "cooldown_left_s": max(0.0, self._last_change + p.cooldown_s - self._clock()),
                    "policy": {"min_w": p.min_w or None, "max_w": p.max_w or None, "max_step_w": p.max_step_w,
                               "cooldown_s": p.cooldown_s, "guard": str(p.guard) if p.guard else None,
                               "rollback_windows": p.rollback_windows}}

    # -- changing -----------------------------------------------------------------------------
    def _positions(self, indices: Sequence[int] | None) -> list[int]:
        if indices is None:
            return list(range(len(self.devices)))
        by_index = {d.index: k for k, d in enumerate(self.devices)}
        unknown = [str(i) for i in indices if i not in by_index]
        if unknown or not indices:
            raise Refused(400, f"no GPU with index {', '.join(unknown) or '(none given)'}; this exporter has GPUs "
                               f"{', '.join(str(d.index) for d in self.devices)}")
        return sorted({by_index[i] for i in indices})

    def set(self, watts: float, indices: Sequence[int] | None, who: str, why: str) -> list[dict]:
        """Set `watts` on the GPUs of `indices` (None: all); returns the audit records of the
        changes (none when every GPU already has that limit). Refused when a guard says no."""
        with self._lock:
            moves = []
            for k in self._positions(indices):
                index = self.devices[k].index
                low, high = self.allowed(k)
                if not low <= watts <= high:
                    raise Refused(400, f"{watts:g} W is outside GPU {index}'s allowed range {low:g}-{high:g} W "
                                       f"(its constraints within --powercap-min/--powercap-max)")
                current = self._limit(k)
                if abs(watts - current) > self.policy.max_step_w:
                    raise Refused(400, f"GPU {index}: {current:g} -> {watts:g} W is a step of "
                                       f"{abs(watts - current):g} W; at most {self.policy.max_step_w:g} W at a "
                                       f"time (--powercap-max-step)")
                if watts != current:
                    moves.append((k, current, watts))
            if not moves:
                return []
            wait = self._last_change + self.policy.cooldown_s - self._clock()
            if wait > 0:
                raise Refused(429, f"the last change was {self.policy.cooldown_s - wait:.0f} s ago; the next may "
                                   f"come in {math.ceil(wait)} s (--powercap-cooldown)", wait)
            records = self._apply(moves, "set", who, why, atomic=True)
            self._previous = {k: frm for k, frm, _ in moves}
            self._changed_at, self._violations = self._last_change, 0
            return records

    def restore(self, who: str, why: str) -> list[dict]:
        """Put back the limits the GPUs had before their first change here; Refused (502) when a
        GPU refuses, after trying every one."""
        with self._lock:
            self._previous = None
            moves = [(k, self._set[k], limit) for k, limit in sorted(self.original.items())
                     if self._set.get(k) != limit]
            return self._apply(moves, "restore", who, why, atomic=False) if moves else []

    def observe_window(self, start: float, limit_w: float, latency_ms: dict[str, dict[str, float]]) -> None:
        """A window of the exporter's history (from `start`, at `limit_w`, with each model's latency
        by basis): counts towards the rollback; rolls back when the guard says so."""
        guard = self.policy.guard
        with self._lock:
            if guard is None or self._previous is None or start < self._changed_at:
                return
            if any(abs(self._set.get(k, math.nan) - limit_w) > SAME_LIMIT_W for k in self._previous):
                return  # not the limit set here: someone else changed it
            worst = max((lat[guard.basis] for lat in latency_ms.values() if guard.basis in lat), default=None)
            if worst is None:
                return
            self._violations = self._violations + 1 if worst > guard.ms else 0
            if self._violations < self.policy.rollback_windows:
                return
            moves = [(k, self._set[k], frm) for k, frm in sorted(self._previous.items())]
            self._previous, self._violations = None, 0
            why = (f"{guard.basis} {worst:.1f} ms > {guard.ms:g} ms in {self.policy.rollback_windows} consecutive "
                   f"windows at {limit_w:g} W")
            try:
                self._apply(moves, "rollback", "jouletrace", why, atomic=False)
            except Refused as exc:
                log.error("power-cap rollback failed: %s", exc.reason)

    def _apply(self, moves: list[tuple[int, float, float]], action: str, who: str, why: str,
               atomic: bool) -> list[dict]:
        """Set each (position, from, to); audit what was done. A GPU that refuses: with `atomic`,
        the GPUs already set go back and nothing is audited; else the others go on. Either way
        Refused (502) follows."""
        done, failed = [], []
        for k, frm, to in moves:
            d = self.devices[k]
            try:
                d.set_power_limit_w(to)
            except GPUError as exc:
                failed.append(f"GPU {d.index} refused {to:g} W: {exc}")
                if atomic:
                    self._undo(done)
                    raise Refused(502, failed[0]) from None
                log.error("power-cap %s: %s", action, failed[-1])
                continue
            self.original.setdefault(k, frm)
            self._set[k] = to
            done.append((k, frm, to))
        now = self._clock()
        if done:
            self._last_change = now
        records = [self._record(now, who, action, k, frm, to, why) for k, frm, to in done]
        if failed:
            raise Refused(502, "; ".join(failed))
        return records

    def _undo(self, done: list[tuple[int, float, float]]) -> None:
        for k, frm, _ in done:
            try:
                self.devices[k].set_power_limit_w(frm)
                self._set[k] = frm
            except GPUError as exc:
                log.error("GPU %d: could not put back %g W: %s", self.devices[k].index, frm, exc)

    def _record(self, now: float, who: str, action: str, k: int, frm: float, to: float, why: str) -> dict:
        d = self.devices[k]
        record = {"time": datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(), "unix": now,
                  "who": who, "action": action, "gpu": d.index, "uuid": d.uuid, "from_w": frm, "to_w": to, "why": why}
        self.audit.write(record)
        self.changes[action] += 1
        log.warning("power limit of GPU %d: %g -> %g W (%s by %s: %s)", d.index, frm, to, action, who, why)
        return record


# -- the admin API ---------------------------------------------------------------------------
def _who(actuator: Actuator | None, tokens: Tokens | None, request: web.Request) -> str:
    if actuator is None:
        raise Refused(403, "power-cap actuation is off (--powercap-actuation on enables it)")
    try:
        token = tokens.identify(request.headers.get("Authorization"))
    except OSError as exc:
        raise Refused(503, f"cannot read the admin token file: {exc.strerror}") from None
    if token is None:
        log.warning("power-cap request from %s without a valid admin token", request.remote)
        raise Refused(401, "a valid admin bearer token is required (Authorization: Bearer <token>)")
    return f"token:{token} from {request.remote}"


async def _json_object(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise Refused(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    return body


def _reason(body: dict) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise Refused(400, "`reason` must be a string")
    return reason[:200]


def _request(body: dict) -> tuple[float, list[int] | None, str]:
    """(watts, GPU indices or None, reason) of a POST body."""
    watts, gpus = body.get("watts"), body.get("gpus")
    if isinstance(watts, bool) or not isinstance(watts, (int, float)) or not math.isfinite(watts):
        raise Refused(400, "give the limit as {\"watts\": W}")
    if gpus is not None and not (isinstance(gpus, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                                                for i in gpus)):
        raise Refused(400, "`gpus` must be a list of GPU indices")
    return float(watts), gpus, _reason(body)


def _refusal(exc: Refused) -> web.Response:
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="jouletrace"'
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return web.json_response({"error": exc.reason}, status=exc.status, headers=headers)


def handlers(actuator: Actuator | None, tokens: Tokens | None):
    """The aiohttp handlers (POST, DELETE) of /api/v1/powercap; `actuator` None: actuation is off."""
    async def post(request: web.Request) -> web.Response:
        try:
            who = _who(actuator, tokens, request)
            watts, gpus, reason = _request(await _json_object(request))
            records = await asyncio.to_thread(actuator.set, watts, gpus, who, reason or "admin API")
        except Refused as exc:
            return _refusal(exc)
        return web.json_response({"changes": records})

    async def delete(request: web.Request) -> web.Response:
        try:
            who = _who(actuator, tokens, request)
            reason = _reason(await _json_object(request))
            records = await asyncio.to_thread(actuator.restore, who, reason or "restore requested")
        except Refused as exc:
            return _refusal(exc)
        return web.json_response({"changes": records})

    return post, delete
