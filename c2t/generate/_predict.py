"""Annotation by generation: render each cell's prompt exactly as in training, generate greedily, map the answer
onto the run's label set (normalised exact match, then fuzzy, else "unknown"), score when labels exist."""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from c2t._errors import C2TInputError
from c2t.generate._backends import Backend, open_backend
from c2t.generate._candidates import check_candidates
from c2t.generate._cells import storable
from c2t.generate._run import read_run_info
from c2t.generate._sampling import Sampling, as_sampling

UNKNOWN = "unknown"
#: Tasks whose answer is a label, answered one cell at a time.
LABEL_TASKS = ("cell_type", "drug_response", "metadata")
#: Tasks whose answer is a cell (a cell sentence), predicted from other cells.
CELL_TASKS = ("perturbation",)


def match_labels(answers: Iterable[str], labels: Sequence[str], *, synonyms: Mapping[str, Iterable[str]] | None = None,
                 cutoff: float = 0.8) -> list[str]:
    """Map free-text answers onto ``labels``.

    An answer names a label when, after :func:`c2t.instruct.normalize_label` (case, punctuation, plurals,
    "cell(s)", an "Answer:" prefix) and ``synonyms``, it equals the label; else when it is a close spelling
    (difflib ratio >= ``cutoff``); else when exactly one label appears in it as whole words. Otherwise it is
    ``"unknown"``.

    Examples
    --------
    >>> match_labels(["b cells", "CD14+ monocyte", "Naive CD4 T-cells", "nk", "a neuron", "CD8 T"],
    ...              ["B", "CD14+ Mono", "Naive CD4 T", "NK", "CD8 T"],
    ...              synonyms={"CD14+ Mono": ["CD14+ monocyte"]})
    ['B', 'CD14+ Mono', 'Naive CD4 T', 'NK', 'unknown', 'CD8 T']
    """
    from c2t.instruct import normalize_label

    table: dict[str, str] = {}
    for label in labels:
        table.setdefault(normalize_label(label), label)
    for label, alternatives in (synonyms or {}).items():
        for alt in alternatives:
            table.setdefault(normalize_label(alt), label)
    keys = list(table)
    cache: dict[str, str] = {}

    def one(answer: str) -> str:
        norm = normalize_label(answer)
        if norm in table:
            return table[norm]
        close = difflib.get_close_matches(norm, keys, n=1, cutoff=cutoff) if norm else []
        if close:
            return table[close[0]]
        padded = f" {norm} "
        inside = {table[k] for k in keys if k and f" {k} " in padded}
        return inside.pop() if len(inside) == 1 else UNKNOWN

    out = []
    for answer in answers:
        text = str(answer)
        if text not in cache:
            cache[text] = one(text)
        out.append(cache[text])
    return out


def _build_records(adata, info, task: str, params: dict[str, Any], seed: int, columns: list[str]) -> dict[str, list]:
    from c2t.instruct import build

    with tempfile.TemporaryDirectory(prefix="c2t-predict-") as tmp:
        dsd = build(adata, out=f"{tmp}/records", tasks=[{"task": task, **params}], top_k=info.top_k, seed=seed,
                    split=(1.0, 0.0, 0.0), stratify=None, formats=["prompt_completion"], separator=info.separator,
                    drop_missing=True, examples_per_task=0)
        return dsd["train"].select_columns(columns).to_dict()


def _task_params(info, task: str) -> dict[str, Any]:
    params = dict(info.task_entry(task).get("params") or {})
    params.pop("weight", None)
    params.pop("top_k", None)
    return params


def _records(adata, info, task: str, params: dict[str, Any], seed: int):
    """The input's prompts, rendered by c2t.instruct.build with the run's task settings; ``(prompts, cell ids,
    true labels or None)``."""
    from c2t.instruct import TASKS

    task_obj = TASKS[task](**params)
    key = task_obj.label_key
    labelled = key in adata.obs.columns
    if not labelled:  # the answer column only fills completions, which prediction ignores
        adata = adata.copy() if not adata.isbacked else adata.to_memory()
        known = info.labels(task)
        adata.obs[key] = known[0] if known else "?"
    records = _build_records(adata, info, task, params, seed, ["prompt", "cell_id", "label"])
    return records["prompt"], records["cell_id"], (records["label"] if labelled else None), key


def _check_trained(info, task: str) -> None:
    if task not in info.tasks:
        msg = f"{info.spec.path}: the run was not trained on the {task} task (its tasks: {', '.join(info.tasks) or 'none'})"
        raise C2TInputError(msg)


