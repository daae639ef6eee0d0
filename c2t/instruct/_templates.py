"""Prompt templates: one YAML file per task in ``prompts/``, checked against the fields a task provides.

A prompt file looks like::

    task: cell_type
    description: ...
    answer: "{cell_type}"
    templates:
      - id: cell_type.01
        text: "Here are the most expressed genes of a cell: {cell_sentence}. Which cell type is it?"

Placeholders are ``{field}`` (``{{`` and ``}}`` for literal braces); format specs, conversions and positional
fields are refused. Loading checks every template against the fields the task provides for this build and
fails with the file, the template id and the field named.
"""

from __future__ import annotations

import hashlib
import os
import string
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from c2t._errors import C2TInputError


def _installed_prompts() -> Path:
    """The project's top-level ``prompts/`` in a source checkout, else the copy a wheel installs."""
    checkout = Path(__file__).resolve().parents[2] / "prompts"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "c2t" / "prompts"


#: The prompts folder: the checkout's ``prompts/``, or ``<prefix>/share/c2t/prompts`` for a wheel install.
PROMPTS_DIR = _installed_prompts()


@dataclass(frozen=True)
class Template:
    """One template: its id, its text and the text split into literal pieces and field names.

    ``pieces`` alternates literals and fields: ``("lit", "field", "lit", ...)`` starting and ending with a
    literal (possibly empty), so ``pieces[1::2]`` are the fields in order.

    Examples
    --------
    >>> t = parse_template("demo.01", "Genes: {cell_sentence}. Type? {{x}}", where="demo")
    >>> t.pieces
    ('Genes: ', 'cell_sentence', '. Type? {x}')
    >>> t.fields
    ('cell_sentence',)
    """

    id: str
    text: str
    pieces: tuple[str, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return self.pieces[1::2]

    def format(self, **values) -> str:
        """Render one example with Python formatting (for checks and docs; builds render with Arrow)."""
        return "".join(p if i % 2 == 0 else str(values[p]) for i, p in enumerate(self.pieces))


def parse_template(template_id: str, text: str, *, where: str) -> Template:
    """Split ``text`` into literal pieces and field names, refusing what Arrow rendering cannot do."""
    if not isinstance(text, str) or not text.strip():
        msg = f"{where}: template {template_id!r} has no text"
        raise C2TInputError(msg)
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        msg = f"{where}: template {template_id!r} is malformed ({err}); write literal braces as {{{{ and }}}}"
        raise C2TInputError(msg) from None
    pieces: list[str] = []
    literal = ""
    for lit, field, spec, conversion in parsed:
        literal += lit
        if field is None:
            continue
        if not field.isidentifier():
            shown = "{" + field + "}"
            msg = f"{where}: template {template_id!r} has the placeholder {shown}; use named fields such as {{cell_sentence}}"
            raise C2TInputError(msg)
        if spec or conversion:
            msg = f"{where}: template {template_id!r} formats {{{field}}} with a spec or conversion; write the plain field"
            raise C2TInputError(msg)
        pieces += [literal, field]
        literal = ""
    pieces.append(literal)
    return Template(template_id, text, tuple(pieces))


@dataclass(frozen=True)
class TemplateSet:
    """The templates of one task as loaded from its prompt file, with the file's sha256."""

    task: str
    path: Path
    sha256: str
    description: str
    answer: Template
    templates: tuple[Template, ...]

    @property
    def ids(self) -> list[str]:
        return [t.id for t in self.templates]

    def manifest(self) -> dict:
        """What the build manifest records about these templates."""
        return {"file": self.path.name, "sha256": self.sha256, "template_ids": self.ids, "answer": self.answer.text}


def prompts_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder to read prompt files from: ``path`` or the project's ``prompts/``."""
    folder = Path(path) if path is not None else PROMPTS_DIR
    if not folder.is_dir():
        hint = "" if path is not None else " (c2t looks beside the package, as in a source checkout); pass prompts_dir="
        msg = f"prompt folder {folder} does not exist{hint}"
        raise C2TInputError(msg)
    return folder


def _available(fields: Iterable[str]) -> str:
    return ", ".join("{" + f + "}" for f in sorted(fields))


def load_templates(
    task: str,
    *,
    provided: Iterable[str],
    answer_provided: Iterable[str],
    required: Iterable[str] = (),
    folder: str | os.PathLike | None = None,
) -> TemplateSet:
    """Load ``<folder>/<task>.yaml`` and check every template against the fields the task provides.

    Parameters
    ----------
    task
        Task name (the file is ``<task>.yaml``).
    provided
        Fields a prompt template may use in this build.
    answer_provided
        Fields the answer template may use.
    required
        Fields every prompt template must use (e.g. the cell sentence of an annotation task).
    folder
        The prompts folder (default: the project's ``prompts/``).

    Returns
    -------
    TemplateSet

    Examples
    --------
    >>> ts = load_templates("cell_type", provided={"cell_sentence", "n_genes"}, answer_provided={"cell_type"},
    ...                     required={"cell_sentence"})
    >>> len(ts.templates) >= 8, ts.answer.text
    (True, '{cell_type}')
    """
    import yaml

    path = prompts_dir(folder) / f"{task}.yaml"
    if not path.is_file():
        msg = f"no prompt file for task {task!r}: {path} does not exist"
        raise C2TInputError(msg)
    raw = path.read_bytes()
    where = str(path)
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        msg = f"{where}: not valid YAML ({' '.join(str(err).split())})"
        raise C2TInputError(msg) from None
    if not isinstance(doc, Mapping):
        msg = f"{where}: expected a mapping with 'task', 'answer' and 'templates'"
        raise C2TInputError(msg)
    if doc.get("task") != task:
        msg = f"{where}: says task {doc.get('task')!r}, expected {task!r}"
        raise C2TInputError(msg)
    items = doc.get("templates")
    if not isinstance(items, list) or not items:
        msg = f"{where}: 'templates' must be a non-empty list of {{id, text}} entries"
        raise C2TInputError(msg)
    if not isinstance(doc.get("answer"), str):
        msg = f"{where}: 'answer' must be a template string such as '{{cell_type}}'"
        raise C2TInputError(msg)
    provided, answer_provided, required = set(provided), set(answer_provided), set(required)
    answer = parse_template(f"{task}.answer", doc["answer"], where=where)
    for field in answer.fields:
        if field not in answer_provided:
            msg = (f"{where}: the answer template uses {{{field}}}, which the {task} task does not provide as an answer "
                   f"(available: {_available(answer_provided)})")
            raise C2TInputError(msg)
    templates, seen = [], set()
    for number, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("id"), str) or "text" not in item:
            msg = f"{where}: template number {number + 1} needs an 'id' (string) and a 'text'"
            raise C2TInputError(msg)
        if item["id"] in seen:
            msg = f"{where}: template id {item['id']!r} is used twice"
            raise C2TInputError(msg)
        seen.add(item["id"])
        template = parse_template(item["id"], item["text"], where=where)
        for field in template.fields:
            if field in answer.fields:
                msg = f"{where}: template {template.id!r} uses {{{field}}}, the answer itself; it would give the answer away"
                raise C2TInputError(msg)
            if field not in provided:
                msg = (f"{where}: template {template.id!r} uses {{{field}}}, which the {task} task does not provide "
                       f"with these settings (available: {_available(provided)})")
                raise C2TInputError(msg)
        for field in sorted(required - set(template.fields)):
            msg = f"{where}: template {template.id!r} does not use {{{field}}}, which every {task} prompt must include"
            raise C2TInputError(msg)
        templates.append(template)
    return TemplateSet(
        task=task,
        path=path,
        sha256="sha256:" + hashlib.sha256(raw).hexdigest(),
        description=str(doc.get("description", "")).strip(),
        answer=answer,
        templates=tuple(templates),
    )
