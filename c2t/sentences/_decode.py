"""Decode (generated) cell sentences back into an expression matrix, vectorised over cells."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from c2t._errors import C2TInputError
from c2t._manifest import read_manifest, vocabulary_hash
from c2t.sentences._core import KIND, VOCAB_FILE, CellSentences
from c2t.sentences._inverse import InverseModel

_TRIM = " \t\r\n.,;:"
#: Sentences tokenised at a time (bounds the memory of the Arrow token arrays).
_DECODE_CHUNK = 20_000


def load_model(path: str | os.PathLike) -> tuple[np.ndarray, InverseModel]:
    """Read only the vocabulary and inverse model of a cell-sentences folder (no shards)."""
    path = Path(path)
    manifest = read_manifest(path, kind=KIND)
    vocab_file = path / VOCAB_FILE
    if not vocab_file.is_file():
        msg = f"{path}: {VOCAB_FILE} is missing"
        raise C2TInputError(msg)
    vocabulary = np.array(vocab_file.read_text(encoding="utf-8").split("\n")[:-1], dtype=object)
    if vocabulary_hash(vocabulary) != manifest.get("vocabulary_hash"):
        msg = f"{path}: {VOCAB_FILE} does not match the manifest's vocabulary_hash (the folder was modified)"
        raise C2TInputError(msg)
    if not manifest.get("inverse_model"):
        msg = f"{path}: the manifest holds no inverse model"
        raise C2TInputError(msg)
    return vocabulary, InverseModel.from_dict(manifest["inverse_model"])


def _tokenize(sentences: pa.Array | pa.ChunkedArray, delimiter: str | None) -> tuple[np.ndarray, pa.Array]:
    """Split sentences into tokens; return each token's sentence index and the trimmed tokens."""
    arr = sentences
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    split = pc.utf8_split_whitespace(arr) if delimiter is None else pc.split_pattern(arr, delimiter)
    offsets = np.asarray(split.offsets)
    rows = np.repeat(np.arange(len(arr)), np.diff(offsets))
    tokens = pc.utf8_trim(split.flatten(), _TRIM)
    nonempty = np.asarray(pc.not_equal(tokens, "").to_numpy(zero_copy_only=False), dtype=bool)
    return rows[nonempty], tokens.filter(pa.array(nonempty))


def _lookup(tokens: pa.Array, vocabulary: np.ndarray, *, case_insensitive: bool) -> tuple[np.ndarray, int]:
    """Vocabulary id of each token (-1 unknown) and how many matched only ignoring case."""
    vocab = pa.array(vocabulary.astype(str), pa.large_string())
    ids = pc.index_in(tokens, value_set=vocab).to_numpy(zero_copy_only=False)
    ids = np.where(np.isnan(ids), -1, ids).astype(np.int64) if ids.dtype.kind == "f" else ids.astype(np.int64)
    n_case = 0
    if case_insensitive and (ids < 0).any():
        upper = pd.Series(vocabulary.astype(str)).str.upper()
        unique_upper = ~upper.duplicated(keep=False)
        lookup = pa.array(upper[unique_upper].to_numpy(dtype=str), pa.large_string())
        positions = np.flatnonzero(unique_upper.to_numpy())
        missing = np.flatnonzero(ids < 0)
        found = pc.index_in(pc.utf8_upper(tokens.take(pa.array(missing))), value_set=lookup)
        found = found.to_numpy(zero_copy_only=False)
        hit = ~np.isnan(found) if found.dtype.kind == "f" else np.ones(len(found), bool)
        ids[missing[hit]] = positions[found[hit].astype(np.int64)]
        n_case = int(hit.sum())
    return ids, n_case


