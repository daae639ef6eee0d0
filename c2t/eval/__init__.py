"""Metrics (pure functions over arrays, scikit-learn underneath) shared by scripts, tests and the benchmark."""

from c2t.eval._metrics import clustering_scores, knn_cross_validation

__all__ = ["clustering_scores", "knn_cross_validation"]
