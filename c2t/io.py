"""Reading and validating single-cell input: the matrix, its gene names and its cells.

Everything downstream reads cells through a :class:`MatrixSource`, in row chunks, whether the data is an
in-memory AnnData, a backed AnnData or an ``.h5ad`` path opened lazily with h5py (bounded memory).

Examples
--------
>>> import anndata as ad, numpy as np, scipy.sparse as sp
>>> adata = ad.AnnData(sp.csr_matrix(np.array([[0, 2, 1], [3, 0, 0]], dtype=np.float32)))
>>> adata.var_names = ["CD3D", "MS4A1", "LYZ"]
>>> source = open_source(adata)
>>> source.rows(0, 2).toarray().tolist()
[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]
>>> plan = resolve_genes(source.var)
>>> plan.vocabulary.tolist()
['CD3D', 'MS4A1', 'LYZ']
>>> detect_input_kind(source.rows(0, 2))
'counts'
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from c2t._errors import C2TInputError

__all__ = [
    "GenePlan",
    "MatrixSource",
    "detect_input_kind",
    "normalize_log1p",
    "open_source",
    "read_gene_map",
    "read_h5ad",
    "resolve_genes",
]

InputKind = Literal["counts", "log1p"]
_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*[GT]\d+)\.\d+$")


# ----------------------------------------------------------------------------------------------- files
def _open_h5(path: Path):
    import h5py

    if not path.exists():
        msg = f"{path}: no such file"
        raise C2TInputError(msg)
    if path.is_dir():
        msg = f"{path}: is a folder, expected an .h5ad file"
        raise C2TInputError(msg)
    try:
        return h5py.File(path, "r")
    except OSError as err:
        reason = str(err).split("(", 1)[-1].rstrip(")") if "(" in str(err) else str(err)
        msg = f"{path}: cannot be read as h5ad, the file is truncated or not HDF5 ({reason})"
        raise C2TInputError(msg) from None


def read_h5ad(path: str | os.PathLike, *, backed: bool = False):
    """Read an ``.h5ad`` file, turning unreadable files into a one-line :class:`C2TInputError`.

    Parameters
    ----------
    path
        The file.
    backed
        Open in backed mode (``X`` stays on disk; rows are read on demand).

    Returns
    -------
    anndata.AnnData
    """
    import anndata as ad

    path = Path(path)
    _open_h5(path).close()
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except (OSError, KeyError, ValueError) as err:
        msg = f"{path}: cannot be read as h5ad ({type(err).__name__}: {err})"
        raise C2TInputError(msg) from None


# ---------------------------------------------------------------------------------------------- source
class MatrixSource:
    """Row-chunk access to one matrix (``X``, a layer or ``raw.X``) plus its ``var`` and ``obs``.

    Use :func:`open_source` to make one. ``rows(start, stop)`` returns a CSR block of float values.
    """

    name: str  # the file path, or "AnnData" for an in-memory object
    matrix: str  # "X", "layers/<name>" or "raw/X"
    path: Path | None
    n_obs: int
    var: pd.DataFrame

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        raise NotImplementedError

    def obs_names(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def obs_columns(self, keys: Sequence[str], start: int, stop: int) -> pd.DataFrame:
        raise NotImplementedError

    @property
    def obs_keys(self) -> list[str]:
        raise NotImplementedError

    def check_obs_keys(self, keys: Sequence[str]) -> None:
        """Raise a :class:`C2TInputError` naming any of ``keys`` that is not an ``obs`` column."""
        missing = [k for k in keys if k not in self.obs_keys]
        if missing:
            msg = f"{missing[0]!r} not found in obs of {self.name}; columns are: {', '.join(self.obs_keys) or '(none)'}"
            raise C2TInputError(msg)

    def close(self) -> None:
        """Release the file handle, if any."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_h5ad(adata, path: str | os.PathLike) -> Path:
    """Write ``adata`` to an ``.h5ad`` file atomically (a crash leaves the old file or none), creating its folder.

    Examples
    --------
    >>> import anndata as ad, numpy as np, tempfile, pathlib
    >>> out = write_h5ad(ad.AnnData(np.ones((2, 3), np.float32)), pathlib.Path(tempfile.mkdtemp()) / "a" / "x.h5ad")
    >>> read_h5ad(out).shape
    (2, 3)
    >>> write_h5ad(ad.AnnData(np.ones((2, 3), np.float32)), "x.csv")
    Traceback (most recent call last):
    ...
    c2t._errors.C2TInputError: x.csv: the output must be an .h5ad file
    """
    from c2t._atomic import atomic_path

    path = Path(path)
    if path.suffix != ".h5ad":
        msg = f"{path}: the output must be an .h5ad file"
        raise C2TInputError(msg)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path


