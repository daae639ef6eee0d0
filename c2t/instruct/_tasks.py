"""The instruction tasks: each a small class holding how to build its examples and how to score an answer.

A task says which ``obs`` columns it reads, which prompt fields it provides (checked against its prompt
file), which cells can make an example, how examples are planned from the cells of one split (integer
arrays only) and how a planned chunk becomes Arrow columns. :data:`TASKS` maps each name to its class.

Examples
--------
>>> sorted(TASKS)  # doctest: +NORMALIZE_WHITESPACE
['cell_type', 'cell_type_mc', 'drug_response', 'generation', 'metadata', 'multi_cell', 'perturbation',
 'spatial', 'unconditional']
>>> task = TASKS["cell_type"](label_key="seurat_celltype")
>>> task.params()
{'weight': 1.0, 'top_k': None, 'label_key': 'seurat_celltype'}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from c2t._errors import C2TInputError
from c2t.instruct._data import Cells
from c2t.instruct._render import STRING, scalar
from c2t.instruct._score import DRUG_RESPONSE_SYNONYMS, score_choice, score_generation, score_label

Columns = dict[str, pa.Array | pa.Scalar]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _as_text(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), STRING)


@dataclass(kw_only=True)
class Task:
    """Base of the tasks: the shared parameters, checks and helpers.

    Parameters
    ----------
    weight
        Examples per eligible cell (2: each cell twice, with other templates; 0.5: a seeded half of the cells).
    top_k
        Genes per cell sentence in this task's examples (default: the build's ``top_k``).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    fields: ClassVar[dict[str, str]] = {}
    answer_fields: ClassVar[dict[str, str]] = {}
    required: ClassVar[tuple[str, ...]] = ()
    scorer: ClassVar[str] = "label"

    weight: float = 1.0
    top_k: int | None = None
    organism: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, int | float) or not self.weight > 0:
            msg = f"{self.name}: weight must be a positive number, not {self.weight!r}"
            raise C2TInputError(msg)
        self.weight = float(self.weight)
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1):
            msg = f"{self.name}: top_k must be a positive integer or null, not {self.top_k!r}"
            raise C2TInputError(msg)
        for f in dataclasses.fields(self):
            if f.init and (f.name.endswith("_key") or f.name == "key"):
                value = getattr(self, f.name)
                if value is not None and not isinstance(value, str):
                    msg = f"{self.name}: {f.name} must be an obs column name, not {value!r}"
                    raise C2TInputError(msg)

    # ------------------------------------------------------------------------------------- configuration
    def params(self) -> dict[str, Any]:
        """The task's parameters as given (recorded in the manifest)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @property
    def label_key(self) -> str | None:
        """The ``obs`` column of this task's label (the default stratification column)."""
        return None

    def obs_keys(self) -> dict[str, str]:
        """``obs`` columns read, each with a phrase saying why (used in error messages)."""
        return {}

    def obsm_keys(self) -> list[str]:
        return []

    def provided(self) -> set[str]:
        """Prompt fields available in this build."""
        return {f for f in self.fields if f != "organism" or self.organism is not None}

    def answer_provided(self) -> set[str]:
        return set(self.answer_fields)

    def effective_top_k(self, cells: Cells) -> int | None:
        if self.top_k is not None and cells.top_k is not None and self.top_k > cells.top_k:
            msg = f"{self.name}: top_k={self.top_k} is more than the build's top_k={cells.top_k}"
            raise C2TInputError(msg)
        return self.top_k if self.top_k is not None else cells.top_k

    # --------------------------------------------------------------------------------------------- data
    def _codes(self, cells: Cells, key: str, role: str, *, drop_missing: bool, report: dict) -> np.ndarray:
        """Codes of ``obs[key]``; missing values raise, or are dropped and counted with ``drop_missing``."""
        codes = cells.codes(key)[0]
        missing = codes < 0
        if missing.any():
            if not drop_missing:
                example = cells.obs.index[np.flatnonzero(missing)[0]]
                msg = (f"{self.name}: {role} obs[{key!r}] has {int(missing.sum())} missing (NaN) value(s), e.g. cell "
                       f"{example!r}; pass drop_missing=True to leave those cells out")
                raise C2TInputError(msg)
            report.setdefault("dropped_missing", {})[key] = int(missing.sum())
        return codes

    def _nonempty(self, cells: Cells, rows_mask: np.ndarray, *, drop_missing: bool, report: dict) -> np.ndarray:
        empty = rows_mask & (cells.lengths == 0)
        if empty.any():
            if not drop_missing:
                example = cells.obs.index[np.flatnonzero(empty)[0]]
                msg = (f"{self.name}: {int(empty.sum())} cell(s) have an empty cell sentence (no expressed gene), "
                       f"e.g. {example!r}; remove them (where=) or pass drop_missing=True")
                raise C2TInputError(msg)
            report["dropped_empty"] = int(empty.sum())
        return ~empty

    def eligible(self, cells: Cells, *, drop_missing: bool) -> tuple[np.ndarray, dict]:
        """Which cells can make an example (the others are refused, or dropped and counted)."""
        report: dict = {}
        mask = np.ones(len(cells), dtype=bool)
        if self.label_key is not None:
            mask &= self._codes(cells, self.label_key, "label", drop_missing=drop_missing, report=report) >= 0
        mask &= self._nonempty(cells, mask, drop_missing=drop_missing, report=report)
        return mask, report

    def setup(self, cells: Cells, split: np.ndarray, eligible: np.ndarray) -> None:
        """Work shared by every split, done once the cells are split (e.g. spatial neighbours)."""

    def label_values(self, cells: Cells, rows: np.ndarray) -> tuple[np.ndarray, Any] | None:
        """Label codes of ``rows`` and the label names (for the manifest's label counts), or None."""
        if self.label_key is None:
            return None
        codes, names = cells.codes(self.label_key)
        return codes[rows], names

    def repeat(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``rows`` repeated ``weight`` times: whole passes, then a seeded sample for the fraction."""
        whole, fraction = int(self.weight), self.weight - int(self.weight)
        parts = [rows] * whole
        if fraction > 0 and len(rows):
            parts.append(np.sort(rng.choice(rows, size=round(fraction * len(rows)), replace=False)))
        return np.concatenate(parts) if parts else rows[:0]

    def plan(self, cells: Cells, rows: np.ndarray, rng: np.random.Generator, in_split: np.ndarray) -> dict[str, np.ndarray]:
        """Integer plan of this split's examples; ``rows`` are the split's eligible cells. Must hold ``row``."""
        return {"row": self.repeat(rows, rng)}

    def columns(self, cells: Cells, plan: Mapping[str, np.ndarray]) -> tuple[Columns, Columns, Columns]:
        """Arrow columns of planned examples: prompt fields, answer fields and record columns."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ helpers
    def _sentence(self, cells: Cells, rows: np.ndarray) -> Columns:
        text, lengths = cells.sentences(rows, self.effective_top_k(cells))
        return {"cell_sentence": text, "n_genes": _as_text(lengths)}

    def _record(self, cells: Cells, rows: np.ndarray, label: pa.Array | None) -> Columns:
        return {
            "cell_id": cells.cell_ids.take(pa.array(rows)),
            "label": label if label is not None else pa.nulls(len(rows), STRING),
            "label_key": scalar(self.label_key) if self.label_key is not None else pa.nulls(len(rows), STRING),
        }

    def _common(self, fields: Columns) -> Columns:
        if self.organism is not None:
            fields["organism"] = scalar(self.organism)
        return fields

    # ------------------------------------------------------------------------------------------ scoring
    @classmethod
    def score_record(cls, prediction: str, record: Mapping[str, Any], *, vocabulary=None, synonyms=None) -> dict:
        """Score one answer against a record of this task: it must name the completion (or the record's label)."""
        references = [record["completion"], *([record["label"]] if record.get("label") else [])]
        return {"accuracy": max(score_label(prediction, ref, synonyms=synonyms) for ref in references)}


class _Generates:
    """Scoring of the tasks whose answer is a cell sentence."""

    scorer: ClassVar[str] = "generation"

    @classmethod
    def score_record(cls, prediction, record, *, vocabulary=None, synonyms=None):
        return score_generation(prediction, record["completion"], vocabulary=vocabulary)


# ------------------------------------------------------------------------------------------ cell type
@dataclass(kw_only=True)
class CellType(Task):
    """Cell type annotation: a cell sentence in, the cell's label out.

    Parameters
    ----------
    label_key
        The ``obs`` column of cell types.
    """

    name: ClassVar[str] = "cell_type"
    summary: ClassVar[str] = "cell sentence -> cell type"
    fields: ClassVar[dict[str, str]] = {
        "cell_sentence": "the cell's genes, highest expression first",
        "n_genes": "number of genes in the sentence",
        "organism": "the build's organism (when given)",
    }
    answer_fields: ClassVar[dict[str, str]] = {"cell_type": "the cell's label"}
    required: ClassVar[tuple[str, ...]] = ("cell_sentence",)

    label_key: str = "cell_type"  # type: ignore[assignment]

    def obs_keys(self) -> dict[str, str]:
        return {self.label_key: f"{self.name}: label column (label_key)"}

    def columns(self, cells, plan):
        rows = plan["row"]
        label = cells.strings(self.label_key, rows)
        return self._common(self._sentence(cells, rows)), {"cell_type": label}, self._record(cells, rows, label)


@dataclass(kw_only=True)
class CellTypeChoice(CellType):
    """Cell type annotation as multiple choice: the true label among seeded, shuffled distractors.

    Parameters
    ----------
    n_options
        Options per question (at most the number of labels).
    """

    name: ClassVar[str] = "cell_type_mc"
    summary: ClassVar[str] = "cell sentence + lettered options -> letter of the cell type"
    fields: ClassVar[dict[str, str]] = {
        **CellType.fields,
        "options": "lettered options, one per line ('A. B cell')",
        "n_options": "number of options",
        "letters": "the option letters, comma-separated ('A, B, C or D')",
    }
    answer_fields: ClassVar[dict[str, str]] = {"letter": "letter of the true option", "cell_type": "the true label"}
    required: ClassVar[tuple[str, ...]] = ("cell_sentence", "options")
    scorer: ClassVar[str] = "choice"

    n_options: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.n_options, bool) or not isinstance(self.n_options, int) or not 2 <= self.n_options <= 26:
            msg = f"{self.name}: n_options must be an integer from 2 to 26, not {self.n_options!r}"
            raise C2TInputError(msg)

    def setup(self, cells, split, eligible):
        super().setup(cells, split, eligible)
        codes = cells.codes(self.label_key)[0]
        self._labels = np.unique(codes[eligible])
        if len(self._labels) < 2:
            msg = f"{self.name}: obs[{self.label_key!r}] has a single label; multiple choice needs at least 2"
            raise C2TInputError(msg)
        self._k = min(self.n_options, len(self._labels))

    def plan(self, cells, rows, rng, in_split):
        rows = self.repeat(rows, rng)
        codes = cells.codes(self.label_key)[0]
        position = np.searchsorted(self._labels, codes[rows])  # index of the true label among the labels
        options = np.empty((len(rows), self._k), dtype=np.int32)
        for start in range(0, len(rows), 65_536):  # bounded memory: n x n_labels keys per block
            block = slice(start, start + 65_536)
            keys = rng.random((len(position[block]), len(self._labels)))
            keys[np.arange(len(keys)), position[block]] = -1.0  # the true label is always kept
            chosen = np.argpartition(keys, self._k - 1, axis=1)[:, : self._k]
            shuffled = np.take_along_axis(chosen, np.argsort(rng.random(chosen.shape), axis=1), axis=1)
            options[block] = self._labels[shuffled]
        answer = np.argmax(options == codes[rows][:, None], axis=1)
        return {"row": rows, "options": options, "answer": answer.astype(np.int8)}

    def columns(self, cells, plan):
        rows, options = plan["row"], plan["options"]
        names = cells.names(self.label_key)
        args: list = []
        for j in range(options.shape[1]):
            args += [scalar(("\n" if j else "") + f"{LETTERS[j]}. "), names.take(pa.array(options[:, j]))]
        fields = self._sentence(cells, rows)
        fields["options"] = pc.binary_join_element_wise(*args, scalar(""))
        fields["n_options"] = scalar(str(options.shape[1]))
        letters = list(LETTERS[: options.shape[1]])
        fields["letters"] = scalar(", ".join(letters[:-1]) + " or " + letters[-1])
        label = cells.strings(self.label_key, rows)
        answers = {"letter": pa.array(letters, STRING).take(pa.array(plan["answer"])), "cell_type": label}
        return self._common(fields), answers, self._record(cells, rows, label)

    @classmethod
    def score_record(cls, prediction, record, *, vocabulary=None, synonyms=None):
        return {"accuracy": score_choice(prediction, record["completion"], label=record.get("label"), synonyms=synonyms)}


