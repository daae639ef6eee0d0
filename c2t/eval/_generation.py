"""Are generated cells like real ones? Metrics of generated cells against real cells (scikit-learn underneath).

Generated and real cells must be in one representation (the same genes, the same kind of values); for a tuned
language model that is each real cell's own top-k cell sentence decoded with the run's inverse model, so the two
sides differ only in where the sentence came from (as Cell2Sentence evaluates).

- :func:`valid_gene_rate`: the share of generated gene tokens that are genes of the vocabulary.
- :func:`energy_distance` and :func:`label_distance`: how far the generated cells of each label lie from the
  real cells of that label (energy distance, cell-weighted over labels; lower is closer).
- :func:`generation_scores`: PCA fitted on real training cells, a kNN classifier trained on their labels that
  classifies the generated cells (accuracy against the label they were asked for), and the distances, each with
  a shuffled-label control and a real-cell reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

_TRIM = " .,;:"


def gene_tokens(text: str) -> list[str]:
    """The tokens of one generated sentence as :func:`c2t.sentences.decode` reads them: split on whitespace,
    trimmed of spaces and ``.,;:``, empty tokens dropped.

    Examples
    --------
    >>> gene_tokens("CD3D, IL7R.  ;  LTB")
    ['CD3D', 'IL7R', 'LTB']
    """
    return [t for t in (part.strip(_TRIM) for part in str(text).split()) if t]


def valid_gene_rate(texts: Iterable[str], vocabulary: Iterable[str], *, case_insensitive: bool = True) -> float:
    """Share of the generated gene tokens (see :func:`gene_tokens`) that are genes of ``vocabulary`` (exact match,
    or ignoring case when ``case_insensitive``); 0.0 when there are no tokens at all.

    Examples
    --------
    >>> valid_gene_rate(["CD3D IL7R banana", "cd3d LTB"], ["CD3D", "IL7R", "LTB"])
    0.8
    >>> valid_gene_rate(["CD3D IL7R banana", "cd3d LTB"], ["CD3D", "IL7R", "LTB"], case_insensitive=False)
    0.6
    """
    genes = {str(g) for g in vocabulary}
    upper = {g.upper() for g in genes} if case_insensitive else set()
    n = valid = 0
    for text in texts:
        for token in gene_tokens(text):
            n += 1
            valid += token in genes or (case_insensitive and token.upper() in upper)
    return valid / n if n else 0.0


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance between two samples: 2 E|X-Y| - E|X-X'| - E|Y-Y'| (Euclidean; 0 for equal samples).

    Examples
    --------
    >>> a = np.array([[0.0, 0.0], [1.0, 0.0]])
    >>> energy_distance(a, a)
    0.0
    >>> round(energy_distance(a, a + [3.0, 4.0]), 6) > 0
    True
    """
    from sklearn.metrics import pairwise_distances

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    value = 2 * pairwise_distances(x, y).mean() - pairwise_distances(x).mean() - pairwise_distances(y).mean()
    return float(value) + 0.0


def label_distance(emb: np.ndarray, labels: Sequence[str], real: np.ndarray, real_labels: Sequence[str], *,
                   min_cells: int = 5) -> tuple[float, dict[str, float]]:
    """Energy distance between the cells of each label in ``emb`` and the real cells of the same label, averaged
    over labels weighted by their number of real cells (labels with fewer than ``min_cells`` real cells or
    fewer than two cells in ``emb`` are left out).

    Returns
    -------
    mean, per_label
        NaN and ``{}`` when no label qualifies.
    """
    emb, real = np.asarray(emb, dtype=np.float64), np.asarray(real, dtype=np.float64)
    labels, real_labels = np.asarray(labels).astype(str), np.asarray(real_labels).astype(str)
    per, weights = {}, {}
    for label in np.unique(real_labels):
        mine, theirs = emb[labels == label], real[real_labels == label]
        if len(theirs) >= min_cells and len(mine) >= 2:
            per[str(label)] = energy_distance(mine, theirs)
            weights[str(label)] = len(theirs)
    total = sum(weights.values())
    if not total:
        return float("nan"), {}
    return float(sum(per[k] * weights[k] for k in per) / total), per


