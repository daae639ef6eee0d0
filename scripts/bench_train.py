"""Training throughput of c2t.train on one model and dataset: LoRA, LoRA + gene tokens, LoRA + packing, full
fine-tuning, and a plain ``transformers.Trainer`` full fine-tune on the whole text (what Cell2Sentence does:
loss on every token, no completion masking), in one run.

Tokens/s counts real (non-padding) tokens; records/s is tokens/s divided by the mean tokens per record (so that
packed and padded runs compare). CPU default: a tiny GPT-2 (random init) with SmolLM2's tokenizer retrained to
2,048 tokens; ``--base`` takes any local causal-LM folder (e.g. SmolLM2-135M on a GPU). A tokenizer without a pad
token pads with its end-of-sequence token, as c2t.train does.

Each variant also reports its model FLOP/s (training FLOPs per real token, see :func:`train_flops_per_token`,
times tokens/s) and that as a fraction of the dense matrix-multiply rate measured on this machine first
(:func:`matmul_rate`: bf16 8192 x 8192 on a GPU, float32 1024 x 1024 on the CPU), i.e. a model-FLOPs utilisation
against what this device's matmuls reach, not against its data-sheet peak.

    python scripts/bench_train.py                      # ~1-2 min on 2 CPU cores
    python scripts/bench_train.py --base ~/.cache/c2t/smollm2-135m-instruct --steps 50 --batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(os.environ.get("C2T_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "pbmc3k_raw_seurat_labels.h5ad"


def _timer():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        """The trainer's own timing (train_runtime covers every step) and its log history."""

        def on_train_end(self, args, state, control, model=None, **kw):
            self.log = state.log_history
            end = next(e for e in reversed(state.log_history) if "train_runtime" in e)
            self.seconds, self.steps = end["train_runtime"], state.global_step
            self.model = model

    return Timer()


def matmul_rate(*, repeats: int = 5) -> dict:
    """The dense matrix-multiply rate this machine reaches: bf16 8192 x 8192 products on a CUDA GPU (after a
    warm-up, timed between ``cuda.synchronize`` calls), float32 1024 x 1024 on the CPU; the best of ``repeats``
    timings of a few products each.

    Returns
    -------
    dict
        ``device``, ``dtype``, ``n`` (matrix side) and ``flops_per_s`` (2 n^3 per product).
    """
    import time

    import torch

    gpu = torch.cuda.is_available()
    device, dtype, n, per_timing = ("cuda", torch.bfloat16, 8192, 10) if gpu else ("cpu", torch.float32, 1024, 3)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    out = torch.empty(n, n, device=device, dtype=dtype)

    def sync():
        if gpu:
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up: kernel selection, clocks, thread pool
        torch.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(per_timing):
            torch.matmul(a, b, out=out)
        sync()
        best = min(best, (time.perf_counter() - start) / per_timing)
    del a, b, out
    if gpu:
        torch.cuda.empty_cache()
    return {"device": torch.cuda.get_device_name() if gpu else f"cpu x{torch.get_num_threads()}",
            "dtype": str(dtype).removeprefix("torch."), "n": n, "flops_per_s": 2 * n**3 / best}


FLOPS_FORMULA = ("per real token: 6 N_trained + 4 N_frozen (non-embedding weights: forward 2, input gradient 2, "
                 "weight gradient 2, none for frozen weights) + (6 or 4) V d (LM head, trained or frozen) "
                 "+ 6 L d s (causal attention scores and values, forward + backward, s = mean tokens per record); "
                 "input/position embeddings (lookups) excluded")


def train_flops_per_token(model, mean_record_tokens: float) -> dict:
    """Estimated training FLOPs per real token of ``model`` as trained (see ``FLOPS_FORMULA``).

    Every weight matrix costs 2 FLOPs per token and parameter forward and 2 for the gradient of its input; a
    trained one 2 more for its own gradient (6 N in all, the usual 6 x parameters), a frozen one not (4 N: the
    LoRA base). A LoRA adapter's A and B are trained weights. The LM head (V x d) counts apart from the input
    embedding, tied or not, since it is a matrix product, as trained when any of its parameters is (a full
    fine-tune; new gene-token rows, whose gradient autograd takes through the whole V x d product); the input and
    position embeddings are lookups and count nothing. Attention over a record of s tokens adds about 2 d s per
    token and layer forward (QK^T and AV, causal), 3x that with the backward pass. Norms, biases, activations and
    the optimizer step are left out.

    Parameters
    ----------
    model
        The trained model (a PEFT model or a plain ``PreTrainedModel``), as the trainer holds it at the end.
    mean_record_tokens
        Mean real tokens per record (each record attends only to itself).

    Returns
    -------
    dict
        ``flops_per_token`` and its parts: ``trained_weights``, ``frozen_weights`` (non-embedding parameters),
        ``lm_head`` (V d), ``layers``, ``hidden``.
    """
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if head is None:
        raise SystemExit(f"{type(base).__name__} has no output embeddings (LM head): not a causal language model")
    vocab, hidden = head.weight.shape
    head_trained = any(p.requires_grad for p in head.parameters())
    lookups = [base.get_input_embeddings(), *(m for m in base.modules() if isinstance(m, torch.nn.Embedding))]
    skip = {id(p) for m in (*lookups, head) for p in m.parameters()}  # new-token rows of PEFT wrappers too
    seen, trained, frozen = set(), 0, 0
    for p in base.parameters():
        if id(p) in skip or id(p) in seen:
            continue
        seen.add(id(p))
        if p.requires_grad:
            trained += p.numel()
        else:
            frozen += p.numel()
    layers = base.config.get_text_config().num_hidden_layers
    attention = 6 * layers * hidden * mean_record_tokens
    total = 6 * trained + 4 * frozen + (6 if head_trained else 4) * vocab * hidden + attention
    return {"flops_per_token": float(total), "trained_weights": trained, "frozen_weights": frozen,
            "lm_head": int(vocab * hidden), "layers": layers, "hidden": int(hidden)}


