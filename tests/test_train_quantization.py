"""QLoRA (`quantization: 4bit|8bit`): the config field, the BitsAndBytesConfig it builds, real 4-bit and 8-bit
QLoRA runs on the CPU (bitsandbytes >= 0.50 quantises there), and the clear errors where bitsandbytes is missing or
too old for a machine without a GPU, raised before anything is read or written."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util

import pytest
import yaml
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from c2t import C2TInputError  # noqa: E402
from c2t.cli import app  # noqa: E402
from c2t.train import TrainConfig, load_model, read_run, train  # noqa: E402
from c2t.train._run import _quantization_kwargs, check_quantization  # noqa: E402

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig.from_mapping({"dataset": str(tmp_path / "ds"), "base_model": str(tmp_path / "base"),
                                     "output_dir": str(tmp_path / "run"), **kw})


def test_config_field(tmp_path):
    assert _cfg(tmp_path).quantization == "none"
    assert _cfg(tmp_path, quantization="4bit").quantization == "4bit"
    with pytest.raises(C2TInputError, match="quantization must be one of none, 4bit, 8bit, not '2bit'"):
        _cfg(tmp_path, quantization="2bit")
    with pytest.raises(C2TInputError, match="set method: lora"):
        _cfg(tmp_path, quantization="8bit", method="full")


def test_bitsandbytes_config(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    four = _quantization_kwargs(_cfg(tmp_path, quantization="4bit"))
    bnb = four["quantization_config"]
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16  # float32 weights on a GPU: compute in bfloat16
    assert four["device_map"] == {"": 1}  # this DDP process's GPU
    assert _quantization_kwargs(_cfg(tmp_path, quantization="4bit", dtype="float16"))[
        "quantization_config"].bnb_4bit_compute_dtype == torch.float16
    assert _quantization_kwargs(_cfg(tmp_path, quantization="8bit"))["quantization_config"].load_in_8bit
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = _quantization_kwargs(_cfg(tmp_path, quantization="4bit"))
    assert cpu["device_map"] == {"": "cpu"} and cpu["quantization_config"].bnb_4bit_compute_dtype == torch.float32


def _without_bitsandbytes(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))


def test_clear_error_without_bitsandbytes(tmp_path, monkeypatch):
    _without_bitsandbytes(monkeypatch)
    with pytest.raises(C2TInputError, match=r"needs bitsandbytes, which is not installed: pip install 'c2t\[qlora\]'"):
        train(_cfg(tmp_path, quantization="4bit"))  # the dataset and base model do not even exist: the check comes first
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed (pip install 'c2t[qlora]')")
def test_old_bitsandbytes_without_a_gpu_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.45.5" if name == "bitsandbytes" else real(name))
    with pytest.raises(C2TInputError, match=r"without a CUDA GPU needs bitsandbytes >= 0\.50.*this is 0\.45\.5"):
        check_quantization(_cfg(tmp_path, quantization="8bit"))


def test_cli_one_line_error(tmp_path, monkeypatch):
    _without_bitsandbytes(monkeypatch)
    config = tmp_path / "qlora.yaml"
    config.write_text(yaml.safe_dump({"dataset": "ds", "base_model": "base", "output_dir": "run"}))
    result = CliRunner().invoke(app, ["train", str(config), "--quantization", "4bit"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and "quantization: 4bit (QLoRA)" in " ".join(result.output.split())


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed (pip install 'c2t[qlora]')")
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_qlora_run_trains_the_adapter_over_a_quantised_base(tmp_path, pbmc_dataset, tiny_models, bits):
    """A real QLoRA run (on the CPU here): the base's linear layers are bitsandbytes modules that stay frozen and
    unchanged, the LoRA weights train, the loss falls, and the saved adapter reloads (over the full-precision base)
    and generates."""
    from transformers import TrainerCallback

    seen = {}

    class Snapshot(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            seen["kinds"] = {type(m).__name__ for m in model.modules()}
            seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
            seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}

        def on_train_end(self, args, state, control, model=None, **kw):
            seen["after"] = {n: p.detach().clone() for n, p in model.named_parameters()}

    cfg = _cfg(tmp_path, quantization=bits, dataset=str(pbmc_dataset), base_model=str(tiny_models["llama"]),
               eval_split=None, max_train_examples=64, max_steps=12, per_device_train_batch_size=8,
               learning_rate=1e-2, logging_steps=1, save_steps=100, max_length=128, lora_r=8, lora_dropout=0.0,
               warmup_steps=0)
    run = train(cfg, callbacks=[Snapshot()])
    assert ("Linear4bit" if bits == "4bit" else "Linear8bitLt") in seen["kinds"]
    assert seen["trainable"] and all("lora_" in n for n in seen["trainable"])
    for name, before in seen["before"].items():
        assert torch.equal(before, seen["after"][name]) == (name not in seen["trainable"]), name
    with open(run / "loss.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]]
    assert sum(losses[-3:]) < sum(losses[:3]) - 0.3, losses
    assert read_run(run)["training"]["global_step"] == 12
    model, tok = load_model(run)
    enc = tok("Below are genes: CD3D MALAT1\nWhat type of cell is this?\n", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_a_run_written_before_the_field_existed_still_resumes(tmp_path):
    from c2t.train._run import _prepare_output

    cfg = _cfg(tmp_path)
    saved = {k: v for k, v in cfg.to_dict().items() if k != "quantization"}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_config.yaml").write_text(yaml.safe_dump(saved))
    assert _prepare_output(cfg) == "resume"
    with pytest.raises(C2TInputError, match="quantization: 'none' there, '4bit' here"):
        _prepare_output(_cfg(tmp_path, quantization="4bit"))
