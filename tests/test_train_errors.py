"""Bad input to c2t.train: each refused with a C2TInputError that names the thing (and the CLI's one-line error)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("trl")

from c2t import C2TInputError
from c2t.train import TrainConfig, parse_flags, train
from tests.test_train import _config


def test_dataset_with_another_vocabulary_or_template_set(tmp_path, pbmc_dataset, tiny_models):
    found = json.loads((pbmc_dataset / "manifest.json").read_text())["vocabulary_hash"]
    cfg = _config(tmp_path, pbmc_dataset, tiny_models["gpt2"], expect_vocabulary_hash="sha256:0000000000000000")
    with pytest.raises(C2TInputError, match=rf"another vocabulary/template set .*expected sha256:0000000000000000, found {found}"):
        train(cfg)
    cfg = _config(tmp_path, pbmc_dataset, tiny_models["gpt2"], expect_template_ids=["cell_type.01", "cell_type_mc.01"])
    with pytest.raises(C2TInputError, match=r"template ids: missing cell_type_mc.01; not expected cell_type.02, "):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_base_model_path_missing(tmp_path, pbmc_dataset):
    with pytest.raises(C2TInputError, match=r"base_model /no/such/model: no such folder"):
        train(_config(tmp_path, pbmc_dataset, "/no/such/model"))


def test_target_modules_matching_nothing(tmp_path, pbmc_dataset, tiny_models):
    cfg = _config(tmp_path, pbmc_dataset, tiny_models["llama"], target_modules=["q_proj", "c_attn"])
    with pytest.raises(C2TInputError, match=r"target_modules c_attn match no module of .*\(llama\); its module names are: .*q_proj"):
        train(cfg)


def test_max_length_shorter_than_the_prompt(tmp_path, pbmc_dataset, tiny_models):
    cfg = _config(tmp_path, pbmc_dataset, tiny_models["gpt2"], max_length=20)
    with pytest.raises(C2TInputError, match=r"train: 128 of 128 records do not fit max_length=20: .* prompt of \d+ tokens, "
                                            r"leaving no room for the completion .*never truncated"):
        train(cfg)
    prompt_fits = _config(tmp_path, pbmc_dataset, tiny_models["gpt2"], max_length=60)
    with pytest.raises(C2TInputError, match=r"do not fit max_length=60: .*prompt \+ completion of"):
        train(prompt_fits)
    t5 = _config(tmp_path, pbmc_dataset, tiny_models["t5"], max_target_length=2)
    with pytest.raises(C2TInputError, match=r"do not fit max_target_length=2: .*completion \(\+EOS\)"):
        train(t5)


def test_output_folder_holding_something_else(tmp_path, pbmc_dataset, tiny_models):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(C2TInputError, match=r"output_dir holds other files \(not a c2t training run\)"):
        train(_config(tmp_path, pbmc_dataset, tiny_models["gpt2"]))


def test_config_fields_and_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"dataset": "ds", "base_model": "/m", "output_dir": "out", "learning_rate": "1e-4"}))
    cfg = TrainConfig.from_yaml(path, ["--lora-r", "4", "--target-modules", "q,v", "--packing=true"])
    assert (cfg.lora_r, cfg.target_modules, cfg.packing, cfg.learning_rate) == (4, ["q", "v"], True, 1e-4)
    assert cfg.dataset == str(tmp_path / "ds") and cfg.base_model == "/m"
    with pytest.raises(C2TInputError, match=r"lora_r must be int, not 'four'"):
        TrainConfig.from_yaml(path, ["--lora-r", "four"])
    with pytest.raises(C2TInputError, match=r"method must be one of lora, full, not 'qlora'"):
        TrainConfig.from_yaml(path, {"method": "qlora"})
    with pytest.raises(C2TInputError, match=r"--lora-r needs a value"):
        parse_flags(["--lora-r"])


def test_cli_train_runs_and_reports_errors_on_one_line(tmp_path, pbmc_dataset, tiny_models):
    from typer.testing import CliRunner

    from c2t.cli import app

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"dataset": str(pbmc_dataset), "base_model": str(tiny_models["gpt2"]),
                                    "output_dir": str(tmp_path / "run"), "eval_split": "validation",
                                    "max_eval_examples": 16, "max_train_examples": 32, "max_steps": 2,
                                    "max_length": 128, "logging_steps": 1}))
    result = CliRunner().invoke(app, ["train", str(path), "--max-steps", "3", "--eval-steps", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "3 steps" in result.output and "eval loss" in result.output
    result = CliRunner().invoke(app, ["train", str(path), "--lora-r", "2"])
    assert result.exit_code == 2 and "output_dir holds another run" in result.output
    assert Path(tmp_path / "run" / "loss.csv").read_text().count("\n") >= 4
