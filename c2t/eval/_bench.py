"""The benchmark runner: every method on the same datasets, splits, tasks and seeds; resumable.

Work is done per (dataset, method, seed) and each unit's result rows are written atomically to
``OUT/cache/<dataset>/<method>/seed<k>.json`` together with a key of everything they depend on (the data file's
sha256, the dataset and method settings, tasks, heads, seed, quick mode, c2t version). A rerun reuses every
finished unit whose key matches and retries failed ones. A method that raises is recorded with its error and
the run goes on.

Methods are of three kinds: embedding methods (the tasks train heads, cluster and measure batch mixing, and
with the extra ``c2t[scib]`` scIB's integration set, on their embedding), label methods (they label the test
cells themselves: annotation only) and generative methods (they generate cells for the training labels: the
generation task, whose first seed also saves ``generation.npz``, the PCA coordinates of the generated and real
held-out cells for the report's overlay UMAP).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from c2t._atomic import atomic_path, write_text_atomic
from c2t._errors import C2TInputError
from c2t.eval._config import (
    LOWER_IS_BETTER,
    UNRANKED,
    BenchConfig,
    DatasetSpec,
    MethodSpec,
    load_config,
    method_kind,
)
from c2t.eval._methods import GENERATIVE_METHODS, LABEL_HEADS, LABEL_METHODS, METHODS, all_methods

ROW_COLUMNS = ["dataset", "dataset_sha256", "n_cells", "split", "split_detail", "method", "method_version",
               "c2t_version", "seed", "task", "head", "metric", "label", "value", "status", "error", "embed_s"]


def _version() -> str:
    from c2t._version import __version__

    return __version__


def method_version(spec: MethodSpec) -> str:
    """A short hash of the method function's source and the options: changes when either does."""
    source = inspect.getsource(all_methods()[spec.method])
    blob = json.dumps({"source": source, "options": spec.options}, sort_keys=True, default=str)
    return f"{spec.method}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def _stratified_subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` row indices stratified by label (every label keeps at least one cell), sorted."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    _, codes = np.unique(labels, return_inverse=True)
    quota = np.maximum(1, np.round(np.bincount(codes) * n / len(labels)).astype(int))
    picked = [rng.choice(np.flatnonzero(codes == c), min(q, int((codes == c).sum())), replace=False)
              for c, q in enumerate(quota)]
    return np.sort(np.concatenate(picked))


