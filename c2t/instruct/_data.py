"""The cells a build reads: ranked gene ids, the ``obs`` columns the tasks need and, for spatial tasks, coordinates.

Input is an AnnData (in memory or backed), an ``.h5ad`` path (read in chunks by :func:`c2t.sentences.from_adata`)
or a ready :class:`c2t.sentences.CellSentences`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from c2t._errors import C2TInputError
from c2t.instruct._render import STRING, from_buffers


@dataclass
class Cells:
    """Cells after filtering: ranked ids (CSR-like ``offsets`` + ``gene_ids``), vocabulary, ``obs`` and coordinates."""

    offsets: np.ndarray
    gene_ids: np.ndarray
    vocabulary: np.ndarray
    obs: pd.DataFrame
    obsm: dict[str, np.ndarray]
    sentences_manifest: dict[str, Any]
    n_filtered_out: int = 0
    _codes: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    _cache: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        encoded = [str(g).encode("utf-8") for g in self.vocabulary]
        self._vocab_offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded)), out=self._vocab_offsets[1:])
        self._vocab_data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.cell_ids = pa.array(np.asarray(self.obs.index).astype(str), STRING)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def top_k(self) -> int | None:
        return self.sentences_manifest.get("top_k")

    def sentences(self, rows: np.ndarray, top_k: int | None, delimiter: str = " ") -> tuple[pa.Array, np.ndarray]:
        """Cell sentences of ``rows`` as an Arrow string array, rendered from the ids, and their lengths."""
        from c2t.instruct import _kernels

        rows = np.asarray(rows, dtype=np.int64)
        cached = self._cache.get((top_k, delimiter))
        if cached is not None:
            offsets, data, lengths = cached
            out_offsets, buffer = _kernels.gather(offsets, data, rows)
            return from_buffers(out_offsets, buffer), lengths[rows]
        offsets, buffer, lengths = _kernels.join_sentences(
            self._vocab_offsets, self._vocab_data, self.offsets, self.gene_ids, rows,
            -1 if top_k is None else int(top_k), delimiter.encode("utf-8"),
        )
        return from_buffers(offsets, buffer), lengths

    def cache_sentences(self, top_k: int | None, delimiter: str = " ", *, max_bytes: int = 2**30) -> bool:
        """Render every cell's sentence once (when they fit in ``max_bytes``), for tasks that reuse cells."""
        from c2t.instruct import _kernels

        lengths = self.lengths if top_k is None else np.minimum(self.lengths, top_k)
        mean_name = self._vocab_offsets[-1] / max(len(self.vocabulary), 1)
        if (top_k, delimiter) in self._cache or lengths.sum() * (mean_name + len(delimiter)) > max_bytes:
            return False
        offsets, buffer, lengths = _kernels.join_sentences(
            self._vocab_offsets, self._vocab_data, self.offsets, self.gene_ids, np.arange(len(self), dtype=np.int64),
            -1 if top_k is None else int(top_k), delimiter.encode("utf-8"),
        )
        self._cache[(top_k, delimiter)] = (offsets, np.frombuffer(buffer, dtype=np.uint8), lengths)
        return True

    def codes(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Integer codes of ``obs[key]`` (-1 where missing) and the category names as strings."""
        if key not in self._codes:
            cat = pd.Categorical(self.obs[key]).remove_unused_categories()
            names = np.asarray([str(c) for c in cat.categories], dtype=object)
            self._codes[key] = (np.asarray(cat.codes, dtype=np.int32), names)
        return self._codes[key]

    def names(self, key: str) -> pa.Array:
        """The category names of ``obs[key]`` as an Arrow string array (index them with :meth:`codes`)."""
        return pa.array(list(self.codes(key)[1]), STRING)

    def strings(self, key: str, rows: np.ndarray) -> pa.Array:
        """``obs[key]`` of ``rows`` as Arrow strings (nulls where missing)."""
        codes = self.codes(key)[0][rows]
        return self.names(key).take(pa.array(codes, mask=codes < 0))


def _missing_columns(columns: Sequence[str], needed: Mapping[str, str], name: str) -> None:
    for key, why in needed.items():
        if key not in columns:
            msg = f"{why} {key!r} not found in obs of {name}; columns are: {', '.join(map(str, columns)) or '(none)'}"
            raise C2TInputError(msg)


def _obs_columns_of(data) -> tuple[list[str], str]:
    import c2t.io

    if isinstance(data, str | os.PathLike):
        with c2t.io.open_source(data) as source:
            return source.obs_keys, source.name
    return [str(c) for c in data.obs.columns], "the AnnData"


def _read_obsm(data, key: str, n_obs: int) -> np.ndarray:
    if isinstance(data, str | os.PathLike):
        import h5py
        from anndata.io import read_elem

        with h5py.File(data, "r") as f:
            keys = list(f["obsm"].keys()) if "obsm" in f else []
            if key not in keys:
                msg = f"obsm[{key!r}] not found in {data}; obsm keys are: {', '.join(keys) or '(none)'}"
                raise C2TInputError(msg)
            values = read_elem(f["obsm"][key])
    else:
        if key not in data.obsm:
            msg = f"obsm[{key!r}] not found in the AnnData; obsm keys are: {', '.join(data.obsm.keys()) or '(none)'}"
            raise C2TInputError(msg)
        values = data.obsm[key]
    values = np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != n_obs or values.shape[1] < 1:
        msg = f"obsm[{key!r}] must be a cells x dimensions array of coordinates, not shape {values.shape}"
        raise C2TInputError(msg)
    return values


def where_mask(obs: pd.DataFrame, where: Mapping[str, Any]) -> np.ndarray:
    """Rows of ``obs`` whose column values are the given value (or one of the given values) for every key.

    Examples
    --------
    >>> obs = pd.DataFrame({"Valid": [1, 0, 1], "qc": [True, True, False]})
    >>> where_mask(obs, {"Valid": 1, "qc": True}).tolist()
    [True, False, False]
    """
    mask = np.ones(len(obs), dtype=bool)
    for key, wanted in where.items():
        values = wanted if isinstance(wanted, list | tuple | set) else [wanted]
        column = obs[key]
        if isinstance(column.dtype, pd.CategoricalDtype):
            column = column.astype(object)
        mask &= column.isin(values).to_numpy()
    return mask


def prepare(
    data,
    *,
    needed: Mapping[str, str],
    obsm_keys: Sequence[str],
    where: Mapping[str, Any],
    top_k: int | None,
    seed: int,
    sentences_options: Mapping[str, Any],
) -> Cells:
    """Turn the input into :class:`Cells`: check the columns, rank the genes, apply ``where``, read coordinates.

    ``needed`` maps each required ``obs`` column to a phrase saying why (for the error message).
    """
    from c2t.sentences import CellSentences, from_adata

    needed = {**{k: "where= column" for k in where}, **needed}
    if isinstance(data, CellSentences):
        _missing_columns(list(map(str, data.obs.columns)), needed, "the CellSentences")
        if obsm_keys:
            msg = f"obsm[{obsm_keys[0]!r}] is needed (spatial task) but a CellSentences has no obsm; pass the AnnData or .h5ad path"
            raise C2TInputError(msg)
        if top_k is not None and data.top_k is not None and top_k > data.top_k:
            msg = f"top_k={top_k} asked, but these sentences keep only the top {data.top_k} genes"
            raise C2TInputError(msg)
        cs = data
        obsm: dict[str, np.ndarray] = {}
    else:
        if isinstance(data, str | os.PathLike):
            path = Path(data)
            if not path.is_file():
                msg = f"{path}: no such file" if not path.is_dir() else f"{path}: is a folder, expected an .h5ad file"
                raise C2TInputError(msg)
        elif not hasattr(data, "obs") or not hasattr(data, "var"):
            msg = f"expected an AnnData, an .h5ad path or a CellSentences, not {type(data).__name__}"
            raise C2TInputError(msg)
        columns, name = _obs_columns_of(data)
        _missing_columns(columns, needed, name)
        cs = from_adata(data, top_k=top_k, obs_keys=list(dict.fromkeys(needed)), seed=seed, **sentences_options)
        obsm = {key: _read_obsm(data, key, len(cs)) for key in obsm_keys}
    n_before = len(cs)
    if where:
        mask = where_mask(cs.obs, where)
        if not mask.any():
            msg = f"where={dict(where)} keeps none of the {n_before} cells"
            raise C2TInputError(msg)
        if not mask.all():
            cs = cs[mask]
            obsm = {k: v[mask] for k, v in obsm.items()}
    manifest = dict(cs.manifest)
    if top_k is not None and (manifest.get("top_k") is None or top_k < manifest["top_k"]):
        manifest["top_k"] = top_k
    return Cells(cs.offsets, cs.gene_ids, cs.vocabulary, cs.obs, obsm, manifest, n_filtered_out=n_before - len(cs))
