#!/usr/bin/env python
"""scInterpreter-style tuning on pbmc3k: held-out cell type accuracy against the majority-class baseline.

Gene embeddings are all-MiniLM-L6-v2 vectors of the NCBI descriptions (cached on disk); each cell becomes its
top-k genes as projected soft tokens (scaled by expression) fed to a frozen SmolLM2-135M (its first
``--llm-layers`` layers), mean-pooled into a linear head. Only the projector, the read-out token and the head train (c2t.train.fit_projector).
Cells are split 80/20, stratified by label, seeded; the majority baseline predicts the training split's most
common label. Runs on CPU in minutes with the defaults (about 9 min on 2 shared cores).

Usage::

    python scripts/projector_pbmc3k.py [--top-k 16] [--llm-layers 4] [--epochs 5] [--cache-dir /work/c2t_cache]
        [--out bench_out/projector_pbmc3k.json] [--save runs/projector_pbmc3k]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"


def stratified_split(labels: np.ndarray, *, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for value in sorted(set(labels.tolist())):
        rows = rng.permutation(np.flatnonzero(labels == value))
        n_test = max(1, round(len(rows) * test_fraction))
        test.extend(rows[:n_test])
        train.extend(rows[n_test:])
    return np.sort(train), np.sort(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "pbmc3k_raw_seurat_labels.h5ad")
    parser.add_argument("--descriptions", type=Path, default=SHARED / "human_gene_descriptions.parquet")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("C2T_CACHE", ".c2t_cache")))
    parser.add_argument("--base-model", type=Path, default=None, help="default: SmolLM2-135M-Instruct (offline)")
    parser.add_argument("--label-key", default="seurat_celltype")
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--llm-layers", type=int, default=4, help="first N decoder layers (0: all)")
    parser.add_argument("--pooling", default="mean", choices=["mean", "last"])
    parser.add_argument("--scale-by-expression", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train-cells", type=int, default=0, help="0: all (a smaller number for a smoke run)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/projector_pbmc3k.json"))
    parser.add_argument("--save", type=Path, default=None, help="also save the trained projector here")
    args = parser.parse_args()

    import torch

    import c2t.models
    from c2t.genes import SentenceTransformerEncoder, embed_genes, load_descriptions
    from c2t.io import read_h5ad
    from c2t.train import cell_gene_tokens, fit_projector

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    adata = read_h5ad(args.data)
    adata = adata[adata.obs[args.label_key].notna().to_numpy()].copy()
    labels = adata.obs[args.label_key].astype(str).to_numpy()
    train_rows, test_rows = stratified_split(labels, test_fraction=args.test_fraction, seed=args.seed)
    if args.max_train_cells:
        train_rows = np.sort(np.random.default_rng(args.seed).permutation(train_rows)[: args.max_train_cells])
    train, test = adata[train_rows].copy(), adata[test_rows].copy()

    # embed only the genes that are ever among a cell's top k (the others are never tokens)
    ids, _ = cell_gene_tokens(adata, list(adata.var_names), top_k=args.top_k)
    used = np.zeros(adata.n_vars, bool)
    used[np.unique(ids[ids >= 0])] = True
    matched = load_descriptions(args.descriptions).match(adata.var_names)
    matched.loc[~used, "text"] = ""
    encoder = SentenceTransformerEncoder(c2t.models.minilm_path())
    genes = embed_genes(matched, encoder, cache_dir=args.cache_dir)
    t_genes = time.perf_counter() - t0
    print(f"{adata.n_obs} labelled cells ({len(train_rows)} train / {len(test_rows)} test); "
          f"{int(used.sum())} genes in some cell's top {args.top_k}, {int(genes.has_text.sum())} with a description; "
          f"gene embeddings {t_genes:.0f} s", flush=True)

    base = args.base_model or c2t.models.smollm2_hf(args.cache_dir)
    t1 = time.perf_counter()

    def progress(entry):
        if entry["step"] % 10 == 0:
            print(f"  step {entry['step']} epoch {entry['epoch']:.2f} loss {entry['loss']:.4f} "
                  f"({time.perf_counter() - t1:.0f} s)", flush=True)

    clf = fit_projector(train, genes, label_key=args.label_key, base_model=base, top_k=args.top_k,
                        llm_layers=args.llm_layers or None, pooling=args.pooling,
                        scale_by_expression=args.scale_by_expression, hidden_dim=args.hidden_dim, epochs=args.epochs,
                        batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
                        progress=progress)
    t_train = time.perf_counter() - t1
    t2 = time.perf_counter()
    clf.predict(test)
    t_predict = time.perf_counter() - t2
    predicted = test.obs["c2t_projector"].astype(str).to_numpy()
    truth = test.obs[args.label_key].astype(str).to_numpy()
    accuracy = float((predicted == truth).mean())
    values, counts = np.unique(train.obs[args.label_key].astype(str).to_numpy(), return_counts=True)
    majority = str(values[counts.argmax()])
    baseline = float((truth == majority).mean())
    per_class = {c: round(float((predicted[truth == c] == c).mean()), 3) for c in sorted(set(truth))}
    f1s = []
    for c in sorted(set(truth)):
        tp = float(((predicted == c) & (truth == c)).sum())
        precision = tp / max(1.0, float((predicted == c).sum()))
        recall = tp / max(1.0, float((truth == c).sum()))
        f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    trained = sum(p.numel() for p in clf.module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in clf.module.llm.parameters())
    report = {
        "data": str(args.data), "label_key": args.label_key, "cells": {"train": int(train.n_obs), "test": int(test.n_obs)},
        "base_model": str(base), "settings": {k: v for k, v in clf.settings.items() if k != "base_model"},
        "parameters": {"trained": trained, "frozen_llm": frozen},
        "accuracy": round(accuracy, 4), "majority_baseline": round(baseline, 4), "majority_class": majority,
        "macro_f1": round(float(np.mean(f1s)), 4), "per_class_recall": per_class,
        "loss": {"first": clf.history[0]["loss"], "last": clf.history[-1]["loss"], "steps": len(clf.history)},
        "seconds": {"gene_embeddings": round(t_genes, 1), "train": round(t_train, 1), "predict": round(t_predict, 1),
                    "total": round(time.perf_counter() - t0, 1)},
        "torch_threads": torch.get_num_threads(),
    }
    print(f"held-out accuracy {accuracy:.3f} (macro F1 {np.mean(f1s):.3f}) vs majority baseline {baseline:.3f} "
          f"({majority!r}); trained {trained:,} parameters over a frozen {frozen:,}-parameter LLM; "
          f"train {t_train:.0f} s, predict {t_predict:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    if args.save:
        clf.save(args.save)
        print(f"saved {args.save}")


if __name__ == "__main__":
    main()
