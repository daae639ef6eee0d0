"""UCE's cell sentences (Rosen et al. 2023): expression-weighted gene samples, grouped by chromosome."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from c2t._errors import C2TInputError
from c2t.plm._base import Block, CellTokenizer, check_positive_int
from c2t.plm._encoding import ID_DTYPE, MASK_DTYPE, Encoding
from c2t.plm._vocab import TokenVocab


def _embedding_table(gene_embeddings) -> pd.DataFrame:
    if isinstance(gene_embeddings, pd.DataFrame):
        table = gene_embeddings
    elif isinstance(gene_embeddings, Mapping):
        table = pd.DataFrame.from_dict({str(k): np.asarray(v, dtype=np.float32) for k, v in gene_embeddings.items()},
                                       orient="index")
    else:
        msg = "gene_embeddings must be a DataFrame (genes x dimensions) or a dict gene -> vector"
        raise C2TInputError(msg)
    if table.shape[0] == 0 or table.shape[1] == 0:
        msg = "gene_embeddings is empty"
        raise C2TInputError(msg)
    values = table.to_numpy(dtype=np.float32)
    if not np.isfinite(values).all():
        msg = "gene_embeddings holds NaN or infinite values"
        raise C2TInputError(msg)
    table = pd.DataFrame(values, index=table.index.astype(str))
    return table[~table.index.duplicated()]


def _chromosome_table(chromosomes) -> pd.DataFrame:
    if not isinstance(chromosomes, pd.DataFrame):
        msg = "chromosomes must be a DataFrame indexed by gene with columns 'chromosome' and 'start'"
        raise C2TInputError(msg)
    missing = [c for c in ("chromosome", "start") if c not in chromosomes.columns]
    if missing:
        msg = f"chromosomes lacks column(s) {missing}; columns are: {', '.join(map(str, chromosomes.columns))}"
        raise C2TInputError(msg)
    table = chromosomes[["chromosome", "start"]].dropna().copy()
    table.index = table.index.astype(str)
    table["chromosome"] = table["chromosome"].astype(str)
    table["start"] = pd.to_numeric(table["start"], errors="coerce")
    return table.dropna()[~table.dropna().index.duplicated()]


class UCETokenizer(CellTokenizer):
    """UCE: a sample of the cell's genes, weighted by expression, laid out by chromosome.

    The published recipe: ``sample_size`` (1,024) genes are drawn *with replacement* from the expressed
    genes, each with probability proportional to ``log1p(count)``; the sampled genes are grouped by
    chromosome, chromosomes in a random order per cell, genes within a chromosome by genomic start; the
    sentence is ``<cls>``, then per chromosome its start token ``<chr=...>``, its genes and ``<chrom_end>``,
    padded to ``pad_length`` (1,536). Gene tokens stand for fixed gene (protein) embeddings — UCE uses ESM2
    embeddings of each gene's proteins — that the user supplies: :attr:`embedding_matrix` has one row per
    token (zeros for special and chromosome tokens, which a model learns). Only genes with both an
    embedding and a chromosome position are in the vocabulary; draws are hashed from (seed, cell, draw),
    so a cell's sentence does not depend on its batch. Needs raw counts.

    Parameters
    ----------
    gene_embeddings
        Genes x dimensions (DataFrame indexed by gene) or a dict gene -> vector.
    chromosomes
        DataFrame indexed by gene with columns ``chromosome`` and ``start``.
    sample_size, pad_length
        Genes drawn per cell (1,024) and the padded sentence length (1,536).
    seed
        Seeds the gene draws and the chromosome order.

    Examples
    --------
    Counts A=0, B=4, C=1, D=4, E=11; B and E on chromosome 1, C and D on chromosome 2; 6 draws:

    >>> import anndata as ad, numpy as np, pandas as pd
    >>> adata = ad.AnnData(np.array([[0, 4, 1, 4, 11]], dtype=np.float32))
    >>> adata.var_names = ["A", "B", "C", "D", "E"]
    >>> chrom = pd.DataFrame({"chromosome": ["1", "1", "2", "2", "1"], "start": [5, 10, 30, 20, 40]},
    ...                      index=["A", "B", "C", "D", "E"])
    >>> emb = pd.DataFrame(np.eye(5, 3), index=["A", "B", "C", "D", "E"])
    >>> tok = UCETokenizer(gene_embeddings=emb, chromosomes=chrom, sample_size=6, pad_length=12)
    >>> enc = tok(adata)
    >>> words = tok.vocab.tokens()[enc["input_ids"][0]].tolist()
    >>> words[0], words.count("<chrom_end>"), int(enc["attention_mask"].sum()), "A" in words
    ('<cls>', 2, 11, False)
    >>> tok.embedding_matrix.shape
    (11, 3)
    """

    recipe = "uce"
    needs_counts = True
    default_pooling = "cls"

    def __init__(self, *, gene_embeddings=None, chromosomes: pd.DataFrame | None = None, sample_size: int = 1024,
                 pad_length: int = 1536, seed: int = 0) -> None:
        check_positive_int("sample_size", sample_size)
        check_positive_int("pad_length", pad_length)
        self.sample_size = int(sample_size)
        self.pad_length = int(pad_length)
        self.max_length = self.pad_length
        self.seed = int(seed)
        self.embeddings: pd.DataFrame | None = None
        self.chromosomes: pd.DataFrame | None = None
        if gene_embeddings is not None or chromosomes is not None:
            if gene_embeddings is None or chromosomes is None:
                msg = "UCE needs both gene_embeddings and chromosomes (gene -> chromosome, start)"
                raise C2TInputError(msg)
            self._set_tables(_embedding_table(gene_embeddings), _chromosome_table(chromosomes))

    def _set_tables(self, emb: pd.DataFrame, chrom: pd.DataFrame) -> None:
        genes = chrom.index.intersection(emb.index)
        if len(genes) == 0:
            msg = "no gene has both an embedding and a chromosome position (check that both use the same gene ids)"
            raise C2TInputError(msg)
        chrom = chrom.loc[genes].sort_values(["chromosome", "start"], kind="stable")
        self.chromosomes = chrom
        self.embeddings = emb.loc[chrom.index]
        names = sorted(chrom["chromosome"].unique())
        self._chrom_names = names
        extra = [f"<chr={c}>" for c in names]
        self.vocab = TokenVocab.build(chrom.index.to_numpy(dtype=object),
                                      specials=["<pad>", "<cls>", "<chrom_end>", "<mask>"], extra=extra)
        v = self.vocab
        n = len(v)
        code = {c: i for i, c in enumerate(names)}
        self._gene_chrom = np.zeros(n, np.int64)
        self._gene_chrom[v.gene_ids] = chrom["chromosome"].map(code).to_numpy()
        self._gene_order = np.zeros(n, np.int64)
        self._gene_order[v.gene_ids] = np.arange(len(v.gene_ids))  # genes are already sorted by (chromosome, start)
        self._chrom_token = np.array([v.token_to_id[f"<chr={c}>"] for c in names], dtype=np.int64)

    @property
    def embedding_matrix(self) -> np.ndarray:
        """``(len(vocab), dim)`` float32: the gene embedding of each gene token, zeros for the other tokens."""
        if self.embeddings is None:
            msg = "the UCE tokenizer has no gene embeddings"
            raise C2TInputError(msg)
        out = np.zeros((len(self.vocab), self.embeddings.shape[1]), dtype=np.float32)
        out[self.vocab.gene_ids] = self.embeddings.to_numpy(dtype=np.float32)
        return out

    def _build_vocab(self, genes: np.ndarray, obs=None) -> None:
        msg = "UCE needs gene_embeddings and chromosomes to build its vocabulary"
        raise C2TInputError(msg)

    def _encode(self, block: Block) -> Encoding:
        from c2t.plm._kernels import uce_sentences

        m = block.matrix
        n = m.shape[0]
        pad = self.vocab.id("pad")
        ids = np.full((n, self.pad_length), pad, dtype=ID_DTYPE)
        lengths = np.zeros(n, np.int64)
        uce_sentences(m.indptr, m.indices, m.data, block.col_map, self._gene_chrom, self._gene_order,
                      self._chrom_token, len(self._chrom_token), block.start, self.seed,
                      self.sample_size, self.vocab.id("cls"), self.vocab.id("chrom_end"), ids, lengths)
        mask = (np.arange(self.pad_length) < lengths[:, None]).astype(MASK_DTYPE)
        return Encoding({"input_ids": ids, "attention_mask": mask}, special_mask=self._special_mask(ids, mask),
                        pad_values={"input_ids": pad, "attention_mask": 0})

    def _params(self) -> dict[str, Any]:
        return {"sample_size": self.sample_size, "pad_length": self.pad_length, "seed": self.seed}

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"embeddings": self.embeddings.to_numpy(np.float32), "genes": self.embeddings.index.to_numpy(str),
                "chromosome": self.chromosomes["chromosome"].to_numpy(str),
                "start": self.chromosomes["start"].to_numpy(np.float64)}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        genes = arrays["genes"].astype(str)
        emb = pd.DataFrame(arrays["embeddings"], index=genes)
        chrom = pd.DataFrame({"chromosome": arrays["chromosome"].astype(str), "start": arrays["start"]}, index=genes)
        vocab = self.vocab
        self._set_tables(emb, chrom)
        assert vocab is None or vocab.token_to_id == self.vocab.token_to_id
