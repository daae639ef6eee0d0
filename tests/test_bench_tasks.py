"""c2t.eval's drug-response task, iLISI and the fine-tuned CELLama method: numbers against direct scikit-learn /
hand computations, PCA above the random control on the real PC9 erlotinib file, and fine-tuning on training
cells only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from c2t._errors import C2TInputError
from c2t.eval import drug_response, ilisi, load_config, run_benchmark

from .conftest import DATA_DIR

PC9 = DATA_DIR / "pc9_erlotinib_day11.h5ad"


def test_drug_response_matches_direct_sklearn_calls():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    labels = rng.choice(["resistant", "sensitive", "unlabeled"], 200, p=[0.4, 0.3, 0.3])
    X = rng.normal(size=(200, 6)) + (labels == "resistant")[:, None] * 0.8
    train, test = np.arange(140), np.arange(140, 200)
    rows, predictions = drug_response(X, labels, train, test, positive="resistant", heads=["knn", "logistic"], seed=2,
                                      n_neighbors=7)
    got = {(r["head"], r["metric"]): r["value"] for r in rows}
    assert {r["task"] for r in rows} == {"drug_response"}
    truth = labels[test] == "resistant"
    binary = np.where(labels == "resistant", "resistant", "other")
    knn = KNeighborsClassifier(n_neighbors=7, metric="cosine").fit(X[train], binary[train])
    logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=2)).fit(X[train], binary[train])
    for name, model in (("knn", knn), ("logistic", logistic)):
        proba = model.predict_proba(X[test])[:, list(model.classes_).index("resistant")]
        called = model.predict(X[test]) == "resistant"
        assert got[name, "accuracy"] == pytest.approx(accuracy_score(truth, called)), name
        assert got[name, "f1"] == pytest.approx(f1_score(truth, called)), name
        assert got[name, "auroc"] == pytest.approx(roc_auc_score(truth, proba)), name
    assert got["logistic", "auroc"] > 0.7
    assert set(predictions["knn"]["truth"]) == {"resistant", "other"}
    with pytest.raises(C2TInputError, match="training cells need both 'resistant' and other labels"):
        drug_response(X, labels, np.flatnonzero(labels == "resistant"), test, positive="resistant")


def test_ilisi_is_the_mean_inverse_simpson_index_of_knn_batch_shares():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 4))
    batches = rng.choice(["a", "b", "c"], 80)
    X[batches == "c"] += 3.0  # batch c apart, a and b mixed
    _, idx = NearestNeighbors(n_neighbors=10).fit(X).kneighbors()
    expected = [1.0 / sum((batches[row] == b).mean() ** 2 for b in "abc") for row in idx]
    assert ilisi(X, batches, n_neighbors=10) == pytest.approx(np.mean(expected))
    assert 1.0 <= ilisi(X, batches, n_neighbors=10) < 2.2
    assert np.isnan(ilisi(X, ["a"] * 80))


def test_drug_response_config_errors(tmp_path, synthetic_factory):
    adata = synthetic_factory(n_cells=150, n_genes=30, seed=2)
    adata.obs["qc"] = np.arange(150) % 5 > 0
    adata.obs["qc_text"] = "yes"
    adata.write_h5ad(tmp_path / "s.h5ad")
    dataset = {"path": str(tmp_path / "s.h5ad"), "label_key": "cell_type"}
    base = {"methods": ["pca"], "tasks": ["drug_response"]}
    with pytest.raises(C2TInputError, match="tasks: drug_response needs a dataset with positive:"):
        load_config({**base, "datasets": {"s": dataset}})
    with pytest.raises(C2TInputError, match=r"positive: 'resistant' is not a value of obs\['cell_type'\]; values are: B, Mono, T"):
        load_config({**base, "datasets": {"s": {**dataset, "positive": "resistant"}}})
    with pytest.raises(C2TInputError, match=r"'pass_qc' not found in obs of s\.h5ad"):
        load_config({**base, "datasets": {"s": {**dataset, "positive": "B", "filter": "pass_qc"}}})
    with pytest.raises(C2TInputError, match=r"filter: obs\['qc_text'\] must be a boolean column"):
        load_config({**base, "datasets": {"s": {**dataset, "positive": "B", "filter": "qc_text"}}})
    # a dataset without positive: next to a drug dataset gets the other tasks only
    config = {"seeds": [0], "methods": {"pca": {"n_comps": 5}}, "tasks": ["drug_response", "clustering"], "heads": ["knn"],
              "datasets": {"drug": {**dataset, "positive": "B", "filter": "qc"}, "plain": dataset}}
    results = run_benchmark(config, tmp_path / "out", report=False)
    assert set(results["status"]) == {"ok"}
    assert set(results.loc[results["dataset"] == "plain", "task"]) == {"clustering"}
    drug = results[results["dataset"] == "drug"]
    assert set(drug["task"]) == {"drug_response", "clustering"} and drug["n_cells"].iloc[0] == 120  # the filter


def test_pc9_drug_response_pca_beats_the_random_control(tmp_path):
    if not PC9.is_file():
        pytest.skip(f"{PC9} is absent")
    config = {"seeds": [0, 1], "quick_cells": 500, "datasets": {"pc9_erlotinib": {}},
              "methods": {"pca": {}, "random": {}}, "tasks": ["drug_response"], "heads": ["knn", "logistic"]}
    results = run_benchmark(config, tmp_path / "out", quick=True, report=False)
    assert set(results["status"]) == {"ok"}, results["error"].unique()
    assert set(results["split_detail"]) == {"stratified, test 0.3"} and results["n_cells"].iloc[0] == 500
    mean = results.groupby(["method", "head", "metric"])["value"].mean()
    for head in ("knn", "logistic"):
        assert mean["pca", head, "auroc"] > 0.8, mean
        assert abs(mean["random", head, "auroc"] - 0.5) < 0.12, mean
        assert mean["pca", head, "auroc"] > mean["random", head, "auroc"] + 0.25
        assert mean["pca", head, "f1"] > mean["random", head, "f1"]
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    auroc = summary[(summary["metric"] == "auroc") & (summary["head"] == "logistic")].set_index("method")["rank"]
    assert auroc["pca"] == 1 and auroc["random"] == 2


@pytest.mark.slow
def test_cellama_finetuned_sees_training_cells_only(tmp_path, synthetic_factory, monkeypatch):
    """``cellama_finetuned``: fine-tuned per seed on (a subsample of) that seed's training cells, never a test cell;
    the embedding of every cell comes from the fine-tuned encoder."""
    import c2t.embed
    from c2t.eval import split_random

    try:
        from c2t.models import minilm_path

        minilm_path()
    except Exception as err:  # the MiniLM package is an optional install
        pytest.skip(f"no local MiniLM model: {err}")
    real = c2t.embed.finetune_cellama
    seen = []

    def spy(adata, **options):
        seen.append((list(adata.obs_names), options))
        return real(adata, **options)

    monkeypatch.setattr(c2t.embed, "finetune_cellama", spy)
    adata = synthetic_factory(n_cells=150, n_genes=40, seed=5)
    adata.var_names = [f"GENE{i}" for i in range(adata.n_vars)]
    adata.write_h5ad(tmp_path / "s.h5ad")
    config = {"seeds": [0, 1], "n_neighbors": 5, "heads": ["knn"], "tasks": ["annotation"],
              "datasets": {"s": {"path": str(tmp_path / "s.h5ad"), "label_key": "cell_type", "test_size": 0.3}},
              "methods": {"ft": {"method": "cellama_finetuned", "top_k": 8, "max_cells": 24, "n_neighbors": 1,
                                 "n_random": 1, "batch_size": 16, "max_seq_length": 32}}}
    results = run_benchmark(config, tmp_path / "out", report=False)
    assert set(results["status"]) == {"ok"}, results["error"].unique()
    assert len(seen) == 2  # once per seed: each seed has its own split
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    for seed, (names, options) in zip((0, 1), seen, strict=True):
        train, test = split_random(labels, test_size=0.3, seed=seed)
        assert len(names) == 24 and set(names) <= set(adata.obs_names[train])
        assert not set(names) & set(adata.obs_names[test])
        assert options["seed"] == seed and options["n_neighbors"] == 1
