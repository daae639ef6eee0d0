#!/usr/bin/env python
"""Benchmark c2t cell sentences against plain per-row numpy baselines (and, optionally, cell2sentence 1.2.0).

What it measures (all c2t and baseline timings come from this one process, interleaved, median of
``--repeat`` runs; numba is warmed up on a small matrix first):

* ranking only: ``c2t.sentences.from_adata(adata, top_k=100)`` vs a per-row ``np.argpartition`` loop that
  returns gene ids;
* ranking + text: ``from_adata(...).texts()`` vs the per-row loop that returns top-100 text sentences
  (the fair comparison: text vs text);
* full sentences (``top_k=None``), ids and text, vs a per-row full-sort loop;
* correctness: c2t's values at every rank equal the baseline's (tied genes may come in another order);
* peak memory: each part runs again in a fresh subprocess that loads the matrix from ``.npy`` files; the
  memory it adds is ``ru_maxrss`` (and an RSS sampled every 2 ms) minus the RSS just before the part,
  reported in MB and as a ratio to the loaded matrix (data + indices + indptr);
* decoding: ``c2t.sentences.decode(texts, model=cs)`` on ``--decode-cells`` top-100 sentences;
* streaming (``--stream-cells N``): writes a synthetic ``.h5ad`` of N cells (and N/10) with h5py in chunks,
  runs ``c2t.sentences.convert`` in a subprocess while sampling the RSS of it and its workers;
* cell2sentence (``--c2s-python PYTHON``): runs /work/shared/bench/bench_c2s.py (modes make, c2s,
  baseline) with that interpreter and compares cells/s.

Every timing also records the share of the CPUs that *other* processes used meanwhile ("other CPU"):
numbers are clean only when it is near 0% (check ``uptime`` first on a shared machine). Subprocesses are
forked from /bin/sh so that their ``ru_maxrss`` is their own (on Linux a directly started child inherits
its parent's peak RSS).

Usage (from the repository root, with the c2t virtualenv active)::

    python scripts/bench_sentences.py                                  # 20,000 x 20,000, ~2,000 nnz/cell
    python scripts/bench_sentences.py --stream-cells 1000000           # + streaming 100k and 1M cells
    python scripts/bench_sentences.py --c2s-python /work/c2s_venv/bin/python
    python scripts/bench_sentences.py --n-cells 2000 --repeat 1 --no-memory   # quick smoke run

Scratch data (matrix .npy files, synthetic .h5ad files, convert outputs, cell2sentence outputs) goes to
``--scratch`` (default /tmp/c2t_bench, outside the repository); the JSON report to ``--out``
(default bench_out/sentences.json in the repository, git-ignored).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
C2S_BENCH = Path("/work/shared/bench/bench_c2s.py")
MB = 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")


# ============================================================================================ memory
def rss_of(pid: int) -> int:
    """Resident set size of one process in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (read from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class ForeignCpu:
    """Share of all CPUs that *other* processes used while the block ran (this process and the children it
    waited for are taken off the machine's busy time). Timings are clean only when it is near 0."""

    @staticmethod
    def _read() -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        return busy, own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime, time.perf_counter()

    def __enter__(self) -> ForeignCpu:
        self.share = 0.0
        self._start = self._read()
        return self

    def __exit__(self, *exc) -> None:
        busy, mine, now = (b - a for a, b in zip(self._start, self._read(), strict=True))
        self.share = round(max(0.0, (busy - mine) / (now * (os.cpu_count() or 1))), 3) if now > 0 else 0.0


def fresh(cmd: list[str]) -> list[str]:
    """Run ``cmd`` as a grandchild forked by /bin/sh. On Linux a process started directly inherits this
    (large) process's peak RSS as its own ``ru_maxrss``; forked from a small shell it starts from ~0."""
    return ["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd]


def max_rss_self() -> int:
    """Peak RSS of this process so far, bytes (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRss:
    """Sample the RSS of a process (and, with ``tree``, the sum over its descendants) in a thread."""

    def __init__(self, pid: int | None = None, *, tree: bool = False, interval: float = 0.002) -> None:
        self.pid = pid or os.getpid()
        self.tree = tree
        self.interval = interval
        self.peak = 0  # bytes, summed over the tree
        self.peak_single = 0  # bytes, the largest single process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        pids = descendants(self.pid) if self.tree else [self.pid]
        sizes = [rss_of(p) for p in pids]
        self.peak = max(self.peak, sum(sizes))
        self.peak_single = max(self.peak_single, max(sizes))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# ============================================================================================ data
def gene_names(n_genes: int) -> np.ndarray:
    return np.array([f"GENE{i:05d}" for i in range(n_genes)], dtype=object)


def gene_model(n_genes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gene popularity (power law, as a CDF to draw from) and gene mean expression (lognormal)."""
    popularity = rng.permutation(1.0 / np.arange(1, n_genes + 1) ** 0.6)
    cdf = np.cumsum(popularity / popularity.sum())
    gene_mean = rng.lognormal(mean=0.0, sigma=1.2, size=n_genes)
    return cdf, gene_mean


def synthetic_block(rng, cdf, gene_mean, n_rows: int, nnz_per_cell: int, target_sum: float = 1e4):
    """CSR arrays ``(indptr, indices, data)`` of ``n_rows`` cells: NB-like counts >= 1 on ~nnz_per_cell
    distinct genes, then normalize_total(target_sum) + log1p, float32 (the recipe of bench_c2s.py)."""
    n_genes = len(cdf)
    draws = int(nnz_per_cell * 1.17)
    cols = np.minimum(np.searchsorted(cdf, rng.random((n_rows, draws))), n_genes - 1)
    keys = np.unique((np.arange(n_rows, dtype=np.int64)[:, None] * n_genes + cols).ravel())  # row-major, sorted
    rows, cols = np.divmod(keys, n_genes)
    cell_size = rng.lognormal(mean=0.0, sigma=0.3, size=n_rows)
    mu = gene_mean[cols] * cell_size[rows]
    counts = 1.0 + rng.poisson(rng.gamma(shape=2.0, scale=mu / 2.0))
    totals = np.bincount(rows, weights=counts, minlength=n_rows)
    data = np.log1p(counts * (target_sum / totals)[rows]).astype(np.float32)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, cols.astype(np.int32), data


def make_matrix(n_cells: int, n_genes: int, nnz_per_cell: int, seed: int = 0, block: int = 2000) -> sp.csr_matrix:
    """The in-memory synthetic matrix (cells x genes, CSR float32, sorted indices)."""
    rng = np.random.default_rng(seed)
    cdf, gene_mean = gene_model(n_genes, rng)
    parts = [synthetic_block(rng, cdf, gene_mean, min(block, n_cells - s), nnz_per_cell) for s in range(0, n_cells, block)]
    nnz = np.cumsum([0] + [p[0][-1] for p in parts])
    indptr = np.concatenate([[0]] + [p[0][1:] + base for p, base in zip(parts, nnz[:-1], strict=True)])
    indices = np.concatenate([p[1] for p in parts])
    data = np.concatenate([p[2] for p in parts])
    index_type = np.int32 if nnz[-1] < 2**31 else np.int64
    X = sp.csr_matrix((data, indices, indptr.astype(index_type)), shape=(n_cells, n_genes))
    X.has_sorted_indices = True
    return X


def matrix_bytes(X: sp.csr_matrix) -> int:
    return X.data.nbytes + X.indices.nbytes + X.indptr.nbytes


def to_adata(X: sp.csr_matrix, names: np.ndarray):
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame(index=pd.Index([f"cell_{i}" for i in range(X.shape[0])]))
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(names.astype(str))))


