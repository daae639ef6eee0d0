"""The benchmark config: datasets x methods x tasks x seeds, checked completely before any work starts.

A config is YAML (or a dict)::

    seeds: [0, 1, 2]
    quick_cells: 1000            # cells per dataset with --quick (stratified by label)
    datasets:
      kang8: {}                  # a real dataset by name (KNOWN_DATASETS), settings overridable
      pbmc3k:
        path: ../../../shared/data/pbmc3k_raw_seurat_labels.h5ad   # or any .h5ad, relative to the config file
        label_key: seurat_celltype
        batch_key: null
        split: random            # random (stratified) | by_batch (whole batches held out) | across (see below)
        test_size: 0.3           # random: fraction of cells; by_batch: fraction of batches (or test_batches:)
      kang8_to_stim:             # across datasets: train on this file, test on the query, on the shared genes
        dataset: kang8
        split: across
        query: kang_stim         # a named dataset or an .h5ad path (query_label_key: if its column differs)
      pc9_erlotinib: {}          # drug response: filter: pass_qc_200genes, label scdeal_label, positive: resistant
    methods:
      pca: {n_comps: 50}
      random: {}
      genept_w_random: {method: genept_w, random_genes: true}     # a named variant of a method
      cellama_ft: {method: cellama_finetuned}    # fine-tuned on each seed's training cells only
      tuned_cells: {method: llm_cells, model: runs/pbmc3k_tuned, per_label: 20}   # a generative method
    tasks: [annotation, novel_type, clustering, batch_mixing, generation, drug_response]   # + integration
    heads: [knn, logistic]
    metrics: null                # null: all; or a subset of METRICS

Each task applies to the methods of its kind (:data:`METHOD_TASKS`): embedding methods (:data:`METHODS`) to
annotation, novel_type, clustering, batch_mixing, integration and drug_response; label methods to annotation; generative
methods (``llm_cells``; ``random_cells`` is their control) to generation. A method none of whose kind's tasks
are asked for, or a task that no method can do, fails the config. ``drug_response`` runs on the datasets that name their ``positive:`` label
(e.g. resistant) and scores it against every other label. A dataset's ``filter:`` names a boolean obs column of
the cells to keep (e.g. a QC flag).

``integration`` is scIB's full set computed by scib-metrics (:mod:`c2t.eval._scib`; the optional extra
``pip install "c2t[scib]"``, not part of ``tasks``' default): iLISI, cLISI, kBET, graph connectivity, isolated
labels, label and batch silhouettes, BRAS, PCR comparison, k-means NMI/ARI and the batch-correction,
bio-conservation and total scores. It runs on the datasets with a batch (``batch_key:`` or ``split: across``);
the config fails if scib-metrics cannot be imported or no dataset has a batch.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from c2t._errors import C2TInputError
from c2t._yaml import read_yaml_mapping
from c2t.eval._generation import GENERATION_METRICS
from c2t.eval._methods import METHODS_BY_KIND, all_methods
from c2t.eval._scib import INTEGRATION_METRICS

TASKS: dict[str, tuple[str, ...]] = {
    "annotation": ("accuracy", "macro_f1", "per_class_f1"),
    "novel_type": ("auroc",),
    "clustering": ("ari", "nmi", "silhouette"),
    "batch_mixing": ("batch_silhouette", "batch_entropy", "ilisi"),
    "drug_response": ("accuracy", "f1", "auroc"),
    "generation": GENERATION_METRICS,
    "integration": INTEGRATION_METRICS,   # scib-metrics, an optional extra: not in the default tasks
}
#: Tasks run when a config names none (those that need an optional extra are left out).
DEFAULT_TASKS: tuple[str, ...] = tuple(t for t in TASKS if t != "integration")
METRICS: tuple[str, ...] = tuple(dict.fromkeys(m for ms in TASKS.values() for m in ms))
#: Metrics where lower is better (ranked ascending), and controls / references that are reported but not ranked.
LOWER_IS_BETTER: frozenset[str] = frozenset({"energy_distance"})
UNRANKED: frozenset[str] = frozenset({"knn_accuracy_shuffled", "knn_accuracy_real", "energy_distance_shuffled",
                                      "energy_distance_real"})
HEADS: tuple[str, ...] = ("knn", "logistic")
SPLITS: tuple[str, ...] = ("random", "by_batch", "across")
RUNNER_ARGS = ("seed", "cache_dir", "train", "labels")
#: The tasks each kind of method can do.
METHOD_TASKS: dict[str, tuple[str, ...]] = {
    "embedding": ("annotation", "novel_type", "clustering", "batch_mixing", "drug_response", "integration"),
    "label": ("annotation",),
    "generative": ("generation",),
}


def method_kind(method: str) -> str:
    """``"embedding"``, ``"label"`` or ``"generative"``: which of the method dicts holds ``method``."""
    return next((kind for kind, table in METHODS_BY_KIND.items() if method in table), "embedding")


# the real files beside the project (../shared/data, or $C2T_DATA): a dataset entry may just name one
DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"
KNOWN_DATASETS: dict[str, dict[str, Any]] = {
    "pbmc3k": {"path": "pbmc3k_raw_seurat_labels.h5ad", "label_key": "seurat_celltype"},
    "kang8": {"path": "kang2018_8donors_muscat.h5ad", "label_key": "cluster_id", "batch_key": "sample_id",
              "split": "by_batch", "test_size": 0.25},
    "kang_stim": {"path": "kang2018_ctrl_stim_muscat.h5ad", "label_key": "cluster_id", "batch_key": "group_id"},
    "papalexi_thp1": {"path": "papalexi2021_thp1_perturb_sceptre.h5ad", "label_key": "target_max",
                      "batch_key": "bio_rep"},
    "osmfish": {"path": "osmfish_sscortex_codeluppi2018.h5ad", "label_key": "ClusterName"},
    # PC9 cells after 11 days of erlotinib (all labelled resistant by scDEAL) and untreated controls ("unlabeled")
    "pc9_erlotinib": {"path": "pc9_erlotinib_day11.h5ad", "label_key": "scdeal_label", "filter": "pass_qc_200genes",
                      "positive": "resistant"},
}

_TOP_KEYS = {"name", "seeds", "quick_cells", "datasets", "methods", "tasks", "heads", "metrics", "cache_dir",
             "umap_cells", "n_neighbors"}
_DATASET_KEYS = {"dataset", "path", "label_key", "batch_key", "split", "test_size", "test_batches", "max_cells",
                 "query", "query_label_key", "filter", "positive"}


@dataclass
class DatasetSpec:
    """One dataset: a file, its label and batch columns, and how cells are split into train and test."""

    name: str
    path: Path
    label_key: str
    batch_key: str | None = None
    split: str = "random"
    test_size: float = 0.3
    test_batches: list[str] | None = None
    max_cells: int | None = None
    query: Path | None = None
    query_label_key: str | None = None
    filter: str | None = None
    positive: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "label_key": self.label_key, "batch_key": self.batch_key,
                "split": self.split, "test_size": self.test_size, "test_batches": self.test_batches,
                "max_cells": self.max_cells, "query": str(self.query) if self.query else None,
                "query_label_key": self.query_label_key, "filter": self.filter, "positive": self.positive}


@dataclass
class MethodSpec:
    """One method: a function of :data:`~c2t.eval._methods.METHODS` and its options."""

    name: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchConfig:
    """A validated benchmark config (see the module docstring for the YAML)."""

    datasets: dict[str, DatasetSpec]
    methods: dict[str, MethodSpec]
    tasks: list[str]
    seeds: list[int]
    heads: list[str] = field(default_factory=lambda: list(HEADS))
    metrics: list[str] | None = None
    quick_cells: int = 1000
    umap_cells: int = 2000
    n_neighbors: int = 15
    cache_dir: str | None = None
    name: str = "benchmark"
    source: dict[str, Any] = field(default_factory=dict)


def _fail(where: str, message: str) -> None:
    msg = f"{where}: {message}"
    raise C2TInputError(msg)


def _unknown(where: str, kind: str, name: Any, valid) -> None:
    _fail(where, f"unknown {kind} {name!r}; valid {kind}s are: {', '.join(sorted(valid))}")


def _check_obs(spec: DatasetSpec, where: str, *, path: Path | None = None, keys=None) -> None:
    import anndata as ad

    path = path or spec.path
    try:
        adata = ad.read_h5ad(path, backed="r")
    except Exception as err:
        _fail(where, f"{path}: cannot be read as .h5ad ({type(err).__name__}: {err})")
    try:
        columns = list(adata.obs.columns)
        for key in keys or (spec.label_key, spec.batch_key, spec.filter):
            if key is not None and key not in columns:
                _fail(where, f"{key!r} not found in obs of {path.name}; columns are: {', '.join(columns)}")
        if keys is None and spec.filter is not None and adata.obs[spec.filter].dtype != bool:
            _fail(where, f"filter: obs[{spec.filter!r}] must be a boolean column, not {adata.obs[spec.filter].dtype}")
        if keys is None and spec.positive is not None:
            values = set(adata.obs[spec.label_key].dropna().astype(str))
            if spec.positive not in values:
                _fail(where, f"positive: {spec.positive!r} is not a value of obs[{spec.label_key!r}]; values are: "
                             f"{', '.join(sorted(values)[:20])}")
        if spec.split == "by_batch" and spec.test_batches:
            batches = set(adata.obs[spec.batch_key].astype(str))
            missing = [b for b in spec.test_batches if b not in batches]
            if missing:
                _fail(where, f"test batch {missing[0]!r} not in obs[{spec.batch_key!r}]; batches are: "
                             f"{', '.join(sorted(batches))}")
    finally:
        adata.file.close()


def _dataset(name: str, entry: Any, base: Path) -> DatasetSpec:
    where = f"datasets.{name}"
    if entry is not None and not isinstance(entry, dict):
        _fail(where, "must be a mapping with path: and label_key: (or the name of a known dataset)")
    entry = dict(entry or {})
    unknown = set(entry) - _DATASET_KEYS
    if unknown:
        _unknown(where, "key", sorted(unknown)[0], _DATASET_KEYS)
    if "path" not in entry:  # a named real dataset, with the entry's keys as overrides
        known = str(entry.pop("dataset", name))
        if known not in KNOWN_DATASETS:
            _fail(where, f"unknown dataset {known!r} (and no path:); valid datasets are: "
                         f"{', '.join(sorted(KNOWN_DATASETS))}, or give path: and label_key:")
        defaults = dict(KNOWN_DATASETS[known])
        defaults["path"] = str(Path(os.environ.get("C2T_DATA") or DATA_DIR) / defaults["path"])
        entry = {**defaults, **entry}
    entry.pop("dataset", None)
    for key in ("path", "label_key"):
        if not entry.get(key):
            _fail(where, f"{key}: is required")
    path = Path(os.path.expandvars(os.path.expanduser(str(entry["path"]))))
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        _fail(where, f"{path}: no such file")
    spec = DatasetSpec(name=name, path=path.resolve(), label_key=str(entry["label_key"]),
                       batch_key=entry.get("batch_key"), split=str(entry.get("split", "random")),
                       test_size=float(entry.get("test_size", 0.3)), test_batches=entry.get("test_batches"),
                       max_cells=entry.get("max_cells"), filter=entry.get("filter"),
                       positive=None if entry.get("positive") is None else str(entry["positive"]))
    if spec.split not in SPLITS:
        _unknown(where, "split", spec.split, SPLITS)
    if spec.split == "by_batch" and not spec.batch_key:
        _fail(where, "split: by_batch needs batch_key:")
    if spec.split == "across":
        query = entry.get("query")
        if not query:
            _fail(where, "split: across needs query: (a named dataset or an .h5ad path)")
        query_label_key = entry.get("query_label_key")
        if str(query) in KNOWN_DATASETS:
            known = KNOWN_DATASETS[str(query)]
            query_path = Path(os.environ.get("C2T_DATA") or DATA_DIR) / known["path"]
            query_label_key = query_label_key or known["label_key"]
        else:
            query_path = Path(os.path.expandvars(os.path.expanduser(str(query))))
            query_path = query_path if query_path.is_absolute() else base / query_path
        if not query_path.is_file():
            _fail(where, f"query {query_path}: no such file")
        spec.query, spec.query_label_key = query_path.resolve(), str(query_label_key or spec.label_key)
        _check_obs(spec, where, path=spec.query, keys=[spec.query_label_key])
        spec.batch_key = None  # the batch is the source file: reference or query
    if not 0 < spec.test_size < 1:
        _fail(where, f"test_size must be between 0 and 1, not {spec.test_size}")
    if spec.test_batches is not None:
        spec.test_batches = [str(b) for b in spec.test_batches]
    _check_obs(spec, where)
    return spec


def _method(name: str, options: Any) -> MethodSpec:
    where = f"methods.{name}"
    options = dict(options or {})
    method = str(options.pop("method", name))
    every = all_methods()
    if method not in every:
        _unknown(where, "method", method, every)
    parameters = inspect.signature(every[method]).parameters
    allowed = [p for p in list(parameters)[1:] if p not in RUNNER_ARGS]
    for option in options:
        if option not in allowed:
            _fail(where, f"unknown option {option!r} of method {method}; its options are: {', '.join(allowed) or '(none)'}")
    return MethodSpec(name=name, method=method, options=options)


def _check_kinds(methods: dict[str, MethodSpec], tasks: list[str]) -> None:
    """Every method does at least one of the tasks, and every task has a method that can do it."""
    kinds = {name: method_kind(spec.method) for name, spec in methods.items()}
    able = {kind: sorted(METHODS_BY_KIND[kind]) for kind in METHOD_TASKS}
    for name, spec in methods.items():
        kind = kinds[name]
        if not set(tasks) & set(METHOD_TASKS[kind]):
            wanted = [t for t in tasks if t not in METHOD_TASKS[kind]]
            hint = "; ".join(f"{t} needs " + " or ".join(f"a {k} method ({', '.join(able[k])})" for k in METHOD_TASKS
                                                          if t in METHOD_TASKS[k]) for t in wanted)
            _fail(f"methods.{name}", f"{spec.method} is {'an' if kind == 'embedding' else 'a'} {kind} method and none of "
                                     f"the tasks ({', '.join(tasks)}) apply to it ({hint}); it can do: "
                                     f"{', '.join(METHOD_TASKS[kind])}")
    for task in tasks:
        if not any(task in METHOD_TASKS[kind] for kind in kinds.values()):
            need = " or ".join(f"a {k} method ({', '.join(able[k])})" for k in METHOD_TASKS if task in METHOD_TASKS[k])
            _fail("tasks", f"{task} needs {need}; the config's methods are: "
                           + ", ".join(f"{n} ({kinds[n]})" for n in methods))


def load_config(config: str | os.PathLike | dict[str, Any], *, base: str | os.PathLike | None = None) -> BenchConfig:
    """Read and validate a benchmark config; every name is checked before any work starts.

    Parameters
    ----------
    config
        A YAML file or a dict.
    base
        Folder that relative dataset paths are resolved against (default: the YAML's folder, or the
        working directory for a dict).

    Returns
    -------
    BenchConfig

    Examples
    --------
    >>> load_config({"datasets": {}, "methods": {"pca": {}}, "tasks": ["annotation"]})
    Traceback (most recent call last):
    ...
    c2t._errors.C2TInputError: config: datasets: needs at least one dataset
    >>> load_config({"datasets": {}, "methods": {"umap": {}}, "tasks": ["annotation"]})
    Traceback (most recent call last):
    ...
    c2t._errors.C2TInputError: methods.umap: unknown method 'umap'; valid methods are: cellama, cellama_finetuned, genept_s, genept_w, llm, llm_cells, llm_generate, llm_likelihood, pca, plm, random, random_cells
    """
    if isinstance(config, dict):
        raw, base_dir = dict(config), Path(base or ".")
    else:
        path = Path(config)
        raw = read_yaml_mapping(path, shape="the config must be a mapping")
        base_dir = Path(base) if base else path.resolve().parent
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        _unknown("config", "key", sorted(unknown)[0], _TOP_KEYS)
    # cheap checks of names first, then the files
    methods_raw = raw.get("methods") or {}
    if isinstance(methods_raw, list):
        methods_raw = {m: {} for m in methods_raw}
    methods = {str(name): _method(str(name), options) for name, options in methods_raw.items()}
    if not methods:
        _fail("config", "methods: needs at least one method")
    tasks = list(raw.get("tasks") or DEFAULT_TASKS)
    for task in tasks:
        if task not in TASKS:
            _unknown("tasks", "task", task, TASKS)
    _check_kinds(methods, tasks)
    if "integration" in tasks:
        from c2t.eval._scib import import_scib

        try:
            import_scib()
        except C2TInputError as err:
            _fail("tasks", str(err))
    heads = list(raw.get("heads") or HEADS)
    for head in heads:
        if head not in HEADS:
            _unknown("heads", "head", head, HEADS)
    metrics = raw.get("metrics")
    if metrics is not None:
        metrics = list(metrics)
        for metric in metrics:
            if metric not in METRICS:
                _unknown("metrics", "metric", metric, METRICS)
    seeds = raw.get("seeds", [0, 1, 2])
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds:
        _fail("config", "seeds: needs at least one seed")
    datasets_raw = raw.get("datasets") or {}
    if isinstance(datasets_raw, list):
        datasets_raw = {str(d): {} for d in datasets_raw}
    if not datasets_raw:
        _fail("config", "datasets: needs at least one dataset")
    datasets = {str(name): _dataset(str(name), entry, base_dir) for name, entry in datasets_raw.items()}
    if "drug_response" in tasks and not any(d.positive for d in datasets.values()):
        _fail("tasks", "drug_response needs a dataset with positive: (the label of the responding class, e.g. "
                       "resistant), such as the known dataset pc9_erlotinib")
    if "integration" in tasks and not any(d.batch_key or d.split == "across" for d in datasets.values()):
        _fail("tasks", "integration needs a dataset with batch_key: (the obs column of the batch or donor, e.g. "
                       f"kang8's sample_id); none of {', '.join(datasets)} has one")
    return BenchConfig(datasets=datasets, methods=methods, tasks=tasks, seeds=seeds, heads=heads, metrics=metrics,
                       quick_cells=int(raw.get("quick_cells", 1000)), umap_cells=int(raw.get("umap_cells", 2000)),
                       n_neighbors=int(raw.get("n_neighbors", 15)), cache_dir=raw.get("cache_dir"),
                       name=str(raw.get("name", "benchmark")), source=raw)
