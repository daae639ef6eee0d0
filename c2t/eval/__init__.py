"""Metrics (pure functions over arrays, scikit-learn underneath) and the benchmark runner.

``run_benchmark(config, out)`` runs datasets x methods x tasks x seeds from a YAML config (checked before any
work starts), caches each (dataset, method, seed) so an interrupted run continues, and writes ``results.csv``,
``summary.csv``/``summary.md`` and a self-contained ``report.html``. Methods are the plain dict
:data:`METHODS` (name -> ``(adata, **options) -> cells x dim array``), :data:`LABEL_METHODS` (labels per cell) and
:data:`GENERATIVE_METHODS` (generated cells, for the generation task).
"""

from c2t.eval._bench import run_benchmark, summarize
from c2t.eval._config import HEADS, METRICS, TASKS, BenchConfig, load_config
from c2t.eval._generation import energy_distance, generation_scores, label_distance, valid_gene_rate
from c2t.eval._methods import GENERATIVE_METHODS, LABEL_METHODS, METHODS
from c2t.eval._metrics import clustering_scores, knn_cross_validation
from c2t.eval._report import write_report
from c2t.eval._tasks import (
    batch_entropy,
    batch_silhouette,
    drug_response,
    ilisi,
    split_by_batch,
    split_random,
)

__all__ = [
    "GENERATIVE_METHODS",
    "HEADS",
    "LABEL_METHODS",
    "METHODS",
    "METRICS",
    "TASKS",
    "BenchConfig",
    "batch_entropy",
    "batch_silhouette",
    "clustering_scores",
    "drug_response",
    "energy_distance",
    "generation_scores",
    "ilisi",
    "knn_cross_validation",
    "label_distance",
    "load_config",
    "run_benchmark",
    "split_by_batch",
    "split_random",
    "summarize",
    "valid_gene_rate",
    "write_report",
]