# ---------------------------------------------------------------------------------------- generation
@dataclass(kw_only=True)
class Generation(_Generates, Task):
    """Conditional cell generation: a cell type (and optionally tissue, condition, organism) in, a cell sentence out.

    Parameters
    ----------
    label_key
        The ``obs`` column of cell types.
    tissue_key, condition_key
        Optional ``obs`` columns of tissue and condition, given in the prompt.
    """

    name: ClassVar[str] = "generation"
    summary: ClassVar[str] = "cell type (+ tissue, condition, organism) -> cell sentence"
    fields: ClassVar[dict[str, str]] = {
        "cell_type": "the label to generate",
        "context": "' (tissue: ...; condition: ...; organism: ...)' for what is given, else empty",
        "tissue": "obs[tissue_key] (when given)",
        "condition": "obs[condition_key] (when given)",
        "n_genes": "number of genes in the answer",
        "organism": "the build's organism (when given)",
    }
    answer_fields: ClassVar[dict[str, str]] = {"cell_sentence": "the cell's genes, highest expression first"}
    required: ClassVar[tuple[str, ...]] = ("cell_type",)

    label_key: str = "cell_type"  # type: ignore[assignment]
    tissue_key: str | None = None
    condition_key: str | None = None

    def _extra_keys(self) -> dict[str, str]:
        return {k: v for k, v in (("tissue", self.tissue_key), ("condition", self.condition_key)) if v is not None}

    def obs_keys(self):
        keys = {self.label_key: f"{self.name}: label column (label_key)"}
        keys.update({key: f"{self.name}: {what} column ({what}_key)" for what, key in self._extra_keys().items()})
        return keys

    def provided(self):
        return super().provided() - {what for what in ("tissue", "condition") if what not in self._extra_keys()}

    def eligible(self, cells, *, drop_missing):
        mask, report = super().eligible(cells, drop_missing=drop_missing)
        for what, key in self._extra_keys().items():
            mask &= self._codes(cells, key, what, drop_missing=drop_missing, report=report) >= 0
        return mask, report

    def columns(self, cells, plan):
        rows = plan["row"]
        sentence = self._sentence(cells, rows)
        label = cells.strings(self.label_key, rows)
        fields = {"cell_type": label, "n_genes": sentence["n_genes"]}
        parts: list = []
        for what, key in self._extra_keys().items():
            fields[what] = cells.strings(key, rows)
            parts += [scalar(("; " if parts else " (") + f"{what}: "), fields[what]]
        if self.organism is not None:
            parts += [scalar(("; " if parts else " (") + "organism: "), scalar(self.organism)]
        fields["context"] = pc.binary_join_element_wise(*parts, scalar(")"), scalar("")) if parts else scalar("")
        return self._common(fields), {"cell_sentence": sentence["cell_sentence"]}, self._record(cells, rows, label)


