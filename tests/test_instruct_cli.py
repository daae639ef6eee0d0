"""`c2t instruct`: a config file or flags, the same dataset as the library, one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from c2t.cli import app
from c2t.instruct import build, load, read_info, toy_adata

runner = CliRunner()


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "toy.h5ad"
    toy_adata(120).write_h5ad(path)
    return path


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert text.startswith("error:"), text
    return text


def test_flags_match_the_library(toy_path, tmp_path):
    result = runner.invoke(app, ["instruct", str(toy_path), "-o", str(tmp_path / "cli"), "--tasks", "cell_type,generation:0.5",
                                 "--top-k", "5", "--seed", "2", "--where", "tissue=blood", "--organism", "human"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "cell_type:" in result.output
    expected = build(toy_path, out=tmp_path / "lib", tasks=["cell_type", {"task": "generation", "weight": 0.5}], top_k=5,
                     seed=2, where={"tissue": "blood"}, organism="human")
    manifest = read_info(tmp_path / "cli")
    assert manifest["where"] == {"tissue": "blood"} and manifest["organism"] == "human"
    got = load(tmp_path / "cli")
    for name in expected:
        assert got[name].data.table.equals(expected[name].data.table)


def test_config_file_with_overrides(toy_path, tmp_path):
    config = tmp_path / "conf" / "ct.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({
        "data": str(toy_path),
        "out": "built",
        "tasks": [{"task": "cell_type_mc", "n_options": 3}, {"task": "metadata", "key": "donor"}],
        "top_k": 6,
        "group": "donor",
    }))
    result = runner.invoke(app, ["instruct", str(config), "--seed", "4"])
    assert result.exit_code == 0, result.output
    out = config.parent / "built"  # relative to the config's folder
    manifest = read_info(out)
    assert manifest["seed"] == 4 and manifest["top_k"] == 6 and manifest["split"]["group"] == "donor"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["seed"] == 4 and saved["tasks"][0]["n_options"] == 3
    rebuilt = runner.invoke(app, ["instruct", str(out / "config.yaml"), "-o", str(tmp_path / "again")])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert [json.loads(x) for x in (out / "examples.jsonl").read_text().splitlines()] == [
        json.loads(x) for x in (tmp_path / "again" / "examples.jsonl").read_text().splitlines()
    ]


def test_errors_are_one_line(toy_path, tmp_path):
    text = one_line_error(runner.invoke(app, ["instruct", str(toy_path), "-o", str(tmp_path / "x"), "--tasks", "celltype"]))
    assert "unknown task 'celltype'" in text
    text = one_line_error(runner.invoke(app, ["instruct", str(toy_path), "-o", str(tmp_path / "x")]))
    assert "give --tasks" in text
    text = one_line_error(runner.invoke(app, ["instruct", str(toy_path), "-o", str(tmp_path / "x"), "--tasks", "cell_type",
                                              "--where", "tissue"]))
    assert "--where must look like COLUMN=VALUE" in text
    text = one_line_error(runner.invoke(app, ["instruct", str(toy_path), "-o", str(tmp_path / "x"), "--tasks",
                                              "drug_response"]))
    assert "drug_response: response column (response_key) 'scdeal_label' not found" in text
    assert not (tmp_path / "x").exists()
