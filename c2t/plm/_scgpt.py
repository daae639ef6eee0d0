"""scGPT's gene tokens with per-cell quantile value bins (Cui et al. 2024, Nature Methods)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from c2t._errors import C2TInputError
from c2t.plm._base import Block, CellTokenizer, as_genes, check_positive_int
from c2t.plm._encoding import ID_DTYPE, MASK_DTYPE, Encoding
from c2t.plm._metadata import learn_tokens, metadata_ids, token_of
from c2t.plm._vocab import TokenVocab


class ScGPTTokenizer(CellTokenizer):
    """scGPT: gene tokens plus each gene's expression bin, binned per cell.

    The published recipe: the cell's non-zero values are divided into ``n_bins - 1`` intervals of equal
    mass — the edges are the quantiles of those values at ``n_bins - 1`` evenly spaced probabilities from
    0 to 1 — and each non-zero value gets the index (1 .. ``n_bins - 1``) of its interval, so that the
    bins mean the same in every cell whatever its depth; zero stays bin 0. A value equal to several
    edges (ties are common in counts) spans several intervals; as in scGPT its bin is drawn uniformly
    among them (here from a hash of seed, cell and gene, so it is reproducible). Binning is the same on
    counts or log-normalised data (a per-cell monotone transform keeps quantiles).

    The sequence is ``<cls>`` (value 0) then the cell's expressed genes in vocabulary order (scGPT has no
    positional encoding); when there are more than ``max_length - 1``, a seeded random subset is kept, as
    scGPT samples genes. With ``include_zero_genes=True`` every vocabulary gene measured in the data is
    included (zeros as bin 0), as when scGPT is fine-tuned on highly variable genes. Padding: ``<pad>``
    with value ``pad_value`` (-2). Vocabulary: ``<pad>`` = 0, ``<cls>`` = 1, ``<eoc>`` = 2, ``<mask>`` = 3,
    metadata tokens, genes.

    Optional metadata: ``batch_key`` adds ``batch_ids`` (one ``<batch=...>`` token per cell, which scGPT
    embeds and adds to the cell representation); ``gene_modality`` (gene -> modality, e.g. RNA, ATAC,
    protein) adds ``modality_ids`` (one ``<modality=...>`` token per position).

    Parameters
    ----------
    genes
        The gene vocabulary (default: the data's genes).
    n_bins
        Number of bins including the zero bin (51 in scGPT).
    max_length
        Tokens per cell including ``<cls>`` (scGPT pre-training: 1,200).
    include_zero_genes, batch_key, gene_modality
        See above.
    pad_value
        ``values`` at padding positions.
    seed
        Seeds tie spreading and gene sampling.

    Examples
    --------
    Counts A=0, B=4, C=1, D=4, E=11 with ``n_bins=5``: the edges are the quantiles of (1, 4, 4, 11) at 0, 1/3,
    2/3, 1 = (1, 4, 4, 11). C = 1 is in interval 1; E = 11 in interval 4; B = D = 4 equal two edges and
    span intervals 2 and 3, so each gets 2 or 3 (seeded); A = 0 is not a token:

    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.array([[0, 4, 1, 4, 11]], dtype=np.float32))
    >>> adata.var_names = ["A", "B", "C", "D", "E"]
    >>> tok = ScGPTTokenizer(n_bins=5)
    >>> enc = tok(adata)
    >>> tok.vocab.tokens()[enc["input_ids"][0]].tolist()
    ['<cls>', 'B', 'C', 'D', 'E']
    >>> v = enc["values"][0].tolist()
    >>> v[0], v[2], v[4], v[1] in (2.0, 3.0), v[3] in (2.0, 3.0)
    (0.0, 1.0, 4.0, True, True)
    """

    positional = False  # no position embedding: the model sees a set
    recipe = "scgpt"
    default_pooling = "cls"

    def __init__(self, *, genes: Sequence[str] | None = None, n_bins: int = 51, max_length: int = 1200,
                 include_zero_genes: bool = False, batch_key: str | None = None,
                 gene_modality: Mapping[str, str] | None = None, pad_value: float = -2.0, seed: int = 0) -> None:
        check_positive_int("n_bins", n_bins)
        check_positive_int("max_length", max_length)
        if n_bins < 3:
            msg = f"n_bins must be at least 3 (zero plus two value bins), not {n_bins}"
            raise C2TInputError(msg)
        if max_length < 2:
            msg = "max_length must be at least 2 (<cls> and one gene)"
            raise C2TInputError(msg)
        self.n_bins = int(n_bins)
        self.max_length = int(max_length)
        self.include_zero_genes = bool(include_zero_genes)
        self.batch_key = batch_key
        self.obs_keys = (batch_key,) if batch_key else ()
        self.gene_modality = None if gene_modality is None else {str(k): str(v) for k, v in gene_modality.items()}
        self.pad_value = float(pad_value)
        self.seed = int(seed)
        self.genes = as_genes(genes)

    def _build_vocab(self, genes: np.ndarray, obs: pd.DataFrame) -> None:
        extra: list[str] = []
        if self.batch_key:
            extra += learn_tokens([obs.rename(columns={self.batch_key: "batch"})], ["batch"])
        if self.gene_modality:
            extra += [token_of("modality", m) for m in sorted(set(self.gene_modality.values()))]
        self.vocab = TokenVocab.build(self.genes if self.genes is not None else genes,
                                      specials=["<pad>", "<cls>", "<eoc>", "<mask>"], extra=extra)

    def _encode(self, block: Block) -> Encoding:
        ids, mask, values = self._dense(block) if self.include_zero_genes else self._sparse(block)
        arrays = {"input_ids": ids, "attention_mask": mask, "values": values}
        if self.batch_key:
            batch, _ = metadata_ids(block.obs.rename(columns={self.batch_key: "batch"}), ["batch"], self.vocab.token_to_id)
            arrays["batch_ids"] = batch[:, 0].astype(ID_DTYPE)
        if self.gene_modality:
            arrays["modality_ids"] = self._modality_of_token()[ids].astype(ID_DTYPE)
        special = mask == 0
        special[:, 0] = True
        return Encoding(arrays, special_mask=special,
                        pad_values={"input_ids": self.vocab.id("pad"), "attention_mask": 0, "values": self.pad_value,
                                    "modality_ids": self.vocab.id("pad")})

    def _sparse(self, block: Block):
        from c2t.plm._kernels import scgpt_sequences

        m = block.matrix
        n = m.shape[0]
        keep = np.minimum(block.n_kept, self.max_length - 1).astype(np.int64)
        width = 1 + int(keep.max(initial=0))
        ids = np.full(n * width, self.vocab.id("pad"), dtype=ID_DTYPE)
        values = np.full(n * width, self.pad_value, dtype=np.float32)
        offsets = np.arange(n, dtype=np.int64) * width + 1
        scgpt_sequences(m.indptr, m.indices, m.data, block.col_map, block.start, self.seed, self.n_bins, keep,
                        offsets, ids, values)
        ids = ids.reshape(n, width)
        ids[:, 0] = self.vocab.id("cls")
        values = values.reshape(n, width)
        values[:, 0] = 0.0
        mask = (np.arange(width) < (keep + 1)[:, None]).astype(MASK_DTYPE)
        return ids, mask, values

    def _dense(self, block: Block):
        from c2t.plm._kernels import priorities, scgpt_dense_bins

        m = block.matrix
        n = m.shape[0]
        tokens = np.unique(block.col_map[block.col_map >= 0]).astype(np.int64)
        pos_of_token = np.full(len(self.vocab), -1, dtype=np.int64)
        pos_of_token[tokens] = np.arange(len(tokens))
        dense = np.zeros((n, len(tokens)), dtype=np.int32)
        scgpt_dense_bins(m.indptr, m.indices, m.data, block.col_map, pos_of_token, block.start, self.seed,
                         self.n_bins, dense)
        k = min(len(tokens), self.max_length - 1)
        if k < len(tokens):  # a seeded random subset per cell, kept in token order
            chosen = np.argpartition(priorities(block.start, n, tokens, self.seed), k - 1, axis=1)[:, :k]
            chosen.sort(axis=1)
            gene_ids = tokens[chosen]
            gene_values = np.take_along_axis(dense, chosen, axis=1)
        else:
            gene_ids = np.broadcast_to(tokens, (n, k))
            gene_values = dense
        ids = np.empty((n, k + 1), dtype=ID_DTYPE)
        ids[:, 0] = self.vocab.id("cls")
        ids[:, 1:] = gene_ids
        values = np.zeros((n, k + 1), dtype=np.float32)
        values[:, 1:] = gene_values
        return ids, np.ones((n, k + 1), dtype=MASK_DTYPE), values

    def _modality_of_token(self) -> np.ndarray:
        out = np.full(len(self.vocab), self.vocab.id("pad"), dtype=np.int64)
        for gene, mod in self.gene_modality.items():
            if gene in self.vocab.token_to_id:
                out[self.vocab.token_to_id[gene]] = self.vocab.token_to_id[token_of("modality", mod)]
        return out

    def _params(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "max_length": self.max_length, "include_zero_genes": self.include_zero_genes,
                "batch_key": self.batch_key, "gene_modality": self.gene_modality, "pad_value": self.pad_value,
                "seed": self.seed}
