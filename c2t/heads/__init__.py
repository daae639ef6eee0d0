"""Embedding heads: annotate cells from a labelled reference, with a confidence and an "unknown" answer.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = np.concatenate([rng.normal(0, 0.1, (20, 4)) + [1, 0, 0, 0], rng.normal(0, 0.1, (20, 4)) + [0, 1, 0, 0]])
>>> y = np.array(["T"] * 20 + ["B"] * 20)
>>> head = KNNHead(n_neighbors=5).fit(X, y)
>>> labels, confidence = head.predict(np.array([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0]]), unknown_threshold=0.9)
>>> labels[0], bool(confidence[0] == 1.0)
('T', True)
"""

from c2t.heads._heads import (
    UNKNOWN,
    EmbeddingHead,
    KNNHead,
    LogisticHead,
    MLPHead,
    annotate,
    fit_head,
    load_head,
)

__all__ = ["UNKNOWN", "EmbeddingHead", "KNNHead", "LogisticHead", "MLPHead", "annotate", "fit_head", "load_head"]
