"""The benchmark's integration task (scib-metrics, the extra c2t[scib]): PCA against the random control on kang8,
values against direct scib_metrics calls, an end-to-end bench run and the config errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

sm = pytest.importorskip("scib_metrics", reason='the integration task needs the extra: pip install "c2t[scib]"')

from c2t._errors import C2TInputError  # noqa: E402
from c2t.eval import load_config, run_benchmark  # noqa: E402
from c2t.eval._scib import BATCH_METRICS, BIO_METRICS, INTEGRATION_METRICS, integration_scores  # noqa: E402

from .conftest import DATA_DIR  # noqa: E402

KANG8 = DATA_DIR / "kang2018_8donors_muscat.h5ad"


@pytest.fixture(scope="module")
def kang():
    """1,001 kang8 cells (stratified by cluster_id), batch = donor (sample_id), with PCA and random embeddings."""
    if not KANG8.is_file():
        pytest.skip(f"{KANG8} is absent")
    from c2t.eval._bench import _Dataset
    from c2t.eval._config import KNOWN_DATASETS
    from c2t.eval._methods import pca, random

    keys = {k: KNOWN_DATASETS["kang8"][k] for k in ("label_key", "batch_key")}
    cfg = load_config({"datasets": {"kang8": {"path": str(KANG8), **keys}}, "methods": {"pca": {}},
                       "tasks": ["integration"]})
    data = _Dataset(cfg.datasets["kang8"], quick=True, quick_cells=1000)
    X_pca, X_random = pca(data.adata), random(data.adata)
    scores = {name: integration_scores(X, data.labels, data.batches, X_pre=X_pca)
              for name, X in (("pca", X_pca), ("random", X_random))}
    return data, X_pca, scores


def test_pca_conserves_biology_far_better_than_random(kang):
    _, _, scores = kang
    pca, rand = scores["pca"], scores["random"]
    assert list(pca) == list(INTEGRATION_METRICS)
    assert all(np.isfinite(v) for v in pca.values())
    assert pca["bio_conservation"] > rand["bio_conservation"] + 0.2, (pca, rand)
    assert pca["kmeans_ari"] > 0.4 > 0.05 > rand["kmeans_ari"]
    assert pca["pcr_comparison"] == pytest.approx(0.0, abs=1e-6)  # PCA is the unintegrated reference itself
    for name in (pca, rand):  # the aggregates as scib-metrics' Benchmarker defines them (unscaled means)
        batch, bio = np.mean([name[m] for m in BATCH_METRICS]), np.mean([name[m] for m in BIO_METRICS])
        assert name["batch_correction"] == pytest.approx(batch)
        assert name["bio_conservation"] == pytest.approx(bio)
        assert name["total"] == pytest.approx(0.4 * batch + 0.6 * bio)


def test_values_equal_direct_scib_metrics_calls(kang):
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    data, X, scores = kang
    distances, indices = NearestNeighbors(n_neighbors=90).fit(X).kneighbors(X)
    graph = NeighborsResults(indices=indices, distances=distances.astype(np.float32))
    labels, batches = data.labels.astype(str), data.batches.astype(str)
    assert scores["pca"]["ilisi_knn"] == pytest.approx(float(sm.ilisi_knn(graph, batches)), rel=1e-5)
    assert scores["pca"]["clisi_knn"] == pytest.approx(float(sm.clisi_knn(graph, labels)), rel=1e-5)
    assert scores["pca"]["graph_connectivity"] == pytest.approx(
        float(sm.graph_connectivity(graph.subset_neighbors(15), labels)), rel=1e-6)
    assert scores["pca"]["silhouette_label"] == pytest.approx(float(sm.silhouette_label(X, labels)), rel=1e-5)


def _tiny(tmp_path, synthetic_factory, **dataset):
    path = tmp_path / "tiny.h5ad"
    synthetic_factory(n_cells=150, n_genes=60, seed=3).write_h5ad(path)
    return {"seeds": [0], "datasets": {"tiny": {"path": str(path), "label_key": "cell_type", **dataset}},
            "methods": {"pca": {"n_comps": 10}, "random": {"dim": 8}}, "tasks": ["integration"]}


def test_bench_end_to_end_writes_integration_rows(tmp_path, synthetic_factory):
    config = _tiny(tmp_path, synthetic_factory, batch_key="batch")
    results = run_benchmark(load_config(config), tmp_path / "out", report=False)
    assert (results["status"] == "ok").all(), results["error"].unique()
    assert set(results["task"]) == {"integration"}
    for method in ("pca", "random"):
        rows = results[results["method"] == method].set_index("metric")["value"]
        assert list(rows.index) == list(INTEGRATION_METRICS)
        assert rows["total"] == pytest.approx(0.4 * rows["batch_correction"] + 0.6 * rows["bio_conservation"])
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "integration:total" in summary and "integration:kbet_per_label" in summary


def test_config_errors_name_the_problem(tmp_path, synthetic_factory, monkeypatch):
    with pytest.raises(C2TInputError, match="integration needs a dataset with batch_key"):
        load_config(_tiny(tmp_path, synthetic_factory))
    monkeypatch.setitem(sys.modules, "scib_metrics", None)  # import scib_metrics now raises ImportError
    with pytest.raises(C2TInputError, match=r'tasks: the integration task needs scib-metrics.*pip install "c2t\[scib\]"'):
        load_config(_tiny(tmp_path, synthetic_factory, batch_key="batch"))
    load_config({**_tiny(tmp_path, synthetic_factory, batch_key="batch"), "tasks": ["clustering"]})  # not asked: fine
