"""Pre-train a small PLM encoder on the shared PBMC data on CPU and compare its cell embeddings with PCA.

Cells are tokenised with one of the c2t.plm recipes (default: Geneformer's rank value encoding of the top 128
of the 2,000 highly variable genes, gene medians computed from these cells), a small BERT (2 layers, width
128) is pre-trained from scratch by masked gene modelling, and the mean of its last layer over each cell's
genes is the cell embedding. (On all ~16,000 expressed genes the same budget learns little beyond gene
frequencies: the vocabulary is too large for 2,700 cells and a few minutes.) Annotation accuracy is a k-nearest-neighbour
classifier (scikit-learn, Euclidean, on the embeddings as they are; 5-fold stratified cross-validation) on
the labelled cells, for: the pre-trained
encoder, the same encoder untrained (random weights: what pre-training adds) and PCA of log expression
(normalise to 10,000 per cell, log1p, 2,000 highly variable genes, scale, 50 components: scanpy's standard).

    python scripts/pretrain_small.py                       # pbmc3k, about 3 minutes on 2 cores
    python scripts/pretrain_small.py --epochs 2 --quick    # a smoke run
    python scripts/pretrain_small.py --tokenizer tgpt      # another recipe
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc3k_raw_seurat_labels.h5ad"


def knn_accuracy(x: np.ndarray, labels: np.ndarray, *, k: int, seed: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    pred = cross_val_predict(KNeighborsClassifier(n_neighbors=k), x, labels, cv=folds)
    return {"accuracy": round(float(accuracy_score(labels, pred)), 4),
            "macro_f1": round(float(f1_score(labels, pred, average="macro")), 4)}


def highly_variable(adata, n_top: int) -> np.ndarray:
    """Mask of the ``n_top`` highly variable genes (scanpy's default flavour on log1p CP10k)."""
    import scanpy as sc

    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=n_top)
    return a.var["highly_variable"].to_numpy()


def pca_embedding(adata, n_comps: int, seed: int) -> np.ndarray:
    import scanpy as sc

    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    if a.n_vars > 2000:
        sc.pp.highly_variable_genes(a, n_top_genes=2000, subset=True)
    sc.pp.scale(a, max_value=10)
    sc.pp.pca(a, n_comps=n_comps, random_state=seed)
    return a.obsm["X_pca"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--label-key", default="seurat_celltype")
    parser.add_argument("--tokenizer", default="geneformer")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per cell")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--epochs", type=float, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--min-cells", type=int, default=0,
                        help="keep only genes expressed in at least this many cells (a smaller vocabulary trains faster)")
    parser.add_argument("--hvg", type=int, default=2000,
                        help="keep only this many highly variable genes (scanpy, on log1p CP10k; 0: all genes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for a model this small)")
    parser.add_argument("--k", type=int, default=15, help="neighbours of the kNN classifier")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="save the encoder here")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 800 cells, 2 layers, 64 tokens")
    args = parser.parse_args()

    import warnings

    import anndata as ad
    import torch

    warnings.filterwarnings("ignore", message=".*least populated class.*")
    warnings.filterwarnings("ignore", message=".*zero-centering a sparse.*")

    from c2t import plm

    torch.set_num_threads(args.threads)
    path = Path(args.data)
    if not path.is_file():
        raise SystemExit(f"{path}: not found (the shared data lives in ../shared/data)")
    adata = ad.read_h5ad(path)
    if args.quick:
        adata = adata[np.random.default_rng(args.seed).choice(adata.n_obs, 800, replace=False)].copy()
        args.layers, args.max_length = 2, 64
    if args.min_cells:
        detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
        adata = adata[:, detected >= args.min_cells].copy()
    if args.hvg:
        adata = adata[:, highly_variable(adata, args.hvg)].copy()
    labelled = adata.obs[args.label_key].notna().to_numpy()
    labels = adata.obs[args.label_key].astype(str).to_numpy()[labelled]
    print(f"data: {adata.n_obs} cells x {adata.n_vars} genes ({labelled.sum()} labelled, "
          f"{len(set(labels))} types); tokenizer {args.tokenizer}, max_length {args.max_length}", flush=True)

    t = time.perf_counter()
    options = {"max_length": args.max_length} if args.tokenizer != "tgpt" else {"top_k": args.max_length}
    encoder = plm.pretrain(
        adata, tokenizer=args.tokenizer, tokenizer_options=options, hidden_size=args.hidden_size,
        num_layers=args.layers, num_heads=args.heads, intermediate_size=2 * args.hidden_size, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.lr, dropout=args.dropout, seed=args.seed, threads=args.threads, out=args.out,
        validation_fraction=0.1, log_every=25,
        progress=lambda r: print(f"  step {r['step']}/{r['total_steps']}  loss {r['loss']:.3f}  ({r['seconds']:.0f} s)",
                                 flush=True),
    )
    pretrain_s = time.perf_counter() - t
    val = encoder.report["validation"]
    print(f"pre-trained {encoder!r} in {pretrain_s:.0f} s; held-out masked-gene accuracy {val['accuracy']:.4f} "
          f"(most frequent gene {val['most_frequent_token_accuracy']:.4f})", flush=True)

    cells = adata[labelled].copy()
    t = time.perf_counter()
    emb = encoder.embed(cells, batch_size=64)
    embed_s = time.perf_counter() - t
    untrained = plm.PLMEncoder(encoder.tokenizer, type(encoder.model)(encoder.model.spec).eval(), name="untrained")
    torch.manual_seed(args.seed)
    emb_random = untrained.embed(cells, batch_size=64)
    pca = pca_embedding(cells, 50, args.seed)

    rows = {
        f"{args.tokenizer} encoder, pre-trained (MLM)": knn_accuracy(emb, labels, k=args.k, seed=args.seed),
        f"{args.tokenizer} encoder, untrained": knn_accuracy(emb_random, labels, k=args.k, seed=args.seed),
        "PCA of log expression (50 comps)": knn_accuracy(pca, labels, k=args.k, seed=args.seed),
    }
    print(f"\nkNN annotation (k={args.k}, 5-fold stratified CV) on {len(labels)} labelled cells:")
    print(f"  {'embedding':45s} {'accuracy':>9s} {'macro F1':>9s}")
    for name, r in rows.items():
        print(f"  {name:45s} {r['accuracy']:9.4f} {r['macro_f1']:9.4f}")
    report = {
        "data": str(path), "cells": int(adata.n_obs), "labelled": int(labelled.sum()), "args": vars(args),
        "pretrain_seconds": round(pretrain_s, 1), "embed_seconds": round(embed_s, 1),
        "validation": val, "knn": rows, "encoder": repr(encoder),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
