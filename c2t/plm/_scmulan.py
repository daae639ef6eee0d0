"""scMulan-style c-sentences (Bian et al. 2024): a task word, metadata words, then gene words with values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from c2t._errors import C2TInputError
from c2t.plm._base import Block, CellTokenizer, as_genes, check_positive_int
from c2t.plm._encoding import Encoding
from c2t.plm._metadata import check_keys, learn_tokens, metadata_ids
from c2t.plm._ranking import ranked_sequences
from c2t.plm._vocab import TokenVocab

TASKS = ("annotate", "generate", "integrate")


class ScMulanTokenizer(CellTokenizer):
    """A c-sentence in the style of scMulan: every word is an (entity, value) pair.

    The sequence is one task word (``<task=annotate>``, ``<task=generate>`` or ``<task=integrate>``: what the
    model is asked to do), one word per metadata column (``<key=value>``, e.g. organ, technology; the
    value ``?`` when missing or unseen), then the cell's expressed genes ranked by expression (highest
    first, at most ``max_genes``, ties by c2t's seeded permutation) and ``<eos>``. ``values`` holds each gene
    word's expression, ``log1p(count / total x target_sum)`` (values already normalised are used as
    given), and 0 for the task, metadata, end and padding words. This follows the published description of
    c-sentences (entities with values, metadata and task words); it is not a port of scMulan's code, whose
    exact vocabulary and ordering may differ.

    Parameters
    ----------
    metadata_keys
        ``obs`` columns that become metadata words, in order.
    task
        The task word of every sequence (one of ``annotate``, ``generate``, ``integrate``).
    genes, max_genes, target_sum, seed
        Vocabulary (default: the data's genes), gene words per cell, per-cell scale, tie-break seed.

    Examples
    --------
    Counts A=0, B=4, C=1, D=4, E=11 (total 20): E, then B and D (tied; seeded order), then C:

    >>> import anndata as ad, numpy as np, pandas as pd
    >>> adata = ad.AnnData(np.array([[0, 4, 1, 4, 11]], dtype=np.float32), obs=pd.DataFrame({"organ": ["blood"]}, index=["c1"]))
    >>> adata.var_names = ["A", "B", "C", "D", "E"]
    >>> tok = ScMulanTokenizer(metadata_keys=["organ"], max_genes=4)
    >>> enc = tok(adata)
    >>> words = tok.vocab.tokens()[enc["input_ids"][0]].tolist()
    >>> words[:3], sorted(words[3:5]), words[5:]
    (['<task=annotate>', '<organ=blood>', 'E'], ['B', 'D'], ['C', '<eos>'])
    >>> enc["values"][0].astype(float).round(3).tolist()  # log1p(11 / 20 x 10,000) = 8.613, log1p(2,000) = 7.601, ...
    [0.0, 0.0, 8.613, 7.601, 7.601, 6.217, 0.0]
    """

    recipe = "scmulan"

    def __init__(self, *, metadata_keys: Sequence[str] = (), task: str = "annotate",
                 genes: Sequence[str] | None = None, max_genes: int = 2000, target_sum: float = 1e4,
                 seed: int = 0) -> None:
        if task not in TASKS:
            msg = f"task must be one of {', '.join(TASKS)}, not {task!r}"
            raise C2TInputError(msg)
        check_positive_int("max_genes", max_genes)
        self.metadata_keys = check_keys(metadata_keys)
        self.obs_keys = self.metadata_keys
        self.task = task
        self.max_genes = int(max_genes)
        self.max_length = 1 + len(self.metadata_keys) + self.max_genes + 1
        self.target_sum = float(target_sum)
        self.seed = int(seed)
        self.genes = as_genes(genes)

    def _build_vocab(self, genes: np.ndarray, obs: pd.DataFrame) -> None:
        extra = [f"<task={t}>" for t in TASKS] + learn_tokens([obs], self.metadata_keys)
        self.vocab = TokenVocab.build(self.genes if self.genes is not None else genes,
                                      specials=["<pad>", "<mask>", "<eos>"], extra=extra)

    def _encode(self, block: Block) -> Encoding:
        n = block.matrix.shape[0]
        meta, n_unknown = metadata_ids(block.obs, self.metadata_keys, self.vocab.token_to_id)
        prefix = np.hstack([np.full((n, 1), self.vocab.token_to_id[f"<task={self.task}>"]), meta])
        pad = self.vocab.id("pad")
        ids, mask, ranked, special = ranked_sequences(block, top_k=self.max_genes, seed=self.seed, pad_id=pad,
                                                      prefix=prefix, suffix_id=self.vocab.id("eos"))
        if block.input_kind == "counts":
            scale = np.divide(self.target_sum, block.totals, out=np.zeros_like(block.totals), where=block.totals > 0)
            values = np.log1p(ranked * scale[:, None].astype(np.float32))
        else:
            values = ranked
        return Encoding({"input_ids": ids, "attention_mask": mask, "values": values.astype(np.float32)},
                        special_mask=special,
                        pad_values={"input_ids": pad, "attention_mask": 0, "values": 0.0},
                        report={"n_unknown_metadata_values": n_unknown})

    def _params(self) -> dict[str, Any]:
        return {"metadata_keys": list(self.metadata_keys), "task": self.task, "max_genes": self.max_genes,
                "target_sum": self.target_sum, "seed": self.seed}
