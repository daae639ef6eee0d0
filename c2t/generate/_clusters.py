"""Tuning-free cluster annotation (scChat-style): Leiden clusters, their marker genes, and a chat model that names
each cluster through any OpenAI-compatible server. Every exchange is logged for review."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from c2t._errors import C2TInputError
from c2t.generate._backends import Backend, OpenAIBackend
from c2t.generate._cells import storable
from c2t.generate._predict import UNKNOWN, match_labels
from c2t.generate._sampling import Sampling, as_sampling

SYSTEM_HINT = "You are an expert in single-cell biology who annotates cell clusters from their marker genes."


def cluster_prompt(markers: Sequence[str], *, tissue: str | None = None, labels: Sequence[str] | None = None) -> str:
    """The question asked for one cluster.

    Examples
    --------
    >>> print(cluster_prompt(["CD3D", "IL7R"], tissue="human blood", labels=["T cell", "B cell"]))
    You are an expert in single-cell biology who annotates cell clusters from their marker genes.
    A cluster of cells from human blood has these top marker genes, strongest first: CD3D, IL7R.
    Which cell type is it? Choose one of: T cell; B cell.
    Answer with the cell type name only.
    """
    source = f" from {tissue}" if tissue else ""
    lines = [SYSTEM_HINT,
             f"A cluster of cells{source} has these top marker genes, strongest first: {', '.join(markers)}."]
    lines.append(f"Which cell type is it? Choose one of: {'; '.join(labels)}." if labels else "Which cell type is it?")
    lines.append("Answer with the cell type name only.")
    return "\n".join(lines)


def _prepare(adata, *, cluster_key: str, resolution: float, seed: int, n_markers: int, use_raw: bool | None):
    """Cluster (when ``cluster_key`` is absent) and rank markers on a log-normalised copy; return it."""
    import scanpy as sc

    work = adata.to_memory() if adata.isbacked else adata.copy()
    import scipy.sparse as sp

    from c2t.io import detect_input_kind

    if detect_input_kind(sp.csr_matrix(work.X[: min(work.n_obs, 500)])) == "counts":
        sc.pp.normalize_total(work, target_sum=1e4)
        sc.pp.log1p(work)
    if cluster_key not in work.obs.columns:
        sc.pp.pca(work, n_comps=min(50, work.n_vars - 1, work.n_obs - 1), random_state=seed)
        sc.pp.neighbors(work, random_state=seed)
        sc.tl.leiden(work, key_added=cluster_key, resolution=resolution, random_state=seed, flavor="igraph",
                     n_iterations=2, directed=False)
    work.obs[cluster_key] = work.obs[cluster_key].astype(str).astype("category")
    if work.obs[cluster_key].nunique() < 2:
        msg = f"obs[{cluster_key!r}] has a single cluster; marker genes need at least two"
        raise C2TInputError(msg)
    sc.tl.rank_genes_groups(work, cluster_key, method="wilcoxon", n_genes=n_markers, use_raw=use_raw)
    return work


def annotate_clusters(
    adata,
    *,
    base_url: str | None = None,
    served_model: str | None = None,
    backend: Backend | None = None,
    labels: Sequence[str] | None = None,
    tissue: str | None = None,
    cluster_key: str = "leiden",
    resolution: float = 1.0,
    n_markers: int = 10,
    key_added: str = "c2t_scchat",
    log: str | os.PathLike | None = None,
    sampling: Sampling | Mapping[str, Any] | None = None,
    use_raw: bool | None = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Name each cluster from its marker genes with a chat model (scChat's tuning-free route).

    Parameters
    ----------
    adata
        Cells (counts are CP10k + log1p normalised on a copy; ``adata`` itself only gains the results).
    base_url, served_model
        The OpenAI-compatible server and model name (the API key comes from ``OPENAI_API_KEY``).
    backend
        An open backend to use instead (e.g. :class:`~c2t.generate.TransformersBackend` of a local chat model).
    labels
        Candidate cell types: answers are mapped onto them (else ``"unknown"``); without them the answer's first
        line is the label.
    tissue
        Named in the question ("a cluster of cells from human blood").
    cluster_key
        ``obs`` column of existing clusters; when absent, scanpy PCA + neighbours + Leiden make it.
    resolution
        Leiden resolution.
    n_markers
        Marker genes per cluster (scanpy ``rank_genes_groups``, Wilcoxon).
    key_added
        ``obs`` column for the labels; ``uns[key_added]`` holds per cluster its markers, answer and label.
    log
        A JSON-lines file receiving each exchange (prompt, answer, label, markers) for review.
    sampling
        Greedy with 32 new tokens by default.

    Returns
    -------
    dict
        ``{cluster: label}``. ``adata.obs[cluster_key]`` (the clusters, when made here) and
        ``adata.obs[key_added]`` are written.
    """
    if backend is None:
        if not base_url or not served_model:
            msg = "annotate_clusters needs base_url and served_model (an OpenAI-compatible server) or backend="
            raise C2TInputError(msg)
        engine: Backend = OpenAIBackend(base_url, served_model, chat=True)
    else:
        engine = backend
    if not isinstance(n_markers, int) or n_markers < 1:
        msg = f"n_markers must be a positive integer, not {n_markers!r}"
        raise C2TInputError(msg)
    settings = as_sampling(sampling, temperature=0.0, max_new_tokens=32)
    work = _prepare(adata, cluster_key=cluster_key, resolution=resolution, seed=seed, n_markers=n_markers,
                    use_raw=use_raw)
    clusters = list(work.obs[cluster_key].cat.categories)
    names = work.uns["rank_genes_groups"]["names"]
    markers = {c: [str(g) for g in names[c][:n_markers]] for c in clusters}
    prompts = [cluster_prompt(markers[c], tissue=tissue, labels=labels) for c in clusters]
    try:
        answers = storable([group[0] for group in engine.complete(prompts, sampling=settings, n=1)])
    finally:
        if backend is None:
            engine.close()
    first_lines = [a.strip().split("\n")[0].strip() if a.strip() else "" for a in answers]
    chosen = match_labels(first_lines, labels) if labels else [a or UNKNOWN for a in first_lines]
    result = dict(zip(clusters, chosen, strict=True))
    import pandas as pd

    adata.obs[cluster_key] = work.obs[cluster_key].to_numpy()
    adata.obs[cluster_key] = adata.obs[cluster_key].astype("category")
    adata.obs[key_added] = pd.Categorical(adata.obs[cluster_key].astype(str).map(result).to_numpy())
    adata.uns[key_added] = {"clusters": {c: {"markers": markers[c], "answer": a, "label": result[c]}
                                         for c, a in zip(clusters, answers, strict=True)},
                            "model": served_model or getattr(engine, "model", engine.name), "n_markers": n_markers}
    if log is not None:
        from c2t._atomic import write_text_atomic

        lines = [json.dumps({"cluster": c, "markers": markers[c], "prompt": p, "answer": a, "label": result[c],
                             "model": served_model or engine.name}) for c, p, a in zip(clusters, prompts, answers, strict=True)]
        write_text_atomic(Path(log), "\n".join(lines) + "\n")
    return result

