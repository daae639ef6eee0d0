"""c2t.eval benchmark runner: numbers against direct scikit-learn calls, controls on pbmc3k, bad configs,
failing methods and resuming."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

import c2t.embed as emb
from c2t._errors import C2TInputError
from c2t.cli import app
from c2t.eval import METHODS, load_config, run_benchmark
from c2t.eval._bench import _stratified_subsample

from .conftest import PBMC3K

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_h5ad(tmp_path_factory, synthetic_factory):
    """150 synthetic cells, 3 types, 2 batches (the shared synthetic generator, smaller)."""
    adata = synthetic_factory(n_cells=150, n_genes=60, seed=3)
    path = tmp_path_factory.mktemp("bench") / "tiny.h5ad"
    adata.write_h5ad(path)
    return path


def tiny_config(path, methods=None, **extra):
    return {"seeds": [0, 1], "n_neighbors": 5,
            "datasets": {"tiny": {"path": str(path), "label_key": "cell_type", "batch_key": "batch"}},
            "methods": methods or {"pca": {"n_comps": 10}, "random": {"dim": 8}},
            "tasks": ["annotation", "clustering", "batch_mixing"], **extra}


def _value(results, method, seed, metric, head=""):
    rows = results[(results["method"] == method) & (results["seed"] == seed) & (results["metric"] == metric)
                   & (results["head"].fillna("") == head)]
    assert len(rows) == 1, rows
    return float(rows["value"].iloc[0])


def test_tiny_benchmark_matches_direct_sklearn_calls(tiny_h5ad, tmp_path):
    import anndata as ad
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import (
        accuracy_score,
        adjusted_rand_score,
        f1_score,
        normalized_mutual_info_score,
        silhouette_samples,
        silhouette_score,
    )
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    results = run_benchmark(tiny_config(tiny_h5ad), tmp_path / "out", report=False)
    assert set(results["status"]) == {"ok"}
    assert set(results["method"]) == {"pca", "random"}
    assert results["dataset_sha256"].str.len().eq(64).all() and results["c2t_version"].notna().all()

    adata = ad.read_h5ad(tiny_h5ad)
    y = adata.obs["cell_type"].astype(str).to_numpy()
    batches = adata.obs["batch"].astype(str).to_numpy()
    direct: dict[str, list[float]] = {}
    for seed in (0, 1):
        for method in ("pca", "random"):
            if method == "pca":
                X = emb.pca(adata, n_comps=10, seed=seed, copy=True).obsm["X_pca_log"]
            else:
                X = np.random.default_rng(seed).standard_normal((adata.n_obs, 8)).astype(np.float32)
            train, test = train_test_split(np.arange(len(y)), test_size=0.3, random_state=seed, stratify=y)
            knn = KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(X[train], y[train]).predict(X[test])
            logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=seed)) \
                .fit(X[train], y[train]).predict(X[test])
            clusters = KMeans(n_clusters=3, n_init=10, random_state=seed).fit_predict(X)
            _, idx = NearestNeighbors(n_neighbors=5).fit(X).kneighbors()
            shares = np.stack([(batches[idx] == b).mean(axis=1) for b in ("b1", "b2")], axis=1)
            entropy = np.mean(stats.entropy(shares, axis=1)) / np.log(2)
            asw = np.mean([np.mean(1 - np.abs(silhouette_samples(X[y == t], batches[y == t]))) for t in np.unique(y)])
            expected = {
                ("accuracy", "knn"): accuracy_score(y[test], knn),
                ("macro_f1", "knn"): f1_score(y[test], knn, average="macro"),
                ("accuracy", "logistic"): accuracy_score(y[test], logistic),
                ("macro_f1", "logistic"): f1_score(y[test], logistic, average="macro"),
                ("ari", ""): adjusted_rand_score(y, clusters),
                ("nmi", ""): normalized_mutual_info_score(y, clusters),
                ("silhouette", ""): silhouette_score(X, y),
                ("batch_entropy", ""): entropy,
                ("ilisi", ""): np.mean(1.0 / (shares**2).sum(axis=1)),  # inverse Simpson's index per cell
                ("batch_silhouette", ""): asw,
            }
            for (metric, head), value in expected.items():
                assert _value(results, method, seed, metric, head) == pytest.approx(value, abs=1e-5), (method, seed, metric, head)
                direct.setdefault(f"{method}/{metric}/{head}", []).append(value)
            per_class = f1_score(y[test], knn, average=None, labels=np.unique(y[test]))
            rows = results[(results["method"] == method) & (results["seed"] == seed)
                           & (results["metric"] == "per_class_f1") & (results["head"] == "knn")]
            assert rows.set_index("label")["value"].to_dict() == pytest.approx(dict(zip(np.unique(y[test]), per_class, strict=True)))

    # the summary: mean and 95% t-interval over the two seeds, as written to summary.csv
    summary = pd.read_csv(tmp_path / "out" / "summary.csv", keep_default_na=False, na_values=[""])
    for key, values in direct.items():
        method, metric, head = key.split("/")
        row = summary[(summary["method"] == method) & (summary["metric"] == metric) & (summary["head"].fillna("") == head)]
        half = stats.t.ppf(0.975, 1) * np.std(values, ddof=1) / np.sqrt(2)
        assert row["mean"].item() == pytest.approx(np.mean(values), abs=1e-5)
        assert row["n"].item() == 2
        assert row["ci_low"].item() == pytest.approx(np.mean(values) - half, abs=1e-4)
        assert row["ci_high"].item() == pytest.approx(np.mean(values) + half, abs=1e-4)
    acc = summary[(summary["metric"] == "accuracy") & (summary["head"] == "knn")].set_index("method")
    assert acc.loc["pca", "rank"] == 1 and acc.loc["random", "rank"] == 2
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| pca |" in md and "annotation:accuracy (knn)" in md


def test_report_is_self_contained(tiny_h5ad, tmp_path):
    from c2t.eval import write_report

    out = tmp_path / "out"
    run_benchmark(tiny_config(tiny_h5ad, seeds=[0]), out, report=False)
    page = write_report(out, umap=False).read_text()
    assert page.count("data:image/png;base64,") == 2  # metric bars + confusion matrices (UMAPs left out here)
    assert "src=\"http" not in page and "<link" not in page
    assert "<td>pca</td>" in page and "<td>random</td>" in page
    assert "kNN per-class F1" in (out / "report.md").read_text()


def test_bad_config_fails_before_any_work(tiny_h5ad, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(METHODS, "counting", lambda adata, **_: calls.append(1) or np.zeros((adata.n_obs, 2)))
    good = tiny_config(tiny_h5ad, methods={"counting": {}})
    cases = {
        "unknown method 'umap'; valid methods are: cellama, cellama_finetuned, counting, genept_s": {"methods": {"counting": {}, "umap": {}}},
        "unknown metric 'f2'; valid metrics are: accuracy, ari": {"metrics": ["accuracy", "f2"]},
        "unknown task 'imputation'; valid tasks are: annotation, batch_mixing": {"tasks": ["annotation", "imputation"]},
        "unknown dataset 'pbmc68k' (and no path:); valid datasets are: kang8, kang_stim": {"datasets": {"pbmc68k": {}}},
        "'celltype' not found in obs of tiny.h5ad; columns are: cell_type, batch, n_counts":
            {"datasets": {"tiny": {"path": str(tiny_h5ad), "label_key": "celltype"}}},
        "unknown option 'n_pcs' of method pca; its options are: n_comps, n_top_genes":
            {"methods": {"counting": {}, "pca": {"n_pcs": 5}}},
        "unknown head 'svm'": {"heads": ["svm"]},
    }
    for message, change in cases.items():
        with pytest.raises(C2TInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            run_benchmark({**good, **change}, tmp_path / "out")
    assert calls == [] and not (tmp_path / "out").exists()


def test_failing_method_is_recorded_and_the_run_continues(tiny_h5ad, tmp_path, monkeypatch):
    def broken(adata, *, seed=0):
        raise RuntimeError("CUDA is not available on this machine")

    monkeypatch.setitem(METHODS, "broken", broken)
    out = tmp_path / "out"
    results = run_benchmark(tiny_config(tiny_h5ad, methods={"broken": {}, "pca": {"n_comps": 10}}), out, report=False)
    failed = results[results["method"] == "broken"]
    assert failed["status"].tolist() == ["failed"]
    assert "RuntimeError: CUDA is not available on this machine" in failed["error"].item()
    ok = results[results["method"] == "pca"]
    assert set(ok["status"]) == {"ok"} and sorted(ok["seed"].unique()) == [0, 1]
    assert "CUDA is not available" in (out / "summary.md").read_text()
    assert "broken" not in set(pd.read_csv(out / "summary.csv")["method"])


def test_resume_reuses_cached_units(tiny_h5ad, tmp_path, monkeypatch):
    calls = []

    def counted(adata, *, seed=0):
        calls.append(seed)
        if seed == 1 and len(calls) == 2:
            raise KeyboardInterrupt  # the first run is interrupted at its second unit
        return np.random.default_rng(seed).standard_normal((adata.n_obs, 6)).astype(np.float32)

    monkeypatch.setitem(METHODS, "counted", counted)
    out = tmp_path / "out"
    config = tiny_config(tiny_h5ad, methods={"counted": {}}, seeds=[0, 1, 2])
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(config, out, report=False)
    assert calls == [0, 1]
    assert (out / "cache" / "tiny" / "counted" / "seed0.json").is_file()
    first = run_benchmark(config, out, report=False)
    assert calls == [0, 1, 1, 2]  # seed 0 came from the cache
    again = run_benchmark(config, out, report=False)
    assert calls == [0, 1, 1, 2]  # nothing recomputed
    pd.testing.assert_frame_equal(first, again)
    # a changed setting changes the key: that method's units are recomputed
    run_benchmark({**config, "n_neighbors": 7}, out, report=False)
    assert calls == [0, 1, 1, 2, 0, 1, 2]
    unit = json.loads((out / "cache" / "tiny" / "counted" / "seed2.json").read_text())
    assert unit["status"] == "ok" and unit["rows"][0]["method_version"].startswith("counted-")


def test_splits_by_batch_hold_out_whole_batches(tiny_h5ad, tmp_path):
    import anndata as ad

    config = tiny_config(tiny_h5ad, methods={"pca": {"n_comps": 10}}, tasks=["annotation"])
    config["datasets"]["tiny"].update(split="by_batch", test_batches=["b2"])
    results = run_benchmark(config, tmp_path / "out", report=False)
    assert set(results["split"]) == {"by_batch"} and set(results["split_detail"]) == {"test batches: b2"}
    unit = json.loads((tmp_path / "out" / "cache" / "tiny" / "pca" / "seed0.json").read_text())
    n_b2 = int((ad.read_h5ad(tiny_h5ad).obs["batch"] == "b2").sum())
    assert len(unit["predictions"]["knn"]["truth"]) == n_b2


def test_cli_bench(tiny_h5ad, tmp_path):
    import yaml

    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_h5ad.name, seeds=[0])))
    (tmp_path / tiny_h5ad.name).symlink_to(tiny_h5ad)  # a path relative to the config file
    result = runner.invoke(app, ["bench", str(config), "-o", str(tmp_path / "r"), "--no-report"])
    assert result.exit_code == 0, result.output
    assert "pca" in result.output and (tmp_path / "r" / "results.csv").is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**tiny_config(tiny_h5ad), "methods": {"scgpt": {}}}))
    result = runner.invoke(app, ["bench", str(bad), "-o", str(tmp_path / "r2")])
    assert result.exit_code == 2 and "unknown method 'scgpt'" in result.output
    assert not (tmp_path / "r2").exists()


def test_pbmc3k_random_control_at_chance_and_pca_well_above(tmp_path):
    if not PBMC3K.is_file():
        pytest.skip(f"{PBMC3K} is absent")
    config = {"seeds": [0, 1], "quick_cells": 800,
              "datasets": {"pbmc3k": {"path": str(PBMC3K), "label_key": "seurat_celltype"}},
              "methods": {"pca": {}, "random": {}}, "tasks": ["annotation", "clustering"], "heads": ["knn"]}
    results = run_benchmark(config, tmp_path / "out", quick=True, report=False)
    ok = results[results["status"] == "ok"]
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == len(results)
    mean = ok[ok["metric"] != "per_class_f1"].groupby(["method", "metric"])["value"].mean()
    # chance for a label-blind classifier lies between sum(p^2) (guessing with the label frequencies) and the
    # majority class's share (a kNN vote among random neighbours leans to the majority)
    import anndata as ad

    y = ad.read_h5ad(PBMC3K, backed="r").obs["seurat_celltype"].dropna().astype(str)
    p = y.value_counts(normalize=True).to_numpy()
    chance, majority = float((p**2).sum()), float(p.max())
    assert chance - 0.05 < mean["random", "accuracy"] < majority + 0.03
    assert mean["random", "macro_f1"] < 0.2
    assert abs(mean["random", "ari"]) < 0.03 and mean["random", "nmi"] < 0.05
    assert mean["pca", "accuracy"] > 0.8 and mean["pca", "macro_f1"] > 0.6
    assert mean["pca", "ari"] > 0.4 and mean["pca", "nmi"] > 0.6


def test_stratified_subsample_keeps_every_label():
    labels = np.array(["a"] * 90 + ["b"] * 9 + ["c"])
    rows = _stratified_subsample(labels, 20, seed=0)
    assert sorted(set(labels[rows])) == ["a", "b", "c"] and abs(len(rows) - 20) <= 2
    assert load_config  # re-exported


def test_importing_the_benchmark_is_light():
    import subprocess
    import sys

    code = ("import sys, c2t.eval, c2t._cli_bench; heavy = [m for m in ('torch', 'scanpy', 'sklearn', 'matplotlib', "
            "'umap', 'anndata') if m in sys.modules]; print(heavy)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_split_across_datasets_trains_on_the_reference_and_tests_on_the_query(tiny_h5ad, tmp_path, synthetic_factory):
    import anndata as ad

    query = synthetic_factory(n_cells=150, n_genes=60, seed=4)[:, 10:].copy()  # 50 of the 60 genes
    query.obs = query.obs.rename(columns={"cell_type": "celltype"})
    query.write_h5ad(tmp_path / "query.h5ad")
    config = tiny_config(tiny_h5ad, methods={"pca": {"n_comps": 10}}, seeds=[0], tasks=["annotation", "batch_mixing"])
    config["datasets"]["tiny"] = {"path": str(tiny_h5ad), "label_key": "cell_type", "split": "across",
                                  "query": str(tmp_path / "query.h5ad"), "query_label_key": "celltype"}
    results = run_benchmark(config, tmp_path / "out", report=False)
    assert set(results["status"]) == {"ok"}, results["error"].unique()
    assert set(results["split_detail"]) == {"tiny.h5ad -> query.h5ad (50 shared genes)"}
    assert results["n_cells"].iloc[0] == 300 and "+" in results["dataset_sha256"].iloc[0]
    unit = json.loads((tmp_path / "out" / "cache" / "tiny" / "pca" / "seed0.json").read_text())
    truth = unit["predictions"]["knn"]["truth"]
    assert truth == query.obs["celltype"].astype(str).tolist()  # the test cells are the query's, in order
    assert ad.read_h5ad(tmp_path / "query.h5ad").n_obs == len(truth)
    assert set(results.loc[results["task"] == "batch_mixing", "metric"]) == {"batch_silhouette", "batch_entropy", "ilisi"}
    with pytest.raises(C2TInputError, match=r"'cell_type' not found in obs of query\.h5ad"):
        run_benchmark({**config, "datasets": {"tiny": {**config["datasets"]["tiny"], "query_label_key": None}}},
                      tmp_path / "out2")


@pytest.mark.slow
def test_report_draws_a_umap_per_embedding_coloured_by_label_and_batch(tiny_h5ad, tmp_path):
    import base64
    import re

    from c2t.eval import write_report

    out = tmp_path / "out"
    run_benchmark(tiny_config(tiny_h5ad, seeds=[0], tasks=["annotation"]), out, report=False)
    page = write_report(out).read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3  # metric bars, UMAPs, confusion matrices
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)
    assert 'alt="tiny UMAPs"' in page
