"""Electricity price and grid carbon intensity, and what each model's attributed energy costs and emits.

Units: a price is in a currency (its ISO 4217 code, `USD`) per kWh, a carbon intensity in grams
CO2e per kWh, energy in J (1 kWh = 3.6e6 J). `per_kwh(joules, rate)` is the one conversion.

The values in effect come from the flags (`--electricity-price` with `--currency`,
`--grid-carbon-intensity`) and from `--grid-file`, a JSON object an operator's job rewrites:

    {"electricity_price": 0.12, "currency": "USD", "grid_carbon_intensity": 350}

Every key is optional. A value the file gives wins over the flag's; a key it leaves out keeps the
flag's value. `Grid.reload()` reads the file (the daemon calls it when the file changes); a missing,
unreadable or invalid file is logged and counted by reason (`missing`, `unreadable`, `invalid`), and
the last good values stay in effect (the flags' until a first good read).

Totals: the growth of each model's attributed energy (J, monotonic) is priced at the values in
effect: at each scrape (`Grid.snapshot()`), and before new values take effect, so that energy
attributed before a change keeps the old price."""

from __future__ import annotations

import collections
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, fields
from typing import Callable, Iterable

log = logging.getLogger(__name__)

J_PER_KWH = 3.6e6
PER_MILLION = 1e6
MAX_FILE_BYTES = 64 << 10
CURRENCY = re.compile(r"[A-Z]{3}")
ERROR_REASONS = ("missing", "unreadable", "invalid")


def per_kwh(joules: float, rate_per_kwh: float) -> float:
    """`rate_per_kwh` (a price, or grams CO2e, per kWh) for `joules` of energy."""
    return joules / J_PER_KWH * rate_per_kwh


def currency_code(text: str) -> str:
    """An ISO 4217 currency code, three capital letters (`USD`); empty: none."""
    text = text.strip()
    if text and not CURRENCY.fullmatch(text):
        raise ValueError(f"expected a currency code of three capital letters (USD, EUR), got {text!r}")
    return text


def optional_rate(text: str) -> float | None:
    """A finite number >= 0 (a price or an intensity per kWh); empty: not set (None)."""
    if not text.strip():
        return None
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"expected a number >= 0, got {text!r}")
    return value


@dataclass(frozen=True, slots=True)
class GridValues:
    """A price per kWh in `currency`, and grams CO2e per kWh; None where not set."""

    electricity_price: float | None = None
    currency: str = ""
    grid_carbon_intensity: float | None = None

    def check(self) -> "GridValues":
        if self.electricity_price is not None and not self.currency:
            raise ValueError("an electricity price needs its currency (--currency)")
        return self


class GridFileError(ValueError):
    """The grid file could not be used; `reason` is one of ERROR_REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _rate(data: dict, key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise GridFileError("invalid", f"{key} must be a number >= 0, not {value!r}")
    return float(value)


def read_grid_file(path: str, under: GridValues) -> GridValues:
    """The values of the grid file at `path` over `under` (the flags'); GridFileError why not."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise GridFileError("missing", "no such file") from None
    except OSError as exc:
        raise GridFileError("unreadable", exc.strerror or str(exc)) from None
    if len(raw) > MAX_FILE_BYTES:
        raise GridFileError("invalid", f"over {MAX_FILE_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GridFileError("invalid", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise GridFileError("invalid", "not a JSON object")
    unknown = sorted(set(data) - {f.name for f in fields(GridValues)})
    if unknown:
        raise GridFileError("invalid", f"unknown keys {', '.join(unknown)}")
    currency = data.get("currency", under.currency)
    if not isinstance(currency, str):
        raise GridFileError("invalid", f"currency must be a string, not {currency!r}")
    price = _rate(data, "electricity_price") if "electricity_price" in data else under.electricity_price
    intensity = _rate(data, "grid_carbon_intensity") if "grid_carbon_intensity" in data else under.grid_carbon_intensity
    try:
        return GridValues(price, currency_code(currency), intensity).check()
    except ValueError as exc:
        raise GridFileError("invalid", str(exc)) from None


class Grid:
    """The grid values in effect, the grid file's errors, and each model's cost and emissions totals.
    `energy()` gives (model, attributed J) for every model, monotonic; the totals are keyed by model
    (cost by model and currency)."""

    def __init__(self, flags: GridValues, path: str, energy: Callable[[], Iterable[tuple[str, float]]],
                 clock: Callable[[], float] = time.time):
        self.flags = flags.check()
        self.path = path
        self.values = flags
        self.errors: collections.Counter = collections.Counter({reason: 0 for reason in ERROR_REASONS})
        self.read_at: float | None = None  # when the values in effect were read from the file
        self.cost: dict[tuple[str, str], float] = {}
        self.grams: dict[str, float] = {}
        self._energy = energy
        self._clock = clock
        self._accrued: dict[str, float] = {}
        self._lock = threading.Lock()

    def reload(self) -> None:
        """Reads the grid file: its values take effect, or the error is logged and counted."""
        try:
            values = read_grid_file(self.path, self.flags)
        except GridFileError as exc:
            with self._lock:
                self.errors[exc.reason] += 1
            log.error("grid file %s: %s; keeping %s", self.path, exc, self.describe())
            return
        with self._lock:  # the energy so far at the old values, the rest at the new
            self._accrue()
            self.values, self.read_at = values, self._clock()
        log.info("grid file %s read: %s", self.path, self.describe())

    def describe(self) -> str:
        v = self.values
        price = "no price" if v.electricity_price is None else f"{v.electricity_price:g} {v.currency}/kWh"
        carbon = "no carbon intensity" if v.grid_carbon_intensity is None else f"{v.grid_carbon_intensity:g} gCO2e/kWh"
        return f"{price}, {carbon}"

    def _accrue(self) -> None:
        """Prices the energy each model was attributed since the last call at the values in effect."""
        v = self.values
        for model, joules in self._energy():
            delta = joules - self._accrued.get(model, 0.0)
            self._accrued[model] = joules
            if v.electricity_price is not None:
                key = (model, v.currency)
                self.cost[key] = self.cost.get(key, 0.0) + per_kwh(delta, v.electricity_price)
            if v.grid_carbon_intensity is not None:
                self.grams[model] = self.grams.get(model, 0.0) + per_kwh(delta, v.grid_carbon_intensity)

    def snapshot(self) -> tuple[GridValues, dict, dict, dict, float | None]:
        """(values in effect, cost totals, grams totals, errors by reason, read time), after accruing."""
        with self._lock:
            self._accrue()
            return self.values, dict(self.cost), dict(self.grams), dict(self.errors), self.read_at