def save_matrix(X: sp.csr_matrix, folder: Path) -> None:
    """Write the CSR arrays as .npy files, for the memory subprocesses (np.load has no transient copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("data", "indices", "indptr"):
        np.save(folder / f"{name}.npy", getattr(X, name))
    (folder / "shape.json").write_text(json.dumps(list(X.shape)))


def load_matrix(folder: Path) -> sp.csr_matrix:
    arrays = {name: np.load(folder / f"{name}.npy") for name in ("data", "indices", "indptr")}
    X = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(json.loads((folder / "shape.json").read_text())))
    X.has_sorted_indices = True
    return X


# ============================================================================================ baselines
def baseline_ids(X: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row loop: argpartition for the top k, then sort them (value desc, gene index asc). Ids only."""
    ip, ix, d = X.indptr, X.indices, X.data
    out = []
    for i in range(X.shape[0]):
        v, c = d[ip[i] : ip[i + 1]], ix[ip[i] : ip[i + 1]]
        if len(v) > k:
            kth = np.partition(v, len(v) - k)[len(v) - k]  # k-th largest
            p = np.flatnonzero(v >= kth)  # keep every tie at the boundary
            v, c = v[p], c[p]
        out.append(c[np.lexsort((c, -v))[:k]])
    offsets = np.concatenate([[0], np.cumsum([len(o) for o in out])])
    return offsets, np.concatenate(out).astype(np.int32)


def baseline_texts(X: sp.csr_matrix, names: np.ndarray, k: int) -> list[str]:
    """bench_c2s.py's baseline_loop_argpartition: the same loop, ending in one ' '.join per cell."""
    ip, ix, d = X.indptr, X.indices, X.data
    out = []
    for i in range(X.shape[0]):
        v, c = d[ip[i] : ip[i + 1]], ix[ip[i] : ip[i + 1]]
        if len(v) > k:
            kth = np.partition(v, len(v) - k)[len(v) - k]
            p = np.flatnonzero(v >= kth)
            v, c = v[p], c[p]
        out.append(" ".join(names[c[np.lexsort((c, -v))[:k]]]))
    return out