def decode(
    sentences: Sequence[str] | pa.Array | CellSentences,
    *,
    model: CellSentences | str | os.PathLike | tuple[Sequence[str], InverseModel],
    delimiter: str | None = " ",
    obs: pd.DataFrame | None = None,
    case_insensitive: bool = True,
    method: str | None = None,
):
    """Turn cell sentences into an AnnData of expression, using the inverse model of ``model``.

    Each valid gene gets the expression the inverse model predicts for its rank. Documented cleaning:
    tokens are split on ``delimiter`` (``None``: any whitespace) and trimmed of spaces and ``.,;:``;
    a token that is not in the vocabulary (exact match first, then ignoring case when that is unambiguous)
    is dropped and counted; a gene repeated in one sentence keeps its first position and the repeats are
    dropped and counted; the remaining genes are ranked 1, 2, ... in order (gaps closed).

    Parameters
    ----------
    sentences
        Texts (one per cell), or a :class:`CellSentences` (decoded from its ids, no text).
    model
        The :class:`CellSentences` or saved folder whose vocabulary and inverse model to use, or a
        ``(vocabulary, InverseModel)`` pair.
    delimiter
        Gene separator in the texts.
    obs
        Per-cell annotations for the output (one row per sentence).
    case_insensitive
        Accept a gene whose name matches only ignoring case.
    method
        Override the inverse model's fit: ``"monotone"`` (c2t's per-rank mean) or ``"linear"``
        (Cell2Sentence's ``a + b * log10(rank)``).

    Returns
    -------
    anndata.AnnData
        ``X``: CSR float32 cells x vocabulary, predicted log1p(CP10k) expression. ``obs`` gains
        ``c2t_n_genes``, ``c2t_n_unknown`` and ``c2t_n_duplicate``; ``uns["c2t_decode"]`` holds the totals
        and the most common unknown tokens.
    """
    import anndata as ad

    from c2t.sentences._kernels import dedupe_tokens

    if isinstance(model, tuple):  # (vocabulary, InverseModel), e.g. from a training run's manifest
        vocabulary, inverse = np.asarray(model[0], dtype=object), model[1]
    elif isinstance(model, CellSentences):
        vocabulary, inverse = model.vocabulary, model.inverse_model
        if inverse is None:
            msg = "the model CellSentences holds no inverse model"
            raise C2TInputError(msg)
    else:
        vocabulary, inverse = load_model(model)
    if method is not None:
        if method not in ("monotone", "linear"):
            msg = f"method must be 'monotone' or 'linear', not {method!r}"
            raise C2TInputError(msg)
        inverse = InverseModel.from_dict({**inverse.to_dict(), "method": method})
    n_unknown_examples: dict[str, int] = {}
    n_case = 0
    if isinstance(sentences, CellSentences):
        if not np.array_equal(sentences.vocabulary, vocabulary):
            msg = "the sentences and the model have different gene vocabularies"
            raise C2TInputError(msg)
        n_cells = len(sentences)
        rows = np.repeat(np.arange(n_cells), sentences.lengths)
        genes = sentences.gene_ids.astype(np.int64)
        default_index = sentences.cell_ids.astype(str)
    else:
        if isinstance(sentences, str):
            msg = "sentences must be a sequence of texts, not one string"
            raise C2TInputError(msg)
        if not isinstance(sentences, pa.Array | pa.ChunkedArray):
            sentences = pa.array(list(sentences), pa.large_string())
        n_cells = len(sentences)
        row_parts, gene_parts, unknown_counts = [], [], []
        for lo in range(0, n_cells, _DECODE_CHUNK):  # tokens of a bounded number of sentences at a time
            rows, tokens = _tokenize(sentences[lo : lo + _DECODE_CHUNK], delimiter)
            genes, n_case_part = _lookup(tokens, vocabulary, case_insensitive=case_insensitive)
            row_parts.append(rows + lo)
            gene_parts.append(genes)
            n_case += n_case_part
            if (genes < 0).any():
                unknown_counts.append(pd.Series(tokens.filter(pa.array(genes < 0)).to_pylist()).value_counts())
        rows = np.concatenate(row_parts) if row_parts else np.zeros(0, np.int64)
        genes = np.concatenate(gene_parts) if gene_parts else np.zeros(0, np.int64)
        if unknown_counts:
            counts = pd.concat(unknown_counts).groupby(level=0).sum().sort_values(ascending=False, kind="stable")
            n_unknown_examples = {str(k): int(v) for k, v in counts.head(10).items()}
        default_index = np.array([f"cell_{i}" for i in range(n_cells)])
    keep, rank = dedupe_tokens(rows.astype(np.int64), genes, n_cells, len(vocabulary))
    unknown = genes < 0
    duplicate = ~keep & ~unknown
    per_cell = {
        "c2t_n_genes": np.bincount(rows[keep], minlength=n_cells),
        "c2t_n_unknown": np.bincount(rows[unknown], minlength=n_cells),
        "c2t_n_duplicate": np.bincount(rows[duplicate], minlength=n_cells),
    }
    indptr = np.concatenate([[0], np.cumsum(per_cell["c2t_n_genes"])]).astype(np.int64)
    X = sp.csr_matrix(
        (inverse.predict(rank[keep]), genes[keep].astype(np.int32), indptr), shape=(n_cells, len(vocabulary))
    )
    X.sort_indices()
    if obs is None:
        obs = pd.DataFrame(index=pd.Index(default_index))
    elif len(obs) != n_cells:
        msg = f"obs has {len(obs)} rows but there are {n_cells} sentences"
        raise C2TInputError(msg)
    obs = obs.copy()
    obs.index = obs.index.astype(str)
    for key, values in per_cell.items():
        obs[key] = values.astype(np.int32)
    report: dict[str, Any] = {
        "n_cells": n_cells,
        "n_tokens": len(genes),
        "n_genes_decoded": int(keep.sum()),
        "n_unknown": int(unknown.sum()),
        "n_duplicate": int(duplicate.sum()),
        "n_case_insensitive_matches": n_case,
        "n_empty_cells": int((per_cell["c2t_n_genes"] == 0).sum()),
        "unknown_examples": n_unknown_examples,
        "inverse_model": inverse.method,
        "values": "predicted log1p(CP10k) expression",
    }
    var = pd.DataFrame(index=pd.Index(vocabulary.astype(str)))
    return ad.AnnData(X=X, obs=obs, var=var, uns={"c2t_decode": report})
