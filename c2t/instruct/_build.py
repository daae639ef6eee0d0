"""``build``: cells + tasks + templates -> a saved ``datasets.DatasetDict`` with a manifest, written atomically.

The steps, all checks first so that bad input writes nothing:

1. resolve the options (keyword arguments or a config) and load every task's templates;
2. rank the cells (:func:`c2t.sentences.from_adata`), apply ``where``, find each task's eligible cells;
3. split the cells (stratified, optionally grouped) and plan every split's examples as integer arrays;
4. render the examples chunk by chunk with Arrow and stream them into the split's Arrow files inside a
   hidden staging folder, then write the manifest, vocabulary, config, examples and card, and rename the
   staging folder onto the output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from c2t._atomic import staged_dir, write_text_atomic
from c2t._errors import C2TInputError
from c2t._manifest import read_manifest, vocabulary_hash, write_manifest
from c2t.instruct._config import FORMATS, Options, resolve, snapshot
from c2t.instruct._data import Cells, prepare
from c2t.instruct._render import MESSAGE, MESSAGES, STRING, as_string, buffers, from_buffers, render, scalar
from c2t.instruct._split import SPLITS, assign_splits, check_label_counts
from c2t.instruct._tasks import Task
from c2t.instruct._templates import Template, TemplateSet, load_templates
from c2t.instruct._write import SplitWriter, features_schema, write_skeleton

KIND = "instruction_dataset"
RECORD_COLUMNS = ("task", "template_id", "cell_id", "label", "label_key", "control_cell_id")
EXAMPLES_FILE = "examples.jsonl"
CONFIG_FILE = "config.yaml"
VOCAB_FILE = "vocabulary.txt"


@dataclass
class _Plan:
    """Everything decided before writing: cells, templates, splits and each split's integer plans."""

    options: Options
    cells: Cells
    templates: list[TemplateSet]
    eligible: list[np.ndarray]
    reports: list[dict]
    split: np.ndarray
    stratify: str | None
    plans: list[list[dict[str, np.ndarray]]]  # [split][task]

    @property
    def tasks(self) -> list[Task]:
        return self.options.task_objects


def _with_separator(ts: TemplateSet, separator: str) -> TemplateSet:
    def add(t: Template) -> Template:
        return dataclasses.replace(t, pieces=(*t.pieces[:-1], t.pieces[-1] + separator))

    return dataclasses.replace(ts, templates=tuple(add(t) for t in ts.templates))


def _stratify_key(options: Options) -> str | None:
    if options.stratify != "auto":
        return options.stratify
    return next((t.label_key for t in options.task_objects if t.label_key is not None), None)


def _plan(options: Options) -> _Plan:
    tasks = options.task_objects
    templates = [
        _with_separator(load_templates(t.name, provided=t.provided(), answer_provided=t.answer_provided(),
                                       required=t.required, folder=options.prompts_dir), options.separator)
        for t in tasks
    ]
    stratify = _stratify_key(options)
    needed: dict[str, str] = {}
    for task in tasks:
        for key, why in task.obs_keys().items():
            needed.setdefault(key, why)
    if stratify is not None:
        needed.setdefault(stratify, "stratify column")
    if options.group is not None:
        needed.setdefault(options.group, "group column")
    obsm_keys = list(dict.fromkeys(k for t in tasks for k in t.obsm_keys()))
    cells = prepare(options.data, needed=needed, obsm_keys=obsm_keys, where=options.where, top_k=options.top_k,
                    seed=options.seed, sentences_options=options.sentences)
    eligible, reports = [], []
    for task in tasks:
        mask, report = task.eligible(cells, drop_missing=options.drop_missing)
        eligible.append(mask)
        reports.append({"eligible_cells": int(mask.sum()), **report})
    labels = None
    if stratify is not None:
        labels, names = cells.codes(stratify)
        check_label_counts(labels, names, options.fractions, stratify)
    groups = cells.codes(options.group)[0] if options.group is not None else None
    split = assign_splits(labels, fractions=options.fractions, seed=options.seed, groups=groups, n=len(cells),
                          group_key=options.group or "group")
    for task, mask in zip(tasks, eligible, strict=True):
        task.setup(cells, split, mask)
    plans = []
    for s in range(len(SPLITS)):
        in_split = split == s
        row = []
        for t, (task, mask, ts) in enumerate(zip(tasks, eligible, templates, strict=True)):
            rng = np.random.default_rng([options.seed, 0x1257, t, s])
            plan = task.plan(cells, np.flatnonzero(mask & in_split), rng, in_split)
            plan["template"] = rng.permutation(len(plan["row"])) % len(ts.templates)
            row.append(plan)
        plans.append(row)
    if not any(len(p["row"]) for row in plans for p in row):
        msg = "these settings make no examples (no eligible cells)"
        raise C2TInputError(msg)
    uses: dict[int | None, int] = {}
    for row in plans:
        for task, p in zip(tasks, row, strict=True):
            top_k = task.effective_top_k(cells)
            uses[top_k] = uses.get(top_k, 0) + sum(p[k].size for k in ("row", "cells", "control") if k in p)
    for top_k, n in uses.items():
        if n >= len(cells):  # cells are reused: render each sentence once
            cells.cache_sentences(top_k)
    return _Plan(options, cells, templates, eligible, reports, split, stratify, plans)


