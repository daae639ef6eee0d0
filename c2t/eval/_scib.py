"""The full scIB integration set, computed with scib-metrics' own functions (the optional extra ``c2t[scib]``).

One exact kNN graph per embedding (scikit-learn, each cell its own first neighbour, wrapped in scib-metrics'
``NeighborsResults``) with 90 neighbours, cut to 15 (graph connectivity), 50 (kBET) and 90 (LISI) as
scib-metrics' ``Benchmarker`` does. The metrics are scib's scaled versions (all in [0, 1], higher is better):

- batch correction: ``bras``, ``ilisi_knn``, ``kbet_per_label``, ``graph_connectivity``, ``pcr_comparison``
  (the last only with ``X_pre``, an unintegrated embedding of the same cells); ``silhouette_batch`` (scIB's
  batch ASW) is reported as well but, as in ``Benchmarker``'s defaults, BRAS stands for it in the mean;
- bio conservation: ``isolated_labels``, ``kmeans_nmi``, ``kmeans_ari``, ``silhouette_label``, ``clisi_knn``;
- aggregates as ``Benchmarker.get_results()`` (unscaled) defines them: ``batch_correction`` and
  ``bio_conservation`` are the means of their group's metrics (NaNs left out), ``total`` = 0.4 * batch + 0.6 * bio.

scib-metrics runs on jax; c2t keeps it on the CPU (``JAX_PLATFORMS=cpu`` unless set) and quiet (warnings only).
kBET compiles numba code the first time it runs in a process (about 30 s on two cores).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import numpy as np

from c2t._errors import C2TInputError

BATCH_METRICS: tuple[str, ...] = ("bras", "ilisi_knn", "kbet_per_label", "graph_connectivity", "pcr_comparison")
BIO_METRICS: tuple[str, ...] = ("isolated_labels", "kmeans_nmi", "kmeans_ari", "silhouette_label", "clisi_knn")
SCORES: tuple[str, ...] = ("batch_correction", "bio_conservation", "total")
#: Every metric of the ``integration`` task, in the order of its records.
INTEGRATION_METRICS: tuple[str, ...] = (*BATCH_METRICS, "silhouette_batch", *BIO_METRICS, *SCORES)
#: The neighbourhood sizes of scib-metrics' Benchmarker: graph connectivity, kBET, LISI.
NEIGHBORS = {"graph_connectivity": 15, "kbet_per_label": 50, "lisi": 90}
INSTALL_HINT = 'pip install "c2t[scib]"'


def import_scib():
    """Import scib_metrics on the CPU and quietly, or raise :class:`C2TInputError` saying how to install it."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        import scib_metrics
    except ImportError as err:
        msg = (f"the integration task needs scib-metrics, which is not installed ({type(err).__name__}: {err}); "
               f"install the extra: {INSTALL_HINT}")
        raise C2TInputError(msg) from err
    scib_metrics.settings.verbosity = logging.WARNING
    return scib_metrics


def neighbors(X, n_neighbors: int = NEIGHBORS["lisi"]):
    """Exact Euclidean kNN of every cell (itself first) as scib-metrics' ``NeighborsResults``."""
    from sklearn.neighbors import NearestNeighbors

    import_scib()
    from scib_metrics.nearest_neighbors import NeighborsResults

    X = np.asarray(X, dtype=np.float32)
    k = min(n_neighbors, len(X))
    distances, indices = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X)
    return NeighborsResults(indices=indices, distances=distances.astype(np.float32))


def _mean(values: list[float]) -> float:
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _pcr_comparison(sm, X_pre, X, batches) -> float:
    """scib-metrics' PCR comparison (NaN without ``X_pre``); its warning that a negative score is set to 0 (the
    embedding explains more batch variance than the unintegrated one) is the documented outcome, not a fault."""
    if X_pre is None:
        return float("nan")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PCR comparison score is negative", category=UserWarning)
        return sm.pcr_comparison(np.asarray(X_pre, dtype=np.float32), X, batches, categorical=True)


def integration_scores(X, labels, batches, *, X_pre=None) -> dict[str, float]:
    """The scIB integration metrics and aggregate scores of embedding ``X`` (see the module docstring).

    Parameters
    ----------
    X
        The embedding, cells x dimensions.
    labels, batches
        Cell type and batch of every cell.
    X_pre
        An unintegrated embedding of the same cells (e.g. PCA of log expression) for ``pcr_comparison``;
        without it that metric is NaN and left out of the batch-correction mean.
    """
    sm = import_scib()
    X = np.asarray(X, dtype=np.float32)
    labels, batches = np.asarray(labels).astype(str), np.asarray(batches).astype(str)
    if len(np.unique(batches)) < 2:
        msg = f"the integration task needs at least two batches, got {np.unique(batches).tolist()}"
        raise C2TInputError(msg)
    graph = neighbors(X, NEIGHBORS["lisi"])

    def cut(n: int):
        return graph.subset_neighbors(min(n, graph.n_neighbors))

    scores: dict[str, float] = {
        "bras": sm.bras(X, labels, batches),
        "ilisi_knn": sm.ilisi_knn(graph, batches),
        "kbet_per_label": sm.kbet_per_label(cut(NEIGHBORS["kbet_per_label"]), batches, labels),
        "graph_connectivity": sm.graph_connectivity(cut(NEIGHBORS["graph_connectivity"]), labels),
        "pcr_comparison": _pcr_comparison(sm, X_pre, X, batches),
        "silhouette_batch": sm.silhouette_batch(X, labels, batches),
        "isolated_labels": sm.isolated_labels(X, labels, batches),
    }
    kmeans = sm.nmi_ari_cluster_labels_kmeans(X, labels)
    scores |= {"kmeans_nmi": kmeans["nmi"], "kmeans_ari": kmeans["ari"],
               "silhouette_label": sm.silhouette_label(X, labels), "clisi_knn": sm.clisi_knn(graph, labels)}
    scores = {k: float(v) for k, v in scores.items()}
    batch, bio = _mean([scores[m] for m in BATCH_METRICS]), _mean([scores[m] for m in BIO_METRICS])
    scores |= {"batch_correction": batch, "bio_conservation": bio, "total": 0.4 * batch + 0.6 * bio}
    return {m: scores[m] for m in INTEGRATION_METRICS}


def integration(X, labels, batches, *, X_pre=None) -> list[dict[str, Any]]:
    """:func:`integration_scores` as benchmark records (task ``integration``)."""
    scores = integration_scores(X, labels, batches, X_pre=X_pre)
    return [{"task": "integration", "head": "", "metric": k, "value": v} for k, v in scores.items()]
