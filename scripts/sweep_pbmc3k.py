"""Sweep instruction-tuning recipes on pbmc3k cell type annotation and score every run on the held-out cells, by
likelihood and by generation, beside PCA + 10-NN and the majority class on the same train/test cells.

Each variant is a set of instruction-data settings (``top_k``, ``tasks``) and training-config fields over the
defaults of its model; the cells are split once (c2t.instruct's stratified split, seed 0), so every variant is
scored on the same test cells. Results go to ``--out`` (JSON) after every variant, so an interrupted sweep keeps
what it measured; ``--budget`` seconds stops it from starting a variant it has no time for.

    python scripts/sweep_pbmc3k.py --grid scripts/configs/sweep_tiny.yaml            # CPU: tiny GPT-2, ~1 h
    python scripts/sweep_pbmc3k.py --grid scripts/configs/sweep_smollm2.yaml --model smollm2   # a GPU
    python scripts/sweep_pbmc3k.py --grid scripts/configs/sweep_tiny.yaml --only top20 --cells 300   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = Path(os.environ.get("C2T_DATA", HERE.parents[1] / "shared" / "data")) / "pbmc3k_raw_seurat_labels.h5ad"
LABEL_KEY = "seurat_celltype"

#: Training fields every variant starts from, per model (a variant's own fields override them).
BASE_TRAIN = {
    "tiny": {"format": "prompt_completion", "method": "full", "learning_rate": 3e-3, "num_train_epochs": 4,
             "per_device_train_batch_size": 16, "max_length": 1024},
    "smollm2": {"format": "prompt_completion", "method": "lora", "learning_rate": 1e-3, "num_train_epochs": 3,
                "per_device_train_batch_size": 256, "max_tokens_per_batch": 16384, "max_length": 1024},
}
COMMON_TRAIN = {"warmup_steps": 0.05, "lr_scheduler_type": "cosine", "logging_steps": 10, "save_steps": 100_000,
                "eval_split": None, "seed": 0, "lora_dropout": 0.05}


def read_grid(path: Path) -> dict[str, dict]:
    import yaml

    grid = yaml.safe_load(path.read_text(encoding="utf-8"))
    variants = grid.get("variants", grid)
    if not isinstance(variants, dict) or not variants:
        raise SystemExit(f"{path}: expected a mapping of variant name -> settings (under 'variants:')")
    return variants


def build_dataset(adata, out: Path, top_k: int, tasks: list, cache: dict):
    """The instruction dataset of these settings (built once per settings; the cell split is the same for all)."""
    from c2t.instruct import build, load

    key = json.dumps([top_k, tasks])
    if key not in cache:
        folder = out / f"ds_{len(cache)}"
        if not (folder / "manifest.json").is_file():
            build(adata, out=folder, tasks=tasks, top_k=top_k, label_key=LABEL_KEY, drop_missing=True, seed=0,
                  stratify=LABEL_KEY)
        cache[key] = folder
    return cache[key], load(cache[key])


def baselines(adata, dsd) -> dict:
    """PCA (c2t.embed.pca: 2,000 HVGs, 50 PCs) + 10-NN fitted on the training cells, and the majority class."""
    from sklearn.neighbors import KNeighborsClassifier

    import c2t.embed

    train_ids, test_ids = set(dsd["train"]["cell_id"]), set(dsd["test"]["cell_id"])
    names = adata.obs_names.astype(str)
    train, test = np.isin(names, sorted(train_ids)), np.isin(names, sorted(test_ids))
    labels = adata.obs[LABEL_KEY].astype(str).to_numpy()
    work = adata[train | test].copy()
    c2t.embed.pca(work)
    z = work.obsm["X_pca_log"]
    w_names = work.obs_names.astype(str)
    w_train, w_test = np.isin(w_names, sorted(train_ids)), np.isin(w_names, sorted(test_ids))
    w_labels = work.obs[LABEL_KEY].astype(str).to_numpy()
    knn = KNeighborsClassifier(10).fit(z[w_train], w_labels[w_train])
    majority = Counter(labels[train]).most_common(1)[0][0]
    return {"pca_knn_accuracy": float((knn.predict(z[w_test]) == w_labels[w_test]).mean()),
            "majority_accuracy": float((labels[test] == majority).mean()), "majority_class": majority,
            "n_train_cells": int(train.sum()), "n_test_cells": int(test.sum())}


def _log_keeper():
    from transformers import TrainerCallback

    class Keep(TrainerCallback):
        """The trainer's log history (the run folder keeps it only in checkpoints)."""

        def __init__(self):
            self.history = []

        def on_train_end(self, args, state, control, **kw):
            self.history = list(state.log_history)

    return Keep()


