"""``CellSentences``: ranked gene ids per cell, one vocabulary, the chosen obs columns and a manifest."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from c2t._atomic import atomic_path, staged_dir, write_text_atomic
from c2t._errors import C2TInputError
from c2t._manifest import diff_fields, read_manifest, vocabulary_hash, write_manifest
from c2t.sentences._inverse import InverseModel

KIND = "cell_sentences"
CELL_ID = "cell_id"
GENES = "genes"
SHARD_DIR = "shards"
VOCAB_FILE = "vocabulary.txt"
#: Gene names rendered per chunk by :meth:`CellSentences.texts` (bounds its intermediate Arrow arrays).
_TEXT_CHUNK_GENES = 2_000_000


def _check_top_k(top_k: int | None) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1):
        msg = f"top_k must be a positive integer or None (all expressed genes), not {top_k!r}"
        raise C2TInputError(msg)


class CellSentences:
    """Cell sentences stored as ranked gene ids (Arrow ``list<int32>``) plus one vocabulary.

    Text is rendered on demand with :meth:`texts` (any top-k, any delimiter). Build one with
    :func:`c2t.sentences.from_adata` or :func:`c2t.sentences.convert`, reload with :func:`c2t.sentences.load`.

    Parameters
    ----------
    offsets
        ``n_cells + 1`` int64 offsets into ``gene_ids``.
    gene_ids
        int32 vocabulary ids, each cell's genes from highest to lowest expression.
    vocabulary
        Gene names.
    obs
        One row per cell, indexed by cell id.
    manifest
        How the sentences were made (see the package docs); must hold ``top_k``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> cs = CellSentences(np.array([0, 2, 3]), np.array([1, 0, 2], dtype=np.int32), ["CD3D", "LYZ", "MS4A1"],
    ...                    pd.DataFrame(index=["c1", "c2"]), {"top_k": None})
    >>> cs.texts()
    ['LYZ CD3D', 'MS4A1']
    >>> cs.texts(top_k=1, delimiter=", ")
    ['LYZ', 'MS4A1']
    >>> cs.lengths.tolist()
    [2, 1]
    """

    def __init__(self, offsets, gene_ids, vocabulary, obs: pd.DataFrame, manifest: dict[str, Any]) -> None:
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.gene_ids = np.asarray(gene_ids, dtype=np.int32)
        self.vocabulary = np.asarray(vocabulary, dtype=object)
        self.obs = obs
        self.manifest = manifest
        assert len(self.offsets) == len(obs) + 1
        assert self.offsets[-1] == len(self.gene_ids)

    # ------------------------------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __repr__(self) -> str:
        return (
            f"CellSentences({len(self)} cells, {len(self.vocabulary)} genes, top_k={self.top_k}, "
            f"mean length {self.lengths.mean() if len(self) else 0:.1f}, obs: {list(self.obs.columns)})"
        )

    @property
    def top_k(self) -> int | None:
        """The top-k the sentences were built with (``None``: all expressed genes)."""
        return self.manifest.get("top_k")

    @property
    def lengths(self) -> np.ndarray:
        """Number of genes in each cell's sentence."""
        return np.diff(self.offsets)

    @property
    def cell_ids(self) -> np.ndarray:
        return np.asarray(self.obs.index, dtype=object)

    @property
    def inverse_model(self) -> InverseModel | None:
        """The rank -> expression model fitted when the sentences were built."""
        data = self.manifest.get("inverse_model")
        return InverseModel.from_dict(data) if data else None

    def genes_of(self, i: int) -> np.ndarray:
        """Gene names of cell ``i``, highest expression first."""
        return self.vocabulary[self.gene_ids[self.offsets[i] : self.offsets[i + 1]]]

    def __getitem__(self, index) -> CellSentences:
        """Select cells by a slice, integer array or boolean mask."""
        rows = np.arange(len(self))[index]
        rows = np.atleast_1d(rows)
        lengths = self.lengths[rows]
        starts = self.offsets[:-1][rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        take = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        manifest = {**self.manifest, "n_cells": len(rows)}
        return CellSentences(offsets, self.gene_ids[take], self.vocabulary, self.obs.iloc[rows], manifest)

    # ------------------------------------------------------------------------------------------ views
    def _truncated(self, top_k: int | None) -> tuple[np.ndarray, np.ndarray]:
        _check_top_k(top_k)
        if top_k is not None and self.top_k is not None and top_k > self.top_k:
            msg = f"top_k={top_k} asked, but these sentences keep only the top {self.top_k} genes"
            raise C2TInputError(msg)
        if top_k is None or (len(self) and self.lengths.max() <= top_k):
            return self.offsets, self.gene_ids
        lengths = np.minimum(self.lengths, top_k)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        take = np.repeat(self.offsets[:-1] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return offsets, self.gene_ids[take]

    def ranked_ids(self, *, top_k: int | None = None) -> pa.Array:
        """Ranked gene ids as an Arrow ``list<int32>`` (``large_list`` past 2**31 ids)."""
        offsets, ids = self._truncated(top_k)
        list_type = pa.LargeListArray if offsets[-1] >= 2**31 else pa.ListArray
        offset_type = pa.int64() if list_type is pa.LargeListArray else pa.int32()
        return list_type.from_arrays(pa.array(offsets, offset_type), pa.array(ids, pa.int32()))

    def _text_chunks(self, top_k: int | None, delimiter: str):
        """Yield the sentences as Arrow string arrays, a run of cells holding at most ~``_TEXT_CHUNK_GENES``
        gene names at a time: the intermediate array of names (one string per gene of every sentence) is
        then bounded, not the size of all full sentences at once."""
        offsets, ids = self._truncated(top_k)
        vocabulary = pa.array(self.vocabulary.astype(str), pa.large_string())
        separator = pa.scalar(delimiter, pa.large_string())
        n = len(offsets) - 1
        cuts = np.minimum(np.searchsorted(offsets, np.arange(_TEXT_CHUNK_GENES, offsets[-1], _TEXT_CHUNK_GENES)), n)
        bounds = np.unique(np.concatenate([[0], cuts, [n]]).astype(np.int64))
        for lo, hi in itertools.pairwise(bounds):
            part = offsets[lo : hi + 1]
            names = vocabulary.take(pa.array(ids[part[0] : part[-1]]))
            lists = pa.LargeListArray.from_arrays(pa.array(part - part[0], pa.int64()), names)
            yield pc.binary_join(lists, separator)

    def texts_arrow(self, *, top_k: int | None = None, delimiter: str = " ") -> pa.ChunkedArray:
        """Sentences as an Arrow string array, built in chunks of cells (no Python strings are made)."""
        return pa.chunked_array(list(self._text_chunks(top_k, delimiter)), pa.large_string())

    def texts(self, *, top_k: int | None = None, delimiter: str = " ") -> list[str]:
        """Cell sentences as text: the top ``top_k`` gene names joined by ``delimiter``."""
        out: list[str] = []
        for chunk in self._text_chunks(top_k, delimiter):
            out.extend(chunk.to_pylist())
        return out

    def to_arrow(self, *, top_k: int | None = None, delimiter: str = " ", text_column: str = "cell_sentence") -> pa.Table:
        """A table with ``cell_id``, the sentence text, the ranked ids and the obs columns."""
        columns = {
            CELL_ID: pa.array(self.cell_ids.astype(str)),
            text_column: self.texts_arrow(top_k=top_k, delimiter=delimiter),
            GENES: self.ranked_ids(top_k=top_k),
        }
        obs = pa.Table.from_pandas(self.obs.reset_index(drop=True), preserve_index=False)
        for name in obs.column_names:
            columns[name] = obs[name]
        return pa.table(columns)

    def to_dataset(self, *, top_k: int | None = None, delimiter: str = " ", text_column: str = "cell_sentence"):
        """Export as a Hugging Face ``datasets.Dataset`` (columns as in :meth:`to_arrow`)."""
        import datasets

        return datasets.Dataset(self.to_arrow(top_k=top_k, delimiter=delimiter, text_column=text_column))

    # ------------------------------------------------------------------------------------------ disk
    def save(self, path: str | os.PathLike, *, shard_size: int = 100_000) -> Path:
        """Save to a folder: Parquet shards, ``vocabulary.txt`` and ``manifest.json`` (written atomically)."""
        path = Path(path)
        with staged_dir(path) as staging:
            (staging / SHARD_DIR).mkdir()
            write_vocabulary(staging, self.vocabulary)
            shards = []
            for number, start in enumerate(range(0, max(len(self), 1), shard_size)):
                part = self[start : start + shard_size]
                name = write_shard(staging, number, part.cell_ids, part.offsets, part.gene_ids, part.obs)
                shards.append({"file": name, "n_cells": len(part)})
            write_manifest(staging, {**self.manifest, "kind": KIND, "shards": shards})
        return path


def write_vocabulary(folder: Path, vocabulary) -> None:
    write_text_atomic(folder / VOCAB_FILE, "".join(f"{g}\n" for g in vocabulary))


def write_shard(folder: Path, number: int, cell_ids, offsets, gene_ids, obs: pd.DataFrame) -> str:
    """Write one Parquet shard atomically and return its path relative to ``folder``."""
    name = f"{SHARD_DIR}/part-{number:05d}.parquet"
    ids = pa.array(np.asarray(cell_ids).astype(str))
    genes = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(gene_ids, pa.int32()))
    if obs.shape[1]:
        # keep the pandas schema metadata so that obs dtypes (categorical, nullable Int64, ...) load back exactly
        table = pa.Table.from_pandas(obs.reset_index(drop=True), preserve_index=False)
        table = table.add_column(0, GENES, genes).add_column(0, CELL_ID, ids)
    else:
        table = pa.table({CELL_ID: ids, GENES: genes})
    with atomic_path(folder / name) as tmp:
        pq.write_table(table, tmp)
    return name


def load(path: str | os.PathLike, *, expect: dict[str, Any] | None = None) -> CellSentences:
    """Load cell sentences saved by :meth:`CellSentences.save` or :func:`c2t.sentences.convert`.

    Parameters
    ----------
    path
        The folder.
    expect
        Manifest fields the caller relies on (e.g. ``{"vocabulary_hash": ..., "top_k": 100}``); a mismatch
        raises an error that lists what differs.
    """
    path = Path(path)
    manifest = read_manifest(path, kind=KIND)
    vocab_path = path / VOCAB_FILE
    if not vocab_path.is_file():
        msg = f"{path}: {VOCAB_FILE} is missing"
        raise C2TInputError(msg)
    vocabulary = np.array(vocab_path.read_text(encoding="utf-8").split("\n")[:-1], dtype=object)
    found_hash = vocabulary_hash(vocabulary)
    if found_hash != manifest.get("vocabulary_hash"):
        msg = f"{path}: {VOCAB_FILE} does not match the manifest's vocabulary_hash (the folder was modified)"
        raise C2TInputError(msg)
    if expect:
        differences = diff_fields(expect, manifest, list(expect))
        if differences:
            msg = f"{path}: manifest differs from what is expected: " + "; ".join(differences)
            raise C2TInputError(msg)
    tables = []
    for shard in manifest["shards"]:
        file = path / shard["file"]
        if not file.is_file():
            msg = f"{path}: shard {shard['file']} is missing"
            raise C2TInputError(msg)
        tables.append(pq.read_table(file))
    table = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    genes = table[GENES].combine_chunks() if table.num_rows else pa.array([], pa.list_(pa.int32()))
    offsets = np.asarray(genes.offsets, dtype=np.int64)
    ids = np.asarray(genes.values, dtype=np.int32)
    offsets = offsets - offsets[0]
    obs = table.drop_columns([CELL_ID, GENES]).to_pandas() if table.num_rows else pd.DataFrame()
    obs.index = pd.Index(table[CELL_ID].to_pylist() if table.num_rows else [], name=None)
    return CellSentences(offsets, ids, vocabulary, obs, manifest)


def read_params(folder: Path) -> dict[str, Any] | None:
    file = folder / "params.json"
    return json.loads(file.read_text()) if file.is_file() else None
