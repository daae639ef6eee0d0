"""Building cell sentences from a matrix: in memory (:func:`from_adata`) or streamed to disk (:func:`convert`)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from c2t._atomic import replace_dir, write_text_atomic
from c2t._errors import C2TInputError
from c2t._manifest import file_hash, vocabulary_hash, write_manifest
from c2t.io import GenePlan, MatrixSource, detect_input_kind, open_source, resolve_genes
from c2t.sentences._core import KIND, SHARD_DIR, CellSentences, _check_top_k, write_shard, write_vocabulary
from c2t.sentences._inverse import InverseModel, RankStats

Normalize = Literal["auto", "counts", "log1p"]
_DETECT_ROWS = 2_000


@dataclass
class _Settings:
    """Everything that decides the output, shared by every chunk (and pickled to worker processes)."""

    top_k: int | None
    seed: int
    input_kind: str
    normalize: str
    target_sum: float
    obs_keys: list[str]
    sample_fraction: float


@dataclass
class _Chunk:
    start: int
    cell_ids: np.ndarray
    offsets: np.ndarray
    gene_ids: np.ndarray
    obs: pd.DataFrame
    stats: RankStats
    n_empty: int
    n_expressed: int


def _sampled(rows: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Deterministic per-cell coin flips: the same cells are sampled whatever the chunking."""
    if fraction >= 1:
        return np.ones(len(rows), dtype=bool)
    with np.errstate(over="ignore"):  # splitmix64: arithmetic modulo 2**64 is the point
        z = rows.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53 < fraction


def _string_index(names: np.ndarray) -> pd.Index:
    """The cell names as a string index; converted only when some are not strings (10x faster when all are)."""
    index = pd.Index(names)
    return index if index.inferred_type == "string" else index.astype(str)


def _first_bad(block, where: str, cell_ids: np.ndarray, vocabulary_of_column) -> str:
    data = block.data
    bad = np.flatnonzero(~np.isfinite(data) | (data < 0))[0]
    row = int(np.searchsorted(block.indptr, bad, side="right") - 1)
    kind = "NaN" if np.isnan(data[bad]) else "infinite" if np.isinf(data[bad]) else "negative"
    return (
        f"{where}: {kind} value {float(data[bad])!r} in cell {cell_ids[row]!r}, gene {vocabulary_of_column(block.indices[bad])!r}; "
        "c2t needs non-negative counts or log-normalised expression"
    )


def _rank_chunk(source: MatrixSource, plan: GenePlan, start: int, stop: int, settings: _Settings) -> _Chunk:
    from c2t.sentences import _kernels

    raw = source.rows(start, stop)
    block, col_map = plan.apply(raw)
    cell_ids = source.obs_names(start, stop)
    identity = len(col_map) == len(plan.vocabulary) and bool((col_map == np.arange(len(col_map))).all())
    check_integer = settings.input_kind == "counts" and settings.normalize == "auto"
    # each row gets a slot of min(top_k, stored values); rows with explicit zeros or dropped columns fill less
    top_k = np.iinfo(np.int64).max if settings.top_k is None else settings.top_k
    slots = np.minimum(np.diff(block.indptr).astype(np.int64), top_k)
    slot_offsets = np.concatenate([[0], np.cumsum(slots)]).astype(np.int64)
    ids = np.empty(slot_offsets[-1], dtype=np.int32)
    value_bits = _kernels.float_bits(block.data)
    n_positive, n_bad, n_non_integer = _kernels.rank_rows(
        block.indptr, block.indices, value_bits, col_map, identity, check_integer, start, settings.seed,
        _kernels.bits_for(len(plan.vocabulary)), top_k, slot_offsets, ids,
    )
    if n_bad:
        where = f"{source.name} ({source.matrix}), rows {start}-{stop}"
        raise C2TInputError(_first_bad(raw, where, cell_ids, lambda c: str(source.var.index[c])))
    if n_non_integer:
        msg = (
            f"{source.name} ({source.matrix}): cells {start}-{stop} hold non-integer values, but the first cells "
            "looked like raw counts; pass normalize='counts' or 'log1p' (CLI: --normalize) to say which it is"
        )
        raise C2TInputError(msg)
    lengths = np.minimum(n_positive, top_k)
    if (lengths < slots).any():  # close the gaps that explicit zeros or dropped columns left
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = ids[np.repeat(slot_offsets[:-1] - offsets[:-1], lengths) + np.arange(offsets[-1])]
    else:
        offsets = slot_offsets
    library_sizes = None if block is raw else np.asarray(raw.sum(axis=1), dtype=np.float64).ravel()
    stats = _inverse_stats(block, value_bits, col_map, start, n_positive, settings, library_sizes)
    obs = source.obs_columns(settings.obs_keys, start, stop) if settings.obs_keys else pd.DataFrame(index=range(stop - start))
    return _Chunk(start, cell_ids, offsets, ids, obs, stats, int((n_positive == 0).sum()), int(n_positive.sum()))


