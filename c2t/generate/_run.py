"""What generation reads from a training run besides the model: the gene vocabulary and inverse model (to decode
generated sentences), the tasks, labels and templates the model was trained on (to render prompts and to
normalise answers)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from c2t._errors import C2TInputError
from c2t.generate._backends import ModelSpec, model_spec


@dataclass
class RunInfo:
    """A training run as generation sees it.

    Attributes
    ----------
    spec
        The model folder's :class:`~c2t.generate._backends.ModelSpec`.
    dataset
        The instruction dataset's manifest (from the run's dataset folder), or ``{}`` when it is gone.
    """

    spec: ModelSpec
    dataset: dict[str, Any]

    @property
    def manifest(self) -> dict[str, Any]:
        return self.spec.manifest or {}

    @property
    def top_k(self) -> int | None:
        return (self.manifest.get("dataset") or {}).get("top_k") or self.dataset.get("top_k")

    @property
    def separator(self) -> str:
        value = (self.manifest.get("dataset") or {}).get("separator")
        return "\n" if value is None else value

    @property
    def tasks(self) -> list[str]:
        return list((self.manifest.get("dataset") or {}).get("tasks") or [])

    def task_entry(self, task: str) -> dict[str, Any]:
        for entry in self.dataset.get("tasks", []):
            if entry.get("task") == task:
                return entry
        return {}

    def labels(self, task: str) -> list[str]:
        """Labels the run's dataset holds for ``task`` (every split), most frequent first."""
        totals: dict[str, int] = {}
        for counts in (self.task_entry(task).get("label_counts") or {}).values():
            for label, count in counts.items():
                totals[label] = totals.get(label, 0) + int(count)
        return sorted(totals, key=lambda k: (-totals[k], k))

    def template_ids(self, task: str) -> list[str]:
        return list(((self.task_entry(task).get("templates") or {}).get("template_ids")) or [])

    def dataset_folder(self) -> Path | None:
        path = (self.manifest.get("dataset") or {}).get("path")
        return Path(path) if path else None

    def vocabulary(self) -> np.ndarray:
        """The run's gene vocabulary (``vocabulary.txt`` in the run folder or its dataset folder), hash-checked."""
        from c2t._manifest import vocabulary_hash

        expected = (self.manifest.get("dataset") or {}).get("vocabulary_hash")
        folders = [self.spec.path, self.dataset_folder()]
        for folder in folders:
            if folder is not None and (folder / "vocabulary.txt").is_file():
                genes = np.array((folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1], dtype=object)
                if expected is not None and vocabulary_hash(genes) != expected:
                    msg = f"{folder / 'vocabulary.txt'} does not match the run's vocabulary_hash (the file was changed)"
                    raise C2TInputError(msg)
                return genes
        msg = (f"{self.spec.path}: no gene vocabulary: neither the run folder nor its dataset folder "
               f"({self.dataset_folder()}) holds vocabulary.txt")
        raise C2TInputError(msg)

    def inverse_model(self):
        from c2t.sentences._inverse import InverseModel

        data = self.manifest.get("inverse_model")
        if not data:
            msg = f"{self.spec.path}: the run's manifest holds no inverse model (rank -> expression) to decode cells with"
            raise C2TInputError(msg)
        return InverseModel.from_dict(data)


def read_run_info(model: str | os.PathLike | ModelSpec) -> RunInfo:
    """Read a c2t run folder for generation (refuses a folder without a manifest)."""
    spec = model if isinstance(model, ModelSpec) else model_spec(model)
    if spec.manifest is None:
        msg = f"{spec.path}: no manifest.json; cell generation and prediction need a c2t training run (`c2t train`)"
        raise C2TInputError(msg)
    dataset: dict[str, Any] = {}
    folder = (spec.manifest.get("dataset") or {}).get("path")
    if folder and (Path(folder) / "manifest.json").is_file():
        dataset = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    return RunInfo(spec, dataset)