def _to_csr(block: Any) -> sp.csr_matrix:
    block = sp.csr_matrix(block) if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
    if block.dtype not in (np.float32, np.float64):
        block = block.astype(np.float32)
    if not block.has_canonical_format:
        block.sum_duplicates()
    return block


class _AnnDataSource(MatrixSource):
    def __init__(self, adata, *, layer: str | None, use_raw: bool) -> None:
        self.adata = adata
        self.path = Path(adata.filename) if getattr(adata, "isbacked", False) and adata.filename else None
        self.name = str(self.path) if self.path else "AnnData"
        self.n_obs = adata.n_obs
        if use_raw:
            if adata.raw is None:
                msg = "use_raw=True but adata.raw is None"
                raise C2TInputError(msg)
            self._x, self.var, self.matrix = adata.raw.X, adata.raw.var, "raw/X"
        elif layer is not None:
            if layer not in adata.layers:
                msg = f"layer {layer!r} not found in adata.layers; layers are: {', '.join(adata.layers) or '(none)'}"
                raise C2TInputError(msg)
            self._x, self.var, self.matrix = adata.layers[layer], adata.var, f"layers/{layer}"
        else:
            if adata.X is None:
                msg = "adata.X is None; choose a layer"
                raise C2TInputError(msg)
            self._x, self.var, self.matrix = adata.X, adata.var, "X"
        if sp.issparse(self._x) and self._x.format == "csc":
            self._x = sp.csr_matrix(self._x)  # row chunks of a CSC matrix are slow; convert once

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        from c2t._csr import is_canonical

        x = self._x
        if sp.issparse(x) and x.format == "csr" and x.dtype in (np.float32, np.float64) and is_canonical(x):
            # a view on the rows (no copy): only the offsets are rebuilt
            a, b = int(x.indptr[start]), int(x.indptr[stop])
            view = sp.csr_matrix((stop - start, x.shape[1]), dtype=x.dtype)
            # set the arrays directly: scipy's constructor would copy slices of larger arrays ("prune")
            view.data, view.indices, view.indptr = x.data[a:b], x.indices[a:b], x.indptr[start : stop + 1] - a
            view.has_canonical_format = True  # rows of a canonical matrix are canonical
            return view
        return _to_csr(x[start:stop])

    def obs_names(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.adata.obs_names[start:stop], dtype=object)

    @property
    def obs_keys(self) -> list[str]:
        return list(self.adata.obs.columns)

    def obs_columns(self, keys: Sequence[str], start: int, stop: int) -> pd.DataFrame:
        return self.adata.obs.iloc[start:stop][list(keys)].reset_index(drop=True)


