"""Scoring a model's answer, one function per kind of task, so evaluation code never re-implements it.

- :func:`score_label`: normalised exact match of a label (case, punctuation, plurals, a trailing "cell(s)"
  and synonyms ignored) — cell type, metadata, drug response, multi-cell and spatial tasks.
- :func:`score_choice`: multiple choice, answered with the letter or the label.
- :func:`score_generation`: a generated cell sentence against the reference one: valid-gene rate,
  duplicates, overlap (recall of the reference genes) and precision.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from c2t._errors import C2TInputError

_PREFIX = re.compile(r"^(?:the\s+)?(?:answer|cell\s*type|label|prediction|response)\s*(?:is)?\s*[:=-]?\s*", re.I)
_PUNCT = re.compile(r"[^\w\s+]")
_CHOICE = re.compile(r"^(?:\(([A-Za-z])\)|([A-Za-z])(?:[.):]|$))")
_TRIM = " \t\r\n.,;:"

#: Answers accepted for the drug-response labels besides the labels themselves.
DRUG_RESPONSE_SYNONYMS = {
    "resistant": ["resistance", "not sensitive", "insensitive", "non responsive", "non responder", "refractory"],
    "sensitive": ["sensitivity", "susceptible", "responsive", "responder", "not resistant"],
}


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def normalize_label(text: str) -> str:
    """Normalise a label or an answer for comparison.

    Takes the first line, drops an "answer:"-style prefix, case, accents' compatibility forms, punctuation
    other than ``+``, leading articles, plural ``s`` and a trailing word "cell".

    Examples
    --------
    >>> normalize_label("Answer: CD4 T cells.")
    'cd4 t'
    >>> normalize_label("CD14+ Monocytes") == normalize_label("cd14+ monocyte")
    True
    >>> normalize_label("Pyramidal L2-3")
    'pyramidal l2 3'
    """
    text = unicodedata.normalize("NFKC", str(text)).strip()
    text = text.splitlines()[0] if text else ""
    text = _PREFIX.sub("", text).casefold()
    words = _PUNCT.sub(" ", text.replace("_", " ")).split()
    while len(words) > 1 and words[0] in ("a", "an", "the"):
        words = words[1:]
    words = [_singular(w) for w in words]
    if len(words) > 1 and words[-1] == "cell":
        words = words[:-1]
    return " ".join(words)


def _canonical(synonyms: Mapping[str, Iterable[str]] | None) -> dict[str, str]:
    table: dict[str, str] = {}
    for label, alternatives in (synonyms or {}).items():
        canon = normalize_label(label)
        for alt in [label, *alternatives]:
            table[normalize_label(alt)] = canon
    return table


def score_label(prediction: str, reference: str, *, synonyms: Mapping[str, Iterable[str]] | None = None) -> float:
    """1.0 when ``prediction`` names the ``reference`` label (after :func:`normalize_label` and synonyms), else 0.0.

    Parameters
    ----------
    prediction
        The model's answer.
    reference
        The true label.
    synonyms
        ``{label: [alternative, ...]}``; an alternative counts as its label.

    Examples
    --------
    >>> score_label("cd4 t cells", "CD4 T cell")
    1.0
    >>> score_label("Mono", "CD14+ Monocytes", synonyms={"CD14+ Monocytes": ["mono", "classical monocyte"]})
    1.0
    >>> score_label("B", "NK")
    0.0
    """
    table = _canonical(synonyms)
    pred, ref = normalize_label(prediction), normalize_label(reference)
    return float(bool(ref) and table.get(pred, pred) == table.get(ref, ref))


def parse_choice(prediction: str) -> str | None:
    """The option letter of a multiple-choice answer (``"C"``, ``"(C)"``, ``"C."``, ``"C) B cells"``), or ``None``.

    Examples
    --------
    >>> parse_choice("C"), parse_choice("(b) NK cells"), parse_choice("B cells")
    ('C', 'B', None)
    """
    text = str(prediction).strip()
    match = _CHOICE.match(text.splitlines()[0].strip() if text else "")
    return (match.group(1) or match.group(2)).upper() if match else None


def score_choice(prediction: str, reference: str, *, label: str | None = None,
                 synonyms: Mapping[str, Iterable[str]] | None = None) -> float:
    """Score a multiple-choice answer given as the option letter or as the label itself.

    Parameters
    ----------
    prediction
        The model's answer.
    reference
        The correct option (its letter, possibly followed by the label, as in the record's completion).
    label
        The correct label, to accept an answer that names it instead of its letter.
    synonyms
        As in :func:`score_label`.

    Examples
    --------
    >>> score_choice("B", "B"), score_choice("B. NK cell", "B"), score_choice("NK cells", "B", label="NK cell")
    (1.0, 1.0, 1.0)
    >>> score_choice("A", "B", label="NK cell")
    0.0
    """
    letter = parse_choice(prediction)
    if letter is not None:
        return float(letter == parse_choice(reference))
    return score_label(prediction, label, synonyms=synonyms) if label is not None else 0.0


def tokens(sentence: str, delimiter: str | None = None) -> list[str]:
    """Gene tokens of a cell sentence (split on ``delimiter``, any whitespace by default, trimmed of ``.,;:``)."""
    parts = str(sentence).split(delimiter)
    return [t for t in (p.strip(_TRIM) for p in parts) if t]


def read_vocabulary(source) -> set[str] | None:
    """A gene vocabulary from a list of names, a ``vocabulary.txt`` file or a folder holding one."""
    if source is None:
        return None
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        path = path / "vocabulary.txt" if path.is_dir() else path
        return set(path.read_text(encoding="utf-8").split("\n")[:-1])
    return {str(g) for g in source}


def score_generation(prediction: str, reference: str, *, vocabulary=None, delimiter: str | None = None) -> dict:
    """Compare a generated cell sentence with the reference one.

    Parameters
    ----------
    prediction, reference
        Cell sentences (gene names, highest expression first).
    vocabulary
        Valid gene names (a collection, ``vocabulary.txt`` or an instruction-dataset folder); without it
        ``valid_gene_rate`` is NaN.
    delimiter
        Gene separator (default: any whitespace).

    Returns
    -------
    dict
        ``n_genes`` (tokens generated), ``valid_gene_rate`` (tokens that are genes), ``duplicate_rate``
        (repeated valid genes), ``overlap`` (share of the reference's genes generated) and ``precision``
        (share of the distinct generated genes found in the reference).

    Examples
    --------
    >>> s = score_generation("CD3D IL7R CD3D FOO", "CD3D IL7R LTB NKG7", vocabulary=["CD3D", "IL7R", "LTB", "NKG7"])
    >>> [round(s[k], 3) for k in ("valid_gene_rate", "duplicate_rate", "overlap", "precision")]
    [0.75, 0.333, 0.5, 1.0]
    """
    vocab = vocabulary if isinstance(vocabulary, set) else read_vocabulary(vocabulary)
    pred, ref = tokens(prediction, delimiter), tokens(reference, delimiter)
    valid = [t for t in pred if t in vocab] if vocab is not None else pred
    distinct = set(valid)
    ref_set = set(ref)
    hits = len(distinct & ref_set)
    return {
        "n_genes": len(pred),
        "valid_gene_rate": (len(valid) / len(pred) if pred else 0.0) if vocab is not None else float("nan"),
        "duplicate_rate": (len(valid) - len(distinct)) / len(valid) if valid else 0.0,
        "overlap": hits / len(ref_set) if ref_set else float("nan"),
        "precision": hits / len(distinct) if distinct else 0.0,
    }


def score(records, predictions, *, vocabulary=None, synonyms: Mapping[str, Iterable[str]] | None = None) -> dict:
    """Score predictions for instruction records of any mix of tasks (each record's ``task`` picks its scorer).

    Parameters
    ----------
    records
        A ``datasets.Dataset`` built by :func:`c2t.instruct.build`, or a list of record dicts (``task``,
        ``completion``, ``label``).
    predictions
        One answer per record.
    vocabulary
        For generation tasks: gene names, a ``vocabulary.txt`` or the dataset folder.
    synonyms
        Extra label synonyms for the label tasks (drug-response synonyms are built in).

    Returns
    -------
    dict
        ``per_task``: mean of each metric per task; ``per_example``: one dict of metrics per record.

    Examples
    --------
    >>> records = [{"task": "cell_type", "completion": "B cell", "label": "B cell"},
    ...            {"task": "cell_type_mc", "completion": "C", "label": "NK cell"}]
    >>> score(records, ["b cells", "A"])["per_task"]
    {'cell_type': {'accuracy': 1.0, 'n': 1}, 'cell_type_mc': {'accuracy': 0.0, 'n': 1}}
    """
    from c2t.instruct._tasks import TASKS

    if hasattr(records, "select_columns"):
        records = records.select_columns(["task", "completion", "label"]).to_list()
    records = list(records)
    predictions = list(predictions)
    if len(records) != len(predictions):
        msg = f"{len(predictions)} predictions for {len(records)} records"
        raise C2TInputError(msg)
    vocab = read_vocabulary(vocabulary)
    per_example = []
    for record, prediction in zip(records, predictions, strict=True):
        task = TASKS.get(record["task"])
        if task is None:
            msg = f"record of unknown task {record['task']!r}; tasks are: {', '.join(TASKS)}"
            raise C2TInputError(msg)
        per_example.append(task.score_record(prediction, record, vocabulary=vocab, synonyms=synonyms))
    per_task: dict[str, dict] = {}
    for record, metrics in zip(records, per_example, strict=True):
        per_task.setdefault(record["task"], {}).setdefault("_rows", []).append(metrics)
    for entry in per_task.values():
        rows = entry.pop("_rows")
        for metric in rows[0]:
            values = np.array([r[metric] for r in rows], dtype=np.float64)
            entry[metric] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        entry["n"] = len(rows)
    return {"per_task": per_task, "per_example": per_example}