def _inverse_stats(block, value_bits, col_map, start: int, n_positive: np.ndarray, settings: _Settings,
                   library_sizes: np.ndarray | None = None) -> RankStats:
    """Full-sentence (rank, normalised expression) statistics of the sampled cells of a chunk.

    Only values are needed (equal values are interchangeable here), so a kernel sorts each sampled row's
    values and adds them up by rank; no sub-matrix is copied.
    """
    from c2t.sentences import _kernels

    rows = np.flatnonzero(_sampled(np.arange(start, start + block.shape[0]), settings.seed, settings.sample_fraction))
    rows = rows[n_positive[rows] > 0]
    if len(rows) == 0:
        return RankStats()
    # library sizes are the raw rows' when columns were merged or dropped, else each row's own sum
    sizes = np.zeros(0) if library_sizes is None else library_sizes[rows]
    count, total, total_sq = _kernels.rank_value_stats(
        block.indptr, block.indices, value_bits, col_map, rows.astype(np.int64), n_positive[rows], sizes,
        settings.target_sum, settings.input_kind == "counts",
    )
    return RankStats(count, total, total_sq, len(rows))


def _prepare(
    source: MatrixSource,
    *,
    top_k: int | None,
    gene_key: str | None,
    gene_map,
    on_duplicate: str,
    obs_keys: Sequence[str],
    normalize: Normalize,
    target_sum: float,
    seed: int,
    inverse_sample: int,
) -> tuple[GenePlan, _Settings]:
    """Validate everything that can be checked before any work, and decide the input kind."""
    _check_top_k(top_k)
    if normalize not in ("auto", "counts", "log1p"):
        msg = f"normalize must be 'auto', 'counts' or 'log1p', not {normalize!r}"
        raise C2TInputError(msg)
    if not (isinstance(seed, int | np.integer) and 0 <= seed < 2**63):
        msg = f"seed must be a non-negative integer, not {seed!r}"
        raise C2TInputError(msg)
    if isinstance(inverse_sample, bool) or not isinstance(inverse_sample, int | np.integer) or inverse_sample < 1:
        msg = f"inverse_sample must be a positive integer (cells used to fit the inverse model), not {inverse_sample!r}"
        raise C2TInputError(msg)
    if source.n_obs == 0:
        msg = f"{source.name} ({source.matrix}): the matrix has no cells (0 rows)"
        raise C2TInputError(msg)
    plan = resolve_genes(source.var, gene_key=gene_key, gene_map=gene_map, on_duplicate=on_duplicate)
    obs_keys = list(obs_keys)
    source.check_obs_keys(obs_keys)
    if normalize == "auto":
        head = source.rows(0, min(source.n_obs, _DETECT_ROWS))
        input_kind = detect_input_kind(head) if head.nnz else "counts"
    else:
        input_kind = normalize
    settings = _Settings(
        top_k=None if top_k is None else int(top_k),
        seed=int(seed),
        input_kind=input_kind,
        normalize=normalize,
        target_sum=float(target_sum),
        obs_keys=obs_keys,
        sample_fraction=min(1.0, inverse_sample / source.n_obs),
    )
    return plan, settings


