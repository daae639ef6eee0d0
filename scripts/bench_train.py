"""Training throughput of c2t.train on one model and dataset: LoRA, LoRA + gene tokens, LoRA + packing, full
fine-tuning, and a plain ``transformers.Trainer`` full fine-tune on the whole text (what Cell2Sentence does:
loss on every token, no completion masking), in one run.

Tokens/s counts real (non-padding) tokens; records/s is tokens/s divided by the mean tokens per record (so that
packed and padded runs compare). CPU default: a tiny GPT-2 (random init) with SmolLM2's tokenizer retrained to
2,048 tokens; ``--base`` takes any local causal-LM folder (e.g. SmolLM2-135M on a GPU).

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

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc3k_raw_seurat_labels.h5ad"


def _timer():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        """The trainer's own timing (train_runtime covers every step) and its log history."""

        def on_train_end(self, args, state, control, **kw):
            self.log = state.log_history
            end = next(e for e in reversed(state.log_history) if "train_runtime" in e)
            self.seconds, self.steps = end["train_runtime"], state.global_step

    return Timer()


def plain_trainer(base: Path, dataset: Path, out: Path, steps: int, batch: int, timer) -> float:
    """transformers.Trainer, full fine-tune on prompt + completion text, loss everywhere; returns mean tokens/record."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from c2t.instruct import load

    tok = AutoTokenizer.from_pretrained(base)
    ds = load(dataset)["train"]
    ds = ds.map(lambda r: tok(r["prompt"] + r["completion"] + tok.eos_token), remove_columns=ds.column_names)
    model = AutoModelForCausalLM.from_pretrained(base)
    args = TrainingArguments(str(out), max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3,
                             logging_steps=10, save_strategy="no", report_to="none", dataloader_pin_memory=False)
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
    parser.add_argument("--cache", default=None)
    parser.add_argument("--out", type=Path, default=Path("bench_out/train.json"))
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"{DATA} is absent")
    import torch

    import c2t.train
    from c2t.instruct import build
    from c2t.io import read_h5ad

    work = Path(tempfile.mkdtemp(prefix="c2t_bench_train_"))
    adata = read_h5ad(DATA)
    rows = np.sort(np.random.default_rng(0).choice(adata.n_obs, min(args.cells, adata.n_obs), replace=False))
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
    variants = {"c2t_lora": {}, "c2t_lora_gene_tokens": {"gene_tokens": True}, "c2t_lora_packing": {"packing": True, "max_length": args.packing_length},
                "c2t_full": {"method": "full"}}
    results = {}
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
                         "trainable_params": manifest["parameters"]["trainable"], "gene_tokens": manifest["gene_tokens"]}
    timer = _timer()
    per_record = plain_trainer(base, work / "ds", work / "plain", args.steps, args.batch, timer)
    tps = args.batch * per_record * timer.steps / timer.seconds
    results["transformers_trainer_full"] = {"tokens_per_s": round(tps, 1), "records_per_s": round(tps / per_record, 2),
                                            "steps_per_s": round(timer.steps / timer.seconds, 3),
                                            "mean_record_tokens": round(per_record, 1)}
    report = {"base": str(args.base or "tiny random GPT-2 (2 x 64, vocab 2048)"), "cells": args.cells,
              "top_k": args.top_k, "steps": args.steps, "batch": args.batch,
              "device": "cuda" if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}",
              "machine": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'variant':28s} {'tokens/s':>10s} {'records/s':>10s} {'steps/s':>8s}")
    for name, r in results.items():
        print(f"{name:28s} {r['tokens_per_s']:10.1f} {r['records_per_s']:10.2f} {r['steps_per_s']:8.3f}")
    g = results["c2t_lora_gene_tokens"]["gene_tokens"]["tokens_per_sentence"]
    print(f"tokens per cell sentence (top {args.top_k}): {g['without']:.1f} without gene tokens, {g['with']:.1f} with")


if __name__ == "__main__":
    main()
