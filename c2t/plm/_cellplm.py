"""CellPLM's cells-as-tokens input (Wen et al. 2024, ICLR): each cell is one token, expression x gene embedding."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from c2t.plm._base import Block, CellTokenizer, check_positive_int
from c2t.plm._encoding import MASK_DTYPE, Encoding
from c2t.plm._uce import _embedding_table
from c2t.plm._vocab import TokenVocab


class CellPLMTokenizer(CellTokenizer):
    """CellPLM: a sequence is a set of cells (e.g. of one tissue section or sample); each cell is one token.

    The published recipe embeds a cell as the sum of its genes' embeddings weighted by expression:
    ``token(cell) = sum_g x[cell, g] * e[g]`` with ``x = log1p(count / total x 10,000)`` (values already
    log-normalised are used as given), and a transformer then attends between the cells of a sequence.
    Cells are grouped by ``group_key`` (e.g. the sample or section) in their order in the data and cut
    into sequences of at most ``max_cells``; without ``group_key`` consecutive cells form the sequences.
    The gene embeddings are learned in CellPLM; here they are supplied (e.g. text-derived gene embeddings)
    or, when not given, a fixed seeded random projection of dimension ``dim`` over the data's genes.

    The output is ``inputs_embeds`` ``(sequences, cells, dim)`` with ``attention_mask`` — a Hugging Face
    encoder takes it as ``model(**encoding)`` — and :attr:`Encoding.cell_index` gives the cell at each
    position (-1 for padding). Calling the tokeniser on all cells groups globally; :meth:`batches` groups
    within each batch of cells.

    Parameters
    ----------
    gene_embeddings
        Genes x dimensions (DataFrame indexed by gene) or a dict gene -> vector.
    dim
        Dimension of the random gene embeddings when none are given.
    group_key
        ``obs`` column whose cells share sequences.
    max_cells
        Cells per sequence.
    target_sum, seed
        Per-cell scale; seed of the random embeddings.

    Examples
    --------
    Two cells with counts (A=1, B=1) and (B=2) and 2-dimensional embeddings A=(1, 0), B=(0, 1):
    cell 1 = log1p(5,000) x (1, 1) = (8.517, 8.517); cell 2 = log1p(10,000) x (0, 1) = (0, 9.21):

    >>> import anndata as ad, numpy as np, pandas as pd
    >>> adata = ad.AnnData(np.array([[1, 1], [0, 2]], dtype=np.float32))
    >>> adata.var_names = ["A", "B"]
    >>> tok = CellPLMTokenizer(gene_embeddings=pd.DataFrame(np.eye(2), index=["A", "B"]))
    >>> enc = tok(adata)
    >>> enc["inputs_embeds"].astype(float).round(3).tolist()
    [[[8.517, 8.517], [0.0, 9.21]]]
    >>> enc.cell_index.tolist(), enc["attention_mask"].tolist()
    ([[0, 1]], [[1, 1]])
    """

    positional = False  # no position embedding: the model sees a set
    recipe = "cellplm"

    def __init__(self, *, gene_embeddings=None, dim: int = 64, group_key: str | None = None, max_cells: int = 512,
                 target_sum: float = 1e4, seed: int = 0) -> None:
        check_positive_int("dim", dim)
        check_positive_int("max_cells", max_cells)
        self.dim = int(dim)
        self.group_key = group_key
        self.obs_keys = (group_key,) if group_key else ()
        self.max_cells = int(max_cells)
        self.max_length = self.max_cells
        self.target_sum = float(target_sum)
        self.seed = int(seed)
        self.embeddings: pd.DataFrame | None = None
        if gene_embeddings is not None:
            self._set_embeddings(_embedding_table(gene_embeddings))

    def _set_embeddings(self, table: pd.DataFrame) -> None:
        self.embeddings = table
        self.dim = table.shape[1]
        self.vocab = TokenVocab.build(table.index.to_numpy(dtype=object), specials=[])
        self._matrix = table.to_numpy(np.float32)

    def _build_vocab(self, genes: np.ndarray, obs=None) -> None:
        rng = np.random.default_rng(self.seed)
        table = pd.DataFrame(rng.standard_normal((len(genes), self.dim)).astype(np.float32) / np.sqrt(self.dim),
                             index=pd.Index(genes).astype(str))
        self._set_embeddings(table)

    def cell_vectors(self, block: Block) -> np.ndarray:
        """``(cells, dim)``: each cell's expression-weighted sum of gene embeddings."""
        from c2t.plm._kernels import expression_embed

        m = block.matrix
        counts = block.input_kind == "counts"
        scale = np.divide(self.target_sum, block.totals, out=np.zeros_like(block.totals), where=block.totals > 0)
        out = np.empty((m.shape[0], self.dim), np.float32)
        expression_embed(m.indptr, m.indices, m.data, block.col_map, scale if counts else np.ones_like(scale),
                         counts, self._matrix, out)
        return out

    def _group_sequences(self, vectors: np.ndarray, groups: np.ndarray | None, rows: np.ndarray) -> Encoding:
        if groups is None:
            seq_of_cell = np.arange(len(rows)) // self.max_cells
        else:
            codes, _ = pd.factorize(pd.Series(groups).astype(object).where(pd.notna(groups), "<missing>"))
            order = np.argsort(codes, kind="stable")
            first_of_group = np.r_[True, codes[order][1:] != codes[order][:-1]]
            group_start = np.maximum.accumulate(np.where(first_of_group, np.arange(len(order)), 0))
            within = np.arange(len(order)) - group_start
            chunk = np.cumsum(first_of_group | (within % self.max_cells == 0)) - 1
            seq_of_cell = np.empty(len(rows), np.int64)
            seq_of_cell[order] = chunk
        order = np.argsort(seq_of_cell, kind="stable")
        n_seq = int(seq_of_cell.max()) + 1 if len(rows) else 0
        sizes = np.bincount(seq_of_cell, minlength=n_seq)
        width = max(int(sizes.max(initial=0)), 1)
        pos = np.arange(len(order)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        embeds = np.zeros((n_seq, width, self.dim), np.float32)
        index = np.full((n_seq, width), -1, np.int64)
        embeds[seq_of_cell[order], pos] = vectors[order]
        index[seq_of_cell[order], pos] = rows[order]
        mask = (index >= 0).astype(MASK_DTYPE)
        return Encoding({"inputs_embeds": embeds, "attention_mask": mask}, special_mask=mask == 0,
                        pad_values={"attention_mask": 0, "inputs_embeds": 0.0}, cell_index=index)

    def _encode(self, block: Block) -> Encoding:
        groups = block.obs[self.group_key].to_numpy(dtype=object) if self.group_key else None
        rows = block.start + np.arange(block.matrix.shape[0])
        return self._group_sequences(self.cell_vectors(block), groups, rows)

    def __call__(self, adata, *, return_tensors: Literal["np", "pt"] = "np", batch_size: int = 8192,
                 **kwargs) -> Encoding:
        """Tokenise every cell, grouping cells into sequences over the whole dataset."""
        parts = list(self.batches(adata, batch_size=batch_size, **kwargs))
        if len(parts) > 1:
            real = [p.cell_index >= 0 for p in parts]
            rows = np.concatenate([p.cell_index[r] for p, r in zip(parts, real, strict=True)])
            order = np.argsort(rows)
            vectors = np.concatenate([p["inputs_embeds"][r] for p, r in zip(parts, real, strict=True)])[order]
            groups = self._groups_of(adata, kwargs) if self.group_key else None
            out = self._group_sequences(vectors, groups, rows[order])
            out.cell_ids = np.concatenate([p.cell_ids for p in parts])
            out.report = parts[0].report
        else:
            out = parts[0]
        return out.to_torch() if return_tensors == "pt" else out

    def _groups_of(self, adata, kwargs) -> np.ndarray:
        from c2t.io import open_source

        with open_source(adata, layer=kwargs.get("layer"), use_raw=kwargs.get("use_raw", False)) as source:
            return source.obs_columns([self.group_key], 0, source.n_obs)[self.group_key].to_numpy(dtype=object)

    def _params(self) -> dict[str, Any]:
        return {"dim": self.dim, "group_key": self.group_key, "max_cells": self.max_cells,
                "target_sum": self.target_sum, "seed": self.seed}

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"embeddings": self._matrix, "genes": self.embeddings.index.to_numpy(str)}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._set_embeddings(pd.DataFrame(arrays["embeddings"], index=arrays["genes"].astype(str)))