def _manifest(source: MatrixSource, plan: GenePlan, settings: _Settings, stats: RankStats, n_cells: int,
              n_empty: int, n_expressed: int, source_hash: str | None) -> dict[str, Any]:
    if n_expressed == 0:
        msg = f"{source.name} ({source.matrix}): every cell is all-zero; there is nothing to rank"
        raise C2TInputError(msg)
    if not (stats.count > 0).any():
        msg = (
            f"{source.name} ({source.matrix}): none of the {settings.sample_fraction:.1%} of cells sampled to fit "
            "the inverse model expresses a gene; pass a larger inverse_sample"
        )
        raise C2TInputError(msg)
    inverse = InverseModel.fit(stats)
    return {
        "kind": KIND,
        "n_cells": n_cells,
        "n_genes": len(plan.vocabulary),
        "vocabulary_hash": vocabulary_hash(plan.vocabulary),
        "top_k": settings.top_k,
        "seed": settings.seed,
        "tie_break": "value descending, then a per-cell permutation of gene ids from (seed, cell index)",
        "normalization": {
            "input": settings.input_kind,
            "decided_by": "detected" if settings.normalize == "auto" else "user",
            "transform": f"normalize_total(target_sum={settings.target_sum:g}) + log1p"
            if settings.input_kind == "counts" else "none (values used as given)",
            "target_sum": settings.target_sum if settings.input_kind == "counts" else None,
            "note": "ranks are computed on the values as given; the per-cell transform does not change them",
        },
        "source": {
            "path": str(source.path) if source.path else None,
            "sha256": source_hash,
            "matrix": source.matrix,
            "n_obs": source.n_obs,
            "n_vars": int(source.var.shape[0]),
        },
        "obs_keys": settings.obs_keys,
        "inverse_model": inverse.to_dict(),
        "report": {
            "n_empty_cells": n_empty,
            "mean_expressed_genes": round(n_expressed / n_cells, 2),
            "genes": plan.report,
        },
    }


