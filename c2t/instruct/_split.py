"""Train / validation / test splits of cells: stratified by a label, optionally grouped, deterministic for a seed.

Cells are split (not examples), so a cell and every example built from it land in one split.

- Ungrouped: each label's cells are shuffled (seeded) and cut by the fractions (largest remainder), so every
  label keeps its proportion in every split to within one cell, and each label with at least as many cells
  as there are non-empty splits appears in each of them.
- Grouped (by donor, batch, sample ...): whole groups go to one split, chosen with scikit-learn's
  ``StratifiedGroupKFold`` (folds balanced by label, then folds assigned to splits by the fractions); the
  fractions hold only as closely as the group sizes allow.

Examples
--------
>>> import numpy as np
>>> labels = np.repeat([0, 1], [50, 30])
>>> split = assign_splits(labels, fractions=(0.8, 0.1, 0.1), seed=0)
>>> [np.bincount(split[labels == k], minlength=3).tolist() for k in (0, 1)]
[[40, 5, 5], [24, 3, 3]]
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from c2t._errors import C2TInputError

SPLITS = ("train", "validation", "test")
_MAX_FOLDS = 20


def parse_fractions(split) -> tuple[float, float, float]:
    """Fractions of train/validation/test from a sequence of 3 numbers or a mapping by split name.

    Examples
    --------
    >>> parse_fractions({"train": 8, "validation": 1, "test": 1})
    (0.8, 0.1, 0.1)
    """
    if isinstance(split, Mapping):
        unknown = set(split) - set(SPLITS)
        if unknown:
            msg = f"split has unknown names {sorted(unknown)}; use {', '.join(SPLITS)}"
            raise C2TInputError(msg)
        values = [split.get(name, 0) for name in SPLITS]
    else:
        values = list(split) if isinstance(split, Sequence) and not isinstance(split, str) else [split]
    if len(values) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in values):
        msg = f"split must give three non-negative fractions for {'/'.join(SPLITS)}, not {split!r}"
        raise C2TInputError(msg)
    total = float(sum(values))
    if total <= 0 or values[0] <= 0:
        msg = f"split must give the train split a positive fraction, not {split!r}"
        raise C2TInputError(msg)
    return tuple(float(v) / total for v in values)  # type: ignore[return-value]


def _largest_remainder(n: int, fractions: Sequence[float], minimum: Sequence[int]) -> np.ndarray:
    """Integer counts summing to ``n``, proportional to ``fractions``, each at least ``minimum``."""
    raw = np.asarray(fractions) * n
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    for i, low in enumerate(minimum):
        while counts[i] < low:
            donor = int(np.argmax(counts - np.asarray(minimum)))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def check_label_counts(labels: np.ndarray, names: np.ndarray, fractions: Sequence[float], key: str) -> None:
    """Refuse labels with fewer cells than there are non-empty splits."""
    need = sum(f > 0 for f in fractions)
    counts = np.bincount(labels[labels >= 0], minlength=len(names))
    rare = [(str(names[i]), int(counts[i])) for i in np.flatnonzero((counts > 0) & (counts < need))]
    if rare:
        shown = ", ".join(f"{name!r} ({n} cell{'s' * (n != 1)})" for name, n in rare[:5])
        more = f" and {len(rare) - 5} more" if len(rare) > 5 else ""
        msg = (f"too few cells to stratify by {key!r}: {shown}{more}; each label needs at least {need} "
               f"(one per split); remove those cells (where=) or set stratify to another column or null")
        raise C2TInputError(msg)


def assign_splits(
    labels: np.ndarray | None,
    *,
    fractions: Sequence[float],
    seed: int,
    groups: np.ndarray | None = None,
    n: int | None = None,
    group_key: str = "group",
) -> np.ndarray:
    """Split index (0 train, 1 validation, 2 test) of each cell.

    Parameters
    ----------
    labels
        Integer label codes per cell (-1: missing, a stratum of its own), or ``None`` for no stratification.
    fractions
        Train, validation and test fractions (summing to 1).
    seed
        Seeds the shuffles; the result depends on nothing else.
    groups
        Integer group codes per cell; no group is split across train/validation/test.
    n
        Number of cells (needed when both ``labels`` and ``groups`` are ``None``).
    group_key
        Name of the group column, for error messages.

    Returns
    -------
    numpy.ndarray
        ``int8`` split index per cell.
    """
    if labels is None:
        size = n if groups is None else len(groups)
        labels = np.zeros(size, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if groups is not None:
        return _grouped(labels, np.asarray(groups), fractions, seed, group_key)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B117]))
    out = np.empty(len(labels), dtype=np.int8)
    nonzero = [1 if f > 0 else 0 for f in fractions]
    for code in np.unique(labels):
        rows = np.flatnonzero(labels == code)
        rows = rows[rng.permutation(len(rows))]
        minimum = nonzero if len(rows) >= sum(nonzero) else [0, 0, 0]
        counts = _largest_remainder(len(rows), fractions, minimum)
        out[rows] = np.repeat(np.arange(3, dtype=np.int8), counts)
    return out


def _grouped(labels: np.ndarray, groups: np.ndarray, fractions: Sequence[float], seed: int, group_key: str) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    if (groups < 0).any():
        msg = f"group column {group_key!r} has {int((groups < 0).sum())} missing values; every cell needs a group"
        raise C2TInputError(msg)
    unique = np.unique(groups)
    nonzero = [1 if f > 0 else 0 for f in fractions]
    if len(unique) < sum(nonzero):
        msg = (f"group column {group_key!r} has {len(unique)} group(s); splitting by group into "
               f"{sum(nonzero)} non-empty splits needs at least {sum(nonzero)}")
        raise C2TInputError(msg)
    n_folds = min(len(unique), _MAX_FOLDS)
    folds_per_split = _largest_remainder(n_folds, fractions, nonzero)
    fold = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for number, (_, rows) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            fold[rows] = number
    split = np.repeat(np.arange(3, dtype=np.int8), folds_per_split)[fold]
    empty = [SPLITS[s] for s in range(3) if nonzero[s] and not (split == s).any()]
    if empty:
        msg = (f"splitting by {group_key!r} left the {empty[0]} split empty ({len(unique)} groups); "
               "use a column with more groups or set that split's fraction to 0")
        raise C2TInputError(msg)
    return split
