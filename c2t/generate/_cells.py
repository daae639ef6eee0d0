"""Cells from prompts: render the run's generation templates, sample, clean, decode into an AnnData."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from c2t._errors import C2TInputError
from c2t.generate._backends import Backend, open_backend
from c2t.generate._run import RunInfo, read_run_info
from c2t.generate._sampling import Sampling, as_sampling


def storable(texts: list[str]) -> list[str]:
    """Texts without NUL characters (HDF5 strings cannot hold them; an untrained model can emit them).

    Examples
    --------
    >>> storable(["CD3D" + chr(0) + " IL7R"])
    ['CD3D IL7R']
    """
    return [t.replace("\x00", "") for t in texts]


def parse_labels(spec: str | Mapping[str, int]) -> dict[str, int]:
    """``"CD14+ Mono:500,B:200"`` (or a mapping) -> ``{"CD14+ Mono": 500, "B": 200}``.

    Examples
    --------
    >>> parse_labels("CD14+ Mono:3, B:2")
    {'CD14+ Mono': 3, 'B': 2}
    """
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(","):
            if not part.strip():
                continue
            label, sep, count = part.rpartition(":")
            if not sep or not label.strip():
                msg = f"labels: {part.strip()!r} is not LABEL:COUNT (e.g. 'CD14+ Mono:500,B:200')"
                raise C2TInputError(msg)
            items.append((label.strip(), count.strip()))
    out: dict[str, int] = {}
    for label, count in items:
        try:
            value = int(count)
        except (TypeError, ValueError):
            value = -1
        if value < 1:
            msg = f"labels: the count of {label!r} must be a positive integer, not {count!r}"
            raise C2TInputError(msg)
        out[str(label)] = out.get(str(label), 0) + value
    if not out:
        msg = "labels: no LABEL:COUNT given"
        raise C2TInputError(msg)
    return out


def _templates(info: RunInfo, task: str, fields: set[str]):
    from c2t.instruct import load_templates

    trained = info.template_ids(task)
    ts = load_templates(task, provided=fields, answer_provided={"cell_sentence"}, folder=None)
    recorded = (info.task_entry(task).get("templates") or {}).get("sha256")
    if recorded and recorded != ts.sha256:
        warnings.warn(f"prompts/{task}.yaml changed since the run's dataset was built; using the templates by id",
                      UserWarning, stacklevel=3)
    chosen = [t for t in ts.templates if not trained or t.id in trained]
    if not chosen:
        msg = f"none of the run's {task} template ids ({', '.join(trained)}) are in prompts/{task}.yaml"
        raise C2TInputError(msg)
    return chosen


def _plan(info: RunInfo, labels: dict[str, int] | None, prompt: str | None, n_cells: int, seed: int):
    """Unique prompts with how many cells each, and the per-cell condition / template id."""
    if prompt is not None:
        return [prompt], [n_cells], [prompt] * n_cells, ["custom"] * n_cells
    task = "generation" if labels is not None else "unconditional"
    if task not in info.tasks:
        msg = (f"{info.spec.path}: the run was not trained on the {task} task (its tasks: {', '.join(info.tasks) or 'none'}); "
               f"pass prompt= to generate from your own prompt")
        raise C2TInputError(msg)
    top_k = (info.task_entry(task).get("params") or {}).get("top_k") or info.top_k
    organism = info.dataset.get("organism")
    fields = {"n_genes": str(top_k), "context": "", **({"organism": organism} if organism else {})}
    if labels is None:
        labels = {"": n_cells}
    else:
        fields["cell_type"] = ""
    templates = _templates(info, task, set(fields))
    rng = np.random.default_rng(seed)
    prompts, counts, conditions, tids = [], [], [], []
    for label, count in labels.items():
        picks = np.bincount(rng.integers(len(templates), size=count), minlength=len(templates))
        for template, k in zip(templates, picks, strict=True):
            if k:
                values = {**fields, "cell_type": label} if label else fields
                prompts.append(template.format(**values) + info.separator)
                counts.append(int(k))
                conditions += [label] * int(k)
                tids += [template.id] * int(k)
    return prompts, counts, conditions, tids


def generate_cells(
    model: str | os.PathLike,
    *,
    labels: str | Mapping[str, int] | None = None,
    prompt: str | None = None,
    n_cells: int = 1,
    backend: str | Backend = "transformers",
    sampling: Sampling | Mapping[str, Any] | None = None,
    base_url: str | None = None,
    served_model: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
    method: str | None = None,
):
    """Generate cells with a tuned model and decode them into expression.

    Parameters
    ----------
    model
        A c2t training run (or merged model) folder: its manifest gives the templates, the gene vocabulary and
        the inverse model.
    labels
        ``{"CD14+ Mono": 500, "B": 200}`` or ``"CD14+ Mono:500,B:200"``: conditional generation with the run's
        ``generation`` templates (one drawn per cell). A label the run never saw is warned about, generated
        anyway and flagged in ``obs["c2t_known_label"]``.
    prompt
        Your own prompt instead (``n_cells`` samples of it).
    n_cells
        Cells for ``prompt`` or for unconditional generation (neither ``labels`` nor ``prompt``: the run's
        ``unconditional`` templates).
    backend
        ``"transformers"``, ``"vllm"``, ``"openai"`` (then ``base_url`` and ``served_model``), or an open
        :class:`Backend` (reused, not closed).
    sampling
        :class:`Sampling` settings (default: temperature 1, enough new tokens for the run's sentences).
    backend_options
        More arguments for the backend (``device``, ``dtype``, ``max_model_len`` ...).
    method
        Inverse model fit to decode with (``"monotone"`` or ``"linear"``; default: the run's).

    Returns
    -------
    anndata.AnnData
        ``X``: predicted log1p(CP10k) expression (cells x the run's gene vocabulary). ``obs``: ``condition``
        (the label, the prompt, or empty), ``template_id``, ``c2t_known_label``, ``c2t_text`` (the raw
        completion), ``c2t_n_genes`` / ``c2t_n_unknown`` / ``c2t_n_duplicate`` (valid genes decoded, tokens
        that are not genes, repeated genes). ``uns["c2t_generate"]``: backend, model, sampling, and the
        totals (valid-gene rate, mean unique genes per cell, empty outputs).
    """
    from c2t.sentences import decode

    info = read_run_info(model)
    if labels is not None and prompt is not None:
        msg = "give labels or prompt, not both"
        raise C2TInputError(msg)
    if isinstance(n_cells, bool) or not isinstance(n_cells, int) or n_cells < 1:
        msg = f"n_cells must be a positive integer, not {n_cells!r}"
        raise C2TInputError(msg)
    wanted = parse_labels(labels) if labels is not None else None
    known = info.labels("generation")
    unknown = [label for label in (wanted or {}) if known and label not in known]
    if unknown:
        warnings.warn(f"label(s) {', '.join(map(repr, unknown))} were not in the run's training data "
                      f"(known: {', '.join(known)}); generating them anyway, flagged in obs['c2t_known_label']",
                      UserWarning, stacklevel=2)
    settings = as_sampling(sampling)
    vocabulary, inverse = info.vocabulary(), info.inverse_model()
    prompts, counts, conditions, tids = _plan(info, wanted, prompt, n_cells, settings.seed)
    engine = backend if isinstance(backend, Backend) else open_backend(
        backend, info.spec, base_url=base_url, served_model=served_model, **dict(backend_options or {}))
    try:
        completions = engine.complete(prompts, sampling=settings, n=counts)
    finally:
        if not isinstance(backend, Backend):
            engine.close()
    texts = storable([t for group in completions for t in group])
    assert len(texts) == len(conditions)
    import pandas as pd

    obs = pd.DataFrame({
        "condition": pd.Categorical(conditions),
        "template_id": pd.Categorical(tids),
        "c2t_known_label": [wanted is None or not known or c in known for c in conditions],
        "c2t_text": texts,
    }, index=pd.Index([f"generated_{i}" for i in range(len(texts))]))
    cells = decode(texts, model=(vocabulary, inverse), delimiter=None, obs=obs, method=method)
    decoded = cells.uns.pop("c2t_decode")
    n_tokens = decoded["n_tokens"]
    cells.uns["c2t_generate"] = {
        "model": str(info.spec.path),
        "backend": engine.name,
        "sampling": settings.to_dict(),
        "n_cells": len(texts),
        "conditions": {str(k): int(v) for k, v in obs["condition"].value_counts(sort=False).items()},
        "unknown_labels": unknown,
        "valid_gene_rate": (n_tokens - decoded["n_unknown"]) / n_tokens if n_tokens else 0.0,
        "duplicate_rate": decoded["n_duplicate"] / max(1, n_tokens - decoded["n_unknown"]),
        "mean_unique_genes": float(cells.obs["c2t_n_genes"].mean()),
        "n_empty": decoded["n_empty_cells"],
        "decode": decoded,
    }
    return cells