# ----------------------------------------------------------------------------------------------- render
def _schema(formats: Sequence[str]) -> pa.Schema:
    fields = []
    if "prompt_completion" in formats:
        fields += [("prompt", STRING), ("completion", STRING)]
    if "messages" in formats:
        fields.append(("messages", MESSAGES))
    fields += [(name, STRING) for name in RECORD_COLUMNS]
    return features_schema(pa.schema(fields))


def _as_column(value, n: int) -> pa.Array:
    if value is None:
        return pa.nulls(n, STRING)
    if isinstance(value, pa.Scalar):
        return pa.repeat(value, n).cast(STRING) if value.is_valid else pa.nulls(n, STRING)
    return as_string(value)


def _render_chunk(plan: _Plan, plans: list[dict], task_of: np.ndarray, local_of: np.ndarray,
                  schema: pa.Schema) -> pa.RecordBatch:
    """Render the examples ``(task_of[i], local_of[i])`` in this order, grouped by template internally."""
    cells, tasks, templates = plan.cells, plan.tasks, plan.templates
    template_of = np.empty(len(task_of), dtype=np.int64)
    for t in np.unique(task_of):
        here = task_of == t
        template_of[here] = plans[t]["template"][local_of[here]]
    order = np.lexsort((local_of, template_of, task_of))
    parts: dict[str, list[pa.Array]] = {name: [] for name in ("prompt", "completion", *RECORD_COLUMNS)}
    sorted_tasks = task_of[order]
    for segment in np.split(order, np.flatnonzero(np.diff(sorted_tasks)) + 1):
        t = int(task_of[segment[0]])
        task, ts = tasks[t], templates[t]
        sub = {key: values[local_of[segment]] for key, values in plans[t].items()}
        n = len(segment)
        fields, answers, record = task.columns(cells, sub)
        cuts = np.searchsorted(sub["template"], np.arange(len(ts.templates) + 1))
        for j, template in enumerate(ts.templates):
            a, b = int(cuts[j]), int(cuts[j + 1])
            if b > a:
                used = {k: (fields[k].slice(a, b - a) if isinstance(fields[k], pa.Array) else fields[k]) for k in template.fields}
                parts["prompt"].append(render(template, used, b - a))
        parts["completion"].append(render(ts.answer, answers, n))
        parts["task"].append(_as_column(scalar(task.name), n))
        parts["template_id"].append(pa.array(ts.ids, STRING).take(pa.array(sub["template"])))
        for name in RECORD_COLUMNS[2:]:
            parts[name].append(_as_column(record.get(name), n))
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.arange(len(order))
    back = pa.array(inverse)
    columns = {name: as_string(pa.chunked_array(parts[name], type=STRING).take(back)) for name in RECORD_COLUMNS}
    prompt, completion = (pa.concat_arrays([as_string(a) for a in parts[name]]) for name in ("prompt", "completion"))
    columns.update(_assemble(prompt, completion, inverse, schema))
    return pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)