def tokens_per_second(history: list) -> float | None:
    """Real training tokens per second, from the trainer's own log (num_tokens over train_runtime)."""
    tokens = [e["num_tokens"] for e in history if "num_tokens" in e]
    runtime = next((e["train_runtime"] for e in reversed(history) if "train_runtime" in e), None)
    return round(tokens[-1] / runtime, 1) if tokens and runtime else None


def evaluate(run: Path, test_cells, device: str | None) -> dict:
    """Held-out accuracy of a run by likelihood (sum and per-token mean) and by generation, through c2t.predict."""
    from c2t.generate import Sampling, TransformersBackend, predict

    out = {}
    with TransformersBackend(run, device=device) as engine:
        for name, options in (("likelihood", {"scoring": "likelihood"}),
                              ("likelihood_mean", {"scoring": "likelihood", "score_by": "mean"}),
                              ("generate", {"scoring": "generate", "sampling": Sampling(temperature=0, max_new_tokens=12,
                                                                                        batch_size=64)})):
            cells = test_cells.copy()
            start = time.perf_counter()
            report = predict(run, cells, backend=engine, key_added="pred", **options)
            seconds = time.perf_counter() - start
            out[name] = {"accuracy": round(report["accuracy"], 4), "macro_f1": round(report["macro_f1"], 4),
                         "n_unknown": report["n_unknown"], "cells_per_s": round(cells.n_obs / seconds, 1)}
    return out


