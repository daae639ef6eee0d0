"""``train``: one config -> a LoRA adapter (or full model) with its tokenizer, config, manifest and loss logs.

Decoder models train with TRL's ``SFTTrainer`` (prompt/completion records with the loss on the completion, or
chat records through the tokenizer's chat template); encoder-decoder models (T5) with transformers'
``Seq2SeqTrainer``. The two paths share the dataset checks, the model and adapter set-up, the outputs and
resuming; only the trainer differs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from c2t._atomic import atomic_path, write_text_atomic
from c2t._errors import C2TInputError
from c2t._manifest import MANIFEST_NAME, file_hash, write_manifest
from c2t.train._config import CONFIG_FILE, TrainConfig
from c2t.train._data import (
    add_gene_tokens,
    check_lengths,
    dataset_labels,
    gene_sentences,
    open_dataset,
    read_vocabulary,
    shape_records,
    template_ids,
    tokens_per_sentence,
    word_pieces,
)

KIND = "train_run"
LOSS_CSV = "loss.csv"
LOSS_PNG = "loss.png"
GENE_TOKENS_FILE = "gene_tokens.txt"
_QKV = ["q_proj", "v_proj"]
DEFAULT_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn"], "gpt_neo": _QKV, "llama": _QKV, "mistral": _QKV, "mixtral": _QKV, "qwen2": _QKV,
    "qwen3": _QKV, "gemma": _QKV, "gemma2": _QKV, "gemma3_text": _QKV, "phi3": ["qkv_proj"], "t5": ["q", "v"],
    "mt5": ["q", "v"], "umt5": ["q", "v"], "bart": _QKV,
}
_SAVE_STATES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")


def _require_train_extra():
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
        import trl  # noqa: F401
    except ImportError as err:
        msg = f"c2t.train needs the train extra ({err.name} is missing): pip install 'c2t[train]'"
        raise ImportError(msg) from None


# ----------------------------------------------------------------------------------------------- output folder
def _prepare_output(cfg: TrainConfig) -> str:
    """``"new"``, ``"resume"`` (same run, unfinished) or ``"finished"``; refuses a folder holding another run."""
    import yaml

    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        msg = f"{out}: output_dir is a file"
        raise C2TInputError(msg)
    if out.is_dir() and any(out.iterdir()):
        saved_path = out / CONFIG_FILE
        if not saved_path.is_file():
            msg = f"{out}: output_dir holds other files (not a c2t training run); choose an empty or new folder"
            raise C2TInputError(msg)
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
        mine = cfg.identity()
        # a field added to the config after the run was written has its default there
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
        diff = [f"{k}: {saved.get(k, defaults.get(k))!r} there, {v!r} here" for k, v in mine.items()
                if not _same_setting(k, saved.get(k, defaults.get(k)), v, cfg)]
        if diff:
            msg = f"{out}: output_dir holds another run (its {CONFIG_FILE} differs: {'; '.join(diff)}); choose another output_dir"
            raise C2TInputError(msg)
        return "finished" if (out / MANIFEST_NAME).is_file() else "resume"
    return "new"


def _same_setting(key: str, saved: Any, mine: Any, cfg: TrainConfig) -> bool:
    """Equal settings; ``dtype: auto`` equals what it means on this machine (a run written before ``auto`` was the
    default saved ``float32``)."""
    if key == "dtype" and "auto" in (saved, mine):
        auto = _auto_dtype(cfg.method)
        saved, mine = (auto if x == "auto" else x for x in (saved, mine))
    return saved == mine


def _auto_dtype(method: str) -> str:
    """What ``dtype: auto`` means here: on a GPU with bfloat16, a frozen LoRA base lives in bfloat16 (PEFT keeps the
    adapter in float32) and fully trained weights stay float32, both computing in bfloat16; float32 elsewhere."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16" if method == "lora" else "bf16-mixed"
    return "float32"


def _last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(out))
    return last


