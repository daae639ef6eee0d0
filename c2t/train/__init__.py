"""Instruction tuning: LoRA/PEFT (or full) fine-tuning of GPT-2, LLaMA-family and T5 models on c2t datasets.

One config (:class:`TrainConfig`, YAML + CLI flags) drives both paths: TRL's ``SFTTrainer`` for decoder
models and transformers' ``Seq2SeqTrainer`` for encoder-decoder models. :func:`train` writes the run folder
(adapter, tokenizer, config, manifest, loss logs, checkpoints; resumable), :func:`load_model` loads it for
generation, :func:`merge` merges an adapter into a full model. :func:`fit_projector` trains a projector from
gene text embeddings into a frozen LLM plus a classification head (scInterpreter-style).

>>> from c2t.train import TrainConfig
>>> TrainConfig.from_mapping({"dataset": "ds", "base_model": "gpt2", "output_dir": "run"}).method
'lora'
"""

from c2t.train._config import TrainConfig, fields_help, parse_flags
from c2t.train._projector import (
    ProjectorClassifier,
    cell_gene_tokens,
    fit_projector,
    load_projector,
    soft_token_classifier,
)
from c2t.train._run import DEFAULT_TARGETS, load_model, merge, read_run, train, write_loss_logs

__all__ = [
    "DEFAULT_TARGETS",
    "ProjectorClassifier",
    "TrainConfig",
    "cell_gene_tokens",
    "fields_help",
    "fit_projector",
    "load_model",
    "load_projector",
    "merge",
    "parse_flags",
    "read_run",
    "soft_token_classifier",
    "train",
    "write_loss_logs",
]
