"""The main job on bundled demo data: cells -> sentences -> instruction data, and sentences -> decoded
cells with a reconstruction check.

The demo data is scanpy's ``pbmc68k_reduced`` (700 PBMCs, shipped inside scanpy, no download). Its
``raw.X`` holds log1p(CP10k); integer counts are recovered as ``round(expm1(raw.X) * n_counts / 1e4)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from c2t.io import write_h5ad


def write_demo_h5ad(path: Path) -> Path:
    """Write the demo dataset (integer counts in ``X``, cell types in ``obs['cell_type']``) to ``path``."""
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    src = sc.datasets.pbmc68k_reduced()
    logx = sp.csr_matrix(src.raw.X, dtype=np.float64)
    counts = logx.copy()
    counts.data = np.rint(np.expm1(counts.data) * np.repeat(src.obs["n_counts"].to_numpy() / 1e4, np.diff(counts.indptr)))
    counts.eliminate_zeros()
    obs = src.obs[["bulk_labels", "phase"]].rename(columns={"bulk_labels": "cell_type"})
    adata = ad.AnnData(X=counts.astype(np.float32), obs=obs, var=src.raw.var[[]].copy())
    return write_h5ad(adata, path)


def _pearson_rows(a, b) -> np.ndarray:
    a = np.asarray(a.todense() if hasattr(a, "todense") else a, dtype=np.float64)
    b = np.asarray(b.todense() if hasattr(b, "todense") else b, dtype=np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def run_demo(out: Path) -> dict:
    """Run the demo into folder ``out`` and print what happened; return the summary figures."""
    import anndata as ad
    from rich.console import Console
    from rich.table import Table

    from c2t.io import normalize_log1p
    from c2t.sentences import convert, decode, load

    console = Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = write_demo_h5ad(out / "pbmc68k_reduced_counts.h5ad")
    console.print(f"[bold]1. demo data[/] {data} (scanpy pbmc68k_reduced, counts recovered)")
    sentences_dir = convert(data, out / "sentences", top_k=100, obs_keys=["cell_type"])
    cs = load(sentences_dir)
    console.print(f"[bold]2. cell sentences[/] {sentences_dir}: {cs}")
    for text, label in zip(cs.texts(top_k=12)[:3], cs.obs["cell_type"][:3], strict=True):
        console.print(f"   [cyan]{label}[/]: {text} ...", highlight=False)
    import c2t.instruct

    dataset_dir = out / "instruction_data"
    dsd = c2t.instruct.build(data, out=dataset_dir, tasks=["cell_type", "cell_type_mc", {"task": "generation",
                             "weight": 0.5}], label_key="cell_type", top_k=100, organism="human", name="demo")
    sizes = ", ".join(f"{split} {len(dsd[split])}" for split in dsd)
    console.print(f"[bold]3. instruction dataset[/] {dataset_dir}: {sizes} (prompt/completion and messages)")
    record = dsd["train"][0]
    console.print(f"   [cyan]{record['template_id']}[/]: {record['prompt'][:160]!r} -> {record['completion'][:60]!r}",
                  highlight=False)
    decoded = decode(cs.texts(), model=sentences_dir, obs=cs.obs)
    write_h5ad(decoded, out / "decoded.h5ad")
    truth = normalize_log1p(ad.read_h5ad(data).X)
    linear = decode(cs.texts(), model=cs, method="linear")
    figures = {
        "cells": len(cs),
        "pearson_c2t_monotone": float(np.nanmean(_pearson_rows(decoded.X, truth))),
        "pearson_log_linear_c2s_recipe": float(np.nanmean(_pearson_rows(linear.X, truth))),
        "r2_monotone": cs.manifest["inverse_model"]["r2_monotone"],
        "r2_log_linear": cs.manifest["inverse_model"]["r2_linear"],
    }
    table = Table(title="4. decoded top-100 sentences vs the real cells (mean per-cell Pearson r, all genes)")
    table.add_column("inverse model")
    table.add_column("Pearson r", justify="right")
    table.add_column("R² (non-zero entries)", justify="right")
    table.add_row("c2t monotone per-rank mean", f"{figures['pearson_c2t_monotone']:.3f}", f"{figures['r2_monotone']:.3f}")
    table.add_row("Cell2Sentence log-linear", f"{figures['pearson_log_linear_c2s_recipe']:.3f}", f"{figures['r2_log_linear']:.3f}")
    console.print(table)
    figures.update(_demo_bench(data, out / "bench", console))
    console.print(f"[green]done[/]: outputs in {out}/ (decoded cells: {out / 'decoded.h5ad'}, benchmark report: "
                  f"{out / 'bench' / 'report.html'})")
    return figures


def _demo_bench(data: Path, out: Path, console) -> dict:
    """A short ``c2t bench``: PCA against the random control on the demo cells (kNN and logistic annotation,
    clustering; two seeds). The full benchmark adds GenePT, CELLama, LLM and PLM methods (README)."""
    from rich.table import Table

    from c2t.eval import run_benchmark

    config = {"name": "demo", "seeds": [0, 1],
              "datasets": {"pbmc68k_reduced": {"path": str(data), "label_key": "cell_type", "split": "random",
                                               "test_size": 0.3}},
              "methods": {"pca": {"n_comps": 30}, "random": {"dim": 30}},
              "tasks": ["annotation", "clustering"], "heads": ["knn", "logistic"]}
    rows = run_benchmark(config, out)
    table = Table(title="5. benchmark: PCA vs the random control (mean over 2 seeds; report.html has the plots)")
    metrics = ["knn_accuracy", "knn_macro_f1", "logistic_accuracy", "ari"]
    table.add_column("method")
    for metric in metrics:
        table.add_column(metric, justify="right")
    name = rows["head"].fillna("").astype(str).str.cat(rows["metric"].astype(str), sep="_").str.lstrip("_")
    means = rows.assign(name=name).groupby(["method", "name"])["value"].mean()
    for method in ("pca", "random"):
        table.add_row(method, *(f"{means.get((method, m), float('nan')):.3f}" for m in metrics))
    console.print(table)
    return {f"bench_{method}_{m}": float(means.get((method, m), float("nan"))) for method in ("pca", "random")
            for m in metrics}
