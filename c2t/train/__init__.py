"""Instruction tuning: LoRA/PEFT (or full) fine-tuning of GPT-2, LLaMA-family and T5 models on c2t datasets.

One config (:class:`TrainConfig`, YAML + CLI flags) drives both paths: TRL's ``SFTTrainer`` for decoder
models and transformers' ``Seq2SeqTrainer`` for encoder-decoder models. :func:`train` writes the run folder
(adapter, tokenizer, config, manifest, loss logs, checkpoints; resumable), :func:`load_model` loads it for
generation, :func:`merge` merges an adapter into a full model.

>>> from c2t.train import TrainConfig
>>> TrainConfig.from_mapping({"dataset": "ds", "base_model": "gpt2", "output_dir": "run"}).method
'lora'
"""

from c2t.train._config import TrainConfig, fields_help, parse_flags
from c2t.train._run import DEFAULT_TARGETS, load_model, merge, read_run, train, write_loss_logs

__all__ = [
    "DEFAULT_TARGETS",
    "TrainConfig",
    "fields_help",
    "load_model",
    "merge",
    "parse_flags",
    "read_run",
    "train",
    "write_loss_logs",
]