def run_variant(name: str, spec: dict, *, model: str, base: Path, adata, work: Path, cache: dict, device,
                baseline_ids: set) -> dict:
    import c2t.train

    spec = dict(spec)
    top_k, tasks = spec.pop("top_k", 100), spec.pop("tasks", ["cell_type"])
    folder, dsd = build_dataset(adata, work, top_k, tasks, cache)
    run = work / f"run_{name}"
    cfg = {**COMMON_TRAIN, **BASE_TRAIN[model], **spec, "dataset": str(folder), "base_model": str(base),
           "output_dir": str(run)}
    keeper = _log_keeper()
    start = time.perf_counter()
    c2t.train.train(cfg, callbacks=[keeper])
    train_seconds = time.perf_counter() - start
    manifest = c2t.train.read_run(run)
    test_ids = set(dsd["test"]["cell_id"])
    if test_ids != baseline_ids:
        raise RuntimeError(f"variant {name}: its test cells differ from the baselines' (another split)")
    test_cells = adata[np.isin(adata.obs_names.astype(str), sorted(test_ids))].copy()
    result = {"settings": {"top_k": top_k, "tasks": tasks, **spec}, "train_seconds": round(train_seconds, 1),
              "train_tokens_per_s": tokens_per_second(keeper.history), "steps": manifest["training"]["global_step"],
              "last_loss": manifest["training"]["last_loss"], "runtime": manifest.get("runtime"),
              "trainable_params": manifest["parameters"]["trainable"]}
    result.update(evaluate(run, test_cells, device))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=Path, required=True, help="YAML: variants: {name: {top_k, tasks, train fields}}")
    parser.add_argument("--model", choices=sorted(BASE_TRAIN), default="tiny")
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cells", type=int, default=None, help="use a stratified subsample of this many cells (smoke)")
    parser.add_argument("--budget", type=float, default=None, help="seconds: start no variant after this")
    parser.add_argument("--epochs", type=float, default=None, help="train every variant this many epochs (smoke)")
    parser.add_argument("--batch-tokens", type=int, default=None,
                        help="max_tokens_per_batch of every variant (a CPU smoke run needs small batches)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--cache", default=None, help="SmolLM2 cache folder (default $C2T_CACHE)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--layers", type=int, default=2, help="tiny GPT-2 layers")
    parser.add_argument("--dim", type=int, default=64, help="tiny GPT-2 width (heads of 32)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/sweep_pbmc3k.json"))
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"{args.data} is absent (set --data or $C2T_DATA)")
    sys.path.insert(0, str(HERE))
    from tune_pbmc3k import tiny_gpt2

    from c2t._atomic import write_text_atomic
    from c2t.io import read_h5ad
    from c2t.models import smollm2_hf

    clock = time.perf_counter()
    variants = read_grid(args.grid)
    if args.only:
        wanted = [v.strip() for v in args.only.split(",") if v.strip()]
        unknown = sorted(set(wanted) - set(variants))
        if unknown:
            raise SystemExit(f"unknown variant(s) {unknown}; the grid has {sorted(variants)}")
        variants = {k: variants[k] for k in wanted}
    adata = read_h5ad(args.data)
    adata = adata[adata.obs[LABEL_KEY].notna().to_numpy()].copy()
    if args.cells:
        from sklearn.model_selection import train_test_split

        keep, _ = train_test_split(np.arange(adata.n_obs), train_size=args.cells, random_state=0,
                                   stratify=adata.obs[LABEL_KEY].astype(str))
        adata = adata[np.sort(keep)].copy()
    work = args.work or Path(tempfile.mkdtemp(prefix="c2t_sweep_"))
    work.mkdir(parents=True, exist_ok=True)
    cache: dict = {}
    _, dsd = build_dataset(adata, work, 100, ["cell_type"], cache)
    report = {"model": args.model, "data": str(args.data), "grid": str(args.grid), "baselines": baselines(adata, dsd),
              "variants": {}}
    print(json.dumps(report["baselines"]), flush=True)
    if args.model == "smollm2":
        base = smollm2_hf(args.cache)
    else:
        base = work / "tiny_gpt2"
        if not (base / "config.json").is_file():
            _, all_tasks = build_dataset(adata, work, 100, ["cell_type", "generation"], cache)
            tiny_gpt2(base, all_tasks, args.cache, layers=args.layers, dim=args.dim, n_positions=1024)
    for name, spec in variants.items():
        if args.budget is not None and time.perf_counter() - clock > args.budget:
            report["variants"][name] = {"skipped": f"over the {args.budget:.0f} s budget"}
            continue
        if args.epochs is not None:
            spec = {**spec, "num_train_epochs": args.epochs}
        if args.batch_tokens is not None:
            spec = {**spec, "max_tokens_per_batch": args.batch_tokens}
        try:
            result = run_variant(name, spec, model=args.model, base=base, adata=adata, work=work, cache=cache,
                                 device=args.device, baseline_ids=set(dsd["test"]["cell_id"]))
        except Exception as err:  # one failed variant is reported, the sweep goes on
            result = {"settings": spec, "error": f"{type(err).__name__}: {err}"}
        report["variants"][name] = result
        report["seconds"] = round(time.perf_counter() - clock, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
        short = {k: result.get(k, {}).get("accuracy") if isinstance(result.get(k), dict) else result.get(k)
                 for k in ("likelihood", "likelihood_mean", "generate", "train_seconds", "train_tokens_per_s", "error")}
        print(name, json.dumps(short), flush=True)
    print(f"done in {time.perf_counter() - clock:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
