"""Sparse (cells x genes) times dense (genes x dim), parallel over cells.

The dense matrix is read in blocks of rows small enough to stay in the CPU cache while every cell adds the
contributions of its genes in that block (CSR indices are sorted, so each cell's entries for a block are
contiguous and a per-cell cursor finds them). Reading the gene matrix once per block instead of once per
non-zero is what makes this several times faster than scipy's sparse @ dense.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_BLOCK_ROWS = 1024


@nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _blocked_product(indptr, indices, data, dense, block, out):
    n = len(indptr) - 1
    n_rows, dim = dense.shape
    cursor = indptr[:-1].copy()
    for g0 in range(0, n_rows, block):
        g1 = min(n_rows, g0 + block)
        for i in nb.prange(n):
            j = cursor[i]
            end = indptr[i + 1]
            o = out[i]
            # eight non-zeros per sweep over the output row: it is loaded and stored once per eight gene
            # rows instead of once per row (about 1.6x faster than one at a time)
            while j + 7 < end and indices[j + 7] < g1:
                v0, v1, v2, v3 = np.float32(data[j]), np.float32(data[j + 1]), np.float32(data[j + 2]), np.float32(data[j + 3])
                v4, v5, v6, v7 = np.float32(data[j + 4]), np.float32(data[j + 5]), np.float32(data[j + 6]), np.float32(data[j + 7])
                r0, r1, r2, r3 = dense[indices[j]], dense[indices[j + 1]], dense[indices[j + 2]], dense[indices[j + 3]]
                r4, r5, r6, r7 = dense[indices[j + 4]], dense[indices[j + 5]], dense[indices[j + 6]], dense[indices[j + 7]]
                for d in range(dim):
                    o[d] += ((v0 * r0[d] + v1 * r1[d]) + (v2 * r2[d] + v3 * r3[d])) + (
                        (v4 * r4[d] + v5 * r5[d]) + (v6 * r6[d] + v7 * r7[d]))
                j += 8
            while j < end and indices[j] < g1:
                v = np.float32(data[j])
                row = dense[indices[j]]
                for d in range(dim):
                    o[d] += v * row[d]
                j += 1
            cursor[i] = j


@nb.njit(parallel=True, cache=True, nogil=True)
def _finish_rows(indptr, indices, data, column_weight, out, average, l2):
    """In place, per cell: divide by the summed weights of its genes with text (``average``), then scale to
    unit length (``l2``); all-zero rows stay zero."""
    for i in nb.prange(out.shape[0]):
        o = out[i]
        if average:
            total = 0.0
            for j in range(indptr[i], indptr[i + 1]):
                total += data[j] * column_weight[indices[j]]
            if total > 0:
                scale = np.float32(1.0 / total)
                for d in range(o.shape[0]):
                    o[d] *= scale
        if l2:
            norm = 0.0
            for d in range(o.shape[0]):
                norm += o[d] * o[d]
            if norm > 0:
                scale = np.float32(1.0 / np.sqrt(norm))
                for d in range(o.shape[0]):
                    o[d] *= scale


def weighted_sum(block, dense_by_column: np.ndarray, *, out: np.ndarray | None = None, column_has_text=None,
                 average: bool = False, l2: bool = False) -> np.ndarray:
    """``block @ dense_by_column`` for a canonical CSR ``block`` (sorted indices), as float32, into ``out``
    (zeroed here) when given; then, per cell, divided by the summed weights of its columns that have text
    (``average``, weights ``column_has_text``) and scaled to unit length (``l2``)."""
    assert block.has_canonical_format
    if out is None:
        out = np.zeros((block.shape[0], dense_by_column.shape[1]), dtype=np.float32)
    else:
        out[:] = 0.0
    _blocked_product(block.indptr, block.indices, block.data, np.ascontiguousarray(dense_by_column, dtype=np.float32),
                     _BLOCK_ROWS, out)
    if average or l2:
        weights = np.ones(block.shape[1], np.float32) if column_has_text is None else column_has_text
        _finish_rows(block.indptr, block.indices, block.data, np.asarray(weights, dtype=np.float32), out, average, l2)
    return out
