"""scFoundation's input (Hao et al. 2024, Nature Methods): expressed genes with values, plus depth tokens T and S."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from c2t._errors import C2TInputError
from c2t.plm._base import Block, CellTokenizer, as_genes
from c2t.plm._encoding import MASK_DTYPE, Encoding
from c2t.plm._vocab import TokenVocab

_RESOLUTION = re.compile(r"^([tfa])(-?\d+(?:\.\d+)?)$")


class ScFoundationTokenizer(CellTokenizer):
    """scFoundation (xTrimoGene): the encoder sees only the expressed genes, each with its continuous value,
    and two total-count tokens.

    The published recipe: values are ``log1p(count / total x 10,000)``; ``T = log10(total count)`` is the
    cell's depth and ``S`` the depth the model is asked to represent, set by ``resolution`` (scFoundation's
    ``tgthighres``): ``"t4"`` makes S = 4 (a target of 10,000 counts; the default), ``"fX"`` makes
    S = log10(total x X), ``"aX"`` makes S = T + X. The sequence is the expressed genes in vocabulary order
    (the value-embedding model has gene position embeddings, not a rank), then ``<T>`` and ``<S>`` with
    their values. Padding: ``<pad>`` with value 0. Vocabulary: ``<pad>`` = 0, ``<mask>`` = 1, ``<T>`` = 2,
    ``<S>`` = 3, genes (scFoundation's panel is 19,264 genes). Needs raw counts (T is the raw total).

    Parameters
    ----------
    genes
        The gene vocabulary (default: the data's genes).
    resolution
        ``"t<S>"``, ``"f<fold>"`` or ``"a<addition>"`` (see above).
    target_sum
        The per-cell scale of the values.

    Examples
    --------
    Counts A=0, B=4, C=1, D=4, E=11, total 20: values log1p(2,000) = 7.601, log1p(500) = 6.217, ...,
    T = log10(20) = 1.301, S = 4:

    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.array([[0, 4, 1, 4, 11]], dtype=np.float32))
    >>> adata.var_names = ["A", "B", "C", "D", "E"]
    >>> tok = ScFoundationTokenizer()
    >>> enc = tok(adata)
    >>> tok.vocab.tokens()[enc["input_ids"][0]].tolist()
    ['B', 'C', 'D', 'E', '<T>', '<S>']
    >>> enc["values"][0].astype(float).round(3).tolist()
    [7.601, 6.217, 7.601, 8.613, 1.301, 4.0]
    """

    positional = False  # no position embedding: the model sees a set
    recipe = "scfoundation"
    needs_counts = True

    def __init__(self, *, genes: Sequence[str] | None = None, resolution: str = "t4", target_sum: float = 1e4) -> None:
        match = _RESOLUTION.match(str(resolution))
        if not match:
            msg = f"resolution must look like 't4', 'f2' or 'a1' (scFoundation's tgthighres), not {resolution!r}"
            raise C2TInputError(msg)
        self.resolution = str(resolution)
        self._mode, self._amount = match.group(1), float(match.group(2))
        if self._mode == "f" and self._amount <= 0:
            msg = f"resolution {resolution!r}: the fold must be positive"
            raise C2TInputError(msg)
        self.target_sum = float(target_sum)
        self.genes = as_genes(genes)
        if self.genes is not None:
            self._build_vocab(self.genes)

    def _build_vocab(self, genes: np.ndarray, obs=None) -> None:
        self.vocab = TokenVocab.build(genes, specials=["<pad>", "<mask>", "<T>", "<S>"])

    def depth_values(self, totals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(T, S)`` of cells with these total counts."""
        t = np.log10(np.maximum(totals, 1.0))
        if self._mode == "t":
            s = np.full_like(t, self._amount)
        elif self._mode == "f":
            s = np.log10(np.maximum(totals, 1.0) * self._amount)
        else:
            s = t + self._amount
        return t, s

    def _encode(self, block: Block) -> Encoding:
        from c2t.plm._kernels import gather_sorted

        m = block.matrix
        n = m.shape[0]
        counts = block.n_kept.astype(np.int64)
        width = int(counts.max(initial=0)) + 2
        pad = self.vocab.id("pad")
        ids = np.full(n * width, pad, dtype=np.int64)
        values = np.zeros(n * width, dtype=np.float32)
        scale = np.divide(self.target_sum, block.totals, out=np.zeros_like(block.totals), where=block.totals > 0)
        offsets = np.arange(n, dtype=np.int64) * width
        gather_sorted(m.indptr, m.indices, m.data, block.col_map, scale, log1p=True, offsets=offsets, out_ids=ids,
                      out_values=values)
        ids = ids.reshape(n, width).astype(np.int32)
        values = values.reshape(n, width)
        rows = np.arange(n)
        t, s = self.depth_values(block.totals)
        ids[rows, counts], ids[rows, counts + 1] = self.vocab.id("t"), self.vocab.id("s")
        values[rows, counts], values[rows, counts + 1] = t, s
        mask = (np.arange(width) < (counts + 2)[:, None]).astype(MASK_DTYPE)
        return Encoding({"input_ids": ids, "attention_mask": mask, "values": values},
                        special_mask=self._special_mask(ids, mask),
                        pad_values={"input_ids": pad, "attention_mask": 0, "values": 0.0})

    def _params(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "target_sum": self.target_sum}
