"""The training config: one dataclass whose fields carry ``help`` metadata, read from YAML, overridden by flags.

Light on purpose (no torch): ``c2t train --help`` lists the fields from here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from c2t._errors import C2TInputError
from c2t._yaml import read_yaml_mapping

CONFIG_FILE = "train_config.yaml"
DTYPES = ("auto", "float32", "bfloat16", "float16", "bf16-mixed")
# fields that do not change what a run computes: a restart may change them and still resume the same run
NOT_IDENTITY = frozenset({"output_dir", "logging_steps", "save_steps", "save_total_limit", "eval_steps",
                          "dataloader_num_workers", "report_to"})



@dataclass
class TrainConfig:
    """What ``c2t train`` runs: an instruction dataset, a base model, LoRA (or full) fine-tuning settings.

    Examples
    --------
    >>> cfg = TrainConfig.from_mapping({"dataset": "ds", "base_model": "m", "output_dir": "out", "lora_r": 4})
    >>> cfg.lora_r, cfg.method
    (4, 'lora')
    >>> TrainConfig.from_mapping({"dataset": "ds", "base_model": "m", "output_dir": "o", "lora_rank": 4})
    Traceback (most recent call last):
    ...
    c2t._errors.C2TInputError: unknown training config field(s): lora_rank (did you mean lora_r?)
    """

    dataset: str = field(default="", metadata={"help": "Instruction dataset folder built by `c2t instruct` / c2t.instruct.build."})
    base_model: str = field(default="", metadata={"help": "Base model: a local transformers folder (GPT-2, LLaMA family, T5 ...)."})
    output_dir: str = field(default="", metadata={"help": "Output folder of the run (adapter or model, tokenizer, config, manifest, logs, checkpoints)."})
    # data
    format: str = field(default="prompt_completion", metadata={"help": "Record format: prompt_completion (loss on the completion) or messages "
                     "(chat template of the tokenizer; loss on the assistant turn)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default="validation", metadata={"help": "Split for the evaluation loss (null: none)."})
    max_train_examples: int | None = field(default=None, metadata={"help": "Use at most this many training records (the first ones; null: all)."})
    max_eval_examples: int | None = field(default=256, metadata={"help": "Use at most this many evaluation records (null: all)."})
    expect_vocabulary_hash: str | None = field(default=None, metadata={"help": "Refuse a dataset whose gene vocabulary hash differs (from its manifest)."})
    expect_template_ids: list[str] | None = field(default=None, metadata={"help": "Refuse a dataset whose template ids differ from these."})
    max_length: int = field(default=512, metadata={"help": "Longest tokenized record (decoder: prompt+completion; seq2seq: the prompt). A longer "
                         "record is an error, never silently truncated."})
    max_target_length: int = field(default=128, metadata={"help": "Seq2seq only: longest tokenized completion."})
    packing: bool = field(default=False, metadata={"help": "Decoder only: pack several records into one sequence of max_length (TRL BFD packing)."})
    padding_free: bool | None = field(default=None, metadata={"help": "Decoder only: put a batch's records end to end in one row, each attending "
                                      "only to itself (no padding). null: on where a CUDA varlen attention kernel exists (a GPU), "
                                      "off elsewhere."})
    max_tokens_per_batch: int | None = field(default=None, metadata={"help": "Fill each batch with records of similar length up to this many "
                                             "tokens (padded tokens, or real ones when padding_free) instead of a fixed record count; "
                                             "per_device_train_batch_size then caps the records. null: per_device_train_batch_size records."})
    gene_tokens: bool = field(default=False, metadata={"help": "Add the dataset's gene names as whole tokens and resize the embeddings (CHATCELL)."})
    label_tokens: bool = field(default=False, metadata={"help": "With gene_tokens: add the dataset's labels as whole tokens too."})
    new_token_init: str = field(default="mean", metadata={"help": "With gene_tokens: start a new token's embedding at the mean of the "
                                "embeddings of the pieces its name was split into (mean), or at random (random)."})
    # model
    architecture: str = field(default="auto", metadata={"help": "auto (from the model config), decoder or seq2seq."})
    method: str = field(default="lora", metadata={"help": "lora (PEFT adapter) or full (every weight trains)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale alpha/r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    target_modules: list[str] | None = field(default=None, metadata={"help": "Module names LoRA adapts (null: gpt2 c_attn; LLaMA family q_proj, "
                                          "v_proj; T5 q, v)."})
    quantization: str = field(default="none", metadata={"help": "QLoRA: load the frozen base quantised with bitsandbytes, 4bit (NF4, double "
                              "quantisation, compute in dtype, else bfloat16 on a GPU / float32 on the CPU) or 8bit, and prepare "
                              "it for k-bit training; needs method: lora and `pip install 'c2t[qlora]'` (bitsandbytes; "
                              ">= 0.50 to run on the CPU). none: full precision."})
    dtype: str = field(default="auto", metadata={"help": "Precision: auto (on a GPU with bfloat16: LoRA keeps the frozen base in bfloat16, "
                       "full fine-tuning float32 weights, both computing in bfloat16; float32 elsewhere), float32, bfloat16 "
                       "or float16 (weights and compute), bf16-mixed (float32 weights, bfloat16 compute)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in the backward pass (less memory)."})
    # optimisation
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs (ignored when max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: use num_train_epochs)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Records per device per step."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Records per device per evaluation step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps accumulated per optimizer update."})
    warmup_steps: float = field(default=0, metadata={"help": "Warm-up steps (a float below 1: fraction of the training steps)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Learning-rate schedule (transformers names: linear, cosine, constant ...)."})
    seed: int = field(default=0, metadata={"help": "Seed of the initialisation, order and dropout."})
    # bookkeeping
    logging_steps: int = field(default=10, metadata={"help": "Log the loss every this many steps."})
    eval_steps: int | None = field(default=None, metadata={"help": "Evaluate every this many steps (null: at the end of each epoch)."})
    save_steps: int = field(default=200, metadata={"help": "Checkpoint every this many steps (a restart resumes from the last one)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    dataloader_num_workers: int | None = field(default=None, metadata={"help": "Data loader worker processes (null: 2 on a GPU, 0 on the CPU)."})
    report_to: str = field(default="none", metadata={"help": "Experiment tracker (none, tensorboard, wandb ...)."})

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build a config from a mapping, refusing unknown fields and values of the wrong type."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in names]
        if unknown:
            import difflib

            hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, names, n=1)) else k
                     for k in unknown]
            msg = f"unknown training config field(s): {', '.join(hints)}"
            raise C2TInputError(msg)
        hints = typing.get_type_hints(cls)
        values = {k: _coerce(k, v, hints[k]) for k, v in data.items()}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Mapping[str, Any] | Sequence[str] = ()) -> TrainConfig:
        """Read a YAML config; ``overrides`` (a mapping, or CLI words ``--flag value``) replace its fields.

        ``~`` and ``$VARS`` in its paths expand; relative paths are read relative to the file's folder.
        """
        path = Path(path)
        data = read_yaml_mapping(path, shape="a training config is a mapping of field: value")
        for key in ("dataset", "base_model", "output_dir"):
            value = data.get(key)
            if isinstance(value, str) and value:
                value = data[key] = os.path.expanduser(os.path.expandvars(value))
            if isinstance(value, str) and value and not Path(value).is_absolute():
                data[key] = str((path.parent / value).resolve())
        if not isinstance(overrides, Mapping):
            overrides = parse_flags(overrides)
        return cls.from_mapping({**data, **overrides})

    def validate(self) -> None:
        for key in ("dataset", "base_model", "output_dir"):
            if not getattr(self, key):
                msg = f"the training config needs {key}"
                raise C2TInputError(msg)
        choices = {"format": ("prompt_completion", "messages"), "architecture": ("auto", "decoder", "seq2seq"),
                   "method": ("lora", "full"), "dtype": DTYPES,
                   "quantization": ("none", "4bit", "8bit"), "new_token_init": ("mean", "random")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                msg = f"{key} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}"
                raise C2TInputError(msg)
        for key in ("max_length", "max_target_length", "per_device_train_batch_size", "lora_r", "save_steps",
                    "max_tokens_per_batch", "logging_steps"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                msg = f"{key} must be positive, not {getattr(self, key)!r}"
                raise C2TInputError(msg)
        for key in ("learning_rate", "weight_decay", "warmup_steps", "lora_dropout"):
            if getattr(self, key) < 0:
                msg = f"{key} must be >= 0, not {getattr(self, key)!r}"
                raise C2TInputError(msg)
        if self.dataloader_num_workers is not None and self.dataloader_num_workers < 0:
            msg = f"dataloader_num_workers must be >= 0, not {self.dataloader_num_workers!r}"
            raise C2TInputError(msg)
        if self.quantization != "none" and self.method != "lora":
            msg = (f"quantization: {self.quantization} (QLoRA) trains LoRA adapters over a frozen quantised base; "
                   "set method: lora, or quantization: none for full fine-tuning")
            raise C2TInputError(msg)
        if self.label_tokens and not self.gene_tokens:
            msg = "label_tokens needs gene_tokens: true"
            raise C2TInputError(msg)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that define the run (a restart with other values is another run)."""
        return {k: v for k, v in self.to_dict().items() if k not in NOT_IDENTITY}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        msg = f"{name} cannot be null"
        raise C2TInputError(msg)
    base = next((a for a in args if a is not type(None)), hint) if isinstance(hint, types.UnionType) else hint
    origin = typing.get_origin(base)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            msg = f"{name} must be a list of strings, not {value!r}"
            raise C2TInputError(msg)
        return list(value)
    if isinstance(value, str) and base in (int, float):  # YAML reads 1e-4 as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif base is str and isinstance(value, str | os.PathLike):
        return str(value)
    msg = f"{name} must be {getattr(base, '__name__', base)}{' or null' if optional else ''}, not {value!r}"
    raise C2TInputError(msg)