def from_adata(
    adata,
    *,
    top_k: int | None = 100,
    layer: str | None = None,
    use_raw: bool = False,
    gene_key: str | None = None,
    gene_map=None,
    on_duplicate: Literal["error", "first", "sum"] = "error",
    obs_keys: Sequence[str] = (),
    normalize: Normalize = "auto",
    target_sum: float = 1e4,
    seed: int = 0,
    chunk_size: int = 10_000,
    inverse_sample: int = 3_000,
    progress: Callable[[int], None] | None = None,
) -> CellSentences:
    """Rank every cell's genes by expression and keep the top ``top_k`` as a cell sentence.

    Parameters
    ----------
    adata
        An AnnData (in memory or backed) or the path of an ``.h5ad`` file (read in chunks).
    top_k
        Genes kept per cell; ``None`` keeps every expressed gene (full sentences).
    layer, use_raw
        Rank ``layers[layer]`` or ``raw.X`` instead of ``X``.
    gene_key
        A ``var`` column with the gene names (default: ``var_names``).
    gene_map
        An id -> symbol table (dict, Series or CSV/TSV path) to map e.g. Ensembl ids; unmapped genes are dropped.
    on_duplicate
        Duplicated gene names: ``"error"``, keep the ``"first"`` column, or ``"sum"`` the columns.
    obs_keys
        ``obs`` columns to carry along.
    normalize
        ``"auto"`` detects raw counts (all integers) vs log-normalised values; ``"counts"`` or ``"log1p"``
        says it. Counts are normalised to ``target_sum`` + log1p for the inverse model; ranks are the same.
    seed
        Seeds the tie-break between equal values; results do not depend on ``chunk_size``.
    chunk_size
        Cells per chunk (bounds the memory used).
    inverse_sample
        About this many cells (a seeded sample) fit the rank -> expression model.
    progress
        Called with the number of cells finished after each chunk.

    Returns
    -------
    CellSentences
        All-zero cells are kept with an empty sentence and counted in ``manifest["report"]``.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.array([[0, 5, 1, 5], [2, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    >>> adata.var_names = ["CD3D", "LYZ", "MS4A1", "NKG7"]
    >>> cs = from_adata(adata, top_k=2)
    >>> [sorted(s.split()) for s in cs.texts()]
    [['LYZ', 'NKG7'], ['CD3D'], []]
    >>> cs.manifest["report"]["n_empty_cells"]
    1
    """
    if chunk_size < 1:
        msg = f"chunk_size must be at least 1, not {chunk_size}"
        raise C2TInputError(msg)
    with open_source(adata, layer=layer, use_raw=use_raw) as source:
        plan, settings = _prepare(
            source, top_k=top_k, gene_key=gene_key, gene_map=gene_map, on_duplicate=on_duplicate, obs_keys=obs_keys,
            normalize=normalize, target_sum=target_sum, seed=seed, inverse_sample=inverse_sample,
        )
        chunks = []
        for start in range(0, source.n_obs, chunk_size):
            chunks.append(_rank_chunk(source, plan, start, min(source.n_obs, start + chunk_size), settings))
            if progress:
                progress(min(source.n_obs, start + chunk_size))
        stats = sum((c.stats for c in chunks), RankStats())
        source_hash = file_hash(source.path) if source.path else None
        manifest = _manifest(
            source, plan, settings, stats, source.n_obs, sum(c.n_empty for c in chunks),
            sum(c.n_expressed for c in chunks), source_hash,
        )
    lengths = np.concatenate([np.diff(c.offsets) for c in chunks])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    obs = pd.concat([c.obs for c in chunks], ignore_index=True)
    obs.index = _string_index(np.concatenate([c.cell_ids for c in chunks]))
    return CellSentences(offsets, np.concatenate([c.gene_ids for c in chunks]), plan.vocabulary, obs, manifest)


# ------------------------------------------------------------------------------------------- streaming
@dataclass
class _ShardJob:
    path: str
    layer: str | None
    use_raw: bool
    plan: GenePlan
    settings: _Settings
    staging: str
    number: int
    start: int
    stop: int
    threads: int | None


def _run_shard(job: _ShardJob) -> int:
    """Rank one shard's cells and write its Parquet file and statistics (each atomically)."""
    if job.threads:
        import numba

        numba.set_num_threads(job.threads)
    staging = Path(job.staging)
    with open_source(job.path, layer=job.layer, use_raw=job.use_raw) as source:
        chunk = _rank_chunk(source, job.plan, job.start, job.stop, job.settings)
    stats_file = staging / SHARD_DIR / f"part-{job.number:05d}.stats.npz"
    from c2t._atomic import atomic_path

    with atomic_path(stats_file) as tmp, open(tmp, "wb") as f:
        np.savez(f, **chunk.stats.to_arrays(), n_empty=chunk.n_empty, n_expressed=chunk.n_expressed)
    write_shard(staging, job.number, chunk.cell_ids, chunk.offsets, chunk.gene_ids, chunk.obs)
    return job.stop - job.start


def _shard_done(staging: Path, number: int) -> bool:
    base = staging / SHARD_DIR / f"part-{number:05d}"
    return base.with_suffix(".parquet").is_file() and base.with_suffix(".stats.npz").is_file()


