"""``Encoding``: the model inputs of a batch of cells, a plain dict that a Hugging Face model takes as ``**kwargs``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: dtypes of the arrays a tokeniser returns (torch's embedding layers take int32 ids)
ID_DTYPE = np.int32
MASK_DTYPE = np.int8


class Encoding(dict):
    """Model inputs for a batch of cells: ``input_ids``, ``attention_mask`` and, where the recipe has them,
    ``values`` (or ``inputs_embeds``, ``batch_ids``), as numpy arrays or torch tensors.

    Being a ``dict``, it goes straight into a model: ``model(**encoding)``. What the model must not see is
    kept in attributes.

    Attributes
    ----------
    cell_ids
        The ``obs_names`` of the cells, one per row (CellPLM: the cells of each row of cells, see ``cell_index``).
    special_mask
        ``True`` where ``input_ids`` holds a special, metadata or padding token (not a gene): pooling and
        masking skip these positions.
    pad_values
        The padding value of each array (used when batches are concatenated).
    report
        Gene matching counts (genes of the data found in the vocabulary, and not), and recipe notes.
    cell_index
        CellPLM only: for each (row, position) the cell it holds, -1 for padding.
    maskable
        ``True`` where masked language modelling may mask a token (default: every gene position; scBERT: the
        expressed genes).

    Examples
    --------
    >>> enc = Encoding({"input_ids": np.array([[5, 6, 0]]), "attention_mask": np.array([[1, 1, 0]])},
    ...                pad_values={"input_ids": 0, "attention_mask": 0})
    >>> enc.lengths.tolist()
    [2]
    >>> sorted(enc)
    ['attention_mask', 'input_ids']
    """

    def __init__(self, arrays: dict[str, Any], *, cell_ids: Sequence[str] | None = None,
                 special_mask: np.ndarray | None = None, pad_values: dict[str, Any] | None = None,
                 report: dict[str, Any] | None = None, cell_index: np.ndarray | None = None,
                 maskable: np.ndarray | None = None) -> None:
        super().__init__(arrays)
        n = len(next(iter(arrays.values()))) if arrays else 0
        self.cell_ids = np.asarray(cell_ids if cell_ids is not None else [str(i) for i in range(n)], dtype=object)
        self.special_mask = special_mask
        self.pad_values = dict(pad_values or {})
        self.report = dict(report or {})
        self.cell_index = cell_index
        self._maskable = maskable

    @property
    def maskable(self) -> np.ndarray | None:
        if callable(self._maskable):  # computed on first use
            self._maskable = self._maskable()
        if self._maskable is not None:
            return self._maskable
        return None if self.special_mask is None else ~self.special_mask

    @property
    def lengths(self) -> np.ndarray:
        """Number of real (non-padding) positions in each row."""
        return np.asarray(self["attention_mask"]).astype(bool).sum(axis=1)

    def to_torch(self) -> Encoding:
        """The same encoding with torch tensors (shared memory, no copy)."""
        import torch

        arrays = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.items()}
        return self._like(arrays)

    def _like(self, arrays: dict[str, Any], rows: slice | None = None) -> Encoding:
        """An encoding with other arrays and the same attributes (those of ``rows`` when given)."""
        def cut(a):
            return a if a is None or rows is None else a[rows]

        cell_ids = self.cell_ids if rows is None or self.cell_index is not None else self.cell_ids[rows]
        return Encoding(arrays, cell_ids=cell_ids, special_mask=cut(self.special_mask), pad_values=self.pad_values,
                        report=self.report, cell_index=cut(self.cell_index),
                        maskable=self._maskable if rows is None or self._maskable is None else cut(self.maskable))

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)


def pad_to(array: np.ndarray, width: int, *, value) -> np.ndarray:
    """Pad (or keep) the second axis of ``array`` to ``width`` with ``value``."""
    if array.ndim < 2 or array.shape[1] == width:
        return array
    out = np.full((array.shape[0], width, *array.shape[2:]), value, dtype=array.dtype)
    out[:, : array.shape[1]] = array
    return out


def concat(encodings: Sequence[Encoding]) -> Encoding:
    """Stack the rows of several encodings, padding every array to the widest (sequence arrays only)."""
    first = encodings[0]
    if len(encodings) == 1:
        return first
    arrays = {}
    for key in first:
        parts = [np.asarray(e[key]) for e in encodings]
        if parts[0].ndim >= 2:
            width = max(p.shape[1] for p in parts)
            parts = [pad_to(p, width, value=first.pad_values.get(key, 0)) for p in parts]
        arrays[key] = np.concatenate(parts)
    special = None
    if first.special_mask is not None:
        width = max(e.special_mask.shape[1] for e in encodings)
        special = np.concatenate([pad_to(e.special_mask, width, value=True) for e in encodings])
    maskable = None
    if first._maskable is not None:
        width = max(e.maskable.shape[1] for e in encodings)
        maskable = np.concatenate([pad_to(e.maskable, width, value=False) for e in encodings])
    cell_index = None
    if first.cell_index is not None:
        width = max(e.cell_index.shape[1] for e in encodings)
        cell_index = np.concatenate([pad_to(e.cell_index, width, value=-1) for e in encodings])
    return Encoding(arrays, cell_ids=np.concatenate([e.cell_ids for e in encodings]), special_mask=special,
                    pad_values=first.pad_values, report=dict(first.report), cell_index=cell_index, maskable=maskable)
