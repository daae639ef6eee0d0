"""Token vocabularies of the PLM tokenisers and the matching of a dataset's genes to them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from c2t._errors import C2TInputError


class TokenVocab:
    """Tokens and their ids: special tokens (by role), extra tokens (metadata, task, chromosome) and genes.

    Parameters
    ----------
    token_to_id
        Every token and its id (ids need not be contiguous; a published token dictionary is kept as it is).
    specials
        Role -> token, e.g. ``{"pad": "<pad>", "mask": "<mask>"}``.
    extra
        Tokens that are neither special nor genes (metadata values, tasks, chromosomes).

    Examples
    --------
    >>> v = TokenVocab.build(["CD3D", "LYZ"], specials=["<pad>", "<mask>"])
    >>> v.token_to_id
    {'<pad>': 0, '<mask>': 1, 'CD3D': 2, 'LYZ': 3}
    >>> v.id("pad"), v.gene_ids.tolist(), len(v)
    (0, [2, 3], 4)
    """

    def __init__(self, token_to_id: Mapping[str, int], *, specials: Mapping[str, str], extra: Sequence[str] = ()) -> None:
        self.token_to_id = {str(k): int(v) for k, v in token_to_id.items()}
        self.specials = dict(specials)
        self.extra = list(extra)
        missing = [t for t in [*self.specials.values(), *self.extra] if t not in self.token_to_id]
        assert not missing, missing
        not_gene = set(self.specials.values()) | set(self.extra)
        genes = [(t, i) for t, i in self.token_to_id.items() if t not in not_gene]
        self.gene_names = np.array([t for t, _ in genes], dtype=object)
        self.gene_ids = np.array([i for _, i in genes], dtype=np.int64)

    @classmethod
    def build(cls, genes: Sequence[str], *, specials: Sequence[str], extra: Sequence[str] = ()) -> TokenVocab:
        """Specials first (roles are the names without brackets), then extra tokens, then genes."""
        genes = [str(g) for g in genes]
        if len(set(genes)) != len(genes):
            dup = pd.Index(genes)[pd.Index(genes).duplicated()][:5].tolist()
            msg = f"gene names must be unique; duplicated: {', '.join(dup)}"
            raise C2TInputError(msg)
        clash = set(genes) & (set(specials) | set(extra))
        if clash:
            msg = f"gene names clash with special tokens: {sorted(clash)}"
            raise C2TInputError(msg)
        tokens = [*specials, *extra, *genes]
        roles = {t.strip("<>[]").lower(): t for t in specials}
        return cls({t: i for i, t in enumerate(tokens)}, specials=roles, extra=extra)

    def __len__(self) -> int:
        return max(self.token_to_id.values()) + 1

    def id(self, role: str) -> int:
        """The id of the special token with this role (``"pad"``, ``"mask"``, ``"cls"``, ...)."""
        if role not in self.specials:
            msg = f"this vocabulary has no {role!r} token; special tokens are {self.specials}"
            raise C2TInputError(msg)
        return self.token_to_id[self.specials[role]]

    def has(self, role: str) -> bool:
        return role in self.specials

    def special_ids(self) -> np.ndarray:
        """Ids of every special and extra token (not genes)."""
        return np.array([self.token_to_id[t] for t in [*self.specials.values(), *self.extra]], dtype=np.int64)

    def tokens(self) -> np.ndarray:
        """Token strings indexed by id ('' for unused ids)."""
        out = np.full(len(self), "", dtype=object)
        for t, i in self.token_to_id.items():
            out[i] = t
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"token_to_id": self.token_to_id, "specials": self.specials, "extra": self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenVocab:
        return cls(data["token_to_id"], specials=data["specials"], extra=data.get("extra", ()))


def match_genes(data_genes: np.ndarray, vocab_genes: np.ndarray, vocab_values: np.ndarray, *,
                what: str = "the tokenizer's vocabulary") -> tuple[np.ndarray, dict[str, Any]]:
    """Map the dataset's gene names onto a vocabulary; count, report and refuse a total mismatch.

    Returns the value (token id or position) of each data gene, -1 when absent, and a report.

    Examples
    --------
    >>> ids, report = match_genes(np.array(["CD3D", "XIST", "LYZ"]), np.array(["LYZ", "CD3D"]), np.array([7, 8]))
    >>> ids.tolist(), report["n_matched"], report["unmatched_examples"]
    ([8, -1, 7], 2, ['XIST'])
    """
    index = pd.Index(np.asarray(vocab_genes, dtype=object))
    pos = index.get_indexer(pd.Index(np.asarray(data_genes, dtype=object)))
    values = np.where(pos >= 0, np.asarray(vocab_values)[np.maximum(pos, 0)], -1).astype(np.int64)
    matched = pos >= 0
    report = {
        "n_data_genes": len(data_genes),
        "n_matched": int(matched.sum()),
        "n_unmatched": int((~matched).sum()),
        "unmatched_examples": [str(g) for g in np.asarray(data_genes)[~matched][:10]],
        "n_vocabulary_genes": len(index),
        "n_vocabulary_genes_absent_from_data": int(len(index) - len(np.unique(pos[matched]))),
    }
    if not matched.any():
        msg = (
            f"none of the {len(data_genes)} genes of the data (e.g. {', '.join(map(repr, list(data_genes[:3])))}) "
            f"is in {what} of {len(index)} genes (e.g. {', '.join(map(repr, list(index[:3])))}); "
            "pass gene_key= a var column with the same kind of ids (symbols or Ensembl)"
        )
        raise C2TInputError(msg)
    return values, report
