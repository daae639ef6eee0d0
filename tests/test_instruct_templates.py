"""Prompt files: enough original paraphrases per task, and every template error caught at load time by name."""

from __future__ import annotations

import hashlib

import pytest

from c2t import C2TInputError
from c2t.instruct import PROMPTS_DIR, TASKS, load_templates
from c2t.instruct._templates import parse_template

MAIN_TASKS = ("cell_type", "generation", "drug_response", "perturbation")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_has_a_prompt_file_that_loads(name):
    cls = TASKS[name]
    ts = load_templates(name, provided=cls.fields, answer_provided=cls.answer_fields, required=cls.required)
    assert len(ts.templates) >= (8 if name in MAIN_TASKS else 6)
    assert all(t.id.startswith(f"{name}.") for t in ts.templates)
    assert ts.sha256 == "sha256:" + hashlib.sha256((PROMPTS_DIR / f"{name}.yaml").read_bytes()).hexdigest()
    assert len({t.text for t in ts.templates}) == len(ts.templates)
    for t in ts.templates:  # shipped templates use only fields the task always provides
        assert not {"organism", "tissue", "condition"} & set(t.fields), t.id


def test_parse_template_pieces_and_braces():
    t = parse_template("x.1", "{{literal}} {a} and {b}{a}", where="here")
    assert t.pieces == ("{literal} ", "a", " and ", "b", "", "a", "")
    assert t.format(a="A", b="B") == "{literal} A and BA"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Genes {cell_sentence", r"template 'x.1' is malformed"),
        ("Genes {}", r"template 'x.1' has the placeholder \{\}"),
        ("Genes {0}", r"template 'x.1' has the placeholder \{0\}"),
        ("Genes {cell_sentence:>10}", r"template 'x.1' formats \{cell_sentence\} with a spec or conversion"),
        ("Genes {cell_sentence!r}", r"template 'x.1' formats \{cell_sentence\} with a spec or conversion"),
        ("   ", r"template 'x.1' has no text"),
    ],
)
def test_malformed_templates(text, match):
    with pytest.raises(C2TInputError, match=match):
        parse_template("x.1", text, where="prompts/x.yaml")


def write(folder, text):
    folder.mkdir(exist_ok=True)
    (folder / "cell_type.yaml").write_text(text)
    return folder


def load(folder):
    cls = TASKS["cell_type"]
    return load_templates("cell_type", provided=cls.fields.keys() - {"organism"}, answer_provided=cls.answer_fields,
                          required=cls.required, folder=folder)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('task: cell_type\nanswer: "{cell_type}"\ntemplates:\n  - {id: a.1, text: "{cell_sentence} in {tissue}"}\n',
         r"template 'a.1' uses \{tissue\}, which the cell_type task does not provide"),
        ('task: cell_type\nanswer: "{cell_type}"\ntemplates:\n  - {id: a.1, text: "Which type is it?"}\n',
         r"template 'a.1' does not use \{cell_sentence\}, which every cell_type prompt must include"),
        ('task: cell_type\nanswer: "{cell_type}"\ntemplates:\n  - {id: a.1, text: "{cell_sentence} is a {cell_type}"}\n',
         r"template 'a.1' uses \{cell_type\}, the answer itself"),
        ('task: cell_type\nanswer: "{label}"\ntemplates:\n  - {id: a.1, text: "{cell_sentence}"}\n',
         r"the answer template uses \{label\}, which the cell_type task does not provide as an answer"),
        ('task: cell_type\nanswer: "{cell_type}"\ntemplates:\n  - {id: a.1, text: "{cell_sentence}"}\n'
         '  - {id: a.1, text: "x {cell_sentence}"}\n', r"template id 'a.1' is used twice"),
        ('task: generation\nanswer: "{cell_type}"\ntemplates: []\n', r"says task 'generation', expected 'cell_type'"),
        ('task: cell_type\nanswer: "{cell_type}"\ntemplates: []\n', r"'templates' must be a non-empty list"),
        ('task: cell_type\nanswer: "{cell_type}"\ntemplates:\n  - {text: "{cell_sentence}"}\n',
         r"template number 1 needs an 'id'"),
        ("task: cell_type\nanswer: [\n", r"cell_type.yaml: not valid YAML"),
        ('task: cell_type\ntemplates:\n  - {id: a.1, text: "{cell_sentence}"}\n', r"'answer' must be a template string"),
    ],
)
def test_prompt_file_errors(tmp_path, text, match):
    with pytest.raises(C2TInputError, match=match):
        load(write(tmp_path / "p", text))


def test_missing_prompt_file_and_folder(tmp_path):
    with pytest.raises(C2TInputError, match=r"no prompt file for task 'cell_type': .*cell_type.yaml does not exist"):
        load(tmp_path)
    with pytest.raises(C2TInputError, match=r"prompt folder .*nowhere does not exist"):
        load(tmp_path / "nowhere")