class _Dataset:
    """A dataset in memory: labelled cells only, subsampled in quick mode, with its file hash."""

    def __init__(self, spec: DatasetSpec, *, quick: bool, quick_cells: int) -> None:
        from c2t._manifest import file_hash

        self.spec = spec
        limit = [x for x in (spec.max_cells, quick_cells if quick else None) if x]
        adata = self._read(spec.path, spec.label_key, limit, spec.filter)
        self.sha256 = file_hash(spec.path).removeprefix("sha256:")
        if spec.split == "across":
            import anndata as ad

            query = self._read(spec.query, spec.query_label_key, limit)
            shared = adata.var_names.intersection(query.var_names)
            if len(shared) < 10:
                msg = f"{spec.name}: only {len(shared)} genes are shared by {spec.path.name} and {spec.query.name}"
                raise C2TInputError(msg)
            query.obs[spec.label_key] = query.obs[spec.query_label_key]
            adata = ad.concat({"reference": adata[:, shared], "query": query[:, shared]}, label="_source",
                              index_unique=":", join="inner")
            self.sha256 += "+" + file_hash(spec.query).removeprefix("sha256:")
            self.n_shared_genes = len(shared)
        self.adata = adata
        self.labels = adata.obs[spec.label_key].astype(str).to_numpy()
        batch_key = "_source" if spec.split == "across" else spec.batch_key
        self.batches = adata.obs[batch_key].astype(str).to_numpy() if batch_key else None
        self.quick = quick
        self._unintegrated: np.ndarray | None = None

    def unintegrated(self) -> np.ndarray:
        """PCA of log expression (the ``pca`` method's defaults): the pre-integration embedding that the
        integration task's PCR comparison measures every method against; computed once per dataset."""
        if self._unintegrated is None:
            from c2t.eval._methods import pca

            self._unintegrated = np.asarray(pca(self.adata), dtype=np.float32)
        return self._unintegrated

    @staticmethod
    def _read(path, label_key: str, limit: list[int], keep: str | None = None):
        """Labelled cells of ``path`` (those where the boolean obs column ``keep`` is true, if given), subsampled
        (stratified by label) to the smallest of ``limit``."""
        from c2t.io import read_h5ad

        adata = read_h5ad(path)
        labels = adata.obs[label_key]
        rows = labels.notna().to_numpy() & (labels.astype(str).to_numpy() != "nan")
        if keep is not None:
            rows &= adata.obs[keep].to_numpy(dtype=bool)
        adata = adata[rows]
        if adata.var_names.has_duplicates:
            adata = adata[:, ~adata.var_names.duplicated()]
        rows = _stratified_subsample(adata.obs[label_key].astype(str).to_numpy(), min([*limit, adata.n_obs]), seed=0)
        return adata[rows].copy()

    def split(self, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
        from c2t.eval._tasks import split_by_batch, split_random

        spec = self.spec
        if spec.split == "across":
            train, test = np.flatnonzero(self.batches == "reference"), np.flatnonzero(self.batches == "query")
            return train, test, f"{spec.path.name} -> {spec.query.name} ({self.n_shared_genes} shared genes)"
        if spec.split == "by_batch":
            train, test, held = split_by_batch(self.batches, test_size=spec.test_size, test_batches=spec.test_batches,
                                               seed=seed)
            return train, test, "test batches: " + ", ".join(held)
        train, test = split_random(self.labels, test_size=spec.test_size, seed=seed)
        return train, test, f"stratified, test {spec.test_size:g}"


def _tasks_version() -> str:
    from c2t.eval import _generation, _metrics, _scib, _tasks

    source = "".join(inspect.getsource(m) for m in (_tasks, _metrics, _generation, _scib))
    return hashlib.sha256(source.encode()).hexdigest()[:10]


def _unit_key(data: _Dataset, spec: MethodSpec, cfg: BenchConfig, seed: int) -> str:
    blob = {"tasks_version": _tasks_version(), "data": data.sha256, "dataset": data.spec.describe(), "n_cells": data.adata.n_obs, "quick": data.quick,
            "method": method_version(spec), "tasks": cfg.tasks, "heads": cfg.heads, "seed": seed,
            "n_neighbors": cfg.n_neighbors, "c2t": _version()}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _runner_args(fn: Callable, **available) -> dict:
    """The runner's arguments (:data:`~c2t.eval._config.RUNNER_ARGS`) that ``fn``'s signature names."""
    parameters = inspect.signature(fn).parameters
    return {k: v for k, v in available.items() if k in parameters}


def _call_method(spec: MethodSpec, data: _Dataset, *, seed: int, cache_dir) -> np.ndarray:
    fn = METHODS[spec.method]
    adata = data.adata
    # train: a method that fits on the training cells (never on test cells) gets their indices
    extra = _runner_args(fn, seed=seed, cache_dir=cache_dir, train=data.split(seed)[0])
    X = np.asarray(fn(adata, **spec.options, **extra), dtype=np.float32)
    if X.ndim != 2 or X.shape[0] != adata.n_obs:
        msg = f"method {spec.name} returned shape {X.shape} for {adata.n_obs} cells"
        raise C2TInputError(msg)
    if not np.isfinite(X).all():
        msg = f"method {spec.name} returned NaN or infinite values"
        raise C2TInputError(msg)
    return X


def _label_unit(spec: MethodSpec, data: _Dataset, cfg: BenchConfig, seed: int) -> tuple[list[dict], dict, str]:
    """A label method answers the test cells itself: annotation records (head ``"generation"`` or
    ``"likelihood"``: how it labelled them) only."""
    from c2t.eval._tasks import label_rows

    _, test, detail = data.split(seed)
    fn = LABEL_METHODS[spec.method]
    extra = _runner_args(fn, seed=seed)
    predicted = np.asarray(fn(data.adata[test].copy(), **spec.options, **extra)).astype(str)
    if predicted.shape != (len(test),):
        msg = f"method {spec.name} returned {predicted.shape} labels for {len(test)} test cells"
        raise C2TInputError(msg)
    truth = np.asarray(data.labels[test]).astype(str)
    head = LABEL_HEADS.get(spec.method, "generation")
    rows = label_rows(truth, predicted, head=head) if "annotation" in cfg.tasks else []
    return rows, {head: {"truth": truth.tolist(), "predicted": predicted.tolist()}}, detail


def _generation_unit(spec: MethodSpec, data: _Dataset, cfg: BenchConfig, seed: int) -> tuple[list[dict], dict, str]:
    """A generative method generates cells for the training cells' labels; the generation task scores them
    against the real cells (classifier and PCA on the training cells, distances to the test cells)."""
    from c2t.eval._generation import generation

    train, test, detail = data.split(seed)
    fn = GENERATIVE_METHODS[spec.method]
    extra = _runner_args(fn, seed=seed, train=train)
    labels = sorted(set(data.labels[train]))
    generated, real = fn(data.adata, labels=labels, **spec.options, **extra)
    if real.n_obs != data.adata.n_obs or list(generated.var_names) != list(real.var_names):
        msg = f"method {spec.name} returned real cells or genes that do not match the dataset's"
        raise C2TInputError(msg)
    texts = generated.obs["c2t_text"].astype(str).tolist() if "c2t_text" in generated.obs else []
    rows, overlay = generation(_dense(generated.X), generated.obs["condition"].astype(str).to_numpy(), texts,
                               generated.var_names.astype(str), _dense(real.X), data.labels, train, test, seed=seed,
                               n_neighbors=min(10, cfg.n_neighbors))
    return rows, {"overlay": overlay}, detail


def _dense(m) -> np.ndarray:
    return m.toarray() if hasattr(m, "toarray") else np.asarray(m)


def _save_overlay(folder: Path, overlay: dict[str, np.ndarray], limit: int) -> None:
    """The PCA coordinates of the real test cells and the generated cells, for the report's overlay UMAP."""
    rows = _stratified_subsample(np.asarray(overlay["real_label"]), limit, seed=1)
    with atomic_path(folder / "generation.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, real=np.asarray(overlay["real"])[rows].astype(np.float16),
                            real_label=np.asarray(overlay["real_label"], dtype=str)[rows],
                            generated=np.asarray(overlay["generated"]).astype(np.float16),
                            generated_label=np.asarray(overlay["generated_label"], dtype=str))


def _evaluate(X: np.ndarray, data: _Dataset, cfg: BenchConfig, seed: int) -> tuple[list[dict], dict, str]:
    from c2t.eval import _tasks

    train, test, detail = data.split(seed)
    rows: list[dict[str, Any]] = []
    predictions: dict[str, Any] = {}
    k = cfg.n_neighbors
    if "annotation" in cfg.tasks:
        found, predictions = _tasks.annotation(X, data.labels, train, test, heads=cfg.heads, seed=seed, n_neighbors=k)
        rows += found
    if "novel_type" in cfg.tasks:
        rows += _tasks.novel_type(X, data.labels, train, test, heads=cfg.heads, seed=seed, n_neighbors=k)
    if "clustering" in cfg.tasks:
        rows += _tasks.clustering(X, data.labels, seed=seed)
    if "batch_mixing" in cfg.tasks and data.batches is not None:
        rows += _tasks.batch_mixing(X, data.labels, data.batches, n_neighbors=k)
    if "integration" in cfg.tasks and data.batches is not None:  # scib-metrics' set (the extra c2t[scib])
        from c2t.eval._scib import integration

        rows += integration(X, data.labels, data.batches, X_pre=data.unintegrated())
    if "drug_response" in cfg.tasks and data.spec.positive is not None:
        found, drug = _tasks.drug_response(X, data.labels, train, test, positive=data.spec.positive, heads=cfg.heads,
                                           seed=seed, n_neighbors=k)
        rows += found
        predictions = predictions or drug  # confusion matrices of the drug response when there is no annotation
    return rows, predictions, detail


def _save_embedding(folder: Path, X: np.ndarray, data: _Dataset, limit: int) -> None:
    """Keep a small float16 copy of the embedding (and the cells' labels and batches) for the report's UMAPs."""
    rows = _stratified_subsample(data.labels, limit, seed=1)
    with atomic_path(folder / "embedding.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, X=X[rows].astype(np.float16), label=np.asarray(data.labels[rows], dtype=str),
                            batch=np.asarray(data.batches[rows] if data.batches is not None else [], dtype=str))


def run_benchmark(
    config: str | os.PathLike | dict[str, Any] | BenchConfig,
    out: str | os.PathLike,
    *,
    quick: bool = False,
    seeds: list[int] | None = None,
    report: bool = True,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Run every method of ``config`` on every dataset, task and seed; write the results (and the report).

    Parameters
    ----------
    config
        A YAML file, a dict or a :class:`BenchConfig` (validated before any work starts).
    out
        Output folder: ``results.csv`` (one row per seed and metric), ``summary.csv`` and ``summary.md``
        (mean and 95% interval over seeds, with ranks), ``report.html``, ``config_used.yaml`` and ``cache/``.
    quick
        Subsample each dataset to ``quick_cells`` cells (stratified by label).
    seeds
        Override the config's seeds.
    report
        Also write ``report.md`` and ``report.html`` (plots need matplotlib and, for UMAPs, scanpy).
    progress
        Called with a line of text per finished unit.

    Returns
    -------
    pandas.DataFrame
        The rows of ``results.csv``.
    """
    cfg = config if isinstance(config, BenchConfig) else load_config(config)
    if seeds is not None:
        cfg.seeds = list(seeds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = cfg.cache_dir or os.environ.get("C2T_CACHE") or str(Path.home() / ".cache" / "c2t")
    say = progress or (lambda line: None)
    all_rows: list[dict[str, Any]] = []
    for dname, dspec in cfg.datasets.items():
        data = _Dataset(dspec, quick=quick, quick_cells=cfg.quick_cells)
        say(f"{dname}: {data.adata.n_obs} cells, {len(np.unique(data.labels))} labels")
        for mname, mspec in cfg.methods.items():
            folder = out / "cache" / dname / mname
            memo: np.ndarray | None = None  # a method without a seed gives the same embedding for every seed
            kind = method_kind(mspec.method)
            takes_seed = kind != "embedding" or bool(_runner_args(METHODS[mspec.method], seed=0, train=0))
            for i, seed in enumerate(cfg.seeds):
                path = folder / f"seed{seed}.json"
                key = _unit_key(data, mspec, cfg, seed)
                if path.is_file():
                    cached = json.loads(path.read_text())
                    if cached.get("key") == key and cached.get("status") == "ok":
                        all_rows += cached["rows"]
                        say(f"{dname} / {mname} / seed {seed}: cached")
                        continue
                base = {"dataset": dname, "dataset_sha256": data.sha256, "n_cells": int(data.adata.n_obs),
                        "split": dspec.split, "method": mname, "method_version": method_version(mspec),
                        "c2t_version": _version(), "seed": seed}
                start = time.perf_counter()
                try:
                    X, overlay = None, None
                    if kind == "label":  # the method labels the test cells itself
                        found, predictions, detail = _label_unit(mspec, data, cfg, seed)
                        embed_s = time.perf_counter() - start
                    elif kind == "generative":  # the method generates cells; the generation task scores them
                        found, extra, detail = _generation_unit(mspec, data, cfg, seed)
                        overlay, predictions = extra["overlay"], {}
                        embed_s = time.perf_counter() - start
                    else:
                        if memo is None or takes_seed:
                            memo = _call_method(mspec, data, seed=seed, cache_dir=cache_dir)
                        X = memo
                        embed_s = time.perf_counter() - start
                        found, predictions, detail = _evaluate(X, data, cfg, seed)
                    rows = [{**base, "split_detail": detail, **r, "status": "ok", "error": "",
                             "embed_s": round(embed_s, 2)} for r in found
                            if cfg.metrics is None or r["metric"] in cfg.metrics]
                    unit = {"key": key, "status": "ok", "rows": rows, "predictions": predictions if i == 0 else {}}
                    if i == 0 and X is not None:
                        _save_embedding(folder, X, data, cfg.umap_cells)
                    if i == 0 and overlay is not None:
                        folder.mkdir(parents=True, exist_ok=True)
                        _save_overlay(folder, overlay, cfg.umap_cells)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as err:
                    detail = "".join(traceback.format_exception_only(type(err), err)).strip()
                    rows = [{**base, "split_detail": "", "task": "", "head": "", "metric": "", "value": float("nan"),
                             "status": "failed", "error": detail, "embed_s": round(time.perf_counter() - start, 2)}]
                    unit = {"key": key, "status": "failed", "rows": rows, "predictions": {}}
                folder.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, json.dumps(unit, default=str))
                all_rows += rows
                say(f"{dname} / {mname} / seed {seed}: {unit['status']} ({time.perf_counter() - start:.1f} s)")
                if unit["status"] == "failed":
                    break  # the same error for every seed; recorded once, retried on a rerun
    results = pd.DataFrame(all_rows).reindex(columns=ROW_COLUMNS)
    with atomic_path(out / "results.csv") as tmp:
        results.to_csv(tmp, index=False)
    import yaml

    write_text_atomic(out / "config_used.yaml", yaml.safe_dump(cfg.source, sort_keys=False))
    summary = summarize(results)
    with atomic_path(out / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    write_text_atomic(out / "summary.md", summary_markdown(summary, results))
    if report:
        from c2t.eval._report import write_report

        write_report(out, results=results, summary=summary, title=cfg.name, quick=quick)
    return results


def _interval(values: np.ndarray) -> tuple[float, float, float]:
    from scipy import stats

    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% t-interval over seeds per (dataset, split, method, task, head, metric), and the method's
    rank (1 = best) among the methods on that dataset and metric. Per-class F1 rows are left out; metrics in
    ``LOWER_IS_BETTER`` (energy distance) rank ascending, the controls and references in ``UNRANKED`` get no rank,
    nor does a metric only one method reports (e.g. annotation by generation).

    Examples
    --------
    >>> rows = pd.DataFrame({"dataset": "d", "split": "random", "method": ["a", "a", "b", "b"], "task": "t",
    ...                      "head": "", "metric": "m", "value": [0.5, 0.7, 0.1, 0.3], "status": "ok"})
    >>> s = summarize(rows)
    >>> s[["method", "mean", "n", "rank"]].values.tolist()
    [['a', 0.6, 2, 1.0], ['b', 0.2, 2, 2.0]]
    >>> bool(summarize(rows[rows["method"] == "a"])["rank"].isna().all())
    True
    """
    ok = results[(results["status"] == "ok") & (results["metric"] != "per_class_f1")]
    keys = ["dataset", "split", "method", "task", "head", "metric"]
    records = []
    for group, frame in ok.groupby(keys, sort=False, dropna=False):
        mean, low, high = _interval(frame["value"].to_numpy(dtype=float))
        records.append({**dict(zip(keys, group, strict=True)), "mean": round(mean, 6), "ci_low": round(low, 6),
                        "ci_high": round(high, 6), "n": len(frame)})
    summary = pd.DataFrame(records, columns=[*keys, "mean", "ci_low", "ci_high", "n"])
    if len(summary):
        groups = summary.groupby(["dataset", "split", "task", "head", "metric"])["mean"]
        summary["rank"] = groups.rank(ascending=False, method="min")
        lower = summary["metric"].isin(LOWER_IS_BETTER)
        summary.loc[lower, "rank"] = groups.rank(ascending=True, method="min")[lower]
        summary.loc[summary["metric"].isin(UNRANKED), "rank"] = np.nan
        summary.loc[groups.transform("size") < 2, "rank"] = np.nan  # a method alone on a metric is not ranked
    else:
        summary["rank"] = []
    return summary


def _fmt(row) -> str:
    rank = f" ({int(row['rank'])})" if np.isfinite(row["rank"]) else ""
    if not np.isfinite(row["ci_low"]):
        return f"{row['mean']:.3f}{rank}"
    return f"{row['mean']:.3f} ± {(row['ci_high'] - row['ci_low']) / 2:.3f}{rank}"


def summary_table(summary: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """One dataset's results as a methods x metrics table of "mean ± half-interval (rank)", with the mean rank."""
    part = summary[summary["dataset"] == dataset].copy()
    if part.empty:
        return pd.DataFrame()
    part["column"] = part["task"] + ":" + part["metric"] + np.where(part["head"] != "", " (" + part["head"] + ")", "")
    part["cell"] = part.apply(_fmt, axis=1)
    table = part.pivot_table(index="method", columns="column", values="cell", aggfunc="first", sort=False)
    ranks = part.groupby("method")["rank"].mean().rename("mean rank")
    table = table.join(ranks).sort_values("mean rank")
    table["mean rank"] = table["mean rank"].round(2)
    return table


def markdown_table(table: pd.DataFrame) -> str:
    """A DataFrame (index included) as a Markdown table.

    Examples
    --------
    >>> print(markdown_table(pd.DataFrame({"x": [1]}, index=pd.Index(["a"], name="method"))))
    | method | x |
    |---|---|
    | a | 1 |
    """
    header = [str(table.index.name or ""), *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        lines.append("| " + " | ".join([str(index), *("" if pd.isna(v) else str(v) for v in row)]) + " |")
    return "\n".join(lines)


def summary_markdown(summary: pd.DataFrame, results: pd.DataFrame) -> str:
    """The summary as Markdown: one table per dataset, then the failed methods with their errors."""
    lines = ["# Benchmark results", "", "Mean ± half-width of the 95% t-interval over seeds (rank among the methods; 1 is best).", ""]
    for dataset in summary["dataset"].drop_duplicates():
        table = summary_table(summary, dataset)
        split = summary.loc[summary["dataset"] == dataset, "split"].iloc[0]
        lines += [f"## {dataset} (split: {split})", "", markdown_table(table), ""]
    failed = results[results["status"] == "failed"]
    if len(failed):
        lines += ["## Failed", "", "| dataset | method | error |", "|---|---|---|"]
        lines += [f"| {r.dataset} | {r.method} | {str(r.error).splitlines()[-1].replace('|', '/')} |"
                  for r in failed.itertuples()]
        lines.append("")
    return "\n".join(lines)
