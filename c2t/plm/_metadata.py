"""Metadata tokens: one token per (obs column, value), e.g. ``<assay=10x 3' v3>``, with an unknown token per column."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from c2t._errors import C2TInputError


def token_of(key: str, value) -> str:
    """The metadata token of ``obs[key] == value`` (``?``: missing or unseen value)."""
    return f"<{key}={value}>"


def check_keys(keys: Sequence[str], name: str = "metadata_keys") -> tuple[str, ...]:
    if isinstance(keys, str):
        keys = [keys]
    keys = tuple(str(k) for k in keys)
    if len(set(keys)) != len(keys):
        msg = f"{name} has duplicates: {list(keys)}"
        raise C2TInputError(msg)
    return keys


def learn_tokens(obs_blocks: Iterator[pd.DataFrame], keys: Sequence[str]) -> list[str]:
    """Every value seen in each column, as tokens (sorted), plus one unknown token per column."""
    seen: dict[str, set] = {k: set() for k in keys}
    for obs in obs_blocks:
        for k in keys:
            seen[k].update(str(v) for v in pd.unique(obs[k].dropna()))
    tokens = []
    for k in keys:
        tokens += [token_of(k, v) for v in sorted(seen[k])] + [token_of(k, "?")]
    return tokens


def metadata_ids(obs: pd.DataFrame, keys: Sequence[str], token_to_id: dict[str, int]) -> tuple[np.ndarray, int]:
    """Token ids ``(cells, len(keys))`` of the metadata of each cell, and how many values were unknown."""
    out = np.empty((len(obs), len(keys)), dtype=np.int64)
    n_unknown = 0
    for c, k in enumerate(keys):
        unknown = token_to_id[token_of(k, "?")]
        values = obs[k].astype(object).where(obs[k].notna(), None)
        tokens = pd.Series([token_of(k, v) if v is not None else "" for v in values.astype(object)])
        ids = tokens.map(token_to_id)
        n_unknown += int(ids.isna().sum())
        out[:, c] = ids.fillna(unknown).to_numpy(dtype=np.int64)
    return out, n_unknown