class _H5adSource(MatrixSource):
    """Lazy access through h5py: only the requested rows are read (bounded memory)."""

    def __init__(self, path: Path, *, layer: str | None, use_raw: bool) -> None:
        from anndata.io import read_elem

        self.path = path
        self.name = str(path)
        self.file = _open_h5(path)
        try:
            if use_raw:
                if "raw" not in self.file:
                    msg = f"{path}: use_raw=True but the file has no raw"
                    raise C2TInputError(msg)
                self._x, var_group, self.matrix = self.file["raw/X"], self.file["raw/var"], "raw/X"
            elif layer is not None:
                layers = list(self.file.get("layers", {}).keys())
                if layer not in layers:
                    msg = f"layer {layer!r} not found in {path}; layers are: {', '.join(layers) or '(none)'}"
                    raise C2TInputError(msg)
                self._x, var_group, self.matrix = self.file["layers"][layer], self.file["var"], f"layers/{layer}"
            else:
                if "X" not in self.file:
                    msg = f"{path}: has no X; choose a layer"
                    raise C2TInputError(msg)
                self._x, var_group, self.matrix = self.file["X"], self.file["var"], "X"
            self.var = read_elem(var_group)
            self._obs = self.file["obs"]
            self._obs_index = self._obs.attrs["_index"]
            self.n_obs = self._obs[self._obs_index].shape[0]
            enc = self._x.attrs.get("encoding-type", "array")
            if enc == "csc_matrix":
                msg = (
                    f"{path}: {self.matrix} is stored as CSC, which cannot be read in row chunks; "
                    "load it in memory (c2t.io.read_h5ad) or rewrite it as CSR"
                )
                raise C2TInputError(msg)
            self._sparse = enc == "csr_matrix"
            if self._sparse:
                self._indptr = self._x["indptr"]
        except C2TInputError:
            self.file.close()
            raise
        except (OSError, KeyError) as err:
            self.file.close()
            msg = f"{path}: cannot be read as h5ad ({type(err).__name__}: {err})"
            raise C2TInputError(msg) from None

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        try:
            if not self._sparse:
                return _to_csr(self._x[start:stop])
            ip = self._indptr[start : stop + 1].astype(np.int64)
            a, b = int(ip[0]), int(ip[-1])
            data = self._x["data"][a:b]
            indices = self._x["indices"][a:b]
        except OSError as err:
            msg = f"{self.path}: cannot read rows {start}-{stop} of {self.matrix}; the file is truncated or damaged ({err})"
            raise C2TInputError(msg) from None
        return _to_csr(sp.csr_matrix((data, indices, ip - a), shape=(stop - start, self.var.shape[0])))

    def obs_names(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(_read_elem_rows(self._obs[self._obs_index], start, stop), dtype=object)

    @property
    def obs_keys(self) -> list[str]:
        return [str(k) for k in self._obs.attrs.get("column-order", [])]

    def obs_columns(self, keys: Sequence[str], start: int, stop: int) -> pd.DataFrame:
        return pd.DataFrame({k: _read_elem_rows(self._obs[k], start, stop) for k in keys})

    def close(self) -> None:
        self.file.close()


def _read_elem_rows(elem, start: int, stop: int):
    """Rows ``start:stop`` of one obs column stored by anndata, reading only those rows when possible."""
    from anndata.io import read_elem

    enc = elem.attrs.get("encoding-type", "")
    if enc == "string-array":
        return elem.asstr()[start:stop]
    if enc == "array":
        return elem[start:stop]
    if enc == "categorical":
        categories = read_elem(elem["categories"])
        codes = elem["codes"][start:stop]
        return pd.Categorical.from_codes(codes, categories=categories, ordered=bool(elem.attrs.get("ordered")))
    # rare encodings (e.g. nullable integers): read the column, keep the rows and the dtype
    return read_elem(elem)[start:stop]


def open_source(data, *, layer: str | None = None, use_raw: bool = False) -> MatrixSource:
    """Open the matrix to convert: an AnnData (in memory or backed) or the path of an ``.h5ad`` file.

    Parameters
    ----------
    data
        ``anndata.AnnData`` or a path. A path is read lazily, a chunk of rows at a time.
    layer
        Use ``layers[layer]`` instead of ``X``.
    use_raw
        Use ``raw.X`` (with ``raw.var``) instead of ``X``.

    Returns
    -------
    MatrixSource
    """
    if layer is not None and use_raw:
        msg = "choose either layer or use_raw, not both"
        raise C2TInputError(msg)
    if isinstance(data, str | os.PathLike):
        return _H5adSource(Path(data), layer=layer, use_raw=use_raw)
    return _AnnDataSource(data, layer=layer, use_raw=use_raw)


# ---------------------------------------------------------------------------------------------- values
def detect_input_kind(block: sp.csr_matrix) -> InputKind:
    """Say whether a block of rows holds raw counts (all values integers) or normalised values.

    Examples
    --------
    >>> import scipy.sparse as sp, numpy as np
    >>> detect_input_kind(sp.csr_matrix(np.array([[1.0, 0.0, 5.0]])))
    'counts'
    >>> detect_input_kind(sp.csr_matrix(np.array([[1.2, 0.0, 0.7]])))
    'log1p'
    """
    data = block.data
    head = data[:4096]  # normalised data shows a fraction at once: skip the full check
    if not np.array_equal(head, np.rint(head)):
        return "log1p"
    return "counts" if np.array_equal(data, np.rint(data)) else "log1p"


def normalize_log1p(block: sp.csr_matrix, *, target_sum: float = 1e4) -> sp.csr_matrix:
    """Scale each row of counts to ``target_sum`` and take ``log1p`` (scanpy's normalize_total + log1p).

    All-zero rows stay zero.

    Examples
    --------
    >>> import scipy.sparse as sp, numpy as np
    >>> out = normalize_log1p(sp.csr_matrix(np.array([[1.0, 3.0]], dtype=np.float32)), target_sum=4)
    >>> out.toarray().astype(float).round(4).tolist()
    [[0.6931, 1.3863]]
    """
    totals = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    out = block.copy()
    out.data = np.log1p(out.data * np.repeat(scale, np.diff(out.indptr))).astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------- genes
@dataclass(frozen=True)
class GenePlan:
    """How matrix columns become the gene vocabulary of cell sentences.

    Attributes
    ----------
    vocabulary
        Unique gene names, in first-seen column order (original casing kept).
    column_to_gene
        For each matrix column, its index in ``vocabulary``, or -1 when the column is dropped.
    report
        Counts (and a few examples) of unmapped, missing and duplicated gene names.
    sum_duplicates
        Several columns map to one gene and are summed (``on_duplicate="sum"``).
    """

    vocabulary: np.ndarray
    column_to_gene: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)
    sum_duplicates: bool = False

    @property
    def is_identity(self) -> bool:
        """Every column is its own gene, in order."""
        return len(self.vocabulary) == len(self.column_to_gene) and bool(
            np.array_equal(self.column_to_gene, np.arange(len(self.column_to_gene)))
        )

    def apply(self, block: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
        """Return ``block`` (summed over duplicate columns if asked) and its column -> gene map."""
        if not self.sum_duplicates:
            return block, self.column_to_gene
        keep = np.flatnonzero(self.column_to_gene >= 0)
        agg = sp.csr_matrix(
            (np.ones(len(keep), dtype=block.dtype), (keep, self.column_to_gene[keep])),
            shape=(block.shape[1], len(self.vocabulary)),
        )
        summed = (block @ agg).tocsr()
        summed.sort_indices()
        return summed, np.arange(len(self.vocabulary), dtype=np.int32)


def read_gene_map(gene_map: str | os.PathLike | Mapping[str, str] | pd.Series) -> dict[str, str]:
    """Load an id -> symbol table: a dict, a Series, or a CSV/TSV file whose first two columns are id, symbol.

    A file may have a header line or none (e.g. 10x ``features.tsv.gz``); ``.tsv``/``.txt`` (also gzipped)
    are tab-separated, anything else comma-separated.

    Examples
    --------
    >>> read_gene_map({"ENSG00000167286": "CD3D"})
    {'ENSG00000167286': 'CD3D'}
    """
    if isinstance(gene_map, pd.Series):
        return {str(k): str(v) for k, v in gene_map.dropna().items()}
    if isinstance(gene_map, Mapping):
        return {str(k): str(v) for k, v in gene_map.items() if v is not None}
    path = Path(gene_map)
    if not path.is_file():
        msg = f"gene map {path}: no such file"
        raise C2TInputError(msg)
    sep = "\t" if {".tsv", ".txt"} & {s.lower() for s in path.suffixes} else ","
    try:
        # no header assumed: a header line only adds a harmless entry, and a headerless file keeps its first gene
        table = pd.read_csv(path, sep=sep, dtype=str, header=None)
    except pd.errors.EmptyDataError:
        msg = f"gene map {path}: the file is empty"
        raise C2TInputError(msg) from None
    if table.shape[1] < 2:
        msg = f"gene map {path}: needs two columns (id, symbol); the first line is {table.iloc[0].tolist()}"
        raise C2TInputError(msg)
    table = table.iloc[:, :2].dropna()
    return dict(zip(table.iloc[:, 0].str.strip(), table.iloc[:, 1].str.strip(), strict=True))


def _looks_like_default_index(names: np.ndarray) -> bool:
    if len(names) == 0 or names[0] != "0":  # the usual case, without building the comparison
        return False
    return bool(np.array_equal(names, np.arange(len(names)).astype(str)))


def resolve_genes(
    var: pd.DataFrame,
    *,
    gene_key: str | None = None,
    gene_map: str | os.PathLike | Mapping[str, str] | pd.Series | None = None,
    on_duplicate: Literal["error", "first", "sum"] = "error",
) -> GenePlan:
    """Decide the gene name of every matrix column.

    Names come from ``var_names`` or the ``var`` column ``gene_key``; casing is kept as it is (mouse genes
    stay ``Cd3e``). With ``gene_map`` (an id -> symbol table, e.g. Ensembl -> symbol) names are mapped and
    columns that cannot be mapped are dropped and counted; Ensembl version suffixes (``.5``) are ignored.

    Parameters
    ----------
    var
        The ``var`` table (its index is ``var_names``).
    gene_key
        A ``var`` column holding the gene names to use.
    gene_map
        Map the names through this id -> symbol table (see :func:`read_gene_map`).
    on_duplicate
        What to do when two columns carry the same name: ``"error"`` (default), keep the ``"first"``,
        or ``"sum"`` their values.

    Returns
    -------
    GenePlan

    Examples
    --------
    >>> import pandas as pd
    >>> var = pd.DataFrame(index=["ENSG1", "ENSG2", "ENSG3"])
    >>> plan = resolve_genes(var, gene_map={"ENSG1": "CD3D", "ENSG3": "LYZ"})
    >>> plan.vocabulary.tolist(), plan.column_to_gene.tolist(), plan.report["n_unmapped"]
    (['CD3D', 'LYZ'], [0, -1, 1], 1)
    """
    if on_duplicate not in ("error", "first", "sum"):
        msg = f"on_duplicate must be 'error', 'first' or 'sum', not {on_duplicate!r}"
        raise C2TInputError(msg)
    if var.shape[0] == 0:
        msg = "the matrix has no genes (0 columns)"
        raise C2TInputError(msg)
    if gene_key is not None:
        if gene_key not in var.columns:
            msg = f"gene_key {gene_key!r} not found in var; columns are: {', '.join(map(str, var.columns)) or '(none)'}"
            raise C2TInputError(msg)
        raw = var[gene_key]
        source = f"var[{gene_key!r}]"
    else:
        raw = pd.Series(var.index, index=var.index)
        source = "var_names"
    values = raw.to_numpy(dtype=object)
    missing = pd.isna(values)
    names = np.array([str(v).strip() for v in values], dtype=object)  # a list comprehension: 2x pandas' .str
    names[missing] = ""
    missing |= names == ""
    if missing.all() or (gene_key is None and gene_map is None and _looks_like_default_index(names)):
        msg = f"no gene names in {source} (empty or default positions '0', '1', ...); pass gene_key= a var column with names"
        raise C2TInputError(msg)
    report: dict[str, Any] = {"source": source, "n_columns": len(names), "n_missing_name": int(missing.sum())}
    if gene_map is not None:
        table = read_gene_map(gene_map)
        if not table:
            msg = "the gene map is empty"
            raise C2TInputError(msg)
        for key, symbol in list(table.items()):  # versioned ids in the map match unversioned names too
            table.setdefault(_ENSEMBL_VERSION.sub(r"\1", key), symbol)
        stripped = np.array([_ENSEMBL_VERSION.sub(r"\1", n) for n in names], dtype=object)
        exact = pd.Series(names).map(table).to_numpy(dtype=object)
        mapped = pd.Series(np.where(pd.isna(exact), pd.Series(stripped).map(table).to_numpy(dtype=object), exact))
        unmapped = mapped.isna().to_numpy() & ~missing
        report["n_unmapped"] = int(unmapped.sum())
        report["unmapped_examples"] = names[unmapped][:10].tolist()
        if unmapped.all():
            msg = f"none of the {len(names)} genes in {source} is in the gene map (first: {names[0]!r})"
            raise C2TInputError(msg)
        missing |= unmapped
        names = mapped.fillna("").astype(str).to_numpy(dtype=object)
    else:
        report["n_unmapped"] = 0
        report["unmapped_examples"] = []
    kept = np.flatnonzero(~missing)
    codes, uniques = pd.factorize(pd.Index(names[kept]))
    duplicated = pd.Index(codes).duplicated()  # on the integer codes: no second pass over the strings
    report["n_duplicate_columns"] = int(duplicated.sum())
    report["duplicate_examples"] = pd.unique(names[kept][duplicated])[:10].tolist()
    if duplicated.any() and on_duplicate == "error":
        examples = ", ".join(report["duplicate_examples"][:5])
        msg = (
            f"{report['n_duplicate_columns']} duplicated gene names in {source} (e.g. {examples}); "
            "pass on_duplicate='first' or 'sum' (CLI: --on-duplicate)"
        )
        raise C2TInputError(msg)
    column_to_gene = np.full(len(names), -1, dtype=np.int32)
    if on_duplicate == "first":
        column_to_gene[kept[~duplicated]] = codes[~duplicated]
    else:
        column_to_gene[kept] = codes
    report["n_genes"] = len(uniques)
    return GenePlan(
        vocabulary=np.asarray(uniques, dtype=object),
        column_to_gene=column_to_gene,
        report=report,
        sum_duplicates=bool(duplicated.any() and on_duplicate == "sum"),
    )