def convert(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    top_k: int | None = 100,
    layer: str | None = None,
    use_raw: bool = False,
    gene_key: str | None = None,
    gene_map=None,
    on_duplicate: Literal["error", "first", "sum"] = "error",
    obs_keys: Sequence[str] = (),
    normalize: Normalize = "auto",
    target_sum: float = 1e4,
    seed: int = 0,
    chunk_size: int = 10_000,
    workers: int = 1,
    inverse_sample: int = 3_000,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Convert an ``.h5ad`` file to cell sentences on disk, streaming, resumable, optionally in parallel.

    Rows are read ``chunk_size`` at a time (memory does not grow with the number of cells) and each chunk is
    written as one Parquet shard. The work happens in a hidden staging folder beside ``out``; a rerun with
    the same input and settings resumes from the last finished shard. Only a complete result replaces
    ``out``; bad input removes the staging folder and leaves ``out`` as it was. Parameters are those of
    :func:`from_adata`, plus ``workers`` (processes).

    Returns
    -------
    pathlib.Path
        ``out``; load it with :func:`c2t.sentences.load`.
    """
    path, out = Path(path), Path(out)
    if chunk_size < 1 or workers < 1:
        msg = f"chunk_size and workers must be at least 1 (got {chunk_size}, {workers})"
        raise C2TInputError(msg)
    staging = out.with_name(f".{out.name}.partial")
    with open_source(path, layer=layer, use_raw=use_raw) as source:
        plan, settings = _prepare(
            source, top_k=top_k, gene_key=gene_key, gene_map=gene_map, on_duplicate=on_duplicate, obs_keys=obs_keys,
            normalize=normalize, target_sum=target_sum, seed=seed, inverse_sample=inverse_sample,
        )
        source_hash = file_hash(path)
        params = {
            "source_sha256": source_hash, "matrix": source.matrix, "vocabulary_hash": vocabulary_hash(plan.vocabulary),
            "chunk_size": chunk_size, **{k: v for k, v in vars(settings).items()},
        }
        params_file = staging / "params.json"
        if staging.exists() and (not params_file.is_file() or json.loads(params_file.read_text()) != params):
            shutil.rmtree(staging)  # an unfinished run of something else: start over
        (staging / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        write_text_atomic(params_file, json.dumps(params, indent=2))
        write_vocabulary(staging, plan.vocabulary)
        bounds = [(i, s, min(source.n_obs, s + chunk_size)) for i, s in enumerate(range(0, source.n_obs, chunk_size))]
        todo = [b for b in bounds if not _shard_done(staging, b[0])]
        done_cells = sum(stop - start for number, start, stop in bounds if _shard_done(staging, number))
        if progress:
            progress(done_cells)
        jobs = [
            _ShardJob(str(path), layer, use_raw, plan, settings, str(staging), number, start, stop,
                      threads=1 if workers > 1 else None)
            for number, start, stop in todo
        ]
        try:
            if workers == 1:
                for job in jobs:
                    done_cells += _run_shard(job)
                    if progress:
                        progress(done_cells)
            else:
                import multiprocessing as mp
                from concurrent.futures import ProcessPoolExecutor

                with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                    for n in pool.map(_run_shard, jobs):
                        done_cells += n
                        if progress:
                            progress(done_cells)
            stats, n_empty, n_expressed, shards = RankStats(), 0, 0, []
            for number, start, stop in bounds:
                with np.load(staging / SHARD_DIR / f"part-{number:05d}.stats.npz") as arrays:
                    stats = stats + RankStats.from_arrays(arrays)
                    n_empty += int(arrays["n_empty"])
                    n_expressed += int(arrays["n_expressed"])
                shards.append({"file": f"{SHARD_DIR}/part-{number:05d}.parquet", "n_cells": stop - start})
            manifest = _manifest(source, plan, settings, stats, source.n_obs, n_empty, n_expressed, source_hash)
        except C2TInputError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    manifest["shards"] = shards
    manifest["chunk_size"] = chunk_size
    write_manifest(staging, manifest)
    params_file.unlink()
    replace_dir(staging, out)
    return out
