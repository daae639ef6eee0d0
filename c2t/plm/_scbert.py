"""scBERT's expression bins over a fixed gene panel (Yang et al. 2022, Nature Machine Intelligence)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from c2t._errors import C2TInputError
from c2t.plm._base import Block, CellTokenizer, as_genes, check_positive_int
from c2t.plm._encoding import ID_DTYPE, MASK_DTYPE, Encoding
from c2t.plm._vocab import TokenVocab


class ScBERTTokenizer(CellTokenizer):
    """scBERT: every gene of a fixed panel, in panel order, carries its expression bin.

    The published recipe: counts are scaled to 10,000 per cell and transformed with ``log2(1 + x)``; the
    value is floored to an integer and capped at ``max_bin`` (5), so the tokens are bins 0..5, and one
    more token, ``<mask>`` (= 6), is used for masking (scBERT also pads with it). Position *i* is panel gene
    *i* (scBERT adds a gene2vec embedding per position), so ``input_ids`` has one column per panel gene,
    zeros where the gene is not expressed or not measured, plus the extra final position that scBERT appends
    (bin 0, ``append_position=True``). ``attention_mask`` is all ones (a read-only view: the panel is fixed,
    nothing is padded). Masked language modelling masks expressed genes only. Needs raw counts. (scBERT's
    Performer attends over all 16,907 positions; a BERT pre-trained by c2t on this input uses full attention,
    so on a CPU keep the panel small, e.g. highly variable genes.)

    Parameters
    ----------
    genes
        The gene panel (default: the genes of the data passed to :meth:`fit`); scBERT's own is 16,906 genes.
    max_bin
        The cap (5 in scBERT: 7 classes counting 0 and the mask token).
    log_base, target_sum
        The transform ``log_base(1 + count / total x target_sum)``.
    append_position
        Add scBERT's extra last position (always bin 0).

    Examples
    --------
    Counts A=0, B=4, C=1, D=4, E=11 (total 20, so x 500): log2(1 + 2,000) = 10.97 -> capped at 5;
    log2(1 + 500) = 8.97 -> 5; log2(1 + 5,500) -> 5. With ``target_sum=20`` the values stay small:
    log2(1 + 4) = 2.32 -> 2, log2(2) = 1 -> 1, log2(12) = 3.58 -> 3:

    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.array([[0, 4, 1, 4, 11]], dtype=np.float32))
    >>> adata.var_names = ["A", "B", "C", "D", "E"]
    >>> ScBERTTokenizer()(adata)["input_ids"].tolist()
    [[0, 5, 5, 5, 5, 0]]
    >>> tok = ScBERTTokenizer(genes=["E", "D", "C", "B", "A", "F"], target_sum=20)
    >>> enc = tok(adata)
    >>> enc["input_ids"].tolist()  # panel order E, D, C, B, A; F not measured -> 0; the appended position
    [[3, 2, 1, 2, 0, 0, 0]]
    >>> enc.report["genes"]["n_vocabulary_genes_absent_from_data"]
    1
    """

    recipe = "scbert"
    needs_counts = True

    def __init__(self, *, genes: Sequence[str] | None = None, max_bin: int = 5, log_base: float = 2.0,
                 target_sum: float = 1e4, append_position: bool = True) -> None:
        check_positive_int("max_bin", max_bin)
        if not log_base > 1:
            msg = f"log_base must be greater than 1, not {log_base!r}"
            raise C2TInputError(msg)
        self.max_bin = int(max_bin)
        self.log_base = float(log_base)
        self.target_sum = float(target_sum)
        self.append_position = bool(append_position)
        self.panel = as_genes(genes)
        if self.panel is not None:
            self._build_vocab(self.panel)

    def _build_vocab(self, genes: np.ndarray, obs=None) -> None:
        if len(set(genes)) != len(genes):
            dup = pd.Index(genes)[pd.Index(genes).duplicated()][:5].tolist()
            msg = f"gene panel names must be unique; duplicated: {', '.join(map(str, dup))}"
            raise C2TInputError(msg)
        self.panel = np.asarray(genes, dtype=object)
        bins = [str(b) for b in range(self.max_bin + 1)]
        self.vocab = TokenVocab({**{b: i for i, b in enumerate(bins)}, "<mask>": self.max_bin + 1},
                                specials={"mask": "<mask>", "pad": "<mask>"}, extra=bins)

    @property
    def max_length(self) -> int | None:
        return None if self.panel is None else len(self.panel) + self.append_position

    def _gene_lookup(self) -> tuple[np.ndarray, np.ndarray]:
        return self.panel, np.arange(len(self.panel))

    def _encode(self, block: Block) -> Encoding:
        from c2t.plm._kernels import dense_bins

        m = block.matrix
        n = m.shape[0]
        width = self.max_length
        ids = np.zeros((n, width), dtype=ID_DTYPE)
        scale = np.divide(self.target_sum, block.totals, out=np.zeros_like(block.totals), where=block.totals > 0)
        dense_bins(m.indptr, m.indices, m.data, block.col_map, scale, 1.0 / np.log(self.log_base), self.max_bin, ids)

        def expressed() -> np.ndarray:  # computed only when masked language modelling asks for it
            out = np.zeros((n, width), dtype=bool)
            rows = np.repeat(np.arange(n), np.diff(m.indptr))
            pos = block.col_map[m.indices]
            keep = (pos >= 0) & (m.data > 0)
            out[rows[keep], pos[keep]] = True
            return out
        special = np.zeros(width, dtype=bool)
        special[width - 1] = self.append_position
        special = np.broadcast_to(special, (n, width))  # the same for every cell: a view, no memory
        ones = np.broadcast_to(np.ones(1, dtype=MASK_DTYPE), (n, width))  # read-only view: no padding, no memory
        return Encoding({"input_ids": ids, "attention_mask": ones},
                        special_mask=special, maskable=expressed,
                        pad_values={"input_ids": self.max_bin + 1, "attention_mask": 0})

    def _params(self) -> dict[str, Any]:
        return {"genes": None if self.panel is None else self.panel.tolist(), "max_bin": self.max_bin,
                "log_base": self.log_base, "target_sum": self.target_sum, "append_position": self.append_position}