def parse_flags(words: Sequence[str]) -> dict[str, Any]:
    """``["--lora-r", "8", "--packing=true"]`` -> ``{"lora_r": 8, "packing": True}`` (values read as YAML).

    Examples
    --------
    >>> parse_flags(["--lora-r", "8", "--target-modules=q_proj,v_proj", "--eval-split", "null"])
    {'lora_r': 8, 'target_modules': 'q_proj,v_proj', 'eval_split': None}
    """
    import yaml

    out: dict[str, Any] = {}
    i = 0
    words = list(words)
    while i < len(words):
        word = words[i]
        if not word.startswith("--") or len(word) < 3:
            msg = f"expected a --flag, found {word!r}"
            raise C2TInputError(msg)
        key, eq, value = word[2:].partition("=")
        if not eq:
            if i + 1 >= len(words) or words[i + 1].startswith("--"):
                msg = f"--{key} needs a value"
                raise C2TInputError(msg)
            value = words[i + 1]
            i += 1
        i += 1
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        out[key.replace("-", "_")] = value if parsed is not None and not isinstance(parsed, bool | int | float) else parsed
    return out


def fields_help() -> str:
    """One line per config field: ``--flag (default): help`` (for ``c2t train --help``)."""
    lines = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"--{f.name.replace('_', '-')} ({default!r}): {f.metadata['help']}")
    return "\n".join(lines)