def baseline_full_ids(X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-row full sort (value desc; stable, so ties by gene index since CSR indices are sorted)."""
    ip, ix, d = X.indptr, X.indices, X.data
    ids = np.empty(ip[-1], dtype=np.int32)
    for i in range(X.shape[0]):
        c = ix[ip[i] : ip[i + 1]]
        ids[ip[i] : ip[i + 1]] = c[np.argsort(-d[ip[i] : ip[i + 1]], kind="stable")]
    return np.asarray(ip, dtype=np.int64), ids


def baseline_full_texts(X: sp.csr_matrix, names: np.ndarray) -> list[str]:
    """bench_c2s.py's baseline_loop_full: every expressed gene, as text."""
    ip, ix, d = X.indptr, X.indices, X.data
    out = []
    for i in range(X.shape[0]):
        c = ix[ip[i] : ip[i + 1]]
        out.append(" ".join(names[c[np.argsort(-d[ip[i] : ip[i + 1]], kind="stable")]]))
    return out


# ============================================================================================ parts
@dataclass
class Context:
    X: sp.csr_matrix
    names: np.ndarray
    adata: object
    k: int


def _c2t(ctx: Context, top_k: int | None, **kw):
    from c2t.sentences import from_adata

    return from_adata(ctx.adata, top_k=top_k, **kw)


def _one_thread(fn):
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return fn()
    finally:
        numba.set_num_threads(before)


def _c2t_texts(ctx: Context, top_k: int | None):
    cs = _c2t(ctx, top_k)
    return cs, cs.texts()


# name -> (label, function of the context, name of the baseline it is compared with)
PARTS = {
    "c2t_ids": ("c2t from_adata top-k (ids)", lambda c: _c2t(c, c.k), "baseline_ids"),
    "c2t_ids_1thread": ("c2t from_adata top-k (ids, 1 numba thread)", lambda c: _one_thread(lambda: _c2t(c, c.k)), "baseline_ids"),
    "c2t_ids_small_inverse": ("c2t from_adata top-k (ids, inverse_sample=1000)", lambda c: _c2t(c, c.k, inverse_sample=1000), "baseline_ids"),
    "baseline_ids": ("baseline loop argpartition top-k (ids)", lambda c: baseline_ids(c.X, c.k), None),
    "c2t_text": ("c2t from_adata top-k + .texts()", lambda c: _c2t_texts(c, c.k), "baseline_text"),
    "baseline_text": ("baseline loop argpartition top-k (text)", lambda c: baseline_texts(c.X, c.names, c.k), None),
    "c2t_full": ("c2t from_adata top_k=None (ids)", lambda c: _c2t(c, None), "baseline_full_ids"),
    "baseline_full_ids": ("baseline loop full sort (ids)", lambda c: baseline_full_ids(c.X), None),
    "c2t_full_text": ("c2t from_adata top_k=None + .texts()", lambda c: _c2t_texts(c, None), "baseline_full_text"),
    "baseline_full_text": ("baseline loop full sort (text)", lambda c: baseline_full_texts(c.X, c.names), None),
}


def warm_up(ctx: Context) -> None:
    """Compile/load the numba kernels and touch every code path once on a few cells."""
    from c2t.sentences import decode, from_adata

    small = Context(ctx.X[:200], ctx.names, ctx.adata[:200].copy(), ctx.k)
    for _label, fn, _ in PARTS.values():
        fn(small)
    cs = from_adata(small.adata, top_k=ctx.k)
    decode(cs.texts(), model=cs)


def time_parts(ctx: Context, names: list[str], repeat: int) -> tuple[dict[str, list[float]], dict[str, object], float]:
    """Run the parts interleaved ``repeat`` times; return the times, each part's last output, and the share of
    the CPUs that other processes used meanwhile (timings are only clean when it is near 0)."""
    times: dict[str, list[float]] = {n: [] for n in names}
    outputs: dict[str, object] = {}
    with ForeignCpu() as foreign:
        for _ in range(repeat):
            for name in names:
                outputs[name] = None
                gc.collect()
                t = time.perf_counter()
                outputs[name] = PARTS[name][1](ctx)
                times[name].append(time.perf_counter() - t)
    return times, outputs, foreign.share


# ============================================================================================ checks
def values_at(X: sp.csr_matrix, offsets: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``X[cell, id]`` for every ranked id (binary search in the sorted row-major keys of X)."""
    n, n_genes = X.shape
    keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(X.indptr)) * n_genes + X.indices
    query = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets)) * n_genes + ids
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    found = keys[pos] == query
    return np.where(found, X.data[pos], np.nan)


def compare_ranked(X, offsets_a, ids_a, offsets_b, ids_b) -> dict:
    """Values at each rank must be equal; the gene order may differ only among tied values."""
    same_lengths = np.array_equal(np.diff(offsets_a), np.diff(offsets_b))
    va, vb = values_at(X, offsets_a, ids_a), values_at(X, offsets_b, ids_b)
    n = X.shape[0]
    rows = np.repeat(np.arange(n), np.diff(offsets_a))
    bad_value = np.zeros(n, bool)
    if same_lengths:
        np.logical_or.at(bad_value, rows, ~(va == vb))
        differ = np.zeros(n, bool)
        np.logical_or.at(differ, rows, ids_a != ids_b)
    descending = np.ones(n, bool)
    step_ok = (np.diff(va) <= 0) | (rows[1:] != rows[:-1])
    np.logical_and.at(descending, rows[1:], step_ok)
    return {
        "cells_checked": int(n),
        "same_lengths": bool(same_lengths),
        "cells_with_different_values_at_rank": int(bad_value.sum()) if same_lengths else None,
        "cells_with_other_order_of_tied_genes": int(differ.sum()) if same_lengths else None,
        "unknown_ids": int(np.isnan(va).sum()),
        "cells_not_descending": int((~descending).sum()),
    }


def texts_match_ids(texts: list[str], offsets, ids, names: np.ndarray, sample: np.ndarray) -> int:
    """Number of sampled cells whose text is not the names of its ids, in order."""
    return sum(texts[i] != " ".join(names[ids[offsets[i] : offsets[i + 1]]]) for i in sample)


def check_correctness(ctx: Context, outputs: dict) -> dict:
    X, names = ctx.X, ctx.names
    sample = np.linspace(0, X.shape[0] - 1, min(1000, X.shape[0])).astype(int)
    result = {}
    if "c2t_ids" in outputs and "baseline_ids" in outputs:
        cs = outputs["c2t_ids"]
        result["top_k_ids_vs_baseline"] = compare_ranked(X, cs.offsets, cs.gene_ids, *outputs["baseline_ids"])
    if "c2t_text" in outputs and "baseline_text" in outputs:
        cs, texts = outputs["c2t_text"]
        b_off, b_ids = outputs.get("baseline_ids") or baseline_ids(X, ctx.k)
        result["top_k_text"] = {
            "cells_sampled": len(sample),
            "c2t_texts_not_matching_c2t_ids": texts_match_ids(texts, cs.offsets, cs.gene_ids, names, sample),
            "baseline_texts_not_matching_baseline_ids": texts_match_ids(outputs["baseline_text"], b_off, b_ids, names, sample),
        }
    if "c2t_full" in outputs and "baseline_full_ids" in outputs:
        cs = outputs["c2t_full"]
        result["full_ids_vs_baseline"] = compare_ranked(X, cs.offsets, cs.gene_ids, *outputs["baseline_full_ids"])
        result["full_ids_vs_baseline"]["lengths_equal_nnz"] = bool(np.array_equal(cs.lengths, np.diff(X.indptr)))
    if "c2t_full_text" in outputs and "baseline_full_text" in outputs:
        cs, texts = outputs["c2t_full_text"]
        f_off, f_ids = outputs.get("baseline_full_ids") or baseline_full_ids(X)
        result["full_text"] = {
            "cells_sampled": len(sample),
            "c2t_texts_not_matching_c2t_ids": texts_match_ids(texts, cs.offsets, cs.gene_ids, names, sample),
            "baseline_texts_not_matching_baseline_ids": texts_match_ids(outputs["baseline_full_text"], f_off, f_ids, names, sample),
        }
    return result


def correctness_ok(result: dict) -> bool:
    for part in result.values():
        for key, value in part.items():
            if key in ("same_lengths", "lengths_equal_nnz") and value is not True:
                return False
            if key.startswith(("cells_with_different", "unknown", "cells_not", "c2t_texts_not", "baseline_texts_not")) and value:
                return False
    return True


# ============================================================================================ decode
def tiled(texts: list[str], n: int) -> list[str]:
    return (texts * (n // len(texts) + 1))[:n]


def run_decode(cs, texts: list[str], n_cells: int, repeat: int) -> dict:
    """Decode ``n_cells`` top-k sentences (the texts repeated), from a list of str and from an Arrow array."""
    import pyarrow as pa

    from c2t.sentences import decode

    many = tiled(texts, n_cells)
    arrow = pa.array(many, pa.large_string())
    out = {"n_cells": n_cells}
    with ForeignCpu() as foreign:
        for label, sentences in (("list", many), ("arrow", arrow)):
            times = []
            for _ in range(repeat):
                gc.collect()
                t = time.perf_counter()
                decoded = decode(sentences, model=cs)
                times.append(time.perf_counter() - t)
            out[f"{label}_seconds"] = times
            out[f"{label}_cells_per_s"] = round(n_cells / float(np.median(times)))
    out["foreign_cpu"] = foreign.share
    # checks on the last decoded matrix: every gene known, the right genes, expression non-increasing with rank
    n_genes = decoded.obs["c2t_n_genes"].to_numpy()
    first = decoded.X[0]
    order = np.argsort([list(cs.genes_of(0)).index(g) for g in decoded.var_names[first.indices]])
    out["check"] = {
        "shape": list(decoded.shape),
        "n_unknown": int(decoded.uns["c2t_decode"]["n_unknown"]),
        "n_duplicate": int(decoded.uns["c2t_decode"]["n_duplicate"]),
        "cells_with_other_gene_count": int((n_genes != np.tile(cs.lengths, n_cells // len(cs) + 1)[:n_cells]).sum()),
        "cell0_genes_match": bool(set(decoded.var_names[first.indices]) == set(cs.genes_of(0))),
        "cell0_values_non_increasing": bool(np.all(np.diff(first.data[order]) <= 0)),
    }
    return out


# ============================================================================================ memory subprocess
def memory_child(part: str, matrix_dir: Path, k: int, decode_cells: int) -> None:
    """Fresh process: load the matrix, warm up, then measure the memory one part adds (prints RESULT)."""
    X = load_matrix(matrix_dir)
    names = gene_names(X.shape[1])
    ctx = Context(X, names, to_adata(X, names), k)
    warm_up(ctx)
    fn = PARTS[part][1] if part in PARTS else None
    if part == "decode":
        from c2t.sentences import decode, from_adata

        cs = from_adata(ctx.adata, top_k=k)
        texts = tiled(cs.texts(), decode_cells)

        def fn(_ctx):
            return decode(texts, model=cs)

    gc.collect()
    before, max_before = rss_of(os.getpid()), max_rss_self()
    with PeakRss() as sampler:
        t = time.perf_counter()
        result = fn(ctx)
        seconds = time.perf_counter() - t
    max_after = max_rss_self()
    peak = max(sampler.peak, max_after if max_after > max_before else 0)
    print("RESULT " + json.dumps({
        "part": part, "seconds": seconds, "rss_before": before, "peak": peak, "peak_sampled": sampler.peak,
        "ru_maxrss": max_after, "rss_after": rss_of(os.getpid()), "matrix_bytes": matrix_bytes(X),
    }))
    del result


def measure_memory(part: str, matrix_dir: Path, k: int, decode_cells: int) -> dict:
    cmd = [sys.executable, __file__, "--_memory-part", part, "--_matrix", str(matrix_dir), "--top-k", str(k),
           "--decode-cells", str(decode_cells)]
    r = subprocess.run(fresh(cmd), capture_output=True, text=True, check=False)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if r.returncode or line is None:
        return {"error": (r.stderr or r.stdout)[-2000:]}
    m = json.loads(line[len("RESULT "):])
    m["added_mb"] = round((m["peak"] - m["rss_before"]) / MB, 1)
    m["retained_mb"] = round((m["rss_after"] - m["rss_before"]) / MB, 1)
    m["added_over_matrix"] = round((m["peak"] - m["rss_before"]) / m["matrix_bytes"], 3)
    return m


# ============================================================================================ streaming
def _dict_group(f, name: str) -> None:
    g = f.create_group(name)
    g.attrs["encoding-type"], g.attrs["encoding-version"] = "dict", "0.1.0"


def _dataframe(f, name: str, index_length: int):
    import h5py

    g = f.create_group(name)
    g.attrs["_index"] = "_index"
    g.attrs["column-order"] = np.array([], dtype="float64")  # what anndata writes for no columns
    g.attrs["encoding-type"], g.attrs["encoding-version"] = "dataframe", "0.2.0"
    ds = g.create_dataset("_index", shape=(index_length,), dtype=h5py.string_dtype("utf-8"))
    ds.attrs["encoding-type"], ds.attrs["encoding-version"] = "string-array", "0.2.0"
    return ds


def write_h5ad(path: Path, n_cells: int, n_genes: int, nnz_per_cell: int, seed: int, block: int = 20_000) -> dict:
    """Write a synthetic anndata-compatible .h5ad (CSR X, obs and var indexes) block by block with h5py.

    Memory stays bounded by one block; reuses the file when it was written with the same parameters.
    """
    import h5py

    params = {"n_cells": n_cells, "n_genes": n_genes, "nnz_per_cell": nnz_per_cell, "seed": seed, "version": 1}
    sidecar = path.with_suffix(".json")
    if path.is_file() and sidecar.is_file() and json.loads(sidecar.read_text()).get("params") == params:
        return json.loads(sidecar.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    rng = np.random.default_rng(seed)
    cdf, gene_mean = gene_model(n_genes, rng)
    t = time.perf_counter()
    with PeakRss() as sampler, h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        X = f.create_group("X")
        X.attrs["encoding-type"], X.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        X.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
        data = X.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 20,))
        indices = X.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 20,))
        indptr = X.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
        obs_index = _dataframe(f, "obs", n_cells)
        _dataframe(f, "var", n_genes)[:] = gene_names(n_genes)
        for name in ("layers", "obsm", "obsp", "uns", "varm", "varp"):
            _dict_group(f, name)
        nnz = 0
        indptr[0] = 0
        for start in range(0, n_cells, block):
            m = min(block, n_cells - start)
            ip, ix, d = synthetic_block(rng, cdf, gene_mean, m, nnz_per_cell)
            data.resize((nnz + len(d),))
            indices.resize((nnz + len(d),))
            data[nnz:], indices[nnz:] = d, ix
            indptr[start + 1 : start + m + 1] = ip[1:] + nnz
            obs_index[start : start + m] = np.array([f"cell_{i}" for i in range(start, start + m)], dtype=object)
            nnz += len(d)
    os.replace(tmp, path)
    info = {"params": params, "nnz": nnz, "nnz_per_cell": round(nnz / n_cells, 1), "bytes": path.stat().st_size,
            "write_s": round(time.perf_counter() - t, 1), "writer_peak_rss_mb": round(sampler.peak / MB)}
    sidecar.write_text(json.dumps(info))
    return info


def check_h5ad(path: Path, n_cells: int, n_genes: int) -> None:
    """The file must open with anndata (backed) with the right shape."""
    import anndata as ad

    a = ad.read_h5ad(path, backed="r")
    try:
        assert a.shape == (n_cells, n_genes), a.shape
        assert a.obs_names[-1] == f"cell_{n_cells - 1}" and a.var_names[0] == "GENE00000"
    finally:
        a.file.close()


def convert_child(path: str, out: str, top_k: int, chunk_size: int, workers: int) -> None:
    """Subprocess body: one c2t.sentences.convert call, timed (prints RESULT)."""
    t0 = time.perf_counter()
    from c2t.sentences import convert

    import_s = time.perf_counter() - t0
    t = time.perf_counter()
    convert(path, out, top_k=top_k, chunk_size=chunk_size, workers=workers)
    seconds = time.perf_counter() - t
    print("RESULT " + json.dumps({
        "seconds": seconds, "import_s": import_s, "ru_maxrss_self": max_rss_self(),
        "ru_maxrss_children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }))


def check_convert(path: Path, out: Path, top_k: int, n_check: int = 1000) -> dict:
    """The first cells of the converted output equal from_adata on the same cells read into memory."""
    import h5py
    import pyarrow.parquet as pq

    from c2t.sentences import from_adata

    manifest = json.loads((out / "manifest.json").read_text())
    with h5py.File(path, "r") as f:
        ip = f["X/indptr"][: n_check + 1]
        X = sp.csr_matrix((f["X/data"][ip[0] : ip[-1]], f["X/indices"][ip[0] : ip[-1]], ip - ip[0]),
                          shape=(n_check, f["X"].attrs["shape"][1]))
    cs = from_adata(to_adata(X, gene_names(X.shape[1])), top_k=top_k)
    shard = pq.read_table(out / manifest["shards"][0]["file"]).slice(0, n_check)
    genes = shard["genes"].combine_chunks()
    return {
        "n_cells": manifest["n_cells"],
        "n_shards": len(manifest["shards"]),
        "first_cells_equal_in_memory": bool(np.array_equal(np.asarray(genes.values), cs.gene_ids)
                                            and np.array_equal(np.asarray(genes.offsets) - genes.offsets[0].as_py(), cs.offsets)
                                            and shard["cell_id"].to_pylist() == list(cs.cell_ids)),
        "output_mb": round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / MB, 1),
    }


def sha256_seconds(path: Path) -> float:
    from c2t._manifest import file_hash

    t = time.perf_counter()
    file_hash(path)
    return time.perf_counter() - t


def run_stream(n_cells: int, args) -> dict:
    """Write (or reuse) the synthetic file, then convert it in a subprocess while sampling its RSS tree."""
    path = args.scratch / f"stream_{n_cells}_{args.n_genes}_{args.stream_nnz}.h5ad"
    info = write_h5ad(path, n_cells, args.n_genes, args.stream_nnz, args.seed)
    check_h5ad(path, n_cells, args.n_genes)
    out = args.scratch / f"stream_out_{n_cells}"
    for old in (out, out.with_name(f".{out.name}.partial")):
        shutil.rmtree(old, ignore_errors=True)
    cmd = [sys.executable, __file__, "--_convert", str(path), str(out), "--top-k", str(args.top_k),
           "--stream-chunk-size", str(args.stream_chunk_size), "--stream-workers", str(args.stream_workers)]
    t = time.perf_counter()
    with ForeignCpu() as foreign:
        proc = subprocess.Popen(fresh(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with PeakRss(proc.pid, tree=True, interval=0.05) as sampler:
            stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t
    line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        return {"n_cells": n_cells, "error": stderr[-2000:]}
    child = json.loads(line[len("RESULT "):])
    result = {
        "n_cells": n_cells, "file": str(path), "file_mb": round(info["bytes"] / MB), "nnz_per_cell": info["nnz_per_cell"],
        "writer_peak_rss_mb": info.get("writer_peak_rss_mb"), "chunk_size": args.stream_chunk_size,
        "workers": args.stream_workers, "convert_s": round(child["seconds"], 2),
        "cells_per_s": round(n_cells / child["seconds"]), "process_wall_s": round(wall, 2),
        "peak_rss_tree_mb": round(sampler.peak / MB), "peak_rss_largest_process_mb": round(sampler.peak_single / MB),
        "ru_maxrss_main_mb": round(child["ru_maxrss_self"] / MB), "ru_maxrss_worker_mb": round(child["ru_maxrss_children"] / MB),
        "input_sha256_s": round(sha256_seconds(path), 2), "foreign_cpu": foreign.share,
    }
    result.update(check_convert(path, out, args.top_k))
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return result


# ============================================================================================ cell2sentence
def run_bench_c2s(python: str, mode: str, args, env: dict) -> dict:
    cmd = [python, str(C2S_BENCH), mode, "--n-cells", str(args.n_cells), "--n-genes", str(args.n_genes), "--nnz", str(args.nnz)]
    t = time.perf_counter()
    with ForeignCpu() as foreign:
        r = subprocess.run(fresh(cmd), capture_output=True, text=True, env=env, check=False)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if r.returncode or line is None:
        return {"mode": mode, "error": (r.stderr or r.stdout)[-3000:]}
    res = json.loads(line[len("RESULT "):])
    res["process_wall_s"] = round(time.perf_counter() - t, 1)
    res["foreign_cpu"] = foreign.share
    return res


def c2s_import_mb(python: str) -> float | None:
    """RSS that importing cell2sentence (and torch) adds after anndata: bench_c2s.py's 'c2s' mode measures its
    loaded-data RSS before these imports, so they must be taken off its peak."""
    probe = ("import resource, anndata, numpy, scipy.sparse, psutil; p = psutil.Process(); a = p.memory_info().rss; "
             "from cell2sentence.csdata import CSData; from cell2sentence.prompt_formatter import C2SPromptFormatter; "
             "from cell2sentence import utils; print('RESULT', (p.memory_info().rss - a) / 2**20)")
    r = subprocess.run(fresh([python, "-c", probe]), capture_output=True, text=True, check=False)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    return round(float(line.split()[1]), 1) if line else None


def run_c2s(python: str, args) -> dict:
    """cell2sentence 1.2.0 and bench_c2s.py's own baselines, on bench_c2s.py's data file (same recipe)."""
    folder = args.scratch / "c2s"
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "C2S_BENCH_DIR": str(folder)}
    data = folder / f"data_{args.n_cells}.h5ad"
    sidecar = folder / f"data_{args.n_cells}.params.json"
    params = {"n_genes": args.n_genes, "nnz": args.nnz}
    out = {"python": python, "data": str(data)}
    if not (data.is_file() and sidecar.is_file() and json.loads(sidecar.read_text()) == params):
        out["make"] = run_bench_c2s(python, "make", args, env)
        if "error" in out["make"]:
            return out
        sidecar.write_text(json.dumps(params))
    out["import_rss_mb"] = c2s_import_mb(python)
    out["c2s"] = run_bench_c2s(python, "c2s", args, env)
    out["baseline"] = run_bench_c2s(python, "baseline", args, env)
    return out


def c2t_on_file(path: Path, k: int, repeat: int) -> dict:
    """c2t from_adata + texts on bench_c2s.py's own data file (apples to apples with cell2sentence)."""
    from c2t.io import read_h5ad

    adata = read_h5ad(path)
    for layer in list(adata.layers):
        del adata.layers[layer]
    ctx = Context(sp.csr_matrix(adata.X), np.asarray(adata.var_names, dtype=object), adata, k)
    times, _, foreign = time_parts(ctx, ["c2t_ids", "c2t_text", "c2t_full_text"], repeat)
    return {**{name: round(adata.n_obs / float(np.median(t))) for name, t in times.items()}, "foreign_cpu": round(foreign, 3)}


# ============================================================================================ report
def machine_info() -> dict:
    import numba

    import c2t

    return {
        "python": platform.python_version(), "cpus": os.cpu_count(), "numba_threads": numba.get_num_threads(),
        "numpy": np.__version__, "c2t": getattr(c2t, "__version__", "?"), "platform": platform.platform(),
        "loadavg_start": os.getloadavg(), "c2t_sentences_sha256": sources_hash(),
    }


def sources_hash() -> str:
    """Hash of c2t/sentences/*.py, so that numbers can be tied to the code they measured."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((REPO / "c2t" / "sentences").glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def fmt_int(x) -> str:
    return f"{x:,.0f}" if isinstance(x, int | float) else "-"


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def print_report(report: dict) -> None:
    d = report["data"]
    print(f"\nData: {d['n_cells']:,} cells x {d['n_genes']:,} genes, {d['nnz_per_cell']:.0f} non-zeros/cell, "
          f"top-k = {report['args']['top_k']}, "
          f"loaded matrix {d['matrix_mb']:.0f} MB; numba threads {report['machine']['numba_threads']}, "
          f"load average at start {report['machine']['loadavg_start'][0]:.2f}; other processes used "
          f"{report['foreign_cpu_during_timing']:.0%} of the CPUs during the timed parts")
    rows = []
    for name, p in report["parts"].items():
        mem = report["memory"].get(name, {})
        rows.append([p["label"], fmt_int(p["cells_per_s"]), f"{p['median_s']:.3f}",
                     f"{p['speedup_vs_baseline']:.2f}x" if p.get("speedup_vs_baseline") else "-",
                     fmt_int(mem.get("added_mb")), f"{mem['added_over_matrix']:.2f}" if "added_over_matrix" in mem else "-"])
    dec = report.get("decode")
    if dec:
        mem = report["memory"].get("decode", {})
        rows.append([f"c2t decode {dec['n_cells']:,} top-{report['args']['top_k']} texts (list[str])",
                     fmt_int(dec["list_cells_per_s"]), f"{float(np.median(dec['list_seconds'])):.3f}", "-",
                     fmt_int(mem.get("added_mb")), f"{mem['added_over_matrix']:.2f}" if "added_over_matrix" in mem else "-"])
        rows.append([f"c2t decode {dec['n_cells']:,} top-{report['args']['top_k']} texts (Arrow array)",
                     fmt_int(dec["arrow_cells_per_s"]), f"{float(np.median(dec['arrow_seconds'])):.3f}", "-", "-", "-"])
    print(table(rows, ["part", "cells/s", "median s", "vs baseline", "peak added MB", "peak/matrix"]))
    print("(vs baseline: c2t cells/s over the matching per-row loop's cells/s, same process; peak added: memory the "
          "part adds over the loaded matrix, fresh subprocess)")
    c = report.get("correctness", {})
    print(f"\nCorrectness: {'OK' if report.get('correctness_ok') else 'FAILED'}  " + json.dumps(c))
    if dec:
        print(f"Decode check: {json.dumps(dec['check'])}; other processes used {dec['foreign_cpu']:.0%} of the CPUs")
    if report.get("streaming"):
        rows = [[fmt_int(s["n_cells"]), fmt_int(s.get("file_mb")), s.get("nnz_per_cell", "-"), fmt_int(s.get("cells_per_s")),
                 s.get("convert_s", "-"), s.get("input_sha256_s", "-"), fmt_int(s.get("peak_rss_tree_mb")),
                 fmt_int(s.get("peak_rss_largest_process_mb")), f"{s.get('foreign_cpu', 0):.0%}",
                 s.get("first_cells_equal_in_memory", s.get("error", "-"))]
                for s in report["streaming"]]
        print(f"\nStreaming convert (top_k={report['args']['top_k']}, chunk_size={report['args']['stream_chunk_size']}, "
              f"workers={report['args']['stream_workers']}):")
        print(table(rows, ["cells", "file MB", "nnz/cell", "cells/s", "convert s", "of which sha256 s", "peak RSS tree MB",
                           "largest proc MB", "other CPU", "first cells == in-memory"]))
    c2s = report.get("c2s")
    if c2s:
        print("\ncell2sentence 1.2.0 (bench_c2s.py, its own process and data file; same recipe and shape):")
        for line in c2s_lines(report):
            print("  " + line)


def c2s_lines(report: dict) -> list[str]:
    c2s, parts = report["c2s"], report["parts"]
    if "error" in c2s.get("c2s", {"error": "not run"}):
        return [f"c2s failed: {c2s.get('c2s', {}).get('error') or c2s.get('make', {}).get('error')}"]
    r, b = c2s["c2s"], c2s.get("baseline", {})
    on_file = c2s.get("c2t_on_c2s_file", {})
    imports = c2s.get("import_rss_mb") or 0
    added = r["peak_rss_through_conversion_mb"] - r["rss_after_load_mb"] - imports
    lines = [
        f"c2s conversion (vocab + full sentences + arrow + save): {r['cells_per_s_conversion']:,} cells/s; "
        f"+ top-100 prompts: {r['cells_per_s_conversion_plus_top100_prompts']:,} cells/s; "
        f"generate_sentences only: {r['cells_per_s_sentences_only']:,} cells/s",
        f"c2s peak RSS {r['peak_rss_through_conversion_mb']:,} MB: {added:,.0f} MB over the loaded data and the "
        f"{imports:,.0f} MB of importing cell2sentence/torch ({added / report['data']['matrix_mb']:.2f}x the matrix); "
        f"mismatches vs baseline: {r['mismatch_vs_baseline_of_500']}/500; other processes used "
        f"{r.get('foreign_cpu', 0):.0%} of the CPUs during it (c2t rerun on its file: {on_file.get('foreign_cpu', 0):.0%})",
    ]
    if b and "error" not in b:
        lines.append(f"bench_c2s baselines: vectorized {b['cells_per_s_vectorized']:,}, loop {b['cells_per_s_loop']:,}, "
                     f"loop full {b['cells_per_s_loop_full_sentence']:,} cells/s (ours, this process: loop "
                     f"{fmt_int(parts.get('baseline_text', {}).get('cells_per_s'))})")
    for label, ours, theirs in (
        ("c2t top-100 text vs c2s conversion + top-100 prompts", "c2t_text", r["cells_per_s_conversion_plus_top100_prompts"]),
        ("c2t full-sentence text vs c2s generate_sentences", "c2t_full_text", r["cells_per_s_sentences_only"]),
    ):
        mine = on_file.get(ours) or parts.get(ours, {}).get("cells_per_s")
        if mine:
            lines.append(f"{label}: {mine:,} vs {theirs:,} cells/s = {mine / theirs:.1f}x")
    return lines


# ============================================================================================ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-cells", type=int, default=20_000)
    p.add_argument("--n-genes", type=int, default=20_000)
    p.add_argument("--nnz", type=int, default=2_000, help="non-zeros per cell (about)")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per part (median reported)")
    p.add_argument("--decode-cells", type=int, default=60_000)
    p.add_argument("--no-memory", action="store_true", help="skip the per-part memory subprocesses")
    p.add_argument("--stream-cells", type=int, default=0, help="also stream-convert this many cells (and 1/10)")
    p.add_argument("--stream-nnz", type=int, default=200)
    p.add_argument("--stream-chunk-size", type=int, default=10_000)
    p.add_argument("--stream-workers", type=int, default=2)
    p.add_argument("--keep-outputs", action="store_true", help="keep the streamed convert outputs in --scratch")
    p.add_argument("--c2s-python", help="python of a venv with cell2sentence==1.2.0 (runs bench_c2s.py)")
    p.add_argument("--scratch", type=Path, default=Path("/tmp/c2t_bench"))
    p.add_argument("--out", type=Path, default=REPO / "bench_out" / "sentences.json")
    # internal: the subprocess bodies
    p.add_argument("--_memory-part", help=argparse.SUPPRESS)
    p.add_argument("--_matrix", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_convert", nargs=2, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_in_memory(args, report: dict) -> dict:
    """Generate the matrix, time c2t and the baselines in this process, check, decode, measure memory."""
    t = time.perf_counter()
    X = make_matrix(args.n_cells, args.n_genes, args.nnz, args.seed)
    names = gene_names(args.n_genes)
    ctx = Context(X, names, to_adata(X, names), args.top_k)
    report["data"] = {"n_cells": X.shape[0], "n_genes": X.shape[1], "nnz": int(X.nnz), "nnz_per_cell": X.nnz / X.shape[0],
                      "matrix_mb": matrix_bytes(X) / MB, "make_s": round(time.perf_counter() - t, 1)}
    print(f"made {X.shape[0]:,} x {X.shape[1]:,} matrix ({X.nnz / X.shape[0]:.0f} nnz/cell) in {report['data']['make_s']} s", flush=True)
    warm_up(ctx)
    names_order = list(PARTS)
    times, outputs, foreign = time_parts(ctx, names_order, args.repeat)
    report["foreign_cpu_during_timing"] = round(foreign, 3)
    parts = {}
    for name in names_order:
        median = float(np.median(times[name]))
        parts[name] = {"label": PARTS[name][0], "seconds": [round(x, 4) for x in times[name]], "median_s": median,
                       "cells_per_s": round(X.shape[0] / median)}
    for name, p in parts.items():
        base = PARTS[name][2]
        if base:
            p["speedup_vs_baseline"] = round(p["cells_per_s"] / parts[base]["cells_per_s"], 2)
    report["parts"] = parts
    report["correctness"] = check_correctness(ctx, outputs)
    report["correctness_ok"] = correctness_ok(report["correctness"])
    cs, texts = outputs["c2t_text"]
    outputs.clear()
    print("timed parts; decoding", flush=True)
    report["decode"] = run_decode(cs, texts, args.decode_cells, args.repeat)
    del cs, texts, ctx
    gc.collect()
    report["memory"] = {}
    if not args.no_memory:
        matrix_dir = args.scratch / f"matrix_{args.n_cells}_{args.n_genes}_{args.nnz}_{args.seed}"
        save_matrix(X, matrix_dir)
        for name in [*PARTS, "decode"]:
            print(f"memory: {name}", flush=True)
            report["memory"][name] = measure_memory(name, matrix_dir, args.top_k, args.decode_cells)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._memory_part:
        memory_child(args._memory_part, args._matrix, args.top_k, args.decode_cells)
        return 0
    if args._convert:
        convert_child(*args._convert, args.top_k, args.stream_chunk_size, args.stream_workers)
        return 0
    args.scratch.mkdir(parents=True, exist_ok=True)
    report: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if not k.startswith("_")},
                    "machine": machine_info()}
    run_in_memory(args, report)
    if args.stream_cells:
        report["streaming"] = []
        for n in (args.stream_cells // 10, args.stream_cells):
            print(f"streaming {n:,} cells", flush=True)
            report["streaming"].append(run_stream(n, args))
    if args.c2s_python:
        print("running cell2sentence (bench_c2s.py)", flush=True)
        report["c2s"] = run_c2s(args.c2s_python, args)
        if "error" not in report["c2s"].get("c2s", {"error": 1}):
            report["c2s"]["c2t_on_c2s_file"] = c2t_on_file(Path(report["c2s"]["data"]), args.top_k, args.repeat)
        report["c2s"]["summary"] = c2s_lines(report)
    report["machine"]["loadavg_end"] = os.getloadavg()
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nreport: {args.out}")
    return 0 if report.get("correctness_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