def _utilisation(tokens_per_s: float, model, per_record: float, rate: dict) -> dict:
    flops = train_flops_per_token(model, per_record)
    achieved = flops["flops_per_token"] * tokens_per_s
    return {"flops_per_token": round(flops["flops_per_token"]), "model_flops_per_s": round(achieved),
            "fraction_of_matmul_rate": round(achieved / rate["flops_per_s"], 4),
            "trained_weights": flops["trained_weights"], "frozen_weights": flops["frozen_weights"]}


def plain_trainer(base: Path, dataset: Path, out: Path, steps: int, batch: int, timer) -> float:
    """transformers.Trainer, full fine-tune on prompt + completion text, loss everywhere; returns mean tokens/record.

    A tokenizer without a pad token (SmolLM2's base, LLaMA's) pads with its end-of-sequence token, as c2t.train
    does (``DataCollatorForLanguageModeling`` needs one to pad). On a GPU with bfloat16 it computes in bf16 with
    float32 weights, like the c2t full fine-tune there.
    """
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from c2t.instruct import load

    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise SystemExit(f"{base}: the tokenizer has neither a pad nor an end-of-sequence token to pad with")
        tok.pad_token = tok.eos_token
    ds = load(dataset)["train"]
    ds = ds.map(lambda r: tok(r["prompt"] + r["completion"] + tok.eos_token), remove_columns=ds.column_names)
    model = AutoModelForCausalLM.from_pretrained(base)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    args = TrainingArguments(str(out), max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3,
                             logging_steps=10, save_strategy="no", report_to="none", dataloader_pin_memory=False,
                             bf16=bf16)
    Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
            callbacks=[timer]).train()
    return float(np.mean([len(x) for x in ds["input_ids"]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, default=None, help="causal LM folder (default: tiny random GPT-2)")
    parser.add_argument("--cells", type=int, default=800)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--packing-length", type=int, default=512,
                        help="tokens per packed row (TRL packs padding-free: on a CPU without flash attention the "
                             "whole batch becomes one sequence, so keep it short there)")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="token budget of the *_token_budget variants")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the variants (default: all)")
    parser.add_argument("--cache", default=None)
    parser.add_argument("--out", type=Path, default=Path("bench_out/train.json"))
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"{DATA} is absent")
    import torch

    import c2t.train
    from c2t.instruct import build
    from c2t.io import read_h5ad

    rate = matmul_rate()
    unit, scale = ("TFLOP/s", 1e12) if torch.cuda.is_available() else ("GFLOP/s", 1e9)
    print(f"measured matmul rate: {rate['flops_per_s'] / scale:.1f} {unit} ({rate['dtype']}, {rate['n']}^2)")
    work = Path(tempfile.mkdtemp(prefix="c2t_bench_train_"))
    adata = read_h5ad(DATA)
    rows = np.sort(np.random.default_rng(0).choice(adata.n_obs, min(args.cells, adata.n_obs), replace=False))
    # the splits are stratified by cell type, one cell of each type per split at least: a small sample leaves out
    # the types it drew fewer than 3 cells of
    labels = adata.obs["seurat_celltype"].to_numpy()[rows]
    missing = pd.isna(labels)  # build(drop_missing=True) drops these itself
    kinds, counts = np.unique(labels[~missing].astype(str), return_counts=True)
    keep = missing | np.isin(labels.astype(str), kinds[counts >= 3])
    if not keep.all():
        print(f"{(~keep).sum()} of {rows.size} sampled cells left out: their cell types have fewer than 3 cells "
              "in the sample")
    rows = rows[keep]
    dsd = build(adata[rows].copy(), out=work / "ds", tasks="cell_type", top_k=args.top_k, label_key="seurat_celltype",
                drop_missing=True)
    base = args.base
    if base is None:
        from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

        from c2t.models import smollm2_hf

        smollm2 = AutoTokenizer.from_pretrained(smollm2_hf(args.cache))
        tok = smollm2.train_new_from_iterator([t for r in dsd["train"] for t in (r["prompt"], r["completion"])], 2048)
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=64, n_layer=2, n_head=4,
                                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(work / "base")
        tok.save_pretrained(work / "base")
        base = work / "base"
    common = {"dataset": str(work / "ds"), "base_model": str(base), "eval_split": None, "max_steps": args.steps,
              "per_device_train_batch_size": args.batch, "logging_steps": 10, "save_steps": 10_000,
              "max_length": 1024, "learning_rate": 1e-3}
    budget = {"max_tokens_per_batch": args.batch_tokens, "per_device_train_batch_size": 4096}
    variants = {"c2t_lora": {}, "c2t_lora_gene_tokens": {"gene_tokens": True},
                "c2t_lora_packing": {"packing": True, "max_length": args.packing_length},
                "c2t_full": {"method": "full"},
                # the settings before dtype auto / padding-free / token budgets (float32, padded, fixed batch)
                "c2t_lora_float32_padded": {"dtype": "float32", "padding_free": False},
                "c2t_lora_token_budget": budget, "c2t_full_token_budget": {"method": "full", **budget}}
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = sorted(set(wanted) - set(variants) - {"transformers_trainer_full"})
        if unknown:
            raise SystemExit(f"unknown variant(s) {unknown}; variants are {sorted(variants)} and transformers_trainer_full")
        variants = {k: v for k, v in variants.items() if k in wanted}
    results = {}

    def save(results):
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(_report(args, torch, rate, results), indent=2) + "\n")

    for name, extra in variants.items():
        timer = _timer()
        run = c2t.train.train({**common, **extra, "output_dir": str(work / name)}, callbacks=[timer])
        manifest = c2t.train.read_run(run)
        per_record = manifest["lengths"]["train"]["mean_record_tokens"]
        tokens = [e["num_tokens"] for e in timer.log if "num_tokens" in e]
        steps_logged = [e["step"] for e in timer.log if "num_tokens" in e]
        tok_per_step = (tokens[-1] - tokens[0]) / (steps_logged[-1] - steps_logged[0]) if len(tokens) > 1 else \
            args.batch * per_record
        tps = tok_per_step * timer.steps / timer.seconds
        results[name] = {"tokens_per_s": round(tps, 1), "records_per_s": round(tps / per_record, 2),
                         "steps_per_s": round(timer.steps / timer.seconds, 3), "mean_record_tokens": round(per_record, 1),
                         "trainable_params": manifest["parameters"]["trainable"], "gene_tokens": manifest["gene_tokens"],
                         **_utilisation(tps, timer.model, per_record, rate)}
        save(results)  # kept up to date: a later variant may fail or run out of time
    if not args.variants or "transformers_trainer_full" in args.variants.split(","):
        timer = _timer()
        per_record = plain_trainer(base, work / "ds", work / "plain", args.steps, args.batch, timer)
        tps = args.batch * per_record * timer.steps / timer.seconds
        results["transformers_trainer_full"] = {
            "tokens_per_s": round(tps, 1), "records_per_s": round(tps / per_record, 2),
            "steps_per_s": round(timer.steps / timer.seconds, 3), "mean_record_tokens": round(per_record, 1),
            **_utilisation(tps, timer.model, per_record, rate)}
    save(results)
    print(f"{'variant':28s} {'tokens/s':>10s} {'records/s':>10s} {'steps/s':>8s} {'FLOP/token':>11s} "
          f"{'model ' + unit:>14s} {'of matmul':>9s}")
    for name, r in results.items():
        print(f"{name:28s} {r['tokens_per_s']:10.1f} {r['records_per_s']:10.2f} {r['steps_per_s']:8.3f} "
              f"{r['flops_per_token']:11.3g} {r['model_flops_per_s'] / scale:14.2f} "
              f"{r['fraction_of_matmul_rate']:9.1%}")
    print(f"FLOPs: {FLOPS_FORMULA}")
    if "c2t_lora_gene_tokens" in results:
        g = results["c2t_lora_gene_tokens"]["gene_tokens"]["tokens_per_sentence"]
        print(f"tokens per cell sentence (top {args.top_k}): {g['without']:.1f} without gene tokens, "
              f"{g['with']:.1f} with")


def _report(args, torch, rate, results):
    return {"base": str(args.base or "tiny random GPT-2 (2 x 64, vocab 2048)"), "cells": args.cells,
            "top_k": args.top_k, "steps": args.steps, "batch": args.batch, "batch_tokens": args.batch_tokens,
            "device": "cuda" if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}",
            "machine": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
            "matmul": rate, "flops_formula": FLOPS_FORMULA, "results": results}


if __name__ == "__main__":
    main()
