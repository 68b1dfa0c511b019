"""Exact quantiles of a stream, keeping only each column's extreme values.

For the quantile range ``[t, 1 − t]`` of ``n <= max_count`` values, numpy's default
('linear') definition only ever looks at the ``floor((n − 1)·t) + 2`` smallest and largest
values. :class:`QuantileTails` keeps exactly those per column while values stream in, so a
million poses need a few hundred values per column instead of all of them.
"""

from __future__ import annotations

import math

import numpy as np


class QuantileTails:
    """Lower and upper ``tail``-quantiles of ``(n, K)`` values added in blocks.

    ``max_count`` bounds the number of values that will ever be added (e.g. the frames read
    before any are rejected); ``tail = 0`` gives plain min and max.
    """

    def __init__(self, columns: int, max_count: int, tail: float) -> None:
        if not 0.0 <= tail < 0.5:
            raise ValueError(f"tail must be in [0, 0.5), got {tail}")
        self.tail = tail
        self.keep = math.floor(max(max_count - 1, 0) * tail) + 2
        self.max_count = max_count
        self.count = 0
        self._low = np.empty((0, columns))
        self._high = np.empty((0, columns))  # negated, so both ends keep their smallest

    def add(self, values: np.ndarray) -> None:
        """Add a block ``(n, K)`` of values."""
        v = np.asarray(values, dtype=np.float64)
        self.count += v.shape[0]
        if self.count > self.max_count:
            raise ValueError(f"more than max_count={self.max_count} values were added")
        self._low = _smallest(np.concatenate((self._low, v)), self.keep)
        self._high = _smallest(np.concatenate((self._high, -v)), self.keep)

    def quantiles(self) -> np.ndarray:
        """``(2, K)``: the ``tail`` and ``1 − tail`` quantiles (numpy's linear method)."""
        if self.count == 0:
            raise ValueError("no values were added")
        return np.stack((self._lower(self._low), -self._lower(self._high)))

    def _lower(self, kept: np.ndarray) -> np.ndarray:
        ordered = np.sort(kept, axis=0)
        position = (self.count - 1) * self.tail
        i = math.floor(position)
        frac = position - i
        a = ordered[i]
        b = ordered[min(i + 1, self.count - 1)]
        return a + (b - a) * frac


def _smallest(values: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` smallest values of each column (unordered), ``(min(n, k), K)``."""
    if values.shape[0] <= k:
        return values
    return np.partition(values, k - 1, axis=0)[:k]