@dataclass(kw_only=True)
class Unconditional(_Generates, Task):
    """Unconditional cell generation: a request (optionally naming the organism) in, a cell sentence out."""

    name: ClassVar[str] = "unconditional"
    summary: ClassVar[str] = "(organism) -> cell sentence"
    fields: ClassVar[dict[str, str]] = {
        "n_genes": "number of genes in the answer",
        "organism": "the build's organism (when given)",
    }
    answer_fields: ClassVar[dict[str, str]] = {"cell_sentence": "the cell's genes, highest expression first"}

    def columns(self, cells, plan):
        rows = plan["row"]
        sentence = self._sentence(cells, rows)
        return (self._common({"n_genes": sentence["n_genes"]}), {"cell_sentence": sentence["cell_sentence"]},
                self._record(cells, rows, None))


# ------------------------------------------------------------------------------------------ metadata
@dataclass(kw_only=True)
class Metadata(Task):
    """Metadata prediction: a cell sentence in, the value of any ``obs`` column out (tissue, disease, donor ...).

    Parameters
    ----------
    key
        The ``obs`` column to predict.
    attribute
        How prompts name it (default: ``key`` with underscores as spaces).
    """

    name: ClassVar[str] = "metadata"
    summary: ClassVar[str] = "cell sentence -> value of an obs column"
    fields: ClassVar[dict[str, str]] = {
        "cell_sentence": "the cell's genes, highest expression first",
        "n_genes": "number of genes in the sentence",
        "attribute": "what is asked, e.g. 'tissue'",
        "organism": "the build's organism (when given)",
    }
    answer_fields: ClassVar[dict[str, str]] = {"value": "the cell's value of the column"}
    required: ClassVar[tuple[str, ...]] = ("cell_sentence", "attribute")

    key: str | None = None
    attribute: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.key:
            msg = f"{self.name}: give key, the obs column to predict"
            raise C2TInputError(msg)

    @property
    def label_key(self):
        return self.key

    @property
    def attribute_name(self) -> str:
        return self.attribute or str(self.key).replace("_", " ")

    def obs_keys(self):
        return {self.key: f"{self.name}: column to predict (key)"}

    def columns(self, cells, plan):
        rows = plan["row"]
        fields = self._sentence(cells, rows)
        fields["attribute"] = scalar(self.attribute_name)
        value = cells.strings(self.key, rows)
        return self._common(fields), {"value": value}, self._record(cells, rows, value)


