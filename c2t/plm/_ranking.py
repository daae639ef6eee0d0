"""Ranked-gene sequences written straight into padded arrays (Geneformer, tGPT, Nicheformer, scMulan)."""

from __future__ import annotations

import numpy as np

from c2t.plm._base import Block
from c2t.plm._encoding import ID_DTYPE, MASK_DTYPE

_ONE = np.ones((1, 1), np.float64)


def ranked_sequences(block: Block, *, top_k: int | None, seed: int, pad_id: int, row_scale: np.ndarray | None = None,
                     col_scale: np.ndarray | None = None, row_group: np.ndarray | None = None,
                     prefix: np.ndarray | None = None, suffix_id: int | None = None,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each cell's genes ranked by ``value x row_scale[cell] x col_scale[row_group[cell], column]``
    (descending; ties by c2t's seeded, chunking-independent permutation of the gene's index in the tokeniser's
    gene list, exactly as cell sentences rank: a vocabulary built from the data gives their very order),
    truncated to ``top_k``, after the ``prefix`` tokens and before ``suffix_id``; rows padded to the longest.

    Returns
    -------
    input_ids, attention_mask, ranked values (float32, 0 outside gene positions), special_mask
    """
    from c2t.plm._kernels import rank_sequences
    from c2t.sentences._kernels import bits_for

    m = block.matrix
    n = m.shape[0]
    n_prefix = 0 if prefix is None else prefix.shape[1]
    lengths = (block.n_kept if top_k is None else np.minimum(block.n_kept, top_k)).astype(np.int64)
    width = max(n_prefix + int(lengths.max(initial=0)) + (suffix_id is not None), 1)
    ids = np.full(n * width, pad_id, dtype=ID_DTYPE)
    bits = np.zeros(n * width, dtype=np.uint32)
    offsets = np.arange(n, dtype=np.int64) * width + n_prefix
    written = np.zeros(n, np.int64)
    if row_scale is None:
        row_scale = np.ones(n, np.float64)
    if col_scale is None:
        col_scale, row_group = np.ones((1, m.shape[1]), np.float64), np.zeros(n, np.int64)
    elif row_group is None:
        row_group = np.zeros(n, np.int64)
    n_bits = bits_for(max(len(block.token_of_gene), 1))
    rank_sequences(m.indptr, m.indices, m.data, block.tie_map, block.token_of_gene, row_scale, col_scale, row_group,
                   block.start, seed, n_bits, lengths, offsets, ids, bits, written)
    ids = ids.reshape(n, width)
    if n_prefix:
        ids[:, :n_prefix] = prefix
    if suffix_id is not None:
        ids[np.arange(n), n_prefix + written] = suffix_id
    positions = np.arange(width)
    total = n_prefix + written + (suffix_id is not None)
    mask = (positions < total[:, None]).astype(MASK_DTYPE)
    genes = (positions >= n_prefix) & (positions < (n_prefix + written)[:, None])
    return ids, mask, bits.view(np.float32).reshape(n, width), ~genes
