"""Annotation and clustering metrics of an embedding."""

from __future__ import annotations

import numpy as np
import pandas as pd

from c2t._errors import C2TInputError


def _labelled(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=object)
    if len(X) != len(y):
        msg = f"{len(y)} labels for {len(X)} cells"
        raise C2TInputError(msg)
    keep = ~pd.isna(y)  # None, NaN and pd.NA (pandas string columns); also the text "nan" of a cast column
    keep[keep] = y[keep].astype(str) != "nan"
    return X[keep], y[keep].astype(str)


def knn_cross_validation(X, y, *, n_neighbors: int = 10, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Stratified k-fold accuracy and macro-F1 of a cosine kNN classifier (GenePT's evaluation).

    Cells with a missing label are left out.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.r_[np.eye(3)[[0] * 10], np.eye(3)[[1] * 10]] + 0.01
    >>> knn_cross_validation(X, ["a"] * 10 + ["b"] * 10, n_neighbors=3)["accuracy"]
    1.0
    """
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    X, y = _labelled(X, y)
    model = KNeighborsClassifier(n_neighbors=n_neighbors, metric="cosine")
    predicted = cross_val_predict(model, X, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return {"accuracy": float(accuracy_score(y, predicted)), "macro_f1": float(f1_score(y, predicted, average="macro"))}


def clustering_scores(X, y, *, seed: int = 0) -> dict[str, float]:
    """k-means with as many clusters as labels; ARI and NMI against the labels.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.r_[np.zeros((5, 2)), np.ones((5, 2))] + np.arange(10)[:, None] * 1e-3
    >>> clustering_scores(X, ["a"] * 5 + ["b"] * 5)["ari"]
    1.0
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    X, y = _labelled(X, y)
    clusters = KMeans(n_clusters=len(np.unique(y)), n_init=10, random_state=seed).fit_predict(X)
    return {"ari": float(adjusted_rand_score(y, clusters)), "nmi": float(normalized_mutual_info_score(y, clusters))}
