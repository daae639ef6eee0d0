"""The benchmark report: ``report.md`` and a self-contained ``report.html`` (plots as base64 PNG).

Per dataset: the results table with ranks, metric bar charts with 95% intervals, a UMAP of each embedding
coloured by label and by batch, the kNN head's confusion matrix of each method (first seed), and for each
generative method a UMAP of its generated cells over the real held-out cells (first seed).
"""

from __future__ import annotations

import base64
import html
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from c2t._atomic import write_text_atomic

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.best{font-weight:bold;background:#e8f5e9} img{max-width:100%} .err{color:#b00;text-align:left}
"""


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(fig, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{_png(fig)}">'


def _colors(values: np.ndarray):
    import matplotlib

    names = list(dict.fromkeys(sorted(values.tolist())))
    cmap = matplotlib.colormaps["tab20" if len(names) > 10 else "tab10"]
    return names, {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def bar_charts(summary: pd.DataFrame, dataset: str):
    """One panel per metric: a bar per method with its 95% interval."""
    from matplotlib.figure import Figure

    part = summary[summary["dataset"] == dataset]
    columns = part[["task", "head", "metric"]].drop_duplicates().values.tolist()
    methods = list(dict.fromkeys(part["method"]))
    n = len(columns)
    ncols = min(4, n)
    nrows = int(np.ceil(n / ncols))
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows))
    _, color = _colors(np.array(methods))
    for i, (task, head, metric) in enumerate(columns):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        rows = part[(part["task"] == task) & (part["head"] == head) & (part["metric"] == metric)].set_index("method")
        rows = rows.reindex(methods)
        mean = rows["mean"].to_numpy(dtype=float)
        low = np.nan_to_num(mean - rows["ci_low"].to_numpy(dtype=float))
        high = np.nan_to_num(rows["ci_high"].to_numpy(dtype=float) - mean)
        ax.bar(range(len(methods)), np.nan_to_num(mean), yerr=[low, high], capsize=3,
               color=[color[m] for m in methods])
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{metric}" + (f" ({head})" if head else ""), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


def _umap(X: np.ndarray, seed: int = 0) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap-learn warns on import (no tensorflow) and about n_jobs with a seed
        import umap

        n = min(15, len(X) - 1)
        return umap.UMAP(n_neighbors=n, random_state=seed, n_jobs=1).fit_transform(X.astype(np.float32))


def umap_grid(embeddings: dict[str, dict[str, np.ndarray]]):
    """Each method's UMAP coloured by label and (if there are batches) by batch: a row per method with
    batches, else a grid of three columns."""
    from matplotlib.figure import Figure

    has_batch = any(len(e["batch"]) for e in embeddings.values())
    panels = [(m, key) for m in embeddings for key in (("label", "batch") if has_batch else ("label",))]
    ncols = 2 if has_batch else min(3, len(panels))
    nrows = int(np.ceil(len(panels) / ncols))
    fig = Figure(figsize=(5.4 * ncols, 3.6 * nrows))
    coords = {m: _umap(e["X"]) for m, e in embeddings.items()}
    for i, (method, key) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        xy = coords[method]
        values = embeddings[method][key]
        names, color = _colors(values)
        for name in names:
            cells = values == name
            ax.scatter(xy[cells, 0], xy[cells, 1], s=3, color=color[name], label=name, linewidths=0)
        ax.set_title(f"{method}: {key}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if len(names) <= 20:
            ax.legend(fontsize=6, markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def overlay_grid(overlays: dict[str, dict[str, np.ndarray]]):
    """Generated cells over real ones: per generative method, one UMAP of the real held-out cells (dots) and the
    generated cells (crosses, black-edged) together, both coloured by label (the label asked for, for generated)."""
    from matplotlib.figure import Figure

    n = len(overlays)
    ncols = min(2, n)
    nrows = int(np.ceil(n / ncols))
    fig = Figure(figsize=(6.0 * ncols, 4.2 * nrows))
    for i, (method, o) in enumerate(overlays.items()):
        real, generated = o["real"].astype(np.float32), o["generated"].astype(np.float32)
        xy = _umap(np.r_[real, generated])
        names, color = _colors(np.r_[o["real_label"], o["generated_label"]])
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for name in names:
            cells = o["real_label"] == name
            ax.scatter(xy[:len(real)][cells, 0], xy[:len(real)][cells, 1], s=9, color=color[name], label=name,
                       linewidths=0, alpha=0.7)
        for name in names:
            cells = o["generated_label"] == name
            ax.scatter(xy[len(real):][cells, 0], xy[len(real):][cells, 1], s=16, color=color[name], marker="X",
                       edgecolors="black", linewidths=0.3)
        ax.scatter([], [], s=9, color="grey", label="real (dot)")
        ax.scatter([], [], s=16, color="grey", marker="X", edgecolors="black", linewidths=0.3, label="generated (cross)")
        ax.set_title(f"{method}: {len(generated)} generated over {len(real)} real cells", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, markerscale=1.5, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def confusion_grid(predictions: dict[str, dict[str, list[str]]]):
    """Row-normalised confusion matrices (true label x predicted label), one panel per method."""
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    n = len(predictions)
    ncols = min(3, n)
    nrows = int(np.ceil(n / ncols))
    fig = Figure(figsize=(4.4 * ncols, 4.0 * nrows))
    for i, (method, p) in enumerate(predictions.items()):
        labels = sorted(set(p["truth"]) | set(p["predicted"]))
        m = confusion_matrix(p["truth"], p["predicted"], labels=labels).astype(float)
        m = np.divide(m, m.sum(axis=1, keepdims=True), out=np.zeros_like(m), where=m.sum(axis=1, keepdims=True) > 0)
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("predicted", fontsize=8)
    fig.tight_layout()
    return fig


def _table_html(table: pd.DataFrame) -> str:
    if table.empty:
        return "<p>(no results)</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [table.index.name or "method", *table.columns])
    body = []
    for i, (index, row) in enumerate(table.iterrows()):
        cls = ' class="best"' if i == 0 else ""
        cells = "".join(f"<td>{html.escape('' if pd.isna(v) else str(v))}</td>" for v in row)
        body.append(f"<tr{cls}><td>{html.escape(str(index))}</td>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _per_class(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    part = results[(results["dataset"] == dataset) & (results["metric"] == "per_class_f1") & (results["head"] == "knn")]
    if part.empty:
        return pd.DataFrame()
    table = part.pivot_table(index="method", columns="label", values="value", aggfunc="mean").round(3)
    table.index.name = "method (kNN per-class F1)"
    return table


def write_report(out, *, results: pd.DataFrame | None = None, summary: pd.DataFrame | None = None,
                 title: str = "benchmark", quick: bool = False, umap: bool = True) -> Path:
    """Write ``report.md`` and ``report.html`` into a benchmark output folder (from its CSVs and cache).

    Returns
    -------
    pathlib.Path
        The HTML file.
    """
    from c2t._version import __version__
    from c2t.eval._bench import markdown_table, summarize, summary_markdown, summary_table

    out = Path(out)
    if results is None:
        results = pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""])
        results["head"] = results["head"].fillna("")
    if summary is None:
        summary = summarize(results)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>c2t {html.escape(__version__)}{' — quick mode (subsampled cells)' if quick else ''}. Mean ± half-width "
             "of the 95% t-interval over seeds; every metric is higher-is-better except energy_distance (lower is "
             "closer; ranked ascending); the controls and references (…_shuffled, …_real), and a metric only one "
             "method reports, are not ranked; rank 1 is best; the first row "
             "(highlighted) has the best mean rank. Batch mixing rewards mixed batches, which the random control "
             "achieves by mixing everything: read it together with the label metrics.</p>"]
    md = [summary_markdown(summary, results)]
    for dataset in results["dataset"].drop_duplicates():
        ok = results[(results["dataset"] == dataset) & (results["status"] == "ok")]
        info = ok.iloc[0] if len(ok) else results[results["dataset"] == dataset].iloc[0]
        parts.append(f"<h2>{html.escape(str(dataset))}</h2><p>{int(info['n_cells'])} cells; split "
                     f"{html.escape(str(info['split']))}; file sha256 {html.escape(str(info['dataset_sha256'])[:16])}…</p>")
        parts.append(_table_html(summary_table(summary, dataset)))
        per_class = _per_class(results, dataset)
        if not per_class.empty:
            parts.append(_table_html(per_class))
            md += [f"### {dataset}: kNN per-class F1", "", markdown_table(per_class), ""]
        if dataset in set(summary["dataset"]):
            parts.append("<h3>Metrics</h3>" + _img(bar_charts(summary, dataset), f"{dataset} metrics"))
        methods = list(dict.fromkeys(ok["method"]))
        embeddings, predictions, overlays = {}, {}, {}
        for method in methods:
            folder = out / "cache" / str(dataset) / str(method)
            if (folder / "embedding.npz").is_file():
                with np.load(folder / "embedding.npz") as data:
                    embeddings[method] = {"X": data["X"].astype(np.float32), "label": data["label"],
                                          "batch": data["batch"]}
            if (folder / "generation.npz").is_file():
                with np.load(folder / "generation.npz") as data:
                    overlays[method] = {key: data[key] for key in data.files}
            seed = ok.loc[ok["method"] == method, "seed"].min()
            unit = folder / f"seed{seed}.json"
            if unit.is_file():
                saved = json.loads(unit.read_text()).get("predictions", {})
                # a label method answers itself
                labelled = saved.get("knn") or saved.get("likelihood") or saved.get("generation")
                if labelled:
                    predictions[method] = labelled
        if umap and embeddings:
            parts.append("<h3>UMAP of each embedding</h3>" + _img(umap_grid(embeddings), f"{dataset} UMAPs"))
        if umap and overlays:
            parts.append("<h3>Generated vs real cells (UMAP of the PCA of real training cells; first seed)</h3>"
                         + _img(overlay_grid(overlays), f"{dataset} generated vs real"))
        if predictions:
            parts.append("<h3>Confusion matrices (kNN head, first seed, rows sum to 1)</h3>"
                         + _img(confusion_grid(predictions), f"{dataset} confusion"))
    failed = results[results["status"] == "failed"]
    if len(failed):
        parts.append("<h2>Failed</h2><table><tr><th>dataset</th><th>method</th><th>error</th></tr>")
        parts += [f"<tr><td>{html.escape(str(r.dataset))}</td><td>{html.escape(str(r.method))}</td>"
                  f"<td class='err'>{html.escape(str(r.error))}</td></tr>" for r in failed.itertuples()]
        parts.append("</table>")
    parts.append("</body></html>")
    write_text_atomic(out / "report.md", "\n".join(md))
    path = out / "report.html"
    write_text_atomic(path, "\n".join(parts))
    return path