# -------------------------------------------------------------------------------------- drug response
@dataclass(kw_only=True)
class DrugResponse(Task):
    """Drug response (CHATCELL): a cell sentence and a drug in, "sensitive" or "resistant" out.

    Parameters
    ----------
    response_key
        The ``obs`` column of the response labels.
    drug_key
        The ``obs`` column of the treatment (must exist; gives the drug per cell when ``drug`` is null).
    drug
        The drug named in every prompt (default erlotinib); null: read it from ``drug_key``.
    label_map
        Maps values of ``response_key`` to "sensitive"/"resistant"; a value mapped to null leaves its cells out.
    """

    name: ClassVar[str] = "drug_response"
    summary: ClassVar[str] = "cell sentence + drug -> sensitive / resistant"
    fields: ClassVar[dict[str, str]] = {
        "cell_sentence": "the cell's genes, highest expression first",
        "n_genes": "number of genes in the sentence",
        "drug": "the drug's name",
        "organism": "the build's organism (when given)",
    }
    answer_fields: ClassVar[dict[str, str]] = {"response": "'sensitive' or 'resistant'"}
    required: ClassVar[tuple[str, ...]] = ("cell_sentence", "drug")
    responses: ClassVar[tuple[str, ...]] = ("resistant", "sensitive")

    response_key: str = "scdeal_label"
    drug_key: str | None = "condition"
    drug: str | None = "erlotinib"
    label_map: dict | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.drug is None and self.drug_key is None:
            msg = f"{self.name}: give drug (a name) or drug_key (an obs column of drug names)"
            raise C2TInputError(msg)
        if self.label_map is not None and not isinstance(self.label_map, Mapping):
            msg = f"{self.name}: label_map must map response values to 'sensitive'/'resistant', not {self.label_map!r}"
            raise C2TInputError(msg)

    @property
    def label_key(self):
        return self.response_key

    def obs_keys(self):
        keys = {self.response_key: f"{self.name}: response column (response_key)"}
        if self.drug_key is not None:
            keys[self.drug_key] = f"{self.name}: drug column (drug_key)"
        return keys

    def _mapped(self, cells: Cells) -> tuple[np.ndarray, np.ndarray]:
        """Response code per cell (index into ``responses``; -1 missing, -2 left out by ``label_map``)."""
        codes, names = cells.codes(self.response_key)
        table = {str(k): v for k, v in (self.label_map or {}).items()}
        lookup = np.empty(len(names), dtype=np.int32)
        bad = []
        for i, name in enumerate(names):
            value = table.get(name, name)
            if value is None:
                lookup[i] = -2
            elif str(value).strip().lower() in self.responses:
                lookup[i] = self.responses.index(str(value).strip().lower())
            else:
                bad.append((name, int((codes == i).sum())))
        if bad:
            shown = ", ".join(f"{n!r} ({c} cells)" for n, c in bad[:5])
            msg = (f"{self.name}: obs[{self.response_key!r}] has values other than sensitive/resistant: {shown}; map them "
                   f"with label_map (e.g. {{{bad[0][0]}: sensitive}}) or map them to null to leave those cells out")
            raise C2TInputError(msg)
        return np.where(codes >= 0, lookup[np.maximum(codes, 0)], -1), names

    def eligible(self, cells, *, drop_missing):
        mask, report = super().eligible(cells, drop_missing=drop_missing)
        mapped, _ = self._mapped(cells)
        left_out = mapped == -2
        if left_out.any():
            report["left_out_by_label_map"] = int(left_out.sum())
        mask &= mapped >= 0
        if self.drug is None:
            mask &= self._codes(cells, self.drug_key, "drug", drop_missing=drop_missing, report=report) >= 0
        if not mask.any():
            msg = f"{self.name}: no cell has a sensitive/resistant label"
            raise C2TInputError(msg)
        self._response = mapped
        return mask, report

    def label_values(self, cells, rows):
        return self._response[rows], self.responses

    def columns(self, cells, plan):
        rows = plan["row"]
        fields = self._sentence(cells, rows)
        fields["drug"] = scalar(self.drug) if self.drug is not None else cells.strings(self.drug_key, rows)
        response = pa.array(list(self.responses), STRING).take(pa.array(self._response[rows]))
        return self._common(fields), {"response": response}, self._record(cells, rows, response)

    @classmethod
    def score_record(cls, prediction, record, *, vocabulary=None, synonyms=None):
        return super().score_record(prediction, record, synonyms={**DRUG_RESPONSE_SYNONYMS, **(synonyms or {})})


