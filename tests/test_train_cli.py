"""`c2t merge RUN -o OUT`: a LoRA run becomes a full model that computes what the adapter did; bad folders exit 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

from c2t.cli import app  # noqa: E402
from c2t.train import load_model, read_run, train  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, pbmc_dataset, tiny_models):
    out = tmp_path_factory.mktemp("cli_train") / "run"
    return train({"dataset": str(pbmc_dataset), "base_model": str(tiny_models["llama"]), "output_dir": str(out),
                  "eval_split": None, "max_train_examples": 16, "max_steps": 2, "per_device_train_batch_size": 8,
                  "learning_rate": 1e-2, "logging_steps": 1, "save_steps": 100, "max_length": 128, "lora_r": 4,
                  "lora_dropout": 0.0})


def _error(result) -> str:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert text.startswith("error:"), text
    return " ".join(text.split())


def test_merge_writes_a_full_model_with_the_adapters_outputs(lora_run, tmp_path):
    out = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(lora_run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "llama" in result.output
    manifest = read_run(out)
    assert manifest["kind"] == "merged_model" and manifest["artifact"] == "model"
    assert manifest["merged_from"] == str(lora_run.resolve())
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()
    adapter, tok = load_model(lora_run)
    merged, _ = load_model(out)
    ids = torch.tensor([tok("CD3D IL7R LTB MALAT1")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapter(ids).logits, rtol=1e-4, atol=1e-4)
    # rerun onto the merged model: replaced
    assert runner.invoke(app, ["merge", str(lora_run), "-o", str(out)]).exit_code == 0


def test_merge_bad_folders(lora_run, tmp_path):
    assert "no such training run folder" in _error(runner.invoke(app, ["merge", str(tmp_path / "nope"), "-o",
                                                                       str(tmp_path / "m")]))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert "holds other files" in _error(runner.invoke(app, ["merge", str(lora_run), "-o", str(other)]))
    assert (other / "notes.txt").read_text() == "keep me"
    assert "cannot go into the run folder" in _error(runner.invoke(app, ["merge", str(lora_run), "-o", str(lora_run)]))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "manifest.json").write_text(json.dumps({"kind": "cell_sentences"}))
    assert "expected a training run" in _error(runner.invoke(app, ["merge", str(plain), "-o", str(tmp_path / "m")]))
    assert "--out" in runner.invoke(app, ["merge", str(lora_run)]).output
