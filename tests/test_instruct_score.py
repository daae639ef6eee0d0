"""Scoring answers: normalised label match with synonyms, multiple choice by letter or label, generated sentences."""

from __future__ import annotations

import math

import pytest

from c2t import C2TInputError
from c2t.instruct import normalize_label, parse_choice, score, score_choice, score_generation, score_label


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("CD4 T cells", "CD4 T cell"),
        ("  cd14+ monocytes.", "CD14+ Monocytes"),
        ("Answer: B cells", "B"),
        ("The cell type is: NK", "NK cell"),
        ("oligodendrocyte_mature", "Oligodendrocyte Mature"),
        ("Pyramidal L2/3", "Pyramidal L2-3"),
        ("Resistant\nbecause ...", "resistant"),
    ],
)
def test_label_matches_despite_case_punctuation_plural(prediction, reference):
    assert score_label(prediction, reference) == 1.0


@pytest.mark.parametrize(("prediction", "reference"), [("CD8 T", "CD4 T"), ("B", "NK"), ("", "B"), ("CD14 Mono", "CD14+ Mono")])
def test_different_labels_do_not_match(prediction, reference):
    assert score_label(prediction, reference) == 0.0


def test_synonyms():
    synonyms = {"FCGR3A+ Mono": ["CD16+ monocyte", "non-classical monocyte"]}
    assert score_label("Non-classical monocytes", "FCGR3A+ Mono", synonyms=synonyms) == 1.0
    assert score_label("FCGR3A+ Mono", "CD16+ monocyte", synonyms=synonyms) == 1.0
    assert score_label("classical monocyte", "FCGR3A+ Mono", synonyms=synonyms) == 0.0
    assert normalize_label("An NK cell") == "nk"


def test_multiple_choice_by_letter_or_label():
    assert parse_choice("C") == "C" and parse_choice("(c)") == "C" and parse_choice("D) Monocyte") == "D"
    assert parse_choice("B cells") is None and parse_choice("") is None
    assert score_choice("C. NK cell", "C") == 1.0
    assert score_choice("NK cells", "C", label="NK cell") == 1.0
    assert score_choice("Monocyte", "C", label="NK cell") == 0.0
    assert score_choice("A", "C", label="NK cell") == 0.0


def test_generation_metrics():
    vocab = ["CD3D", "IL7R", "LTB", "NKG7", "LYZ"]
    perfect = score_generation("CD3D IL7R LTB", "CD3D IL7R LTB", vocabulary=vocab)
    assert perfect == {"n_genes": 3, "valid_gene_rate": 1.0, "duplicate_rate": 0.0, "overlap": 1.0, "precision": 1.0}
    partial = score_generation("CD3D, LYZ, FAKE1, CD3D.", "CD3D IL7R LTB NKG7", vocabulary=vocab)
    assert partial["n_genes"] == 4 and partial["valid_gene_rate"] == 0.75
    assert partial["overlap"] == 0.25 and partial["precision"] == 0.5
    assert partial["duplicate_rate"] == pytest.approx(1 / 3)
    assert math.isnan(score_generation("CD3D", "CD3D")["valid_gene_rate"])
    assert score_generation("", "CD3D", vocabulary=vocab)["overlap"] == 0.0


def test_score_dispatches_by_task():
    records = [
        {"task": "cell_type", "completion": "B cell", "label": "B cell"},
        {"task": "drug_response", "completion": "resistant", "label": "resistant"},
        {"task": "drug_response", "completion": "sensitive", "label": "sensitive"},
        {"task": "generation", "completion": "CD3D IL7R", "label": "T"},
        {"task": "cell_type_mc", "completion": "B", "label": "NK cell"},
    ]
    result = score(records, ["B cells", "Resistance", "resistant", "CD3D LYZ", "NK cells"], vocabulary=["CD3D", "IL7R", "LYZ"])
    per_task = result["per_task"]
    assert per_task["cell_type"]["accuracy"] == 1.0 and per_task["cell_type_mc"]["accuracy"] == 1.0
    assert per_task["drug_response"] == {"accuracy": 0.5, "n": 2}
    assert per_task["generation"]["overlap"] == 0.5 and per_task["generation"]["valid_gene_rate"] == 1.0
    assert len(result["per_example"]) == 5
    with pytest.raises(C2TInputError, match="2 predictions for 5 records"):
        score(records, ["a", "b"])
    with pytest.raises(C2TInputError, match="record of unknown task 'qa'"):
        score([{"task": "qa", "completion": "x", "label": None}], ["x"])