# -------------------------------------------------------------------------------------- perturbation
@dataclass(kw_only=True)
class Perturbation(_Generates, Task):
    """Perturbation: a control cell's sentence and a perturbed gene in, the perturbed cell's sentence out.

    Each perturbed cell is paired with a control cell drawn (seeded) from the same split and, when
    ``match_key`` is given, the same value of that column (e.g. the same biological replicate).

    Parameters
    ----------
    perturbation_key
        The ``obs`` column of the perturbed gene (or the control value).
    control
        The value marking control cells.
    match_key
        Pair with a control of the same value of this column; null pairs with any control.
    """

    name: ClassVar[str] = "perturbation"
    summary: ClassVar[str] = "control cell sentence + perturbed gene -> perturbed cell sentence"
    fields: ClassVar[dict[str, str]] = {
        "control_sentence": "a control cell's genes, highest expression first",
        "perturbation": "the perturbed (knocked-out) gene",
        "n_genes": "number of genes in the answer",
        "organism": "the build's organism (when given)",
    }
    answer_fields: ClassVar[dict[str, str]] = {"cell_sentence": "the perturbed cell's genes"}
    required: ClassVar[tuple[str, ...]] = ("control_sentence", "perturbation")

    perturbation_key: str = "target_max"
    control: str = "non-targeting"
    match_key: str | None = "bio_rep"

    @property
    def label_key(self):
        return self.perturbation_key

    def obs_keys(self):
        keys = {self.perturbation_key: f"{self.name}: perturbation column (perturbation_key)"}
        if self.match_key is not None:
            keys[self.match_key] = f"{self.name}: control-matching column (match_key)"
        return keys

    def eligible(self, cells, *, drop_missing):
        report: dict = {}
        codes, names = cells.codes(self.perturbation_key)
        ok = self._codes(cells, self.perturbation_key, "perturbation", drop_missing=drop_missing, report=report) >= 0
        if self.match_key is not None:
            ok &= self._codes(cells, self.match_key, "match", drop_missing=drop_missing, report=report) >= 0
        ok &= self._nonempty(cells, ok, drop_missing=drop_missing, report=report)
        if str(self.control) not in list(names):
            shown = ", ".join(repr(n) for n in names[:8])
            msg = (f"{self.name}: no control cells: obs[{self.perturbation_key!r}] has no value {self.control!r} "
                   f"(control); values are: {shown}{' ...' if len(names) > 8 else ''}")
            raise C2TInputError(msg)
        is_control = codes == list(names).index(str(self.control))
        self._control = ok & is_control
        perturbed = ok & ~is_control
        if not perturbed.any():
            msg = f"{self.name}: every cell is a control ({self.control!r}); nothing to predict"
            raise C2TInputError(msg)
        report["n_control_cells"] = int(self._control.sum())
        return perturbed, report

    def plan(self, cells, rows, rng, in_split):
        rows = self.repeat(rows, rng)
        match = cells.codes(self.match_key)[0] if self.match_key is not None else np.zeros(len(cells), np.int32)
        controls = np.flatnonzero(self._control & in_split)
        paired = np.empty(len(rows), dtype=np.int64)
        for value in np.unique(match[rows]):
            want = match[rows] == value
            pool = controls[match[controls] == value]
            if len(pool) == 0:
                where = f" with {self.match_key}={cells.codes(self.match_key)[1][value]!r}" if self.match_key else ""
                msg = (f"{self.name}: a split has perturbed cells{where} but no control cell{where} to pair them with; "
                       "set match_key to null or split by that column (group=)")
                raise C2TInputError(msg)
            paired[want] = pool[rng.integers(0, len(pool), int(want.sum()))]
        return {"row": rows, "control": paired}

    def columns(self, cells, plan):
        rows, control = plan["row"], plan["control"]
        top_k = self.effective_top_k(cells)
        target, lengths = cells.sentences(rows, top_k)
        label = cells.strings(self.perturbation_key, rows)
        fields = {
            "control_sentence": cells.sentences(control, top_k)[0],
            "perturbation": label,
            "n_genes": _as_text(lengths),
        }
        record = self._record(cells, rows, label)
        record["control_cell_id"] = cells.cell_ids.take(pa.array(control))
        return self._common(fields), {"cell_sentence": target}, record