def predict(
    model: str | os.PathLike,
    adata,
    *,
    task: str = "cell_type",
    label_key: str | None = None,
    backend: str | Backend = "transformers",
    sampling: Sampling | Mapping[str, Any] | None = None,
    base_url: str | None = None,
    served_model: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
    synonyms: Mapping[str, Iterable[str]] | None = None,
    key_added: str | None = None,
    seed: int = 0,
    scoring: str = "generate",
    score_by: str = "sum",
    unknown_threshold: float | None = None,
    n_top: int = 3,
) -> dict[str, Any]:
    """Annotate cells with a tuned model, by generation or by likelihood.

    ``scoring="generate"``: one prompt per cell, a greedy answer, mapped onto the run's labels.
    ``scoring="likelihood"``: every label the run was trained on is scored as the completion of the cell's
    prompt (its tokens and the end-of-answer token, as training saw them); a softmax over the labels gives each
    cell's probabilities, the most probable label is the answer unless its probability is below
    ``unknown_threshold``.

    Parameters
    ----------
    model
        A c2t training run (or merged model) folder trained on ``task``.
    adata
        The cells (counts or log-normalised, as :func:`c2t.sentences.from_adata` reads them).
    task
        ``"cell_type"``, ``"drug_response"`` or ``"metadata"``; the run's task settings (label column, drug ...)
        are reused.
    label_key
        The ``obs`` column holding the truth (default: the one the run trained on). When present, accuracy
        and macro-F1 are reported; when absent, cells are still annotated.
    backend, sampling, base_url, served_model, backend_options
        As in :func:`generate_cells`; sampling defaults to greedy with 32 new tokens.
    synonyms
        ``{label: [alternative, ...]}`` accepted as the label (drug-response synonyms are built in).
    key_added
        ``obs`` column for the labels (default ``c2t_<task>``).
    seed
        Seeds the ranking tie-break and the template drawn for each cell.
    scoring
        ``"generate"`` or ``"likelihood"`` (backends: transformers, vllm, and openai where the server returns
        prompt log-probabilities).
    score_by
        Likelihood: rank labels by their summed log-probability (``"sum"``: the probability of the whole answer)
        or by its mean per token (``"mean"``).
    unknown_threshold
        Likelihood: a cell whose best label has a probability below this is ``"unknown"`` (default: never).
    n_top
        Likelihood: how many labels ``obs[key_added + "_top"]`` lists.

    Returns
    -------
    dict
        ``n_cells``, ``n_unknown``, ``labels`` (the run's label set), ``scoring`` and, with labels: ``accuracy``,
        ``macro_f1`` (scikit-learn, over the true labels), ``per_class_f1`` (likelihood: also
        ``top{n_top}_accuracy`` and ``mean_confidence``). ``adata.obs[key_added]`` gets the label
        (``"unknown"`` when the answer names none, the best label's probability is below the threshold, or the
        cell had no expressed gene). Generation: ``adata.obs[key_added + "_answer"]`` holds the raw answer.
        Likelihood: ``adata.obs[key_added + "_confidence"]`` (the best label's probability),
        ``adata.obs[key_added + "_top"]`` (the ``n_top`` best labels with their probabilities),
        ``adata.obsm[key_added + "_proba"]`` (cells x labels, columns in the order of
        ``adata.uns[key_added]["labels"]``; NaN for cells that were not prompted).
    """
    from c2t.instruct._score import DRUG_RESPONSE_SYNONYMS

    info = read_run_info(model)
    if task not in LABEL_TASKS:
        msg = (f"predict answers label tasks ({', '.join(LABEL_TASKS)}), not {task!r}; "
               f"use predict_cells for {', '.join(CELL_TASKS)}")
        raise C2TInputError(msg)
    _check_trained(info, task)
    params = _task_params(info, task)
    if label_key is not None:
        params["response_key" if task == "drug_response" else "label_key"] = label_key
    if scoring not in SCORINGS:
        msg = f"scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}"
        raise C2TInputError(msg)
    likelihood = scoring == "likelihood"
    if likelihood:
        _check_likelihood_options(score_by, unknown_threshold, n_top)
    settings = as_sampling(sampling, temperature=0.0, max_new_tokens=32)
    labels = info.labels(task)
    if not labels:
        msg = f"{info.spec.path}: the run's dataset manifest lists no labels for {task} (is its dataset folder gone?)"
        raise C2TInputError(msg)
    if likelihood:
        check_candidates(labels)
    prompts, cell_ids, truth, key = _records(adata, info, task, params, seed)
    engine = backend if isinstance(backend, Backend) else open_backend(
        backend, info.spec, base_url=base_url, served_model=served_model, **dict(backend_options or {}))
    try:
        if likelihood:
            sums, counts = engine.score_completions(prompts, labels)
        else:
            answers = storable([group[0] for group in engine.complete(prompts, sampling=settings, n=1)])
    finally:
        if not isinstance(backend, Backend):
            engine.close()
    import pandas as pd

    key_added = key_added or f"c2t_{task}"
    position = pd.Index(adata.obs_names.astype(str)).get_indexer(pd.Index(cell_ids, dtype=str))
    assert (position >= 0).all()
    column = np.full(adata.n_obs, UNKNOWN, dtype=object)
    report: dict[str, Any] = {"task": task, "model": str(info.spec.path), "backend": engine.name, "scoring": scoring}
    if likelihood:
        from c2t.generate._scoring import softmax_scores

        proba = softmax_scores(sums, counts, by=score_by)
        best = proba.argmax(axis=1)
        confidence = proba[np.arange(len(best)), best]
        predicted = np.asarray(labels, dtype=object)[best]
        if unknown_threshold is not None:
            predicted[confidence < unknown_threshold] = UNKNOWN
        column[position] = predicted
        full = np.full((adata.n_obs, len(labels)), np.nan, dtype=np.float32)
        full[position] = proba
        conf = np.full(adata.n_obs, np.nan, dtype=np.float32)
        conf[position] = confidence
        top = np.full(adata.n_obs, "", dtype=object)
        top[position] = _top_labels(proba, labels, n_top)
        adata.obs[f"{key_added}_confidence"] = conf
        adata.obs[f"{key_added}_top"] = top
        adata.obsm[f"{key_added}_proba"] = full
        report.update(score_by=score_by, unknown_threshold=unknown_threshold)
    else:
        merged = {**(DRUG_RESPONSE_SYNONYMS if task == "drug_response" else {}), **dict(synonyms or {})}
        raw = np.full(adata.n_obs, "", dtype=object)
        column[position] = match_labels([a.split("\n")[0] for a in answers], labels, synonyms=merged)
        raw[position] = answers
        adata.obs[f"{key_added}_answer"] = raw
    adata.obs[key_added] = pd.Categorical(column, categories=[*labels, UNKNOWN])
    report.update({"n_cells": int(adata.n_obs), "n_prompted": len(prompts),
                   "n_unknown": int((column == UNKNOWN).sum()), "labels": labels, "label_key": key})
    if truth is not None:
        from sklearn.metrics import accuracy_score, f1_score

        true = np.asarray(adata.obs[key].astype(str).to_numpy(), dtype=object)
        true[position] = truth  # the task's labels (drug response: mapped to sensitive/resistant)
        keep = np.asarray(pd.notna(adata.obs[key]).to_numpy(), dtype=bool)
        classes = sorted(set(true[keep]))
        report.update(
            accuracy=float(accuracy_score(true[keep], column[keep])),
            macro_f1=float(f1_score(true[keep], column[keep], labels=classes, average="macro", zero_division=0)),
            per_class_f1=dict(zip(classes, map(float, f1_score(true[keep], column[keep], labels=classes, average=None,
                                                               zero_division=0)), strict=True)),
            n_scored=int(keep.sum()),
        )
        if likelihood:
            scored = keep.copy()
            scored[np.setdiff1d(np.arange(adata.n_obs), position)] = False  # unprompted cells have no scores
            report[f"top{n_top}_accuracy"] = _top_k_accuracy(full[scored], true[scored], labels, n_top)
    if likelihood:
        report["mean_confidence"] = float(np.nanmean(conf)) if np.isfinite(conf).any() else None
    adata.uns[key_added] = {k: v for k, v in report.items() if k != "labels" and v is not None}  # h5ad has no None
    if likelihood:
        adata.uns[key_added]["labels"] = list(labels)
    return report


