"""Geneformer's rank value encoding (Theodoris et al. 2023, Nature; v2: Chen et al. 2024)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from c2t._errors import C2TInputError
from c2t.plm._base import Block, CellTokenizer, as_genes, check_positive_int
from c2t.plm._encoding import Encoding
from c2t.plm._ranking import ranked_sequences
from c2t.plm._vocab import TokenVocab


def depth_scale(block: Block, target_sum: float) -> np.ndarray:
    """``target_sum / total`` of each cell (0 for an empty cell)."""
    return np.divide(target_sum, block.totals, out=np.zeros_like(block.totals), where=block.totals > 0)


def nonzero_statistic(blocks: Iterator[Block], n_tokens: int, *, target_sum: float, statistic: str,
                      group_of_cell=None, n_groups: int = 1) -> np.ndarray:
    """Per token id (and per group of cells): the median or mean of ``count / total x target_sum`` over the
    cells where the gene is non-zero. NaN where a gene is never expressed. Shape ``(n_groups, n_tokens)``."""
    from c2t.plm._kernels import group_medians

    keys, vals = [], []
    for block in blocks:
        m = block.matrix
        tok = block.col_map[m.indices]
        keep = (tok >= 0) & (m.data > 0)
        rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))[keep]
        scale = depth_scale(block, target_sum)
        group = np.zeros(m.shape[0], np.int64) if group_of_cell is None else group_of_cell(block)
        keys.append(group[rows] * n_tokens + tok[keep])
        vals.append(m.data[keep] * scale[rows])
    keys = np.concatenate(keys).astype(np.int64)
    vals = np.concatenate(vals).astype(np.float64)
    size = n_groups * n_tokens
    if statistic == "median":
        out = group_medians(keys, vals, size)
    else:
        count = np.bincount(keys, minlength=size)
        out = np.bincount(keys, weights=vals, minlength=size) / np.where(count > 0, count, np.nan)
    return out.reshape(n_groups, n_tokens)


class GeneformerTokenizer(CellTokenizer):
    """Geneformer's rank value encoding.

    The published recipe: each cell's raw counts are divided by the cell's total count and multiplied by
    10,000, then divided by the gene's *non-zero median* (the median of that normalised value over the
    reference cells where the gene is expressed); the expressed genes are ranked by this value, highest
    first, and the sequence is the ranked gene tokens, truncated:

    - ``version=1``: the top 2,048 genes; vocabulary ``<pad>`` = 0, ``<mask>`` = 1, then genes;
    - ``version=2``: ``<cls>``, the top 4,094 genes, ``<eos>`` (4,096 tokens); ``<pad>`` = 0, ``<mask>`` = 1,
      ``<cls>`` = 2, ``<eos>`` = 3, then genes.

    Sequences are right-padded with ``<pad>``. Genes without a median (never expressed in the reference)
    are not in the vocabulary. When ``gene_medians`` is not given, they are computed from the data passed to
    :meth:`fit` (or on first call) exactly, as the reference. Equal values are ordered by c2t's seeded
    per-cell permutation (the same in any chunking). The cell total is the sum over *all* genes of the row
    (Geneformer's ``n_counts``). Needs raw counts.

    Parameters
    ----------
    version
        1 (2,048 tokens, no special tokens) or 2 (``<cls>`` ... ``<eos>``, 4,096 tokens).
    genes
        The gene vocabulary (default: the genes of the data passed to :meth:`fit`).
    gene_medians
        Gene -> non-zero median of ``count / total x 10,000`` (the published dictionary, if you have it).
    token_dictionary
        A published gene -> token id dictionary (with ``<pad>``, ``<mask>`` and, for v2, ``<cls>``, ``<eos>``);
        overrides ``genes``.
    max_length
        Tokens per cell including special tokens (default 2,048 for v1, 4,096 for v2).
    total_key
        An ``obs`` column holding each cell's total count (the published tokenizer reads ``obs["n_counts"]``);
        default: the sum of the cell's row over every gene.
    target_sum
        The per-cell scale (10,000).
    seed
        Seeds the tie-break between equal values.

    Examples
    --------
    A 5-gene cell worked by hand. Counts A=0, B=4, C=1, D=4, E=11 (total 20, so x 10,000 / 20 = x 500);
    medians A=1, B=2, C=500, D=1,000, E=11,000 give B=1,000, C=1, D=2, E=0.5, so the rank order is B, D, C, E:

    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.array([[0, 4, 1, 4, 11]], dtype=np.float32))
    >>> adata.var_names = ["A", "B", "C", "D", "E"]
    >>> medians = {"A": 1.0, "B": 2.0, "C": 500.0, "D": 1000.0, "E": 11000.0}
    >>> tok = GeneformerTokenizer(gene_medians=medians).fit(adata)
    >>> enc = tok(adata)
    >>> tok.vocab.tokens()[enc["input_ids"][0]].tolist()
    ['B', 'D', 'C', 'E']
    >>> enc2 = GeneformerTokenizer(version=2, gene_medians=medians, max_length=4)(adata)
    >>> enc2["input_ids"].tolist()  # <cls>=2, B=5, D=7, <eos>=3: truncated to 4 tokens
    [[2, 5, 7, 3]]
    """

    recipe = "geneformer"
    needs_counts = True

    def __init__(self, *, version: Literal[1, 2] = 1, genes: Sequence[str] | None = None,
                 gene_medians: Mapping[str, float] | None = None, token_dictionary: Mapping[str, int] | None = None,
                 max_length: int | None = None, total_key: str | None = None, target_sum: float = 1e4,
                 seed: int = 0) -> None:
        if version not in (1, 2):
            msg = f"version must be 1 (2,048 tokens) or 2 (<cls> ... <eos>, 4,096 tokens), not {version!r}"
            raise C2TInputError(msg)
        check_positive_int("max_length", max_length, allow_none=True)
        self.version = version
        self.max_length = max_length or (2048 if version == 1 else 4096)
        if version == 2 and self.max_length < 3:
            msg = "max_length must be at least 3 for version 2 (<cls>, one gene, <eos>)"
            raise C2TInputError(msg)
        self.target_sum = float(target_sum)
        self.seed = int(seed)
        self.total_key = total_key
        self.obs_keys = (total_key,) if total_key else ()
        self.medians = None if gene_medians is None else {str(k): float(v) for k, v in gene_medians.items()}
        if self.medians is not None:
            bad = [g for g, v in self.medians.items() if not (v > 0 and np.isfinite(v))]
            if bad:
                msg = f"gene medians must be positive and finite; {len(bad)} are not (e.g. {bad[0]!r})"
                raise C2TInputError(msg)
        specials = ["<pad>", "<mask>"] + (["<cls>", "<eos>"] if version == 2 else [])
        self._specials = specials
        self._vocab_from_data = False
        if token_dictionary is not None:
            self.vocab = vocab_from_dictionary(token_dictionary, version=version)
        elif genes is not None:
            self.vocab = TokenVocab.build(as_genes(genes), specials=specials)
            if self.medians is not None:
                self.vocab = TokenVocab.build([g for g in as_genes(genes) if g in self.medians], specials=specials)

    @property
    def is_fitted(self) -> bool:
        return self.vocab is not None and self.medians is not None

    def _build_vocab(self, genes: np.ndarray, obs=None) -> None:
        self._vocab_from_data = True
        if self.medians is not None:
            genes = np.array([g for g in genes if g in self.medians], dtype=object)
        self.vocab = TokenVocab.build(genes, specials=self._specials)

    def _gene_lookup(self) -> tuple[np.ndarray, np.ndarray]:
        names, ids = self.vocab.gene_names, self.vocab.gene_ids
        if self.medians is None:
            return names, ids
        keep = np.array([g in self.medians for g in names], dtype=bool)
        return names[keep], ids[keep]

    def _with_totals(self, block: Block) -> Block:
        """The block with the cell totals of ``obs[total_key]`` (when set), checked."""
        if not self.total_key:
            return block
        totals = pd.to_numeric(block.obs[self.total_key], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~(np.isfinite(totals) & ((totals > 0) | (block.n_kept == 0)))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            msg = (f"obs[{self.total_key!r}] must hold each cell's positive total count; cell "
                   f"{block.cell_ids[i]!r} has {block.obs[self.total_key].iloc[i]!r}")
            raise C2TInputError(msg)
        return dataclasses.replace(block, totals=totals)

    def _fit_stats(self, blocks: Iterator[Block]) -> None:
        blocks = (self._with_totals(b) for b in blocks)
        if self.medians is not None:
            for _ in blocks:  # still check the values (counts) of the reference
                pass
            return
        stat = nonzero_statistic(blocks, len(self.vocab), target_sum=self.target_sum, statistic="median")[0]
        names, ids = self.vocab.gene_names, self.vocab.gene_ids
        self.medians = {str(g): float(stat[i]) for g, i in zip(names, ids, strict=True) if np.isfinite(stat[i])}
        if not self.medians:
            msg = "no gene of the vocabulary is expressed in the reference data; cannot compute gene medians"
            raise C2TInputError(msg)
        if self._vocab_from_data:  # as in Geneformer, the vocabulary is the genes that have a median
            self._build_vocab(names)

    def _col_factor(self, block: Block) -> np.ndarray:
        key = (id(self.medians), id(self.vocab))
        if getattr(self, "_inv_key", None) != key:  # 1 / median per token id, computed once
            med = pd.Series(self.vocab.gene_names).map(self.medians).to_numpy(dtype=np.float64)
            inv = np.zeros(len(self.vocab), np.float64)
            ok = np.isfinite(med) & (med > 0)
            inv[self.vocab.gene_ids[ok]] = 1.0 / med[ok]
            self._inv_median, self._inv_key = inv, key
        col = block.col_map
        return np.where(col >= 0, self._inv_median[np.maximum(col, 0)], 0.0)

    def _encode(self, block: Block) -> Encoding:
        block = self._with_totals(block)
        v2 = self.version == 2
        pad = self.vocab.id("pad")
        prefix = np.full((block.matrix.shape[0], 1), self.vocab.id("cls")) if v2 else None
        ids, mask, _, special = ranked_sequences(
            block, top_k=self.max_length - 2 * v2, seed=self.seed, pad_id=pad, row_scale=depth_scale(block, self.target_sum),
            col_scale=self._col_factor(block)[None, :], prefix=prefix, suffix_id=self.vocab.id("eos") if v2 else None)
        return Encoding({"input_ids": ids, "attention_mask": mask}, special_mask=special,
                        pad_values={"input_ids": pad, "attention_mask": 0})

    def _params(self) -> dict[str, Any]:
        return {"version": self.version, "gene_medians": self.medians, "max_length": self.max_length,
                "total_key": self.total_key, "target_sum": self.target_sum, "seed": self.seed}


def vocab_from_dictionary(token_dictionary: Mapping[str, int], *, version: int) -> TokenVocab:
    """A :class:`TokenVocab` from a published Geneformer gene -> token id dictionary."""
    d = {str(k): int(v) for k, v in token_dictionary.items()}
    needed = ["<pad>", "<mask>"] + (["<cls>", "<eos>"] if version == 2 else [])
    missing = [t for t in needed if t not in d]
    if missing:
        msg = f"the token dictionary lacks {', '.join(missing)} (version {version} needs {', '.join(needed)})"
        raise C2TInputError(msg)
    present = [t for t in ("<pad>", "<mask>", "<cls>", "<eos>") if t in d]
    return TokenVocab(d, specials={t.strip("<>"): t for t in present})