# ---------------------------------------------------------------------------------------- multi-cell
@dataclass(kw_only=True)
class MultiCell(Task):
    """Multi-cell: several cells of one sample in, the sample's shared label out (e.g. condition, tissue).

    Parameters
    ----------
    key
        The ``obs`` column of the sample-level label (constant within a sample).
    sample_key
        The ``obs`` column of samples; an example's cells all come from one sample (and one split).
    cells_per_example
        Cells in each example.
    attribute
        How prompts name the label (default: ``key`` with underscores as spaces).
    """

    name: ClassVar[str] = "multi_cell"
    summary: ClassVar[str] = "several cells of one sample -> the sample's label"
    fields: ClassVar[dict[str, str]] = {
        "cells": "the cells' sentences, one per line ('Cell 1: ...')",
        "n_cells": "number of cells",
        "attribute": "what is asked, e.g. 'condition'",
        "organism": "the build's organism (when given)",
    }
    answer_fields: ClassVar[dict[str, str]] = {"value": "the sample's label"}
    required: ClassVar[tuple[str, ...]] = ("cells",)

    key: str | None = None
    sample_key: str = "sample_id"
    cells_per_example: int = 4
    attribute: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.key:
            msg = f"{self.name}: give key, the obs column of the sample-level label"
            raise C2TInputError(msg)
        n = self.cells_per_example
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= 64:
            msg = f"{self.name}: cells_per_example must be an integer from 2 to 64, not {n!r}"
            raise C2TInputError(msg)

    @property
    def label_key(self):
        return self.key

    def obs_keys(self):
        return {self.key: f"{self.name}: label column (key)", self.sample_key: f"{self.name}: sample column (sample_key)"}

    def eligible(self, cells, *, drop_missing):
        mask, report = super().eligible(cells, drop_missing=drop_missing)
        mask &= self._codes(cells, self.sample_key, "sample", drop_missing=drop_missing, report=report) >= 0
        labels, label_names = cells.codes(self.key)
        samples, sample_names = cells.codes(self.sample_key)
        pairs = np.unique(np.stack([samples[mask], labels[mask]]), axis=1)
        values, counts = np.unique(pairs[0], return_counts=True)
        if (counts > 1).any():
            sample = values[counts > 1][0]
            shown = sorted(str(label_names[c]) for c in pairs[1][pairs[0] == sample])
            msg = (f"{self.name}: sample {sample_names[sample]!r} (obs[{self.sample_key!r}]) has cells with different "
                   f"{self.key!r} labels {shown}; the label must be shared by the whole sample")
            raise C2TInputError(msg)
        return mask, report

    def plan(self, cells, rows, rng, in_split):
        m = self.cells_per_example
        samples = cells.codes(self.sample_key)[0]
        groups = []
        for _ in range(max(1, math.ceil(self.weight))):
            order = rows[np.lexsort((rng.random(len(rows)), samples[rows]))]
            bounds = np.flatnonzero(np.diff(samples[order])) + 1
            for segment in np.split(order, bounds):
                full = len(segment) // m * m
                if full:
                    groups.append(segment[:full].reshape(-1, m))
        stacked = np.concatenate(groups) if groups else np.empty((0, m), dtype=np.int64)
        n_examples = round(self.weight / max(1, math.ceil(self.weight)) * len(stacked))
        if n_examples < len(stacked):
            stacked = stacked[np.sort(rng.choice(len(stacked), n_examples, replace=False))]
        return {"row": stacked[:, 0].copy(), "cells": stacked}

    def columns(self, cells, plan):
        block = plan["cells"]
        top_k = self.effective_top_k(cells)
        args: list = []
        ids: list = []
        for j in range(block.shape[1]):
            args += [scalar(("\n" if j else "") + f"Cell {j + 1}: "), cells.sentences(block[:, j], top_k)[0]]
            ids.append(cells.cell_ids.take(pa.array(block[:, j])))
        fields = {
            "cells": pc.binary_join_element_wise(*args, scalar("")),
            "n_cells": scalar(str(block.shape[1])),
            "attribute": scalar(self.attribute or str(self.key).replace("_", " ")),
        }
        value = cells.strings(self.key, plan["row"])
        record = self._record(cells, plan["row"], value)
        record["cell_id"] = pc.binary_join_element_wise(*ids, scalar(";"))
        return self._common(fields), {"value": value}, record