SCORINGS = ("generate", "likelihood")


def _check_likelihood_options(score_by: str, unknown_threshold: float | None, n_top: int) -> None:
    if score_by not in ("sum", "mean"):
        msg = f"score_by must be 'sum' or 'mean', not {score_by!r}"
        raise C2TInputError(msg)
    if unknown_threshold is not None and (isinstance(unknown_threshold, bool)
                                          or not isinstance(unknown_threshold, int | float)
                                          or not 0.0 <= unknown_threshold <= 1.0):
        msg = f"unknown_threshold must be a probability between 0 and 1, not {unknown_threshold!r}"
        raise C2TInputError(msg)
    if isinstance(n_top, bool) or not isinstance(n_top, int) or n_top < 1:
        msg = f"n_top must be a positive integer, not {n_top!r}"
        raise C2TInputError(msg)


def _top_labels(proba: np.ndarray, labels: Sequence[str], n: int) -> list[str]:
    """``"B (0.93), NK (0.04), ..."`` per row: the ``n`` most probable labels."""
    order = np.argsort(-proba, axis=1, kind="stable")[:, :n]
    return [", ".join(f"{labels[j]} ({p[j]:.2f})" for j in row) for row, p in zip(order, proba, strict=True)]


def _top_k_accuracy(proba: np.ndarray, truth: np.ndarray, labels: Sequence[str], k: int) -> float | None:
    """Share of cells whose true label is among their ``k`` most probable (None without cells)."""
    if len(truth) == 0:
        return None
    index = {label: j for j, label in enumerate(labels)}
    true_col = np.array([index.get(t, -1) for t in truth])
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    return float(np.mean((order == true_col[:, None]).any(axis=1)))


