"""Bounded label values: label cardinality that comes from outside stays under a cap."""

from __future__ import annotations

OVERFLOW = "other"


class LabelSlots:
    """Label values numbered in order of first use: `slot(value)` is the index of its label in
    `names`. The first `max_values` distinct values are their own labels; later ones fold into
    `other`. `reserved` values come first, outside the cap."""

    def __init__(self, max_values: int, reserved: tuple[str, ...] = ()):
        if max_values < 1:
            raise ValueError("max_values must be at least 1")
        self.max_values = max_values
        self._reserved = frozenset(reserved)
        self.names: list[str] = list(reserved)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._passed: set[str] = set()  # values passed through as their own labels
        self.folded = 0  # values folded into `other` (counted per occurrence)

    def slot(self, value: str) -> int:
        label = value if value in self._reserved or value in self._passed else self._label(value)
        idx = self._index.get(label)
        if idx is None:
            idx = self._index[label] = len(self.names)
            self.names.append(label)
        return idx

    def _label(self, value: str) -> str:
        if len(self._passed) < self.max_values:
            self._passed.add(value)
            return value
        self.folded += 1
        return OVERFLOW

    def index_of(self, label: str) -> int | None:
        """The slot of a label already given one, else None."""
        return self._index.get(label)