# ----------------------------------------------------------------------------------------------- model
def _check_base(path: str) -> Path:
    base = Path(path)
    if not base.is_dir():
        msg = f"base_model {path}: no such folder (a local transformers model folder is needed)"
        raise C2TInputError(msg)
    if not (base / "config.json").is_file():
        msg = f"base_model {path}: no config.json; not a transformers model folder"
        raise C2TInputError(msg)
    return base


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _target_modules(model, cfg: TrainConfig) -> list[str]:
    names = [n for n, m in model.named_modules() if n and not list(m.children())]
    targets = cfg.target_modules
    if targets is None:
        targets = DEFAULT_TARGETS.get(model.config.model_type)
        if targets is None:
            candidates = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                                 if getattr(m, "weight", None) is not None and m.weight.ndim == 2})
            msg = (f"no default LoRA target modules for model type {model.config.model_type!r}; set target_modules "
                   f"(weight-matrix modules of this model: {', '.join(candidates)})")
            raise C2TInputError(msg)
    missing = [t for t in targets if not any(_matches(n, t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        msg = (f"target_modules {', '.join(missing)} match no module of {cfg.base_model} "
               f"({model.config.model_type}); its module names are: {', '.join(leaves)}")
        raise C2TInputError(msg)
    return list(targets)


#: The first bitsandbytes release whose wheel quantises on the CPU too (4-bit NF4 and 8-bit; tested here).
_BNB_CPU = "0.50"


def check_quantization(cfg: TrainConfig) -> None:
    """Refuse ``quantization`` (QLoRA) where it cannot run: without bitsandbytes, or without a CUDA GPU and a
    bitsandbytes too old to quantise on the CPU."""
    if cfg.quantization == "none":
        return
    import importlib.metadata
    import importlib.util

    what = f"quantization: {cfg.quantization} (QLoRA)"
    if importlib.util.find_spec("bitsandbytes") is None:
        msg = f"{what} needs bitsandbytes, which is not installed: pip install 'c2t[qlora]'; or set quantization: none"
        raise C2TInputError(msg)
    import torch
    from packaging.version import Version

    version = importlib.metadata.version("bitsandbytes")
    if not torch.cuda.is_available() and Version(version) < Version(_BNB_CPU):
        msg = (f"{what} without a CUDA GPU needs bitsandbytes >= {_BNB_CPU} (its CPU backend); this is {version}: "
               "pip install -U bitsandbytes, train on a GPU, or set quantization: none")
        raise C2TInputError(msg)


def _quantization_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """``from_pretrained`` arguments of a QLoRA base: a BitsAndBytesConfig and the device (this process's GPU, or
    the CPU where there is none)."""
    import torch
    from transformers import BitsAndBytesConfig

    gpu = torch.cuda.is_available()
    if cfg.quantization == "4bit":
        if cfg.dtype in ("bfloat16", "float16"):
            compute = _dtype(cfg.dtype)
        else:  # float32 / auto weights compute in bfloat16 on a GPU; on the CPU float32 is the fast path
            compute = torch.bfloat16 if gpu or cfg.dtype == "bf16-mixed" else torch.float32
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=compute)
    else:
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    # each DDP process holds its own copy on its own GPU
    device = int(os.environ.get("LOCAL_RANK", "0")) if gpu else "cpu"
    return {"quantization_config": bnb, "device_map": {"": device}}


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How a config runs on this machine (recorded in the run's manifest).

    Attributes
    ----------
    weights
        dtype the model's weights are loaded in.
    bf16, fp16
        Mixed-precision compute (the trainer's autocast).
    padding_free
        Records end to end in one row per batch, each attending only to itself.
    attention
        ``attn_implementation`` the model is loaded with (``None``: its default).
    workers
        Data loader worker processes.
    """

    weights: str
    bf16: bool
    fp16: bool
    padding_free: bool
    attention: str | None
    workers: int


def resolve_runtime(cfg: TrainConfig, *, seq2seq: bool, model_config=None) -> Runtime:
    """Turn the config's ``auto`` / ``null`` settings into what runs here (GPU or CPU)."""
    import torch

    from c2t.train._varlen import cuda_varlen_available

    gpu = torch.cuda.is_available()
    dtype = _auto_dtype(cfg.method) if cfg.dtype == "auto" else cfg.dtype
    weights = "float32" if dtype == "bf16-mixed" else dtype
    bf16, fp16 = dtype in ("bfloat16", "bf16-mixed"), dtype == "float16"
    sliding = bool(getattr(model_config, "sliding_window", None)) and getattr(model_config, "use_sliding_window", True)
    if cfg.padding_free and seq2seq:
        msg = "padding_free is for decoder models; set padding_free: false (or null) for an encoder-decoder model"
        raise C2TInputError(msg)
    if cfg.padding_free and sliding:
        msg = (f"padding_free: {cfg.base_model} uses sliding-window attention, which the padding-free attention "
               "does not implement; set padding_free: false")
        raise C2TInputError(msg)
    padding_free = cfg.padding_free if cfg.padding_free is not None else (
        not seq2seq and not sliding and cuda_varlen_available())
    attention = None
    if not seq2seq and (padding_free or cfg.packing) and not sliding:
        from c2t.train._varlen import register

        attention = register()
    workers = cfg.dataloader_num_workers if cfg.dataloader_num_workers is not None else (2 if gpu else 0)
    return Runtime(weights=weights, bf16=bf16, fp16=fp16, padding_free=padding_free, attention=attention,
                   workers=workers)


def _build_model(cfg: TrainConfig, tokenizer, new_token_ids: list[int], *, seq2seq: bool,
                 runtime: Runtime | None = None, new_pieces: dict[int, list[int]] | None = None):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    runtime = runtime or resolve_runtime(cfg, seq2seq=seq2seq)
    torch.manual_seed(cfg.seed)
    quantized = cfg.quantization != "none"
    options = _quantization_kwargs(cfg) if quantized else {}
    if runtime.attention:
        options["attn_implementation"] = runtime.attention
    model = cls.from_pretrained(cfg.base_model, dtype=_dtype(runtime.weights), **options)
    if new_token_ids:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        if new_pieces:
            _init_rows_from_pieces(model, new_pieces)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if seq2seq and model.config.decoder_start_token_id is None:
        model.config.decoder_start_token_id = tokenizer.pad_token_id
    if cfg.method == "full":
        return model, None
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers.pytorch_utils import Conv1D

    if quantized:  # QLoRA: norms in float32, input gradients on (the frozen base is int8/NF4)
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)

    targets = _target_modules(model, cfg)
    conv1d = any(isinstance(m, Conv1D) and any(_matches(n, t) for t in targets) for n, m in model.named_modules())
    lora = LoraConfig(
        fan_in_fan_out=conv1d,  # GPT-2 stores its projections as Conv1D (transposed weights)
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
        task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
        trainable_token_indices=new_token_ids or None,
    )
    model = get_peft_model(model, lora)
    if new_token_ids:
        _expose_bias(model)
        _save_token_rows_only(model)
    return model, targets


def _init_rows_from_pieces(model, pieces: dict[int, list[int]]) -> None:
    """Start each new token's embedding (and output row, where not tied) at the mean of the rows of the pieces the
    word was split into before it became a token: the model's own prior for the name, instead of noise."""
    import torch

    layers = [model.get_input_embeddings()]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != layers[0].weight.data_ptr():
        layers.append(output)
    with torch.no_grad():
        for layer in layers:
            weight = layer.weight
            for new_id, ids in pieces.items():
                if ids:
                    weight[new_id] = weight[ids].float().mean(0).to(weight.dtype)


def _save_token_rows_only(model) -> None:
    """New token rows are saved as trainable-token values in the adapter; the base rows never change. So the
    (resized) embedding matrix stays out of the adapter and checkpoints, which PEFT would otherwise add (with a
    warning) because the vocabulary grew; :func:`load_model` resizes the base model before loading."""
    import functools

    model.save_pretrained = functools.partial(type(model).save_pretrained, model, save_embedding_layers=False)


def _expose_bias(model) -> None:
    """PEFT's ``TrainableTokensWrapper`` (new token rows of a tied output layer) exposes ``weight`` but not
    ``bias``, which TRL's fused loss reads from the output layer: give the wrapper its base layer's bias
    (``None`` for every supported model) as a plain attribute."""
    from peft.utils.other import TrainableTokensWrapper

    for module in model.modules():
        if isinstance(module, TrainableTokensWrapper) and "bias" not in module.__dict__:
            object.__setattr__(module, "bias", getattr(module.token_adapter.base_layer, "bias", None))


# ----------------------------------------------------------------------------------------------- trainers
def _common_args(cfg: TrainConfig, *, has_eval: bool, runtime: Runtime) -> dict[str, Any]:
    import torch

    return {
        "output_dir": str(cfg.output_dir), "learning_rate": cfg.learning_rate, "num_train_epochs": cfg.num_train_epochs,
        "max_steps": cfg.max_steps, "per_device_train_batch_size": cfg.per_device_train_batch_size,
        "per_device_eval_batch_size": cfg.per_device_eval_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "warmup_steps": cfg.warmup_steps,
        "weight_decay": cfg.weight_decay, "lr_scheduler_type": cfg.lr_scheduler_type, "seed": cfg.seed,
        "data_seed": cfg.seed, "logging_steps": cfg.logging_steps, "save_strategy": "steps", "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit, "report_to": cfg.report_to,
        "eval_strategy": ("steps" if cfg.eval_steps else "epoch") if has_eval else "no", "eval_steps": cfg.eval_steps,
        "gradient_checkpointing": cfg.gradient_checkpointing, "bf16": runtime.bf16, "fp16": runtime.fp16,
        "dataloader_num_workers": runtime.workers, "dataloader_persistent_workers": runtime.workers > 0,
        "dataloader_pin_memory": torch.cuda.is_available(), "remove_unused_columns": True,
        # without an accelerator, say so: accelerate then runs torchrun's CPU processes as one gloo group
        # (otherwise each process silently trains alone)
        "use_cpu": not torch.accelerator.is_available(),
    }


def _token_budget(trainer_cls, cfg: TrainConfig, *, padded: bool):
    """``trainer_cls`` whose training batches are filled up to ``cfg.max_tokens_per_batch`` tokens (records of
    similar length together) instead of holding a fixed number of records; ``trainer_cls`` itself without a budget."""
    if cfg.max_tokens_per_batch is None:
        return trainer_cls
    from c2t.train._batching import TokenBudgetBatchSampler

    class TokenBudgetTrainer(trainer_cls):
        def get_train_dataloader(self):
            from torch.utils.data import DataLoader

            dataset = self._remove_unused_columns(self.train_dataset, description="training")
            lengths = [len(x) for x in dataset["input_ids"]]
            if "labels" in dataset.column_names and not isinstance(dataset[0]["labels"], int):  # seq2seq targets
                lengths = [a + len(b) for a, b in zip(lengths, dataset["labels"], strict=True)]
            sampler = TokenBudgetBatchSampler(lengths, max_tokens=cfg.max_tokens_per_batch,
                                              max_records=cfg.per_device_train_batch_size, padded=padded,
                                              seed=self.args.seed)
            workers = self.args.dataloader_num_workers
            params = {"batch_sampler": sampler, "collate_fn": self.data_collator, "num_workers": workers,
                      "pin_memory": self.args.dataloader_pin_memory, "persistent_workers": workers > 0}
            return self.accelerator.prepare(DataLoader(dataset, **params))

    return TokenBudgetTrainer


def _sft_trainer(cfg, model, tokenizer, train_ds, eval_ds, callbacks, runtime: Runtime | None = None):
    from trl import SFTConfig, SFTTrainer

    runtime = runtime or resolve_runtime(cfg, seq2seq=False)
    # padding-free rows are not cut at max_length by TRL; check_lengths has refused longer records already
    max_length = None if runtime.padding_free and not cfg.packing else cfg.max_length
    args = SFTConfig(**_common_args(cfg, has_eval=eval_ds is not None, runtime=runtime), max_length=max_length,
                     packing=cfg.packing, padding_free=runtime.padding_free, completion_only_loss=True,
                     dataset_num_proc=None)
    trainer_cls = _token_budget(SFTTrainer, cfg, padded=not (runtime.padding_free or cfg.packing))
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                          processing_class=tokenizer, callbacks=callbacks)
    if not cfg.packing and trainer.train_dataset.num_rows != train_ds.num_rows:  # never drop records silently
        msg = (f"the trainer kept {trainer.train_dataset.num_rows} of {train_ds.num_rows} training records; "
               "some were dropped (too long for max_length?)")
        raise C2TInputError(msg)
    return trainer


def _seq2seq_features(tokenizer, ds):
    eos = tokenizer.eos_token_id

    def encode(batch):
        enc = tokenizer(batch["prompt"])
        labels = tokenizer(batch["completion"])["input_ids"]
        enc["labels"] = [ids if ids and ids[-1] == eos else [*ids, eos] for ids in labels]
        return enc

    return ds.map(encode, batched=True, remove_columns=ds.column_names)


def _seq2seq_trainer(cfg, model, tokenizer, train_ds, eval_ds, callbacks, runtime: Runtime | None = None):
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    runtime = runtime or resolve_runtime(cfg, seq2seq=True)
    args = Seq2SeqTrainingArguments(**_common_args(cfg, has_eval=eval_ds is not None, runtime=runtime))
    return _token_budget(Seq2SeqTrainer, cfg, padded=True)(
        model=model, args=args, train_dataset=_seq2seq_features(tokenizer, train_ds),
        eval_dataset=None if eval_ds is None else _seq2seq_features(tokenizer, eval_ds),
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer, callbacks=callbacks,
    )


# ----------------------------------------------------------------------------------------------- logs
def write_loss_logs(out: Path, log_history: Sequence[Mapping[str, Any]], *, plot: bool = True) -> None:
    """``loss.csv`` (step, epoch, loss, eval_loss, learning_rate) and ``loss.png`` from a trainer's log history."""
    rows = [{"step": e.get("step"), "epoch": e.get("epoch"), "loss": e.get("loss"), "eval_loss": e.get("eval_loss"),
             "learning_rate": e.get("learning_rate")}
            for e in log_history if "loss" in e or "eval_loss" in e]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["step", "epoch", "loss", "eval_loss", "learning_rate"])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / LOSS_CSV, buf.getvalue())
    if not plot:
        return
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for key, style in (("loss", "-"), ("eval_loss", "o--")):
        points = [(r["step"], r[key]) for r in rows if r[key] is not None]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=key.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if ax.lines:
        ax.legend()
    else:  # a run shorter than logging_steps logs no loss
        ax.text(0.5, 0.5, "no loss logged (fewer steps than logging_steps)", ha="center", transform=ax.transAxes)
    ax.set_title(out.name)
    fig.tight_layout()
    with atomic_path(out / LOSS_PNG) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def _log_callback(out: Path):
    from transformers import TrainerCallback

    class LossLog(TrainerCallback):
        """Rewrite loss.csv at every log so that an interrupted run keeps its curve."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                write_loss_logs(out, state.log_history, plot=False)

    return LossLog()


# ----------------------------------------------------------------------------------------------- manifest
def _run_manifest(cfg, ds_manifest, *, seq2seq, targets, trainer, model, gene_report, lengths, model_type,
                  runtime: Runtime):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    history = trainer.state.log_history
    losses = [e["loss"] for e in history if "loss" in e]
    evals = [e["eval_loss"] for e in history if "eval_loss" in e]
    sentences = ds_manifest.get("sentences") or {}
    return {
        "kind": KIND,
        "base_model": str(Path(cfg.base_model).resolve()),
        "model_type": model_type,
        "architecture": "seq2seq" if seq2seq else "decoder",
        "trainer": "transformers.Seq2SeqTrainer" if seq2seq else "trl.SFTTrainer",
        "method": cfg.method,
        "artifact": "adapter" if cfg.method == "lora" else "model",
        "target_modules": targets,
        "format": cfg.format,
        "dataset": {
            "path": str(Path(cfg.dataset).resolve()),
            "name": ds_manifest.get("name"),
            "manifest_sha256": file_hash(Path(cfg.dataset) / MANIFEST_NAME),
            "vocabulary_hash": ds_manifest.get("vocabulary_hash"),
            "n_genes": ds_manifest.get("n_genes"),
            "top_k": ds_manifest.get("top_k"),
            "template_ids": template_ids(ds_manifest),
            "templates": {name: entry.get("sha256") for name, entry in (ds_manifest.get("templates") or {}).items()},
            "tasks": [t.get("task") for t in ds_manifest.get("tasks", [])],
            "separator": ds_manifest.get("separator"),
            "organism": ds_manifest.get("organism"),
            "splits": ds_manifest.get("splits"),
            "sentences": sentences,
        },
        "inverse_model": ds_manifest.get("inverse_model") or sentences.get("inverse_model"),
        "gene_tokens": gene_report,
        "lengths": lengths,
        "parameters": {"trainable": trainable, "total": total},
        "training": {
            "global_step": trainer.state.global_step,
            "epoch": trainer.state.epoch,
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "eval_loss": evals[-1] if evals else None,
        },
        "config": cfg.to_dict(),
        "runtime": {**dataclasses.asdict(runtime), "device": _device_name()},
        "files": {"config": CONFIG_FILE, "loss_csv": LOSS_CSV, "loss_png": LOSS_PNG},
    }


# ----------------------------------------------------------------------------------------------- public
def train(config: TrainConfig | Mapping[str, Any] | str | os.PathLike, *, callbacks: Sequence[Any] = ()) -> Path:
    """Fine-tune a base model on a c2t instruction dataset (LoRA or full) and write the run folder.

    Parameters
    ----------
    config
        A :class:`TrainConfig`, a mapping of its fields, or a YAML file.
    callbacks
        Extra ``transformers.TrainerCallback`` objects.

    Returns
    -------
    pathlib.Path
        ``output_dir``, holding the adapter (``adapter_model.safetensors``; ``method: full``: the model), the
        tokenizer, ``train_config.yaml``, ``manifest.json`` (base model, dataset manifest hash, vocabulary
        hash, template ids, inverse model, gene tokens, losses), ``loss.csv``, ``loss.png`` and checkpoints.
        A rerun of an unfinished run resumes from its last checkpoint; a rerun of a finished run does nothing.
    """
    _require_train_extra()
    if isinstance(config, TrainConfig):
        cfg = config
        cfg.validate()
    elif isinstance(config, Mapping):
        cfg = TrainConfig.from_mapping(config)
    else:
        cfg = TrainConfig.from_yaml(config)
    check_quantization(cfg)  # before anything is read or written
    if cfg.gene_tokens and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1"):
        # PEFT's trainable-token wrappers hide that input and output embeddings are tied: accelerate then shards the
        # shared weight twice and fully_shard fails deep inside; say so before anything starts
        msg = ("gene_tokens under FSDP is not supported (the new token rows of tied embeddings cannot be sharded); "
               "train gene-token runs with DDP (scripts/configs/accelerate/ddp.yaml) or on one device")
        raise C2TInputError(msg)
    out = Path(cfg.output_dir)
    state = _prepare_output(cfg)
    if state == "finished":
        return out
    _check_base(cfg.base_model)
    dsd, ds_manifest = open_dataset(cfg)

    from transformers import AutoConfig, AutoTokenizer

    model_config = AutoConfig.from_pretrained(cfg.base_model)
    seq2seq = bool(getattr(model_config, "is_encoder_decoder", False)) if cfg.architecture == "auto" \
        else cfg.architecture == "seq2seq"
    if seq2seq and cfg.packing:
        msg = "packing is for decoder models; set packing: false for an encoder-decoder model"
        raise C2TInputError(msg)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.format == "messages" and not seq2seq and not tokenizer.chat_template:
        msg = f"format: messages needs a chat template, and the tokenizer of {cfg.base_model} has none; use prompt_completion"
        raise C2TInputError(msg)
    train_ds = shape_records(dsd[cfg.train_split], cfg, seq2seq=seq2seq, limit=cfg.max_train_examples)
    eval_ds = None if cfg.eval_split is None else \
        shape_records(dsd[cfg.eval_split], cfg, seq2seq=seq2seq, limit=cfg.max_eval_examples)
    if eval_ds is not None and eval_ds.num_rows == 0:
        eval_ds = None

    gene_report = None
    new_ids: list[int] = []
    if cfg.gene_tokens:
        vocabulary = read_vocabulary(cfg.dataset, ds_manifest)
        sentences = gene_sentences(train_ds, vocabulary)
        genes = sorted({g for s in sentences for g in s} | (
            {g for s in gene_sentences(eval_ds, vocabulary) for g in s} if eval_ds is not None else set()))
        before = tokens_per_sentence(tokenizer, sentences)
        labels = dataset_labels(ds_manifest) if cfg.label_tokens else ()
        pieces = word_pieces(tokenizer, [*genes, *labels])  # before the words become tokens of their own
        added = add_gene_tokens(tokenizer, genes, labels)
        new_ids = tokenizer.convert_tokens_to_ids(added)
        new_pieces = {i: pieces[t] for i, t in zip(new_ids, added, strict=True)} if cfg.new_token_init == "mean" else {}
        gene_report = {"added": len(added), "genes": len(genes), "labels": cfg.label_tokens, "init": cfg.new_token_init,
                       "tokens_per_sentence": {"without": before, "with": tokens_per_sentence(tokenizer, sentences)}}
    lengths = {"train": check_lengths(tokenizer, train_ds, cfg, seq2seq=seq2seq, split=cfg.train_split)}
    if eval_ds is not None:
        lengths["eval"] = check_lengths(tokenizer, eval_ds, cfg, seq2seq=seq2seq, split=cfg.eval_split)

    runtime = resolve_runtime(cfg, seq2seq=seq2seq, model_config=model_config)
    model, targets = _build_model(cfg, tokenizer, new_ids, seq2seq=seq2seq, runtime=runtime,
                                  new_pieces=new_pieces if cfg.gene_tokens else None)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / CONFIG_FILE, _yaml(cfg.to_dict()))
    if added_tokens := (gene_report and new_ids):
        write_text_atomic(out / GENE_TOKENS_FILE, "".join(f"{t}\n" for t in tokenizer.convert_ids_to_tokens(added_tokens)))
    make = _seq2seq_trainer if seq2seq else _sft_trainer
    trainer = make(cfg, model, tokenizer, train_ds, eval_ds, [_log_callback(out), *callbacks], runtime=runtime)
    resume = _last_checkpoint(out) if state == "resume" else None
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out))  # main process only (the trainer checks)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))
        write_loss_logs(out, trainer.state.log_history)
        manifest = _run_manifest(cfg, ds_manifest, seq2seq=seq2seq, targets=targets, trainer=trainer, model=model,
                                 gene_report=gene_report, lengths=lengths, model_type=model_config.model_type,
                                 runtime=runtime)
        write_manifest(out, manifest)
    trainer.accelerator.wait_for_everyone()
    return out


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"


def _yaml(data: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)


def read_run(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a finished run (``train_run``) or merged model (``merged_model``) folder."""
    folder = Path(path)
    file = folder / MANIFEST_NAME
    if not file.is_file():
        msg = f"{folder}: no {MANIFEST_NAME}; not a finished c2t training run (rerun `c2t train` to resume it)"
        raise C2TInputError(msg)
    manifest = json.loads(file.read_text(encoding="utf-8"))
    if manifest.get("kind") not in (KIND, "merged_model"):
        msg = f"{folder}: holds a {manifest.get('kind')!r} artifact, expected a training run or merged model"
        raise C2TInputError(msg)
    return manifest


