#!/usr/bin/env python
"""Speed of cell embeddings: GenePT-w (one sparse x dense product) and sentence embedding (GenePT-s/CELLama).

GenePT-w is timed through the public API (c2t.embed.genept_w on an in-memory AnnData of log-normalised
values) against scipy's ``X @ G`` in the same run; sentences per second are timed with all-MiniLM-L6-v2.

Usage::

    python scripts/bench_embed.py [--cells 100000] [--genes 20000] [--nnz 2000] [--dim 384]
        [--sentences 256] [--out bench_out/embed.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def synthetic(n_cells: int, n_genes: int, nnz: int, seed: int = 0) -> sp.csr_matrix:
    """Log-normalised-looking values, ``nnz`` distinct genes per cell (popular genes more often)."""
    rng = np.random.default_rng(seed)
    popularity = rng.permutation(1.0 / np.arange(1, n_genes + 1) ** 0.6)
    cdf = np.cumsum(popularity / popularity.sum())
    blocks = []
    for start in range(0, n_cells, 5000):
        m = min(5000, n_cells - start)
        cols = np.minimum(np.searchsorted(cdf, rng.random((m, nnz))), n_genes - 1)
        cols.sort(axis=1)
        block = sp.csr_matrix((np.log1p(rng.gamma(1.0, 2.0, m * nnz)).astype(np.float32), cols.ravel(),
                               np.arange(m + 1) * nnz), shape=(m, n_genes))
        block.sum_duplicates()
        blocks.append(block)
    return sp.vstack(blocks, format="csr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--nnz", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--scipy-cells", type=int, default=10_000, help="cells timed with scipy (it is slow)")
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("bench_out/embed.json"))
    args = parser.parse_args()

    import anndata as ad

    import c2t.embed
    from c2t.genes import GeneEmbeddings

    X = synthetic(args.cells, args.genes, args.nnz)
    names = np.array([f"G{i}" for i in range(args.genes)])
    vectors = np.random.default_rng(1).standard_normal((args.genes, args.dim)).astype(np.float32)
    genes = GeneEmbeddings(names, vectors, np.ones(args.genes, bool))
    adata = ad.AnnData(X)
    adata.var_names = names
    warm = adata[:100].copy()
    c2t.embed.genept_w(warm, genes, normalize="log1p")  # compile the kernel before timing

    t = time.perf_counter()
    c2t.embed.genept_w(adata, genes, normalize="log1p", average=False, l2=False)
    c2t_s = time.perf_counter() - t
    n = min(args.scipy_cells, args.cells)
    t = time.perf_counter()
    reference = X[:n] @ vectors
    scipy_s = (time.perf_counter() - t) * args.cells / n
    error = float(np.abs(adata.obsm["X_genept_w"][:n] - reference).max() / np.abs(reference).max())
    report = {
        "shape": [args.cells, args.genes], "nnz_per_cell": round(X.nnz / args.cells, 1), "dim": args.dim,
        "genept_w_cells_per_s": round(args.cells / c2t_s), "scipy_cells_per_s": round(args.cells / scipy_s),
        "ratio_vs_scipy": round(scipy_s / c2t_s, 2), "max_relative_difference_vs_scipy": error,
    }

    from c2t.genes import SentenceTransformerEncoder
    from c2t.models import minilm_path

    encoder = SentenceTransformerEncoder(minilm_path())
    cs_adata = ad.AnnData(X[: args.sentences])
    cs_adata.var_names = names
    encoder.encode(["warm up"])
    for name, fn in {"genept_s_top100": lambda: c2t.embed.genept_s(cs_adata, encoder, top_k=100),
                     "cellama_top32": lambda: c2t.embed.cellama(cs_adata, encoder, top_k=32)}.items():
        t = time.perf_counter()
        fn()
        report[f"{name}_sentences_per_s"] = round(args.sentences / (time.perf_counter() - t), 1)
    for key, value in report.items():
        print(f"{key:40s} {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
