"""Bounded label values: label cardinality that comes from outside stays under a cap."""

from __future__ import annotations

OVERFLOW = "other"


class LabelLimiter:
    """Passes the first `max_values` distinct values through; later ones fold into `other`."""

    def __init__(self, max_values: int):
        if max_values < 1:
            raise ValueError("max_values must be at least 1")
        self.max_values = max_values
        self._seen: dict[str, str] = {}
        self.folded = 0  # values folded into `other` (counted per occurrence)

    def __call__(self, value: str) -> str:
        label = self._seen.get(value)
        if label is not None:
            return label
        if len(self._seen) < self.max_values:
            self._seen[value] = value
            return value
        self.folded += 1
        return OVERFLOW
