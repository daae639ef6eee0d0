"""Are generated cells like real ones? Generate cells for each pbmc3k label with a run from
``scripts/tune_pbmc3k.py`` and compare them with real held-out cells, against a shuffled-label control.

Real cells go through the same representation as generated ones: their top-k cell sentence decoded with the
run's inverse model (as Cell2Sentence evaluates), so both sides differ only in where the sentence came from.

Figures (printed and written as JSON):

- (a) valid gene names among generated tokens, unique genes per sentence, duplicates, empty outputs;
- (b) a kNN classifier (k=10, PCA-50 of real training cells) trained on real cells' labels, classifying generated
  cells: accuracy against the label they were asked for; control: the same cells with their labels shuffled;
  reference: the classifier on real held-out cells;
- (c) energy distance in that PCA space between the generated cells of each label and the real held-out cells of
  the same label (cell-weighted mean over labels with >= 5 held-out cells); control: shuffled labels; floor:
  real training vs real held-out cells of the same label.

    python scripts/eval_generate_pbmc3k.py bench_out/tune/run_tiny-gpt2 --per-label 40
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc3k_raw_seurat_labels.h5ad"


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance between two samples: 2 E|X-Y| - E|X-X'| - E|Y-Y'| (Euclidean)."""
    from sklearn.metrics import pairwise_distances

    return float(2 * pairwise_distances(x, y).mean() - pairwise_distances(x).mean() - pairwise_distances(y).mean())


def mean_distance(emb: np.ndarray, labels: np.ndarray, real: np.ndarray, real_labels: np.ndarray,
                  min_cells: int = 5) -> tuple[float, dict[str, float]]:
    per, weights = {}, {}
    for label in np.unique(real_labels):
        mine, theirs = emb[labels == label], real[real_labels == label]
        if len(theirs) >= min_cells and len(mine) >= 2:
            per[str(label)] = energy_distance(mine, theirs)
            weights[str(label)] = len(theirs)
    total = sum(weights.values())
    return float(sum(per[k] * weights[k] for k in per) / total), per


def _counts(values: np.ndarray) -> dict[str, int]:
    names, counts = np.unique(values, return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder from scripts/tune_pbmc3k.py (cell_type + generation)")
    parser.add_argument("--per-label", type=int, default=40, help="generated cells per label")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench_out/eval_generate_pbmc3k.json"))
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"{DATA} is absent")

    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    from c2t.generate import generate_cells, read_run_info
    from c2t.instruct import load
    from c2t.io import read_h5ad
    from c2t.sentences import decode, from_adata

    info = read_run_info(args.run)
    dsd = load(info.dataset_folder())
    split_cells = {}
    for name in ("train", "test"):
        records = dsd[name].filter(lambda r: r["task"] == "cell_type").select_columns(["cell_id", "label"]).to_dict()
        split_cells[name] = dict(zip(records["cell_id"], records["label"], strict=True))
    adata = read_h5ad(DATA)
    sentences = from_adata(adata, top_k=info.top_k, seed=info.dataset.get("seed", 0))
    real = decode(sentences.texts(), model=(info.vocabulary(), info.inverse_model()), delimiter=" ")
    real.obs_names = adata.obs_names
    position = {c: i for i, c in enumerate(adata.obs_names)}

    def rows(name):
        ids = list(split_cells[name])
        return np.array([position[c] for c in ids]), np.array([split_cells[name][c] for c in ids])

    train_rows, train_labels = rows("train")
    test_rows, test_labels = rows("test")
    X = real.X.toarray()
    pca = PCA(n_components=50, random_state=0).fit(X[train_rows])
    real_train, real_test = pca.transform(X[train_rows]), pca.transform(X[test_rows])
    knn = KNeighborsClassifier(n_neighbors=10).fit(real_train, train_labels)

    labels = sorted(set(train_labels))
    t0 = time.perf_counter()
    cells = generate_cells(args.run, labels={label: args.per_label for label in labels},
                           sampling={"temperature": args.temperature, "seed": args.seed,
                                     "max_new_tokens": 3 * (info.top_k or 100) + 16, "batch_size": 64})
    seconds = time.perf_counter() - t0
    assert list(cells.var_names) == list(real.var_names)
    asked = cells.obs["condition"].astype(str).to_numpy()
    shuffled = np.random.default_rng(args.seed).permutation(asked)
    generated = pca.transform(cells.X.toarray())
    g = cells.uns["c2t_generate"]
    dist, per_label = mean_distance(generated, asked, real_test, test_labels)
    dist_control, _ = mean_distance(generated, shuffled, real_test, test_labels)
    dist_floor, _ = mean_distance(real_train, train_labels, real_test, test_labels)
    report = {
        "run": str(args.run), "top_k": info.top_k, "labels": labels, "per_label": args.per_label,
        "generated_cells": int(cells.n_obs), "generation_seconds": round(seconds, 1),
        "cells_per_second": round(cells.n_obs / seconds, 1),
        "a_valid_gene_rate": g["valid_gene_rate"], "a_mean_unique_genes": g["mean_unique_genes"],
        "a_duplicate_rate": g["duplicate_rate"], "a_empty_outputs": g["n_empty"],
        "b_knn_accuracy_generated": float((knn.predict(generated) == asked).mean()),
        "b_knn_accuracy_shuffled_control": float((knn.predict(generated) == shuffled).mean()),
        "b_knn_accuracy_real_heldout": float((knn.predict(real_test) == test_labels).mean()),
        "c_energy_distance_generated": dist, "c_energy_distance_shuffled_control": dist_control,
        "c_energy_distance_real_train_vs_heldout": dist_floor, "c_energy_distance_per_label": per_label,
        "knn_predictions_by_asked_label": {label: _counts(knn.predict(generated[asked == label])) for label in labels},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("knn_predictions_by_asked_label",)}, indent=2))


if __name__ == "__main__":
    main()
