"""tGPT's cell sentences (Shen et al. 2023, iScience): the top 64 genes ranked by expression."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from c2t.plm._base import Block, CellTokenizer, as_genes, check_positive_int
from c2t.plm._encoding import Encoding
from c2t.plm._ranking import ranked_sequences
from c2t.plm._vocab import TokenVocab


class TGPTTokenizer(CellTokenizer):
    """tGPT: each cell is the sequence of its genes ranked by expression (highest first), top ``top_k`` = 64,
    one word-level token per gene, for a GPT-2 model trained by next-token prediction.

    Ranking is the same on counts or normalised values (a per-cell scale and log1p keep the order); zeros
    are never ranked; equal values are ordered by c2t's seeded per-cell permutation. Sequences shorter than
    ``top_k`` are right-padded.

    Parameters
    ----------
    genes
        The gene vocabulary (default: the data's genes); tokens ``<pad>`` = 0, ``<mask>`` = 1, then genes.
    token_to_id
        A checkpoint's word -> id vocabulary instead (see :func:`c2t.plm.load_tgpt`).
    pad_token
        The padding token of ``token_to_id``.
    top_k
        Genes per cell (64 in tGPT).
    seed
        Seeds the tie-break between equal values.

    Examples
    --------
    Counts A=0, B=4, C=1, D=4, E=11; B and D tie, the seeded tie-break orders them; the top 3 are kept:

    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.array([[0, 4, 1, 4, 11]], dtype=np.float32))
    >>> adata.var_names = ["A", "B", "C", "D", "E"]
    >>> tok = TGPTTokenizer(top_k=3)
    >>> enc = tok(adata)
    >>> [sorted(tok.vocab.tokens()[enc["input_ids"][0]][1:])] + [tok.vocab.tokens()[enc["input_ids"][0, 0]]]
    [['B', 'D'], 'E']
    """

    recipe = "tgpt"

    def __init__(self, *, genes: Sequence[str] | None = None, token_to_id: Mapping[str, int] | None = None,
                 pad_token: str = "<pad>", top_k: int = 64, seed: int = 0) -> None:
        check_positive_int("top_k", top_k)
        self.top_k = int(top_k)
        self.max_length = self.top_k
        self.seed = int(seed)
        if token_to_id is not None:
            specials = {"pad": pad_token}
            if "<mask>" in token_to_id:
                specials["mask"] = "<mask>"
            self.vocab = TokenVocab(token_to_id, specials=specials)
        elif genes is not None:
            self._build_vocab(as_genes(genes))

    def _build_vocab(self, genes: np.ndarray, obs=None) -> None:
        self.vocab = TokenVocab.build(genes, specials=["<pad>", "<mask>"])

    def _encode(self, block: Block) -> Encoding:
        pad = self.vocab.id("pad")
        ids, mask, _, special = ranked_sequences(block, top_k=self.top_k, seed=self.seed, pad_id=pad)
        return Encoding({"input_ids": ids, "attention_mask": mask}, special_mask=special,
                        pad_values={"input_ids": pad, "attention_mask": 0})

    def _params(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "seed": self.seed, "pad_token": self.vocab.specials["pad"]}
