"""The benchmark's generation task: the metric functions against direct scikit-learn / hand computations, the task
end to end on the tiny LoRA run of conftest (trained on 300 pbmc3k cells), and the config refusing generation
without a generative method."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist

from c2t._errors import C2TInputError
from c2t.eval import (
    energy_distance,
    generation_scores,
    label_distance,
    load_config,
    run_benchmark,
    valid_gene_rate,
)
from c2t.eval._methods import llm_cells

from .conftest import PBMC3K


def test_valid_gene_rate_counts_tokens_by_hand():
    vocabulary = ["CD3D", "IL7R", "LTB", "MS4A1"]
    texts = ["CD3D IL7R, LTB.", "ms4a1 banana CD3D CD3D", "", "  ;  "]
    # tokens: CD3D IL7R LTB | ms4a1 banana CD3D CD3D -> 7 tokens, 6 genes (ms4a1 ignoring case), 1 not a gene
    assert valid_gene_rate(texts, vocabulary) == pytest.approx(6 / 7)
    assert valid_gene_rate(texts, vocabulary, case_insensitive=False) == pytest.approx(5 / 7)
    assert valid_gene_rate(["", " "], vocabulary) == 0.0


def test_energy_and_label_distance_by_hand():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(1.0, 1.0, size=(9, 3))
    expected = 2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean()
    assert energy_distance(x, y) == pytest.approx(expected)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    gen = np.r_[x, y]
    gen_labels = ["a"] * 7 + ["b"] * 9
    real = rng.normal(size=(14, 3))
    real_labels = ["a"] * 6 + ["b"] * 5 + ["c"] * 3  # c: under min_cells, and not generated
    mean, per = label_distance(gen, gen_labels, real, real_labels, min_cells=5)
    da, db = energy_distance(x, real[:6]), energy_distance(y, real[6:11])
    assert per == pytest.approx({"a": da, "b": db})
    assert mean == pytest.approx((6 * da + 5 * db) / 11)
    assert np.isnan(label_distance(gen, gen_labels, real, real_labels, min_cells=50)[0])


def test_generation_scores_match_direct_sklearn_calls():
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(1)
    centres = {"T": rng.normal(0, 3, 20), "B": rng.normal(0, 3, 20), "NK": rng.normal(0, 3, 20)}

    def cells(n, labels):
        y = np.array([labels[i % len(labels)] for i in range(n)])
        return np.stack([centres[t] for t in y]) + rng.normal(size=(n, 20)), y

    train, y_train = cells(90, ["T", "B", "NK"])
    test, y_test = cells(45, ["T", "B", "NK"])
    good, asked = cells(30, ["T", "B", "NK"])
    scores = generation_scores(good, asked, train, y_train, test, y_test, n_components=5, n_neighbors=7, seed=3)
    pca = PCA(n_components=5, random_state=3).fit(train)
    knn = KNeighborsClassifier(n_neighbors=7).fit(pca.transform(train), y_train)
    predicted = knn.predict(pca.transform(good))
    shuffled = np.random.default_rng(3).permutation(asked)
    assert scores["knn_accuracy"] == pytest.approx((predicted == asked).mean())
    assert scores["knn_accuracy_shuffled"] == pytest.approx((predicted == shuffled).mean())
    assert scores["knn_accuracy_real"] == pytest.approx((knn.predict(pca.transform(test)) == y_test).mean())
    g, t = pca.transform(good), pca.transform(test)
    per = {c: energy_distance(g[asked == c], t[y_test == c]) for c in ("B", "NK", "T")}
    assert scores["energy_distance"] == pytest.approx(np.mean(list(per.values())))  # 15 test cells of each label
    # well-generated cells: classified right and closer to their own label than with shuffled labels
    assert scores["knn_accuracy"] > 0.9 > 0.6 > scores["knn_accuracy_shuffled"]
    assert scores["energy_distance"] < scores["energy_distance_shuffled"]
    noise, _ = cells(30, ["T"])  # every cell a T cell, whatever was asked
    bad = generation_scores(noise, asked, train, y_train, test, y_test, n_components=5, n_neighbors=7, seed=3)
    assert bad["knn_accuracy"] == pytest.approx(1 / 3)
    assert bad["energy_distance"] > scores["energy_distance"]


def _pbmc_cells(tmp_path, n=150):
    from c2t.io import read_h5ad

    adata = read_h5ad(PBMC3K)
    adata = adata[adata.obs["seurat_celltype"].notna().to_numpy()]
    adata = adata[np.sort(np.random.default_rng(7).choice(adata.n_obs, n, replace=False))].copy()
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    return adata, path


def _config(path, methods, tasks):
    return {"seeds": [0], "n_neighbors": 5, "umap_cells": 200,
            "datasets": {"pbmc": {"path": str(path), "label_key": "seurat_celltype", "test_size": 0.4}},
            "methods": methods, "tasks": tasks, "heads": ["knn"]}


def test_generation_task_end_to_end_on_a_tiny_run(gen_run, tmp_path):
    """``llm_cells`` in ``c2t bench``: its rows equal the metric functions applied to the same (seeded) generated
    cells; the embedding method next to it gets the other tasks only; the report draws the overlay."""
    from c2t.eval import split_random, write_report
    from c2t.generate import read_run_info

    if not PBMC3K.is_file():
        pytest.skip(f"{PBMC3K} is absent")
    adata, path = _pbmc_cells(tmp_path)
    options = {"model": str(gen_run), "per_label": 3, "max_new_tokens": 24}
    control = {"method": "random_cells", "model": str(gen_run), "per_label": 3}
    config = _config(path, {"pca": {"n_comps": 10}, "tuned": {"method": "llm_cells", **options}, "control": control},
                     ["annotation", "generation"])
    out = tmp_path / "bench"
    results = run_benchmark(config, out, report=False)
    assert set(results["status"]) == {"ok"}, results["error"].unique()
    tuned = results[results["method"] == "tuned"]
    assert set(tuned["task"]) == {"generation"} and set(results.loc[results["method"] == "pca", "task"]) == {"annotation"}
    got = tuned.set_index("metric")["value"]
    assert list(got.index) == ["valid_gene_rate", "knn_accuracy", "knn_accuracy_shuffled", "knn_accuracy_real",
                               "energy_distance", "energy_distance_shuffled", "energy_distance_real"]

    # the same cells again (generation is seeded), scored directly
    labels = adata.obs["seurat_celltype"].astype(str).to_numpy()
    train, test = split_random(labels, test_size=0.4, seed=0)
    known = set(read_run_info(gen_run).labels("generation"))
    generated, real = llm_cells(adata, labels=sorted(set(labels[train])), seed=0, **options)
    assert set(generated.obs["condition"]) == set(labels[train]) & known
    assert generated.obs["condition"].value_counts().eq(3).all()
    assert list(real.var_names) == list(generated.var_names) and real.n_obs == adata.n_obs
    texts = generated.obs["c2t_text"].astype(str).tolist()
    assert got["valid_gene_rate"] == pytest.approx(valid_gene_rate(texts, generated.var_names))
    assert got["valid_gene_rate"] == pytest.approx(generated.uns["c2t_generate"]["valid_gene_rate"])
    X = real.X.toarray()
    direct = generation_scores(generated.X.toarray(), generated.obs["condition"].astype(str), X[train], labels[train],
                               X[test], labels[test], n_neighbors=5, seed=0)
    for metric in got.index.drop("valid_gene_rate"):
        assert got[metric] == pytest.approx(direct[metric], nan_ok=True), metric
    assert 0 <= got["knn_accuracy"] <= 1 and 0 < got["valid_gene_rate"] <= 1
    # the control: random genes of the run's vocabulary (valid by construction), for every training label
    rows = results[results["method"] == "control"].set_index("metric")["value"]
    assert rows["valid_gene_rate"] == 1.0 and rows["knn_accuracy_real"] == got["knn_accuracy_real"]
    assert rows["energy_distance_real"] == got["energy_distance_real"]

    # summary: energy_distance ranks ascending (one generative method: rank 1); controls are not ranked
    summary = pd.read_csv(out / "summary.csv")
    ranks = summary[summary["method"] == "tuned"].set_index("metric")["rank"]
    assert ranks["energy_distance"] in (1, 2) and np.isnan(ranks["knn_accuracy_shuffled"]) and np.isnan(ranks["energy_distance_real"])
    overlay = np.load(out / "cache" / "pbmc" / "tuned" / "generation.npz")
    assert len(overlay["generated"]) == generated.n_obs and len(overlay["real"]) == len(test)
    assert sorted(overlay["generated_label"]) == sorted(generated.obs["condition"].astype(str))

    page = write_report(out).read_text()
    assert 'alt="pbmc generated vs real"' in page and "energy_distance (lower is" in page


def test_generation_on_an_embedding_method_fails_before_any_work(tmp_path, synthetic_factory, monkeypatch):
    from c2t.eval import METHODS

    calls = []
    monkeypatch.setitem(METHODS, "counting", lambda adata, **_: calls.append(1) or np.zeros((adata.n_obs, 2)))
    synthetic_factory(n_cells=150, n_genes=30, seed=1).write_h5ad(tmp_path / "s.h5ad")
    dataset = {"s": {"path": str(tmp_path / "s.h5ad"), "label_key": "cell_type"}}
    with pytest.raises(C2TInputError, match=r"methods\.counting: counting is an embedding method and none of the tasks "
                                            r"\(generation\) apply to it \(generation needs a generative method "
                                            r"\(llm_cells, random_cells\)\)"):
        run_benchmark({"datasets": dataset, "methods": ["counting"], "tasks": ["generation"]}, tmp_path / "out")
    with pytest.raises(C2TInputError, match=r"tasks: generation needs a generative method \(llm_cells, random_cells\); "
                                            r"the config's methods are: counting \(embedding\)"):
        run_benchmark({"datasets": dataset, "methods": ["counting"], "tasks": ["annotation", "generation"]},
                      tmp_path / "out")
    with pytest.raises(C2TInputError, match=r"methods\.gen: llm_cells is a generative method .* it can do: generation"):
        load_config({"datasets": dataset, "methods": {"gen": {"method": "llm_cells", "model": "x"}},
                     "tasks": ["annotation"]})
    with pytest.raises(C2TInputError, match="unknown option 'labels' of method llm_cells"):
        load_config({"datasets": dataset, "methods": {"gen": {"method": "llm_cells", "model": "x", "labels": "B:3"}},
                     "tasks": ["generation"]})
    assert calls == [] and not (tmp_path / "out").exists()
