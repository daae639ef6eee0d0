"""Throughput of every c2t.plm tokeniser: cells per second over 100,000 synthetic cells.

The cells look like 10x data: 20,000 genes, about 1,000 expressed per cell (popular genes in most cells,
rare ones in few), negative-binomial-like integer counts. Each tokeniser is fitted first (vocabulary and
reference statistics, timed apart), then :meth:`batches` tokenises every cell; the figure is cells / s of
the fastest of ``--repeats`` passes (the machine may be shared). "cells per CPU-second" divides by the CPU time
the process used (all threads): on two cores with nothing else running, the wall-clock rate is at least that
(more where the numba kernels run in parallel), whereas on a shared machine wall time also counts waiting. Prints a table and writes ``--out`` (JSON) if given.

    python scripts/bench_plm.py                 # 100,000 cells
    python scripts/bench_plm.py --cells 20000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import time

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def synthetic(n_cells: int, n_genes: int, per_cell: int, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_genes + 1) ** 0.8
    popularity /= popularity.sum()
    mean = 0.3 + 30 * popularity / popularity.max()
    blocks = []
    for start in range(0, n_cells, 10_000):
        n = min(10_000, n_cells - start)
        cols = np.sort(rng.choice(n_genes, size=(n, int(per_cell * 1.25)), p=popularity), axis=1)
        keep = np.ones_like(cols, dtype=bool)
        keep[:, 1:] = cols[:, 1:] != cols[:, :-1]
        indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
        indices = cols[keep].astype(np.int32)
        data = (1 + rng.poisson(mean[indices] * rng.gamma(2.0, 0.5, size=len(indices)))).astype(np.float32)
        blocks.append(sp.csr_matrix((data, indices, indptr), shape=(n, n_genes)))
    X = sp.vstack(blocks, format="csr")
    obs = pd.DataFrame({
        "sample": rng.choice([f"s{i}" for i in range(8)], n_cells),
        "assay": rng.choice(["10x 3' v2", "10x 3' v3"], n_cells),
        "organ": "blood",
    }, index=[f"cell{i}" for i in range(n_cells)])
    return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))


def tokenizers(genes: np.ndarray, emb_dim: int):
    from c2t import plm

    rng = np.random.default_rng(1)
    chrom = pd.DataFrame({"chromosome": rng.choice([str(c) for c in range(1, 23)], len(genes)),
                          "start": rng.integers(0, 10**8, len(genes))}, index=genes)
    uce_emb = pd.DataFrame(rng.standard_normal((len(genes), 8)).astype(np.float32), index=genes)
    return {
        "scBERT (all 20k genes, dense)": plm.ScBERTTokenizer(),
        "scBERT (2,000-gene panel)": plm.ScBERTTokenizer(genes=genes[:2000]),
        "Geneformer v1 (2,048)": plm.GeneformerTokenizer(version=1),
        "Geneformer v2 (4,096)": plm.GeneformerTokenizer(version=2),
        "scGPT (51 bins, 1,200)": plm.ScGPTTokenizer(batch_key="sample"),
        "tGPT (top 64)": plm.TGPTTokenizer(),
        "scFoundation (genes + T, S)": plm.ScFoundationTokenizer(),
        "UCE (1,024 samples)": plm.UCETokenizer(gene_embeddings=uce_emb, chromosomes=chrom),
        f"CellPLM (dim {emb_dim})": plm.CellPLMTokenizer(dim=emb_dim, group_key="sample"),
        "Nicheformer (metadata + rank, 1,500)": plm.RankMetadataTokenizer(metadata_keys=["organ", "assay"],
                                                                         group_key="assay"),
        "scMulan (task + metadata + genes)": plm.ScMulanTokenizer(metadata_keys=["organ"], max_genes=1000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--per-cell", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--fit-cells", type=int, default=10_000, help="cells the reference statistics come from")
    parser.add_argument("--emb-dim", type=int, default=128)
    parser.add_argument("--only", default=None, help="substring of the tokenisers to run")
    parser.add_argument("--threads", type=int, default=None, help="numba threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per tokeniser; the fastest is reported")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    if args.threads:
        import numba

        numba.set_num_threads(args.threads)
    t0 = time.perf_counter()
    adata = synthetic(args.cells, args.genes, args.per_cell)
    print(f"data: {adata.n_obs:,} cells x {adata.n_vars:,} genes, {adata.X.nnz / adata.n_obs:.0f} expressed per cell "
          f"(built in {time.perf_counter() - t0:.1f} s); {os.cpu_count()} cores, numba threads: {args.threads or 'all'}")
    reference = adata[: args.fit_cells].copy()
    warm = adata[:256].copy()
    rows = []
    for name, tok in tokenizers(adata.var_names.to_numpy(dtype=object), args.emb_dim).items():
        if args.only and args.only.lower() not in name.lower():
            continue
        t = time.perf_counter()
        tok.fit(reference)
        fit_s = time.perf_counter() - t
        for _ in tok.batches(warm, batch_size=128):  # compile the numba kernels outside the timing
            pass
        times, cpu = [], []
        for _ in range(args.repeats):  # the machine is shared: keep the fastest pass
            t, c = time.perf_counter(), time.process_time()
            n_tokens = 0
            width = 0
            for enc in tok.batches(adata, batch_size=args.batch_size):
                n_tokens += int(enc["attention_mask"].sum())
                width = max(width, enc["attention_mask"].shape[1])
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        secs = min(times)
        cpu_s = min(cpu)
        rows.append({"tokenizer": name, "cells": adata.n_obs, "seconds": round(secs, 2),
                     "cells_per_s": round(adata.n_obs / secs), "cpu_seconds": round(cpu_s, 2),
                     "cells_per_cpu_s": round(adata.n_obs / max(cpu_s, 1e-9)),
                     "fit_s_on_reference": round(fit_s, 2),
                     "mean_tokens_per_cell": round(n_tokens / adata.n_obs, 1), "max_width": width})
        r = rows[-1]
        print(f"{name:40s} {r['cells_per_s']:>9,} cells/s wall  {r['cells_per_cpu_s']:>9,} cells per CPU-second "
              f"({r['seconds']:.2f} s, {r['cpu_seconds']:.2f} CPU s; fit {r['fit_s_on_reference']:.2f} s; "
              f"{r['mean_tokens_per_cell']:.0f} tokens/cell)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"cells": args.cells, "genes": args.genes, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