def load_model(path: str | os.PathLike, *, dtype: str = "float32"):
    """Load a run's model for generation: the base model with its adapter (or the full/merged model).

    Returns
    -------
    tuple
        ``(model, tokenizer)``; the model is in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    manifest = read_run(path)
    cls = AutoModelForSeq2SeqLM if manifest["architecture"] == "seq2seq" else AutoModelForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if manifest["artifact"] == "adapter":
        from peft import PeftModel

        base = cls.from_pretrained(_check_base(manifest["base_model"]), dtype=_dtype(dtype))
        if base.get_input_embeddings().weight.shape[0] != len(tokenizer):
            base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model = PeftModel.from_pretrained(base, str(path))
    else:
        model = cls.from_pretrained(str(path), dtype=_dtype(dtype))
    model.eval()
    return model, tokenizer


def _check_merge_output(run: Path, out: Path) -> None:
    """Merging replaces ``out`` at the end: refuse the run itself, a file, or a folder holding anything but a
    merged model (never delete someone's files)."""
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents:
        msg = f"{out}: the merged model cannot go into the run folder {run}; choose another output folder"
        raise C2TInputError(msg)
    if out.exists() and not out.is_dir():
        msg = f"{out}: output is a file; choose a new or empty folder"
        raise C2TInputError(msg)
    if out.is_dir() and any(out.iterdir()):
        kind = None
        if (out / MANIFEST_NAME).is_file():
            try:
                kind = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8")).get("kind")
            except (json.JSONDecodeError, AttributeError):
                kind = None
        if kind != "merged_model":
            msg = (f"{out}: output folder holds other files (not a merged c2t model); choose a new or empty folder "
                   "(an older merged model is replaced)")
            raise C2TInputError(msg)


def merge(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Merge a run's LoRA adapter into its base model and save a full model folder (with tokenizer and manifest)."""
    from c2t._atomic import staged_dir

    if not Path(path).is_dir():
        msg = f"{path}: no such training run folder"
        raise C2TInputError(msg)
    manifest = read_run(path)
    if manifest["artifact"] != "adapter":
        msg = f"{path}: holds a full model already (method: {manifest['method']}); nothing to merge"
        raise C2TInputError(msg)
    out = Path(out)
    _check_merge_output(Path(path), out)
    model, tokenizer = load_model(path)
    merged = model.merge_and_unload()
    with staged_dir(out) as staging:
        merged.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        write_manifest(staging, {**{k: v for k, v in manifest.items() if k != "c2t_version"}, "kind": "merged_model",
                                 "artifact": "model", "merged_from": str(Path(path).resolve())})
    return out
