"""Benchmark splits and tasks: pure functions of an embedding, labels and batches (scikit-learn underneath).

Every task returns records ``{"task", "head", "metric", "value"}`` (``head`` is ``""`` where no head is
involved); per-class F1 values are records whose ``metric`` is ``per_class_f1`` and whose ``label`` names the
class. All metrics are "higher is better".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from c2t._errors import C2TInputError


def split_random(labels, *, test_size: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified random train/test indices; a class with a single cell goes to train.

    Examples
    --------
    >>> train, test = split_random(["a"] * 10 + ["b"] * 10, test_size=0.3, seed=0)
    >>> len(train), len(test), np.unique(np.array(["a"] * 10 + ["b"] * 10)[test]).tolist()
    (14, 6, ['a', 'b'])
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels).astype(str)
    index = np.arange(len(labels))
    values, counts = np.unique(labels, return_counts=True)
    single = np.isin(labels, values[counts < 2])
    train, test = train_test_split(index[~single], test_size=test_size, random_state=seed,
                                   stratify=labels[~single])
    return np.sort(np.r_[train, index[single]]), np.sort(test)


def split_by_batch(batches, *, test_size: float = 0.3, test_batches=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Hold out whole batches (donors): ``test_batches`` or a seeded ``test_size`` fraction of the batches.

    Returns
    -------
    train, test, held_out
        Indices and the names of the held-out batches.

    Examples
    --------
    >>> train, test, held = split_by_batch(["d1", "d1", "d2", "d3"], test_batches=["d2"])
    >>> train.tolist(), test.tolist(), held
    ([0, 1, 3], [2], ['d2'])
    """
    batches = np.asarray(batches).astype(str)
    names = np.unique(batches)
    if len(names) < 2:
        msg = f"a split by batch needs at least two batches, got {names.tolist()}"
        raise C2TInputError(msg)
    if test_batches:
        held = sorted(str(b) for b in test_batches)
    else:
        n = min(len(names) - 1, max(1, round(test_size * len(names))))
        held = sorted(np.random.default_rng(seed).choice(names, n, replace=False).tolist())
    test = np.isin(batches, held)
    return np.flatnonzero(~test), np.flatnonzero(test), held


def _head(name: str, seed: int, n_neighbors: int):
    from c2t.heads import KNNHead, LogisticHead

    return KNNHead(n_neighbors=n_neighbors) if name == "knn" else LogisticHead(seed=seed, max_iter=500)


