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

The metrics are c2t.eval's (``valid_gene_rate``, ``generation_scores``), the same that ``c2t bench`` reports for
its ``generation`` task.

    python scripts/eval_generate_pbmc3k.py bench_out/tune/run_tiny-gpt2 --per-label 40
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc3k_raw_seurat_labels.h5ad"


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

    from c2t.eval import generation_scores, valid_gene_rate
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

    labels = sorted(set(train_labels))
    t0 = time.perf_counter()
    cells = generate_cells(args.run, labels={label: args.per_label for label in labels},
                           sampling={"temperature": args.temperature, "seed": args.seed,
                                     "max_new_tokens": 3 * (info.top_k or 100) + 16, "batch_size": 64})
    seconds = time.perf_counter() - t0
    assert list(cells.var_names) == list(real.var_names)
    asked = cells.obs["condition"].astype(str).to_numpy()
    g = cells.uns["c2t_generate"]
    # PCA-50 and a kNN (k=10) fitted on the real training cells; shuffled-label controls seeded with --seed
    scores = generation_scores(cells.X.toarray(), asked, X[train_rows], train_labels, X[test_rows], test_labels,
                               n_components=50, n_neighbors=10, seed=args.seed)
    predicted = scores["predicted"]
    report = {
        "run": str(args.run), "top_k": info.top_k, "labels": labels, "per_label": args.per_label,
        "generated_cells": int(cells.n_obs), "generation_seconds": round(seconds, 1),
        "cells_per_second": round(cells.n_obs / seconds, 1),
        "a_valid_gene_rate": valid_gene_rate(cells.obs["c2t_text"].astype(str), cells.var_names), "a_mean_unique_genes": g["mean_unique_genes"],
        "a_duplicate_rate": g["duplicate_rate"], "a_empty_outputs": g["n_empty"],
        "b_knn_accuracy_generated": scores["knn_accuracy"],
        "b_knn_accuracy_shuffled_control": scores["knn_accuracy_shuffled"],
        "b_knn_accuracy_real_heldout": scores["knn_accuracy_real"],
        "c_energy_distance_generated": scores["energy_distance"],
        "c_energy_distance_shuffled_control": scores["energy_distance_shuffled"],
        "c_energy_distance_real_train_vs_heldout": scores["energy_distance_real"],
        "c_energy_distance_per_label": scores["per_label_distance"],
        "knn_predictions_by_asked_label": {label: _counts(predicted[asked == label]) for label in labels},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("knn_predictions_by_asked_label",)}, indent=2))


if __name__ == "__main__":
    main()
