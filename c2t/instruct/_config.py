"""Build options: from keyword arguments, a config dict or a YAML file, checked and normalised in one place.

A config file holds the same keys as :func:`c2t.instruct.build`'s keyword arguments plus ``data`` (the
``.h5ad`` path); relative paths in a file are read relative to the file's folder::

    data: ../shared/data/pbmc3k_raw_seurat_labels.h5ad
    tasks:
      - cell_type
      - {task: generation, weight: 0.5}
    label_key: seurat_celltype
    drop_missing: true
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from c2t._errors import C2TInputError
from c2t._yaml import read_yaml_mapping
from c2t.instruct._split import parse_fractions
from c2t.instruct._tasks import TASKS, Task

FORMATS = ("prompt_completion", "messages")


@dataclass
class Options:
    """Every build option, with its default (the keyword arguments of :func:`c2t.instruct.build`)."""

    out: str | os.PathLike | None = None
    tasks: Any = None
    top_k: int | None = 100
    seed: int = 0
    split: Any = (0.8, 0.1, 0.1)
    stratify: str | None = "auto"
    group: str | None = None
    where: Mapping[str, Any] | None = None
    label_key: str | None = None
    organism: str | None = None
    drop_missing: bool = False
    formats: Sequence[str] = FORMATS
    separator: str = "\n"
    prompts_dir: str | os.PathLike | None = None
    examples_per_task: int = 24
    sentences: Mapping[str, Any] | None = None
    chunk_size: int = 20_000
    name: str | None = None
    description: str | None = None
    license: str | None = None
    # set while resolving
    data: Any = field(default=None, repr=False)
    task_objects: list[Task] = field(default_factory=list, repr=False)
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)


OPTION_NAMES = [f.name for f in dataclasses.fields(Options) if f.name not in ("data", "task_objects", "fractions")]


def is_config(data) -> bool:
    """Whether the first argument of ``build`` is a config (a mapping or a ``.yaml``/``.yml`` path)."""
    return isinstance(data, Mapping) or (isinstance(data, str | os.PathLike) and Path(data).suffix in (".yaml", ".yml"))


def read_config(data) -> tuple[dict[str, Any], Path | None]:
    """The config mapping and the folder its relative paths are relative to (None: the working folder)."""
    if isinstance(data, Mapping):
        return dict(data), None
    path = Path(data)
    return read_yaml_mapping(path, shape="a config must be a mapping of build options (data, tasks, ...)"), path.parent


def _resolve(path, base: Path | None):
    if path is None or base is None or Path(path).is_absolute():
        return path
    return os.path.normpath(base / path)


def make_task(spec, *, label_key: str | None) -> Task:
    """A task object from a name, a ``{task: name, **params}`` mapping or a task object."""
    if isinstance(spec, Task):
        return spec
    if isinstance(spec, str):
        spec = {"task": spec}
    if not isinstance(spec, Mapping) or "task" not in spec:
        msg = f"a task is a name or a mapping with a 'task' key, not {spec!r}"
        raise C2TInputError(msg)
    params = {str(k): v for k, v in spec.items() if k != "task"}
    name = spec["task"]
    cls = TASKS.get(name) if isinstance(name, str) else None
    if cls is None:
        msg = f"unknown task {name!r}; tasks are: {', '.join(TASKS)}"
        raise C2TInputError(msg)
    accepted = [p for p in inspect.signature(cls).parameters]
    unknown = [p for p in params if p not in accepted]
    if unknown:
        msg = f"task {name!r} has no parameter {unknown[0]!r}; its parameters are: {', '.join(accepted)}"
        raise C2TInputError(msg)
    if label_key is not None and "label_key" in accepted and "label_key" not in params:
        params["label_key"] = label_key
    return cls(**params)


def task_specs(tasks) -> list:
    """Normalise ``tasks`` (a name, a list, or a mapping name -> params or weight) to a list of specs."""
    if tasks is None:
        msg = f"no tasks given; choose from: {', '.join(TASKS)}"
        raise C2TInputError(msg)
    if isinstance(tasks, str | Task):
        return [tasks]
    if isinstance(tasks, Mapping):
        specs = []
        for name, params in tasks.items():
            if params is None:
                params = {}
            elif isinstance(params, int | float) and not isinstance(params, bool):
                params = {"weight": params}
            elif not isinstance(params, Mapping):
                msg = f"task {name!r}: give its parameters as a mapping or its weight as a number, not {params!r}"
                raise C2TInputError(msg)
            specs.append({"task": name, **params})
        return specs
    if isinstance(tasks, Sequence):
        if not tasks:
            msg = f"no tasks given; choose from: {', '.join(TASKS)}"
            raise C2TInputError(msg)
        return list(tasks)
    msg = f"tasks must be a name, a list or a mapping, not {tasks!r}"
    raise C2TInputError(msg)


def resolve(data, overrides: Mapping[str, Any]) -> Options:
    """Merge a config (when ``data`` is one) with the explicit keyword arguments and check everything."""
    values: dict[str, Any] = {}
    base = None
    if is_config(data):
        config, base = read_config(data)
        unknown = [k for k in config if k not in [*OPTION_NAMES, "data"]]
        if unknown:
            msg = f"unknown config key {unknown[0]!r}; keys are: data, {', '.join(OPTION_NAMES)}"
            raise C2TInputError(msg)
        values.update(config)
        data = _resolve(config.get("data"), base)
        if data is None:
            msg = "the config has no 'data' (the .h5ad file to build from)"
            raise C2TInputError(msg)
        for key in ("prompts_dir", "out"):
            values[key] = _resolve(values.get(key), base)
    values.update(overrides)
    options = Options(**values)
    options.data = data
    return check(options)


def check(options: Options) -> Options:
    """Check option types and values; build the task objects."""
    if options.out is None:
        msg = "give out=, the output folder (or 'out' in the config)"
        raise C2TInputError(msg)
    if options.top_k is not None and (isinstance(options.top_k, bool) or not isinstance(options.top_k, int) or options.top_k < 1):
        msg = f"top_k must be a positive integer or null (all expressed genes), not {options.top_k!r}"
        raise C2TInputError(msg)
    if isinstance(options.seed, bool) or not isinstance(options.seed, int) or options.seed < 0:
        msg = f"seed must be a non-negative integer, not {options.seed!r}"
        raise C2TInputError(msg)
    options.fractions = parse_fractions(options.split)
    if options.where is not None and not isinstance(options.where, Mapping):
        msg = f"where must map obs columns to a value or a list of values, not {options.where!r}"
        raise C2TInputError(msg)
    options.where = dict(options.where or {})
    formats = [options.formats] if isinstance(options.formats, str) else list(options.formats)
    if not formats or any(f not in FORMATS for f in formats):
        msg = f"formats must be one or both of {', '.join(FORMATS)}, not {options.formats!r}"
        raise C2TInputError(msg)
    options.formats = [f for f in FORMATS if f in formats]
    for key in ("stratify", "group", "label_key", "organism", "separator", "name", "description", "license"):
        value = getattr(options, key)
        if value is not None and not isinstance(value, str):
            msg = f"{key} must be a string or null, not {value!r}"
            raise C2TInputError(msg)
    for key, low in (("chunk_size", 1), ("examples_per_task", 0)):
        value = getattr(options, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            msg = f"{key} must be an integer >= {low}, not {value!r}"
            raise C2TInputError(msg)
    if not isinstance(options.drop_missing, bool):
        msg = f"drop_missing must be true or false, not {options.drop_missing!r}"
        raise C2TInputError(msg)
    if options.sentences is not None and not isinstance(options.sentences, Mapping):
        msg = f"sentences must be a mapping of c2t.sentences.from_adata options, not {options.sentences!r}"
        raise C2TInputError(msg)
    options.sentences = dict(options.sentences or {})
    clashing = {"top_k", "obs_keys", "seed"} & set(options.sentences)
    if clashing:
        msg = f"sentences: set {sorted(clashing)[0]!r} as a build option, not under sentences"
        raise C2TInputError(msg)
    options.task_objects = [make_task(spec, label_key=options.label_key) for spec in task_specs(options.tasks)]
    for task in options.task_objects:
        task.organism = options.organism
    return options


def snapshot(options: Options, out: Path) -> dict[str, Any]:
    """The options as a config that rebuilds the same dataset (paths relative to the output folder)."""
    data = options.data
    if isinstance(data, str | os.PathLike):
        data = os.path.relpath(Path(data).resolve(), out.resolve())
    else:
        data = None
    config: dict[str, Any] = {"data": data}
    for key in OPTION_NAMES:
        if key in ("out", "tasks", "label_key"):
            continue
        value = getattr(options, key)
        if key == "split":
            value = dict(zip(("train", "validation", "test"), options.fractions, strict=True))
        elif key == "stratify" and value == "auto":
            value = next((t.label_key for t in options.task_objects if t.label_key is not None), None)
        elif key == "prompts_dir" and value is not None:
            value = os.path.relpath(Path(value).resolve(), out.resolve())
        elif isinstance(value, tuple):
            value = list(value)
        config[key] = value
    config["tasks"] = [{"task": t.name, **t.params()} for t in options.task_objects]
    return config