def annotation(X, labels, train, test, *, heads=("knn", "logistic"), seed: int = 0,
               n_neighbors: int = 15) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train each head on ``train`` cells and label ``test`` cells: accuracy, macro-F1 and per-class F1.

    Returns the records and, per head, the test labels and predictions (for confusion matrices).

    Examples
    --------
    >>> X = np.r_[np.tile([1.0, 0.0], (10, 1)), np.tile([0.0, 1.0], (10, 1))] + np.arange(20)[:, None] * 1e-3
    >>> y = np.array(["a"] * 10 + ["b"] * 10)
    >>> rows, _ = annotation(X, y, np.r_[0:7, 10:17], np.r_[7:10, 17:20], heads=["knn"], n_neighbors=3)
    >>> [(r["metric"], r["value"]) for r in rows if r["metric"] != "per_class_f1"]
    [('accuracy', 1.0), ('macro_f1', 1.0)]
    """
    X, labels = np.asarray(X, dtype=np.float32), np.asarray(labels).astype(str)
    rows, predictions = [], {}
    for name in heads:
        head = _head(name, seed, n_neighbors).fit(X[train], labels[train])
        predicted, _ = head.predict(X[test])
        rows += label_rows(labels[test], predicted.astype(str), head=name)
        predictions[name] = {"truth": labels[test].tolist(), "predicted": predicted.astype(str).tolist()}
    return rows, predictions


def label_rows(truth, predicted, *, head: str) -> list[dict[str, Any]]:
    """Annotation records of predicted labels: accuracy, macro-F1 and per-class F1 over the true classes.

    Examples
    --------
    >>> [(r["metric"], r.get("label"), r["value"]) for r in label_rows(["a", "b"], ["a", "a"], head="x")]
    [('accuracy', None, 0.5), ('macro_f1', None, 0.3333333333333333), ('per_class_f1', 'a', 0.6666666666666666), ('per_class_f1', 'b', 0.0)]
    """
    from sklearn.metrics import accuracy_score, f1_score

    truth, predicted = np.asarray(truth).astype(str), np.asarray(predicted).astype(str)
    classes = np.unique(truth)
    rows = [{"task": "annotation", "head": head, "metric": "accuracy", "value": float(accuracy_score(truth, predicted))},
            {"task": "annotation", "head": head, "metric": "macro_f1",
             "value": float(f1_score(truth, predicted, average="macro", labels=classes, zero_division=0))}]
    per_class = f1_score(truth, predicted, average=None, labels=classes, zero_division=0)
    return rows + [{"task": "annotation", "head": head, "metric": "per_class_f1", "label": str(c), "value": float(v)}
                   for c, v in zip(classes, per_class, strict=True)]


def novel_type(X, labels, train, test, *, heads=("knn", "logistic"), seed: int = 0, n_neighbors: int = 15,
               min_cells: int = 10, max_types: int = 3) -> list[dict[str, Any]]:
    """Hold types out of the reference one at a time and score how well the head's unknown score
    (1 - confidence) picks out that type's test cells: AUROC, averaged over the held-out types.

    Types with fewer than ``min_cells`` test cells are not held out; at least three reference types are
    needed. Up to ``max_types`` types (chosen by ``seed``) are held out, so seeds cover different types.
    Each record's ``label`` names the held-out types.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, .1, (30, 3)) + [1, 0, 0], rng.normal(0, .1, (30, 3)) + [0, 1, 0],
    ...           rng.normal(0, .1, (30, 3)) + [0, 0, 1]]
    >>> y = np.repeat(["a", "b", "c"], 30)
    >>> idx = np.arange(90)
    >>> rows = novel_type(X, y, idx[idx % 3 > 0], idx[idx % 3 == 0], heads=["knn"], n_neighbors=5, min_cells=5)
    >>> rows[0]["metric"], rows[0]["label"], rows[0]["value"] > 0.9
    ('auroc', 'a; b; c', True)
    """
    X, labels = np.asarray(X, dtype=np.float32), np.asarray(labels).astype(str)
    values, counts = np.unique(labels[test], return_counts=True)
    eligible = sorted(v for v, c in zip(values, counts, strict=True) if c >= min_cells and v in set(labels[train]))
    if len(np.unique(labels[train])) < 3 or not eligible:
        return []
    if len(eligible) > max_types:
        eligible = sorted(np.random.default_rng(seed).choice(eligible, max_types, replace=False).tolist())
    rows = []
    for name in heads:
        scores = [novel_type_auroc(X, labels, train, test, held, head=name, seed=seed, n_neighbors=n_neighbors)
                  for held in eligible]
        rows.append({"task": "novel_type", "head": name, "metric": "auroc", "label": "; ".join(eligible),
                     "value": float(np.mean(scores))})
    return rows


def novel_type_auroc(X, labels, train, test, held: str, *, head: str = "knn", seed: int = 0,
                     n_neighbors: int = 15) -> float:
    """AUROC of 1 - confidence for the test cells of type ``held``, with ``held`` left out of the reference."""
    from sklearn.metrics import roc_auc_score

    reference = train[labels[train] != held]
    model = _head(head, seed, n_neighbors).fit(X[reference], labels[reference])
    _, confidence = model.predict(X[test])
    return float(roc_auc_score(labels[test] == held, 1.0 - confidence))


def silhouette(X, labels, *, seed: int = 0, sample_size: int = 5000) -> float:
    """Euclidean silhouette of the labels in the embedding (on up to ``sample_size`` cells)."""
    from sklearn.metrics import silhouette_score

    n = len(labels)
    return float(silhouette_score(X, labels, sample_size=min(n, sample_size) if n > sample_size else None,
                                  random_state=seed))


def clustering(X, labels, *, seed: int = 0) -> list[dict[str, Any]]:
    """k-means ARI and NMI (:func:`c2t.eval.clustering_scores`) and the label silhouette, on all labelled cells."""
    from c2t.eval._metrics import clustering_scores

    X, labels = np.asarray(X, dtype=np.float32), np.asarray(labels).astype(str)
    scores = clustering_scores(X, labels, seed=seed)
    scores["silhouette"] = silhouette(X, labels, seed=seed)
    return [{"task": "clustering", "head": "", "metric": k, "value": float(v)} for k, v in scores.items()]


def batch_silhouette(X, labels, batches) -> float:
    """scIB's batch ASW: within each label, 1 - |silhouette of the batches| per cell, averaged per label and
    then over labels (1: batches fully mixed). Labels with one batch or fewer than 3 cells are left out.

    Examples
    --------
    >>> X = np.r_[np.zeros((10, 2)), np.ones((10, 2))] + np.arange(20)[:, None] * 1e-3
    >>> batch_silhouette(X, ["t"] * 20, ["a", "b"] * 10) > 0.9      # each batch in both clusters: mixed
    True
    >>> batch_silhouette(X, ["t"] * 20, ["a"] * 10 + ["b"] * 10) < 0.1  # one cluster per batch
    True
    """
    from sklearn.metrics import silhouette_samples

    X, labels, batches = np.asarray(X, dtype=np.float32), np.asarray(labels).astype(str), np.asarray(batches).astype(str)
    scores = []
    for label in np.unique(labels):
        cells = labels == label
        n_batches = len(np.unique(batches[cells]))
        if n_batches < 2 or cells.sum() <= n_batches:
            continue
        scores.append(float(np.mean(1.0 - np.abs(silhouette_samples(X[cells], batches[cells])))))
    return float(np.mean(scores)) if scores else float("nan")


def _neighbour_batch_shares(X, batches, n_neighbors: int) -> np.ndarray | None:
    """Per cell, the share of each batch among its ``n_neighbors`` nearest cells (itself left out); ``None``
    with fewer than two batches."""
    from sklearn.neighbors import NearestNeighbors

    X, batches = np.asarray(X, dtype=np.float32), np.asarray(batches).astype(str)
    names, codes = np.unique(batches, return_inverse=True)
    if len(names) < 2:
        return None
    k = min(n_neighbors, len(X) - 1)
    _, idx = NearestNeighbors(n_neighbors=k).fit(X).kneighbors()
    counts = np.zeros((len(X), len(names)))
    np.add.at(counts, (np.repeat(np.arange(len(X)), k), codes[idx].ravel()), 1.0)
    return counts / k


def batch_entropy(X, batches, *, n_neighbors: int = 15) -> float:
    """Mean entropy of the batches among each cell's ``n_neighbors`` nearest cells, divided by log(#batches)
    (0: every neighbourhood one batch; 1: every neighbourhood holds all batches equally). With batches of
    unequal size even a perfect mix stays below 1, so compare methods on the same data only.

    Examples
    --------
    >>> X = np.r_[np.zeros((10, 2)), np.ones((10, 2))] + np.arange(20)[:, None] * 1e-3
    >>> batch_entropy(X, ["a"] * 10 + ["b"] * 10, n_neighbors=5)
    0.0
    """
    return _entropy_of_shares(_neighbour_batch_shares(X, batches, n_neighbors))


def _entropy_of_shares(p: np.ndarray | None) -> float:
    if p is None:
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    return float(np.mean(entropy) / np.log(p.shape[1]) + 0.0)


def _ilisi_of_shares(p: np.ndarray | None) -> float:
    return float("nan") if p is None else float(np.mean(1.0 / (p**2).sum(axis=1)))


def batch_mixing(X, labels, batches, *, n_neighbors: int = 15) -> list[dict[str, Any]]:
    """Batch silhouette, kNN batch entropy and iLISI (all: higher is better mixed); the last two share one
    kNN graph."""
    shares = _neighbour_batch_shares(X, batches, n_neighbors)
    return [{"task": "batch_mixing", "head": "", "metric": "batch_silhouette", "value": batch_silhouette(X, labels, batches)},
            {"task": "batch_mixing", "head": "", "metric": "batch_entropy", "value": _entropy_of_shares(shares)},
            {"task": "batch_mixing", "head": "", "metric": "ilisi", "value": _ilisi_of_shares(shares)}]


def ilisi(X, batches, *, n_neighbors: int = 15) -> float:
    """iLISI on the kNN graph: per cell, the inverse Simpson's index 1 / sum_b p_b^2 of the batch shares p_b among
    its ``n_neighbors`` nearest cells (the cell itself left out), averaged over cells. 1: every neighbourhood one
    batch; the number of batches: every neighbourhood holds all batches equally. A plain-kNN version of
    Korsunsky et al.'s LISI (which weighs neighbours by a perplexity-calibrated Gaussian kernel).

    Examples
    --------
    >>> X = np.r_[np.zeros((10, 2)), np.ones((10, 2))] + np.arange(20)[:, None] * 1e-3
    >>> ilisi(X, ["a"] * 10 + ["b"] * 10, n_neighbors=5)
    1.0
    >>> round(ilisi(X, ["a", "b"] * 10, n_neighbors=4), 2)   # batches interleaved: close to 2
    1.92
    """
    return _ilisi_of_shares(_neighbour_batch_shares(X, batches, n_neighbors))


def drug_response(X, labels, train, test, *, positive: str, heads=("knn", "logistic"), seed: int = 0,
                  n_neighbors: int = 15) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Drug response as a binary task: ``positive`` (e.g. resistant) against every other label. Each head is
    trained on the ``train`` cells' embeddings; on the ``test`` cells: accuracy, F1 of the positive class and
    AUROC of the head's probability of the positive class.

    Returns the records and, per head, the test truth and predictions (``positive`` / ``other``).

    Examples
    --------
    >>> X = np.r_[np.tile([1.0, 0.0], (10, 1)), np.tile([0.0, 1.0], (10, 1))] + np.arange(20)[:, None] * 1e-3
    >>> y = np.array(["resistant"] * 10 + ["sensitive"] * 10)
    >>> rows, _ = drug_response(X, y, np.r_[0:7, 10:17], np.r_[7:10, 17:20], positive="resistant", heads=["knn"],
    ...                         n_neighbors=3)
    >>> [(r["metric"], r["value"]) for r in rows]
    [('accuracy', 1.0), ('f1', 1.0), ('auroc', 1.0)]
    """
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    X = np.asarray(X, dtype=np.float32)
    labels = np.asarray(labels).astype(str)
    binary = np.where(labels == str(positive), str(positive), "other")
    if len(np.unique(binary[train])) < 2:
        msg = f"drug_response: the training cells need both {positive!r} and other labels"
        raise C2TInputError(msg)
    truth = binary[test] == str(positive)
    rows, predictions = [], {}
    for name in heads:
        head = _head(name, seed, n_neighbors).fit(X[train], binary[train])
        full = head.predict_proba(X[test])
        proba = full[:, list(head.classes_).index(str(positive))]
        predicted = head.classes_[full.argmax(axis=1)]
        called = predicted == str(positive)
        auroc = float(roc_auc_score(truth, proba)) if 0 < truth.sum() < len(truth) else float("nan")
        rows += [{"task": "drug_response", "head": name, "metric": "accuracy", "value": float(accuracy_score(truth, called))},
                 {"task": "drug_response", "head": name, "metric": "f1",
                  "value": float(f1_score(truth, called, zero_division=0))},
                 {"task": "drug_response", "head": name, "metric": "auroc", "value": auroc}]
        predictions[name] = {"truth": binary[test].tolist(), "predicted": predicted.astype(str).tolist()}
    return rows, predictions