def generation_scores(generated: np.ndarray, asked: Sequence[str], real_train: np.ndarray, train_labels: Sequence[str],
                      real_test: np.ndarray, test_labels: Sequence[str], *, n_components: int = 50,
                      n_neighbors: int = 10, min_cells: int = 5, seed: int = 0) -> dict[str, Any]:
    """Generated cells against real ones, all in one expression representation (cells x the same genes).

    A PCA (up to ``n_components``) is fitted on the real training cells; in that space

    - ``knn_accuracy``: a kNN classifier (``n_neighbors``, Euclidean) trained on the real training cells' labels
      classifies the generated cells; accuracy against the label each was asked for.
      ``knn_accuracy_shuffled``: the same predictions against the asked labels permuted (seeded) - the
      control; ``knn_accuracy_real``: the classifier on the real held-out cells - the reference.
    - ``energy_distance``: :func:`label_distance` of the generated cells to the real held-out cells of the same
      label; ``energy_distance_shuffled``: with the asked labels permuted (the control);
      ``energy_distance_real``: real training vs real held-out cells (the floor).

    Returns
    -------
    dict
        The six numbers above, ``per_label_distance``, the classifier's ``predicted`` labels of the generated
        cells and the PCA coordinates ``generated_pca``, ``train_pca``,
        ``test_pca`` (for plots).
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    generated = np.asarray(generated, dtype=np.float32)
    real_train, real_test = np.asarray(real_train, dtype=np.float32), np.asarray(real_test, dtype=np.float32)
    asked, train_labels = np.asarray(asked).astype(str), np.asarray(train_labels).astype(str)
    test_labels = np.asarray(test_labels).astype(str)
    k = max(1, min(n_components, real_train.shape[0] - 1, real_train.shape[1]))
    pca = PCA(n_components=k, random_state=seed).fit(real_train)
    train_pca, test_pca, gen_pca = pca.transform(real_train), pca.transform(real_test), pca.transform(generated)
    knn = KNeighborsClassifier(n_neighbors=min(n_neighbors, len(train_pca))).fit(train_pca, train_labels)
    shuffled = np.random.default_rng(seed).permutation(asked)
    predicted = knn.predict(gen_pca) if len(gen_pca) else np.array([], dtype=str)
    distance, per_label = label_distance(gen_pca, asked, test_pca, test_labels, min_cells=min_cells)
    return {
        "knn_accuracy": float((predicted == asked).mean()) if len(asked) else float("nan"),
        "knn_accuracy_shuffled": float((predicted == shuffled).mean()) if len(asked) else float("nan"),
        "knn_accuracy_real": float((knn.predict(test_pca) == test_labels).mean()),
        "energy_distance": distance,
        "energy_distance_shuffled": label_distance(gen_pca, shuffled, test_pca, test_labels, min_cells=min_cells)[0],
        "energy_distance_real": label_distance(train_pca, train_labels, test_pca, test_labels, min_cells=min_cells)[0],
        "per_label_distance": per_label, "predicted": predicted,
        "generated_pca": gen_pca, "train_pca": train_pca, "test_pca": test_pca,
    }


#: The generation task's metrics, in order (the ``energy_distance*`` ones are lower-is-better).
GENERATION_METRICS = ("valid_gene_rate", "knn_accuracy", "knn_accuracy_shuffled", "knn_accuracy_real",
                      "energy_distance", "energy_distance_shuffled", "energy_distance_real")


def generation(generated: np.ndarray, asked: Sequence[str], texts: Sequence[str], vocabulary: Sequence[str],
               real: np.ndarray, labels: Sequence[str], train: np.ndarray, test: np.ndarray, *, seed: int = 0,
               n_neighbors: int = 10, n_components: int = 50) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The benchmark's generation task: records of :data:`GENERATION_METRICS` and the PCA coordinates of
    the generated and the real held-out cells (for the report's overlay UMAP)."""
    real, labels = np.asarray(real, dtype=np.float32), np.asarray(labels).astype(str)
    scores = generation_scores(generated, asked, real[train], labels[train], real[test], labels[test],
                               n_components=n_components, n_neighbors=n_neighbors, seed=seed)
    scores["valid_gene_rate"] = valid_gene_rate(texts, vocabulary)
    rows = [{"task": "generation", "head": "", "metric": m, "value": float(scores[m])} for m in GENERATION_METRICS]
    overlay = {"generated": scores["generated_pca"], "generated_label": np.asarray(asked).astype(str),
               "real": scores["test_pca"], "real_label": labels[test]}
    return rows, overlay
