"""The way back: from a gene's rank in a cell sentence to its expression.

Cell2Sentence fits ``expression ~ a + b * log10(rank)`` on the non-zero entries of a dataset. The best
function of rank alone (in squared error) is the mean expression at each rank; we estimate it from the
data, make it monotone non-increasing (isotonic regression weighted by the number of cells at each rank)
and store it at a few hundred knots in log-rank. Both fits come from the same per-rank sufficient
statistics (count, sum, sum of squares), which add up over chunks, so streaming conversion fits the model
exactly over all sampled cells and R² of both fits is reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["InverseModel", "RankStats"]


@dataclass
class RankStats:
    """Per-rank sufficient statistics of expression: ``count[r-1]``, ``total[r-1]``, ``total_sq[r-1]``."""

    count: np.ndarray = field(default_factory=lambda: np.zeros(0))
    total: np.ndarray = field(default_factory=lambda: np.zeros(0))
    total_sq: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_cells: int = 0

    @classmethod
    def from_ranked(cls, ranks: np.ndarray, values: np.ndarray, n_cells: int) -> RankStats:
        """Statistics of ``values`` observed at 1-based ``ranks``."""
        if len(ranks) == 0:
            return cls(n_cells=n_cells)
        idx = np.asarray(ranks, dtype=np.int64) - 1
        v = np.asarray(values, dtype=np.float64)
        size = int(idx.max()) + 1
        return cls(
            count=np.bincount(idx, minlength=size).astype(np.float64),
            total=np.bincount(idx, weights=v, minlength=size),
            total_sq=np.bincount(idx, weights=v * v, minlength=size),
            n_cells=n_cells,
        )

    def __add__(self, other: RankStats) -> RankStats:
        size = max(len(self.count), len(other.count))

        def pad(a: np.ndarray) -> np.ndarray:
            return np.pad(a, (0, size - len(a)))

        return RankStats(
            pad(self.count) + pad(other.count),
            pad(self.total) + pad(other.total),
            pad(self.total_sq) + pad(other.total_sq),
            self.n_cells + other.n_cells,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"count": self.count, "total": self.total, "total_sq": self.total_sq, "n_cells": np.array(self.n_cells)}

    @classmethod
    def from_arrays(cls, arrays: Any) -> RankStats:
        return cls(arrays["count"], arrays["total"], arrays["total_sq"], int(arrays["n_cells"]))


def _knot_ranks(max_rank: int, dense_until: int = 100, n_log: int = 200) -> np.ndarray:
    dense = np.arange(1, min(max_rank, dense_until) + 1)
    if max_rank <= dense_until:
        return dense
    sparse = np.unique(np.round(np.geomspace(dense_until, max_rank, n_log)).astype(np.int64))
    return np.union1d(dense, sparse)


@dataclass
class InverseModel:
    """Rank -> expression, fitted on a dataset's cells.

    Attributes
    ----------
    knot_ranks, knot_values
        The monotone per-rank mean expression at knots; :meth:`predict` interpolates linearly in log10(rank)
        and holds the last value beyond the last knot.
    slope, intercept
        Cell2Sentence's recipe ``expression = intercept + slope * log10(rank)``, fitted on the same data.
    r2_monotone, r2_linear
        R² of both fits over all non-zero entries used for fitting.
    method
        ``"monotone"`` (default) or ``"linear"``: which fit :meth:`predict` uses.
    """

    knot_ranks: list[int]
    knot_values: list[float]
    slope: float
    intercept: float
    r2_monotone: float
    r2_linear: float
    n_cells: int
    n_values: int
    method: str = "monotone"

    @classmethod
    def fit(cls, stats: RankStats, *, method: str = "monotone") -> InverseModel:
        """Fit both the monotone and the log-linear model from per-rank statistics."""
        from sklearn.isotonic import IsotonicRegression

        if method not in ("monotone", "linear"):
            msg = f"inverse model method must be 'monotone' or 'linear', not {method!r}"
            raise ValueError(msg)
        observed = np.flatnonzero(stats.count > 0)
        if len(observed) == 0:
            msg = "cannot fit the inverse model: no expressed genes in the sampled cells"
            raise ValueError(msg)
        ranks = observed + 1
        n = stats.count[observed]
        s = stats.total[observed]
        q = stats.total_sq[observed]
        x = np.log10(ranks)
        big_n, sx, sxx, sy, sxy, syy = n.sum(), (n * x).sum(), (n * x * x).sum(), s.sum(), (x * s).sum(), q.sum()
        denom = big_n * sxx - sx * sx
        slope = float((big_n * sxy - sx * sy) / denom) if denom > 0 else 0.0
        intercept = float((sy - slope * sx) / big_n)
        sst = syy - sy * sy / big_n

        def r2(pred: np.ndarray) -> float:
            sse = (q - 2 * pred * s + n * pred * pred).sum()
            return float(1 - sse / sst) if sst > 0 else float("nan")

        iso = IsotonicRegression(increasing=False).fit(ranks, s / n, sample_weight=n)
        knots = _knot_ranks(int(ranks.max()))
        values = iso.predict(knots)
        model = cls(
            knot_ranks=knots.tolist(),
            knot_values=np.round(values, 6).tolist(),
            slope=slope,
            intercept=intercept,
            r2_monotone=0.0,
            r2_linear=r2(intercept + slope * x),
            n_cells=stats.n_cells,
            n_values=int(big_n),
            method=method,
        )
        model.r2_monotone = r2(model._predict_monotone(ranks))
        return model

    def _predict_monotone(self, ranks: np.ndarray) -> np.ndarray:
        return np.interp(np.log10(ranks), np.log10(self.knot_ranks), self.knot_values)

    def predict(self, ranks: np.ndarray) -> np.ndarray:
        """Expression (log1p of CP10k for counts input) expected at 1-based ``ranks``.

        Examples
        --------
        >>> stats = RankStats.from_ranked(np.array([1, 2, 3, 1, 2]), np.array([3.0, 2.0, 1.0, 3.0, 2.0]), 2)
        >>> InverseModel.fit(stats).predict(np.array([1, 2, 3])).round(2).tolist()
        [3.0, 2.0, 1.0]
        """
        ranks = np.asarray(ranks, dtype=np.float64)
        if self.method == "linear":
            out = self.intercept + self.slope * np.log10(ranks)
        else:
            out = self._predict_monotone(ranks)
        return np.maximum(out, 0.0).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InverseModel:
        return cls(**data)
