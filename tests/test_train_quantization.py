"""QLoRA (`quantization: 4bit|8bit`): the config field, the BitsAndBytesConfig it builds, and the clear error where
bitsandbytes or a CUDA GPU is missing (the path every CPU machine takes), raised before anything is read or written."""

from __future__ import annotations

import importlib.util

import pytest
import yaml
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from c2t import C2TInputError  # noqa: E402
from c2t.cli import app  # noqa: E402
from c2t.train import TrainConfig, train  # noqa: E402
from c2t.train._run import _quantization_kwargs, check_quantization  # noqa: E402

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
CAN_QUANTIZE = HAS_BNB and torch.cuda.is_available()


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
    four = _quantization_kwargs(_cfg(tmp_path, quantization="4bit"))
    bnb = four["quantization_config"]
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16  # float32 weights: compute in bfloat16
    assert four["device_map"] == {"": 1}  # this DDP process's GPU
    assert _quantization_kwargs(_cfg(tmp_path, quantization="4bit", dtype="float16"))[
        "quantization_config"].bnb_4bit_compute_dtype == torch.float16
    assert _quantization_kwargs(_cfg(tmp_path, quantization="8bit"))["quantization_config"].load_in_8bit


@pytest.mark.skipif(CAN_QUANTIZE, reason="bitsandbytes and a CUDA GPU are here: QLoRA can run")
def test_clear_error_without_bitsandbytes_or_gpu(tmp_path):
    cfg = _cfg(tmp_path, quantization="4bit")
    expected = "pip install bitsandbytes" if not HAS_BNB else "needs a CUDA GPU"
    with pytest.raises(C2TInputError, match=expected):
        train(cfg)  # the dataset and base model do not even exist: the check comes first
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here")
def test_no_gpu_error_when_bitsandbytes_is_installed(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(C2TInputError, match=r"needs a CUDA GPU.*quantization: none"):
        check_quantization(_cfg(tmp_path, quantization="8bit"))


@pytest.mark.skipif(CAN_QUANTIZE, reason="bitsandbytes and a CUDA GPU are here: QLoRA can run")
def test_cli_one_line_error(tmp_path):
    config = tmp_path / "qlora.yaml"
    config.write_text(yaml.safe_dump({"dataset": "ds", "base_model": "base", "output_dir": "run"}))
    result = CliRunner().invoke(app, ["train", str(config), "--quantization", "4bit"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and "quantization: 4bit (QLoRA)" in " ".join(result.output.split())


def test_a_run_written_before_the_field_existed_still_resumes(tmp_path):
    from c2t.train._run import _prepare_output

    cfg = _cfg(tmp_path)
    saved = {k: v for k, v in cfg.to_dict().items() if k != "quantization"}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_config.yaml").write_text(yaml.safe_dump(saved))
    assert _prepare_output(cfg) == "resume"
    with pytest.raises(C2TInputError, match="quantization: 'none' there, '4bit' here"):
        _prepare_output(_cfg(tmp_path, quantization="4bit"))