# ------------------------------------------------------------------------------------------- spatial
@dataclass(kw_only=True)
class Spatial(CellType):
    """Spatial context (CELLama): a cell's sentence and its nearest neighbours' labels in, its label out.

    Neighbours are found with scikit-learn's ``NearestNeighbors`` on ``obsm[spatial_key]``, among the
    training split's labelled cells (``neighbors_from="train"``, so no validation or test label is shown)
    or among all labelled cells (``"all"``). The cell itself is never its own neighbour.

    Parameters
    ----------
    label_key
        The ``obs`` column of labels.
    spatial_key
        The ``obsm`` key of coordinates.
    k
        Neighbours listed, nearest first.
    neighbors_from
        ``"train"`` or ``"all"``.
    """

    name: ClassVar[str] = "spatial"
    summary: ClassVar[str] = "cell sentence + nearest neighbours' labels -> cell type"
    fields: ClassVar[dict[str, str]] = {
        **CellType.fields,
        "neighbors": "labels of the nearest neighbours, nearest first, comma-separated",
        "k": "number of neighbours",
    }
    required: ClassVar[tuple[str, ...]] = ("cell_sentence", "neighbors")

    spatial_key: str = "spatial"
    k: int = 6
    neighbors_from: str = "train"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= 100:
            msg = f"{self.name}: k must be an integer from 1 to 100, not {self.k!r}"
            raise C2TInputError(msg)
        if self.neighbors_from not in ("train", "all"):
            msg = f"{self.name}: neighbors_from must be 'train' or 'all', not {self.neighbors_from!r}"
            raise C2TInputError(msg)

    def obsm_keys(self):
        return [self.spatial_key]

    def setup(self, cells, split, eligible):
        from sklearn.neighbors import NearestNeighbors

        super().setup(cells, split, eligible)
        coords = cells.obsm[self.spatial_key]
        codes = cells.codes(self.label_key)[0]
        bad = eligible & ~np.isfinite(coords).all(axis=1)
        if bad.any():
            msg = f"{self.name}: obsm[{self.spatial_key!r}] has non-finite coordinates for {int(bad.sum())} cell(s)"
            raise C2TInputError(msg)
        reference = np.flatnonzero((codes >= 0) & np.isfinite(coords).all(axis=1) & (split == 0 if self.neighbors_from == "train" else True))
        if len(reference) < self.k + 1:
            msg = f"{self.name}: {len(reference)} labelled reference cells; k={self.k} neighbours need at least {self.k + 1}"
            raise C2TInputError(msg)
        query = np.flatnonzero(eligible)
        found = NearestNeighbors(n_neighbors=self.k + 1).fit(coords[reference]).kneighbors(coords[query], return_distance=False)
        found = reference[found]
        is_self = found == query[:, None]
        keep = np.take_along_axis(found, np.argsort(is_self, axis=1, kind="stable"), axis=1)[:, : self.k]
        self._neighbors = np.full((len(cells), self.k), -1, dtype=np.int32)
        self._neighbors[query] = codes[keep]

    def columns(self, cells, plan):
        fields, answers, record = super().columns(cells, plan)
        names = cells.names(self.label_key)
        labels = self._neighbors[plan["row"]]
        fields["neighbors"] = pc.binary_join_element_wise(*(names.take(pa.array(labels[:, j])) for j in range(self.k)), scalar(", "))
        fields["k"] = scalar(str(self.k))
        return fields, answers, record


#: Every task, by name.
TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (CellType, CellTypeChoice, Generation, Unconditional, Metadata, DrugResponse, Perturbation, MultiCell, Spatial)
}
