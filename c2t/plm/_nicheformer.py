"""Ranked genes after metadata (context) tokens: Nicheformer (Schaar et al. 2025) and GeneCompass style."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from c2t._errors import C2TInputError
from c2t.plm._base import Block, CellTokenizer, as_genes, check_positive_int
from c2t.plm._encoding import Encoding
from c2t.plm._geneformer import depth_scale, nonzero_statistic
from c2t.plm._metadata import check_keys, learn_tokens, metadata_ids
from c2t.plm._ranking import ranked_sequences
from c2t.plm._vocab import TokenVocab


class RankMetadataTokenizer(CellTokenizer):
    """Genes ranked by technology-normalised expression, after one context token per metadata column.

    The recipe (Nicheformer; GeneCompass is the same with ``statistic="median"`` and ``with_values=True``):
    each cell's counts are scaled to ``target_sum`` per cell and each gene is divided by its reference
    statistic over the cells expressing it, computed per value of ``group_key`` (Nicheformer: per
    technology) when given; genes are ranked by this value, highest first. The sequence is one token per
    ``metadata_keys`` column (``<key=value>``, ``<key=?>`` when missing or unseen; Nicheformer uses species,
    modality and assay), then the ranked genes, ``max_length`` tokens in all (1,500 in Nicheformer).
    Needs raw counts.

    Parameters
    ----------
    metadata_keys
        ``obs`` columns that become context tokens, in order.
    group_key
        ``obs`` column whose values get their own gene statistics (e.g. the technology); genes unseen in a
        group, and cells of an unseen group, use the statistics over all reference cells.
    statistic
        ``"mean"`` (Nicheformer), ``"median"`` (GeneCompass, as Geneformer) or ``None`` (rank the scaled counts).
    with_values
        Also return ``values``: ``log1p`` of the ranked quantity at gene positions, 0 elsewhere (GeneCompass
        feeds gene ids and values together).
    genes, max_length, target_sum, seed
        Vocabulary (default: the data's genes), total tokens per cell, per-cell scale, tie-break seed.

    Examples
    --------
    Counts A=0, B=4, C=1, D=4, E=11 with gene means A=1, B=8, C=100, D=1, E=1 (so B=250, C=50, D=2,000,
    E=5,500): the sequence is the assay token, then E, D, B, C:

    >>> import anndata as ad, numpy as np, pandas as pd
    >>> adata = ad.AnnData(np.array([[0, 4, 1, 4, 11]], dtype=np.float32), obs=pd.DataFrame({"assay": ["10x"]}, index=["c1"]))
    >>> adata.var_names = ["A", "B", "C", "D", "E"]
    >>> tok = RankMetadataTokenizer(metadata_keys=["assay"], gene_statistics={"A": 1, "B": 8, "C": 100, "D": 1, "E": 1})
    >>> enc = tok(adata)
    >>> tok.vocab.tokens()[enc["input_ids"][0]].tolist()
    ['<assay=10x>', 'E', 'D', 'B', 'C']
    """

    recipe = "rank_metadata"
    needs_counts = True

    def __init__(self, *, metadata_keys: Sequence[str] = (), group_key: str | None = None,
                 statistic: Literal["mean", "median"] | None = "mean", with_values: bool = False,
                 genes: Sequence[str] | None = None, gene_statistics: Mapping[str, float] | None = None,
                 max_length: int = 1500, target_sum: float = 1e4, seed: int = 0) -> None:
        if statistic not in ("mean", "median", None):
            msg = f"statistic must be 'mean', 'median' or None, not {statistic!r}"
            raise C2TInputError(msg)
        check_positive_int("max_length", max_length)
        self.metadata_keys = check_keys(metadata_keys)
        if max_length <= len(self.metadata_keys):
            msg = f"max_length={max_length} leaves no room for genes after {len(self.metadata_keys)} metadata tokens"
            raise C2TInputError(msg)
        self.group_key = group_key
        self.obs_keys = tuple(dict.fromkeys([*self.metadata_keys, *([group_key] if group_key else [])]))
        self.statistic = statistic
        self.with_values = bool(with_values)
        self.max_length = int(max_length)
        self.target_sum = float(target_sum)
        self.seed = int(seed)
        self.genes = as_genes(genes)
        self.gene_statistics = None if gene_statistics is None else {str(k): float(v) for k, v in gene_statistics.items()}
        self.groups: list[str] = []
        self.factors: np.ndarray | None = None  # (1 + n_groups, n_tokens): 1 / statistic; row 0 = all cells

    @property
    def is_fitted(self) -> bool:
        return self.vocab is not None and (self.factors is not None or self.statistic is None)

    def _build_vocab(self, genes: np.ndarray, obs: pd.DataFrame) -> None:
        extra = learn_tokens([obs], self.metadata_keys)
        genes = self.genes if self.genes is not None else genes
        self.vocab = TokenVocab.build(genes, specials=["<pad>", "<mask>"], extra=extra)
        if self.group_key:
            self.groups = sorted({str(v) for v in pd.unique(obs[self.group_key].dropna())})

    def _fit_stats(self, blocks: Iterator[Block]) -> None:
        n = len(self.vocab)
        if self.statistic is None:
            for _ in blocks:  # still check the reference's values
                pass
            return
        if self.gene_statistics is not None:
            for _ in blocks:
                pass
            factors = np.full((1, n), np.nan)
            factors[0, self.vocab.gene_ids] = pd.Series(self.vocab.gene_names).map(self.gene_statistics).to_numpy(float)
        else:
            blocks = list(blocks)
            factors = nonzero_statistic(iter(blocks), n, target_sum=self.target_sum, statistic=self.statistic)
            if self.group_key:
                per = nonzero_statistic(iter(blocks), n, target_sum=self.target_sum, statistic=self.statistic,
                                        group_of_cell=self._group_of_cell, n_groups=len(self.groups) + 1)[1:]
                factors = np.vstack([factors, np.where(np.isfinite(per), per, factors)])
        with np.errstate(divide="ignore", invalid="ignore"):
            self.factors = np.where(np.isfinite(factors) & (factors > 0), 1.0 / factors, 0.0)
        if not (self.factors[0] > 0).any():
            msg = "no gene of the vocabulary has a reference statistic (none is expressed in the reference data)"
            raise C2TInputError(msg)

    def _group_of_cell(self, block: Block) -> np.ndarray:
        """Row of ``factors`` for each cell: 1 + the group's index, 0 for no or unseen group."""
        if not self.group_key:
            return np.zeros(block.matrix.shape[0], np.int64)
        index = {g: i + 1 for i, g in enumerate(self.groups)}
        values = block.obs[self.group_key].astype(object)
        return np.array([index.get(str(v), 0) if pd.notna(v) else 0 for v in values], dtype=np.int64)

    def _gene_lookup(self) -> tuple[np.ndarray, np.ndarray]:
        names, ids = self.vocab.gene_names, self.vocab.gene_ids
        if self.factors is None:
            return names, ids
        keep = self.factors[0, ids] > 0  # a gene without a reference statistic cannot be ranked
        return names[keep], ids[keep]

    def _encode(self, block: Block) -> Encoding:
        if self.factors is None:
            col, group = None, None
        else:
            col = np.where(block.col_map[None, :] >= 0, self.factors[:, np.maximum(block.col_map, 0)], 0.0)
            group = self._group_of_cell(block)
        prefix, n_unknown = metadata_ids(block.obs, self.metadata_keys, self.vocab.token_to_id)
        pad = self.vocab.id("pad")
        ids, mask, ranked, special = ranked_sequences(
            block, top_k=self.max_length - len(self.metadata_keys), seed=self.seed, pad_id=pad,
            row_scale=depth_scale(block, self.target_sum), col_scale=col, row_group=group,
            prefix=prefix if prefix.shape[1] else None)
        arrays = {"input_ids": ids, "attention_mask": mask}
        if self.with_values:
            arrays["values"] = np.log1p(ranked)
        return Encoding(arrays, special_mask=special,
                        pad_values={"input_ids": pad, "attention_mask": 0, "values": 0.0},
                        report={"n_unknown_metadata_values": n_unknown})

    def _params(self) -> dict[str, Any]:
        return {"metadata_keys": list(self.metadata_keys), "group_key": self.group_key, "statistic": self.statistic,
                "with_values": self.with_values, "max_length": self.max_length, "target_sum": self.target_sum,
                "seed": self.seed}

    def _arrays(self) -> dict[str, np.ndarray]:
        out = {"groups": np.array(self.groups, dtype=str)}
        if self.factors is not None:
            out["factors"] = self.factors
        return out

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.groups = [str(g) for g in arrays.get("groups", [])]
        self.factors = arrays.get("factors")