def predict_cells(
    model: str | os.PathLike,
    adata,
    *,
    task: str = "perturbation",
    backend: str | Backend = "transformers",
    sampling: Sampling | Mapping[str, Any] | None = None,
    base_url: str | None = None,
    served_model: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
    seed: int = 0,
):
    """Predict cells from cells (perturbation: a control cell + the perturbed gene -> the perturbed cell).

    Every perturbed cell of ``adata`` is paired with a control cell exactly as the run's dataset was built (same
    perturbation column, control value and matching column); the model writes the perturbed cell's sentence,
    which is decoded into expression and scored against the real perturbed cell's sentence.

    Parameters
    ----------
    model
        A c2t training run trained on ``task``.
    adata
        Control and perturbed cells.
    task
        ``"perturbation"``.
    backend, sampling, base_url, served_model, backend_options
        As in :func:`generate_cells` (sampling defaults to greedy).
    seed
        Seeds the ranking tie-break, the control pairing and the templates.

    Returns
    -------
    anndata.AnnData
        The predicted cells, decoded (as :func:`generate_cells`), with ``obs``: ``perturbation``, ``cell_id`` (the
        real perturbed cell), ``control_cell_id``, ``c2t_text``, and per cell ``overlap`` / ``precision`` (share
        of the real cell's genes predicted / of the predicted genes in the real cell) and ``control_overlap`` (the
        same for the unchanged control sentence: the "no effect" baseline). ``uns["c2t_predict"]`` holds the means.
    """
    import pandas as pd

    from c2t.instruct import score_generation
    from c2t.sentences import decode

    info = read_run_info(model)
    if task not in CELL_TASKS:
        msg = f"predict_cells predicts {', '.join(CELL_TASKS)}, not {task!r}; use predict for label tasks"
        raise C2TInputError(msg)
    _check_trained(info, task)
    settings = as_sampling(sampling, temperature=0.0, max_new_tokens=3 * (info.top_k or 100) + 16)
    records = _build_records(adata, info, task, _task_params(info, task), seed,
                             ["prompt", "completion", "cell_id", "control_cell_id", "label"])
    engine = backend if isinstance(backend, Backend) else open_backend(
        backend, info.spec, base_url=base_url, served_model=served_model, **dict(backend_options or {}))
    try:
        texts = storable([group[0] for group in engine.complete(records["prompt"], sampling=settings, n=1)])
    finally:
        if not isinstance(backend, Backend):
            engine.close()
    vocabulary = info.vocabulary()
    vocab = set(vocabulary)
    position = {c: i for i, c in enumerate(adata.obs_names.astype(str))}
    controls = _sentences_of(adata, info, [position[c] for c in records["control_cell_id"]], seed)
    scores = [score_generation(t, truth, vocabulary=vocab) for t, truth in zip(texts, records["completion"], strict=True)]
    baseline = [score_generation(c, truth, vocabulary=vocab) for c, truth in zip(controls, records["completion"], strict=True)]
    obs = pd.DataFrame({
        "perturbation": pd.Categorical(records["label"]), "cell_id": records["cell_id"],
        "control_cell_id": records["control_cell_id"], "c2t_text": texts,
        "overlap": [s["overlap"] for s in scores], "precision": [s["precision"] for s in scores],
        "control_overlap": [s["overlap"] for s in baseline],
    }, index=pd.Index([f"predicted_{i}" for i in range(len(texts))]))
    cells = decode(texts, model=(vocabulary, info.inverse_model()), delimiter=None, obs=obs)
    cells.uns["c2t_predict"] = {
        "task": task, "model": str(info.spec.path), "backend": engine.name, "n_cells": len(texts),
        "mean_overlap": float(obs["overlap"].mean()), "mean_precision": float(obs["precision"].mean()),
        "mean_control_overlap": float(obs["control_overlap"].mean()),
        "decode": cells.uns.pop("c2t_decode"),
    }
    return cells


def _sentences_of(adata, info, rows: list[int], seed: int) -> list[str]:
    """The run-style cell sentences (top-k, same tie-break seed) of ``adata``'s cells at ``rows``."""
    from c2t.sentences import from_adata

    texts = from_adata(adata, top_k=info.top_k, seed=seed).texts()
    return [texts[r] for r in rows]