def _assemble(prompt: pa.Array, completion: pa.Array, source: np.ndarray, schema: pa.Schema) -> dict[str, pa.Array]:
    """Prompt, completion and messages in dataset order (row ``i`` is grouped row ``source[i]``)."""
    from c2t.instruct._kernels import assemble

    with_pairs, with_messages = "prompt" in schema.names, "messages" in schema.names
    po, pb, co, cb, mo, mb = assemble(*buffers(prompt), *buffers(completion), source, with_pairs=with_pairs,
                                      with_messages=with_messages)
    out = {}
    if with_pairs:
        out["prompt"], out["completion"] = from_buffers(po, pb), from_buffers(co, cb)
    if with_messages:
        n = len(source)
        roles = pa.DictionaryArray.from_arrays(pa.array(np.tile(np.array([0, 1], np.int8), n)), pa.array(["user", "assistant"]))
        struct = pa.StructArray.from_arrays([roles.cast(STRING), from_buffers(mo, mb)], fields=list(MESSAGE))
        out["messages"] = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), struct)
    return out


# ------------------------------------------------------------------------------------------------ write
def _fingerprint(config: Mapping[str, Any], source: Any, split: str) -> str:
    text = json.dumps({"config": config, "source": source, "split": split}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _counts(codes: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(codes[codes >= 0], minlength=len(names)) if len(names) else np.zeros(0, int)
    order = np.argsort(-counts, kind="stable")
    return {str(names[i]): int(counts[i]) for i in order if counts[i]}


def _write(plan: _Plan, staging: Path, progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    options = plan.options
    schema = _schema(options.formats)
    write_skeleton(staging, schema, SPLITS)
    config = snapshot(options, Path(options.out))
    source = plan.cells.sentences_manifest.get("source")
    total = sum(len(p["row"]) for row in plan.plans for p in row)
    done = 0
    examples: dict[str, list[dict]] = {t.name: [] for t in plan.tasks}
    split_sizes, shard_files = {}, {}
    for s, split_name in enumerate(SPLITS):
        plans = plan.plans[s]
        task_of = np.concatenate([np.full(len(p["row"]), t, dtype=np.int32) for t, p in enumerate(plans)])
        local_of = np.concatenate([np.arange(len(p["row"])) for p in plans])
        order = np.random.default_rng([options.seed, 0x0DE5, s]).permutation(len(task_of))
        writer = SplitWriter(staging / split_name, schema)
        chunk = _chunk_rows(plan, options.chunk_size)
        # the write of one chunk (file I/O, GIL released) overlaps the rendering of the next; one in flight
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending, pending_rows = None, 0
            for start in range(0, len(order), chunk):
                chosen = order[start : start + chunk]
                batch = _render_chunk(plan, plans, task_of[chosen], local_of[chosen], schema)
                _collect_examples(examples, batch, options.examples_per_task)
                if pending is not None:
                    pending.result()
                    done += pending_rows
                    if progress:
                        progress(done, total)
                pending, pending_rows = pool.submit(writer.write, batch), len(chosen)
                del batch
            if pending is not None:
                pending.result()
                done += pending_rows
                if progress:
                    progress(done, total)
        shard_files[split_name] = writer.close(_fingerprint(config, source, split_name))
        split_sizes[split_name] = writer.n_rows
    _write_examples(staging / EXAMPLES_FILE, examples)
    return {"split_sizes": split_sizes, "shards": shard_files, "config": config}


def _chunk_rows(plan: _Plan, chunk_size: int) -> int:
    """``chunk_size``, lowered so that one chunk's texts stay well within Arrow's 32-bit string offsets."""
    cells = plan.cells
    name_bytes = cells._vocab_offsets[-1] / max(len(cells.vocabulary), 1) + 1
    per_example = 0.0
    for task, row in zip(plan.tasks, zip(*plan.plans, strict=True), strict=True):
        top_k = task.effective_top_k(cells) or int(cells.lengths.max(initial=1))
        sentences = max((p["cells"].shape[1] if "cells" in p else 1 + ("control" in p)) for p in row)
        per_example = max(per_example, sentences * top_k * name_bytes + 2048)
    return max(1, min(chunk_size, int(2**29 // per_example)))


def _collect_examples(examples: dict[str, list[dict]], batch: pa.RecordBatch, per_task: int) -> None:
    wanted = {name for name, rows in examples.items() if len(rows) < per_task}
    if not wanted:
        return
    task_column = batch.column(batch.schema.get_field_index("task")).to_numpy(zero_copy_only=False)
    for name in wanted:
        rows = np.flatnonzero(task_column == name)[: per_task - len(examples[name])]
        if len(rows):
            examples[name] += batch.take(pa.array(rows)).to_pylist()


def _write_examples(path: Path, examples: dict[str, list[dict]]) -> None:
    lines = [json.dumps(record, ensure_ascii=False) for rows in examples.values() for record in rows]
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def _manifest(plan: _Plan, written: dict[str, Any]) -> dict[str, Any]:
    options, cells = plan.options, plan.cells
    sentences = cells.sentences_manifest
    tasks = []
    for t, (task, ts, report) in enumerate(zip(plan.tasks, plan.templates, plan.reports, strict=True)):
        per_split = [plan.plans[s][t] for s in range(len(SPLITS))]
        entry = {
            "task": task.name,
            "summary": task.summary,
            "params": task.params(),
            "templates": ts.manifest(),
            **report,
            "examples": {name: len(p["row"]) for name, p in zip(SPLITS, per_split, strict=True)},
            "template_counts": {
                name: {tid: int(c) for tid, c in zip(ts.ids, np.bincount(p["template"], minlength=len(ts.ids)), strict=True)}
                for name, p in zip(SPLITS, per_split, strict=True)
            },
        }
        labels = [task.label_values(cells, p["row"]) for p in per_split]
        if labels[0] is not None:
            entry["label_counts"] = {name: _counts(*lv) for name, lv in zip(SPLITS, labels, strict=True)}
        tasks.append(entry)
    split_cells = np.bincount(plan.split, minlength=len(SPLITS))
    split_info: dict[str, Any] = {
        "fractions": dict(zip(SPLITS, options.fractions, strict=True)),
        "stratify": plan.stratify,
        "group": options.group,
        "method": "grouped: scikit-learn StratifiedGroupKFold folds assigned to splits" if options.group
        else "per-label seeded shuffle cut by the fractions (largest remainder)",
        "n_cells": {name: int(c) for name, c in zip(SPLITS, split_cells, strict=True)},
    }
    if options.group is not None:
        groups, names = cells.codes(options.group)
        split_info["groups"] = {name: sorted(str(names[g]) for g in np.unique(groups[plan.split == s]))
                                for s, name in enumerate(SPLITS)}
    if plan.stratify is not None:
        codes, names = cells.codes(plan.stratify)
        split_info["label_counts"] = {name: _counts(codes[plan.split == s], names) for s, name in enumerate(SPLITS)}
    templates = {ts.path.name: {"sha256": ts.sha256, "template_ids": ts.ids} for ts in plan.templates}
    return {
        "kind": KIND,
        "name": options.name or Path(options.out).name,
        "description": options.description,
        "license": options.license,
        "source": sentences.get("source"),
        "vocabulary_hash": vocabulary_hash(cells.vocabulary),
        "n_genes": len(cells.vocabulary),
        "top_k": cells.top_k,
        "seed": options.seed,
        "sentences": {
            "top_k": sentences.get("top_k"),
            "seed": sentences.get("seed"),
            "normalization": (sentences.get("normalization") or {}).get("input"),
            "tie_break": sentences.get("tie_break"),
            "report": sentences.get("report"),
            # rank -> expression: generation decodes the generated sentences with it
            "inverse_model": sentences.get("inverse_model"),
        },
        "where": options.where,
        "n_cells": len(cells),
        "n_cells_filtered_out": cells.n_filtered_out,
        "organism": options.organism,
        "drop_missing": options.drop_missing,
        "formats": list(options.formats),
        "separator": options.separator,
        "columns": _schema(options.formats).names,
        "splits": written["split_sizes"],
        "split": split_info,
        "tasks": tasks,
        "templates": templates,
        "files": {"config": CONFIG_FILE, "examples": EXAMPLES_FILE, "vocabulary": VOCAB_FILE, "card": "README.md",
                  "shards": written["shards"]},
    }


# ----------------------------------------------------------------------------------------------- public
def build(
    data,
    /,
    *,
    out: str | os.PathLike | None = None,
    tasks=None,
    top_k: int | None = 100,
    seed: int = 0,
    split=(0.8, 0.1, 0.1),
    stratify: str | None = "auto",
    group: str | None = None,
    where: Mapping[str, Any] | None = None,
    label_key: str | None = None,
    organism: str | None = None,
    drop_missing: bool = False,
    formats: Sequence[str] = FORMATS,
    separator: str = "\n",
    prompts_dir: str | os.PathLike | None = None,
    examples_per_task: int = 24,
    sentences: Mapping[str, Any] | None = None,
    chunk_size: int = 20_000,
    name: str | None = None,
    description: str | None = None,
    license: str | None = None,
    progress: Callable[[int, int], None] | None = None,
):
    """Build an instruction dataset (train/validation/test) from cells and save it with a manifest.

    Parameters
    ----------
    data
        An AnnData (in memory or backed), an ``.h5ad`` path, a :class:`c2t.sentences.CellSentences`, or a
        config: a mapping or a ``.yaml`` file with ``data`` (the ``.h5ad`` path) and any of the options
        below. Options passed as keyword arguments (different from their defaults) override the config.
    out
        Output folder. It is replaced only when the build succeeds (built in a hidden staging folder).
    tasks
        A task name, a list of names and ``{task: name, weight: w, **params}`` mappings, or a mapping
        ``{name: params or weight}``. Tasks: see :data:`c2t.instruct.TASKS`. ``weight`` is examples per
        eligible cell, so weights set the mixture.
    top_k
        Genes per cell sentence (``None``: all expressed genes).
    seed
        Seeds the ranking tie-break, the splits, template choice, options, pairings and order; the same
        seed gives the same dataset.
    split
        Train/validation/test fractions (three numbers or a mapping by split name).
    stratify
        ``obs`` column whose label proportions every split keeps; ``"auto"``: the first task's label;
        ``None``: no stratification.
    group
        ``obs`` column (donor, batch, sample ...) whose groups never straddle two splits.
    where
        Keep only cells whose ``obs`` values match, e.g. ``{"pass_qc_200genes": True}``.
    label_key
        Default ``label_key`` for the tasks that take one (cell type tasks).
    organism
        Given to the prompts as ``{organism}`` (and in generation contexts).
    drop_missing
        Leave out cells with a missing label or an empty sentence (counted in the manifest) instead of failing.
    formats
        ``"prompt_completion"`` (``prompt``/``completion`` strings) and/or ``"messages"`` (chat records).
    separator
        Appended to every prompt (so that a completion reads as a new line after it).
    prompts_dir
        Folder of prompt files (default: the project's ``prompts/``).
    examples_per_task
        Records per task written to ``examples.jsonl`` (from the train split).
    sentences
        Further options of :func:`c2t.sentences.from_adata` (``layer``, ``gene_key``, ``gene_map`` ...).
    chunk_size
        Examples rendered and written at a time (bounds memory; does not change the result).
    name, description, license
        Shown in the manifest and the dataset card.
    progress
        Called with ``(examples written, total)`` after each chunk.

    Returns
    -------
    datasets.DatasetDict
        ``train``, ``validation`` and ``test``, read back from ``out``. Columns: ``prompt``, ``completion``,
        ``messages``, ``task``, ``template_id``, ``cell_id`` (multi-cell: ids joined by ``;``), ``label``
        (the answer label; the conditioning label for generation; the perturbed gene), ``label_key`` and
        ``control_cell_id`` (perturbation). ``out`` also holds ``manifest.json``, ``vocabulary.txt``,
        ``config.yaml`` (rebuilds the dataset), ``examples.jsonl`` and a dataset card ``README.md``.

    Examples
    --------
    >>> import tempfile
    >>> from c2t.instruct import build, toy_adata
    >>> out = tempfile.mkdtemp() + "/toy"
    >>> dsd = build(toy_adata(), out=out, tasks=["cell_type", {"task": "generation", "weight": 0.5}], top_k=10)
    >>> {name: len(ds) for name, ds in dsd.items()}
    {'train': 288, 'validation': 36, 'test': 36}
    >>> record = dsd["test"][0]
    >>> record["messages"][0]["content"] == record["prompt"], record["task"] in ("cell_type", "generation")
    (True, True)
    """
    given = {
        "out": out, "tasks": tasks, "top_k": top_k, "seed": seed, "split": split, "stratify": stratify, "group": group,
        "where": where, "label_key": label_key, "organism": organism, "drop_missing": drop_missing, "formats": formats,
        "separator": separator, "prompts_dir": prompts_dir, "examples_per_task": examples_per_task,
        "sentences": sentences, "chunk_size": chunk_size, "name": name, "description": description, "license": license,
    }
    defaults = Options()
    return build_with(data, {k: v for k, v in given.items() if not _same(v, getattr(defaults, k))}, progress=progress)


def build_with(data, overrides: Mapping[str, Any], *, progress: Callable[[int, int], None] | None = None):
    """:func:`build` with the options given as a mapping that overrides the config (what the CLI calls)."""
    options = resolve(data, overrides)
    plan = _plan(options)
    out_path = Path(options.out)
    with staged_dir(out_path) as staging:
        written = _write(plan, staging, progress)
        write_text_atomic(staging / VOCAB_FILE, "".join(f"{g}\n" for g in plan.cells.vocabulary))
        write_text_atomic(staging / CONFIG_FILE, dump_yaml(written["config"]))
        manifest = _manifest(plan, written)
        write_manifest(staging, manifest)
        from c2t.instruct._card import write_card

        write_card(staging, manifest, out_path)
    return load(out_path)


def dump_yaml(data: Any) -> str:
    """YAML text with multi-line strings (such as the separator) written double-quoted."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def string(dumper, value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if "\n" in value else None)

    Dumper.add_representer(str, string)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True)


def _same(a, b) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return type(a) is type(b) and a == b


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an instruction dataset folder (checked to be one).

    Examples
    --------
    >>> read_info("/nonexistent")
    Traceback (most recent call last):
    ...
    c2t._errors.C2TInputError: /nonexistent: no such folder
    """
    return read_manifest(path, kind=KIND)


def load(path: str | os.PathLike, *, expect: Mapping[str, Any] | None = None):
    """Load an instruction dataset built by :func:`build` as a ``datasets.DatasetDict``.

    Parameters
    ----------
    path
        The output folder of a build.
    expect
        Manifest fields the caller relies on (e.g. ``{"top_k": 100, "vocabulary_hash": ...}``); a mismatch
        raises an error naming what differs.

    Returns
    -------
    datasets.DatasetDict
        Memory-mapped from the folder's Arrow files.

    Examples
    --------
    >>> import tempfile
    >>> from c2t.instruct import build, toy_adata
    >>> out = tempfile.mkdtemp() + "/ct"
    >>> _ = build(toy_adata(), out=out, tasks="cell_type", top_k=5)
    >>> load(out, expect={"top_k": 5})["test"].num_rows
    24
    >>> load(out, expect={"top_k": 100})
    Traceback (most recent call last):
    ...
    c2t._errors.C2TInputError: ...: manifest differs from what is expected: top_k: expected 100, found 5
    """
    import datasets

    from c2t._manifest import diff_fields

    manifest = read_info(path)
    if expect:
        differences = diff_fields(expect, manifest, list(expect))
        if differences:
            msg = f"{path}: manifest differs from what is expected: " + "; ".join(differences)
            raise C2TInputError(msg)
    return datasets.load_from_disk(str(path))


def select_format(dataset_dict, fmt: str):
    """Keep one record format, as TRL picks its format from the columns present.

    Parameters
    ----------
    dataset_dict
        A ``DatasetDict`` (or ``Dataset``) from :func:`build`.
    fmt
        ``"messages"`` (drops ``prompt``/``completion``) or ``"prompt_completion"`` (drops ``messages``).

    Returns
    -------
    datasets.DatasetDict or datasets.Dataset
        The same records without the other format's columns.

    Examples
    --------
    >>> import tempfile
    >>> from c2t.instruct import build, toy_adata
    >>> dsd = build(toy_adata(), out=tempfile.mkdtemp() + "/ct", tasks="cell_type", top_k=5)
    >>> select_format(dsd, "messages")["train"].column_names[:3]
    ['messages', 'task', 'template_id']
    """
    if fmt not in FORMATS:
        msg = f"fmt must be one of {', '.join(FORMATS)}, not {fmt!r}"
        raise C2TInputError(msg)
    drop = ["messages"] if fmt == "prompt_completion" else ["prompt", "completion"]
    columns = dataset_dict.column_names
    present = set(columns if isinstance(columns, list) else next(iter(columns.values()), []))
    return dataset_dict.remove_columns([c for c in drop if c in present])
