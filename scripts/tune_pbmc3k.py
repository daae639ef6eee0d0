"""Instruction-tune a small model on pbmc3k cell type annotation and conditional cell generation (CPU, minutes)
and print held-out annotation accuracy against the majority-class baseline.

Default: a tiny GPT-2 (random init, 2 layers x 64 dims, 2 heads of 32 so vLLM's CPU kernels run it too) with
SmolLM2's tokenizer retrained to 2,048 tokens on the training records plus every gene as a whole token, fully
fine-tuned with c2t.train (TRL SFTTrainer, loss on the completion). ``--model smollm2``: LoRA on
SmolLM2-135M-Instruct with its chat template (slower on a CPU). The run folder feeds
``scripts/eval_generate_pbmc3k.py`` (generated cells vs real ones) and ``scripts/bench_generate.py``.

    python scripts/tune_pbmc3k.py --work bench_out/tune   # ~5 min on 2 cores
    python scripts/tune_pbmc3k.py --model smollm2 --epochs 1 --max-steps 150
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc3k_raw_seurat_labels.h5ad"


def build_dataset(out: Path, top_k: int, tasks: list[str]):
    from c2t.instruct import build

    return build(str(DATA), out=out, tasks=tasks, top_k=top_k, label_key="seurat_celltype", drop_missing=True, seed=0)


def tiny_gpt2(folder: Path, dsd, cache: str | None, *, layers: int = 2, dim: int = 64, n_positions: int = 512) -> Path:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from c2t.models import smollm2_hf

    smollm2 = AutoTokenizer.from_pretrained(smollm2_hf(cache))
    texts = [t for r in dsd["train"] for t in (r["prompt"], r["completion"])]
    tok = smollm2.train_new_from_iterator(texts, vocab_size=2048)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=dim, n_layer=layers, n_head=dim // 32,
                                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                       bos_token_id=tok.bos_token_id))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny-gpt2", "smollm2"], default="tiny-gpt2")
    parser.add_argument("--top-k", type=int, default=20, help="genes per cell sentence")
    parser.add_argument("--tasks", default="cell_type,generation", help="instruction tasks, comma-separated")
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--layers", type=int, default=2, help="tiny GPT-2 layers")
    parser.add_argument("--dim", type=int, default=64, help="tiny GPT-2 width (heads of 32, as vLLM's CPU kernels need)")
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--cache", default=None, help="SmolLM2 cache folder (default $C2T_CACHE or ~/.cache/c2t)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/tune_pbmc3k.json"))
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"{DATA} is absent")

    import c2t.train
    from c2t.generate import Sampling, TransformersBackend
    from c2t.instruct import score
    from c2t.models import smollm2_hf

    work = args.work or Path(tempfile.mkdtemp(prefix="c2t_tune_"))
    t0 = time.perf_counter()
    dsd = build_dataset(work / "pbmc3k_ct", args.top_k, [t.strip() for t in args.tasks.split(",") if t.strip()])
    smollm2 = args.model == "smollm2"
    base = smollm2_hf(args.cache) if smollm2 else tiny_gpt2(work / "tiny_gpt2", dsd, args.cache, layers=args.layers, dim=args.dim)
    cfg = {
        "dataset": str(work / "pbmc3k_ct"), "base_model": str(base), "output_dir": str(work / f"run_{args.model}"),
        "format": "messages" if smollm2 else "prompt_completion", "method": "lora" if smollm2 else "full",
        "gene_tokens": not smollm2, "label_tokens": not smollm2, "learning_rate": 5e-4 if smollm2 else 3e-3,
        "num_train_epochs": args.epochs, "max_steps": args.max_steps, "per_device_train_batch_size": 16,
        "warmup_steps": 0.05, "lr_scheduler_type": "cosine", "logging_steps": 10, "save_steps": 500,
        "eval_split": "validation", "max_length": 512, "seed": 0,
    }
    run = c2t.train.train(cfg)
    t_train = time.perf_counter() - t0
    manifest = c2t.train.read_run(run)
    test = dsd["test"].filter(lambda r: r["task"] == "cell_type")
    with TransformersBackend(run) as engine:
        answers = [g[0] for g in engine.complete(test["prompt"], sampling=Sampling(temperature=0, max_new_tokens=8))]
    result = score(test, answers)["per_task"]["cell_type"]
    train_labels = Counter(r["label"] for r in dsd["train"] if r["task"] == "cell_type")
    majority = train_labels.most_common(1)[0][0]
    baseline = float(np.mean([label == majority for label in test["label"]]))
    report = {
        "model": args.model, "method": cfg["method"], "gene_tokens": manifest["gene_tokens"],
        "train_records": dsd["train"].num_rows, "test_records": test.num_rows,
        "steps": manifest["training"]["global_step"], "first_loss": manifest["training"]["first_loss"],
        "last_loss": manifest["training"]["last_loss"], "eval_loss": manifest["training"]["eval_loss"],
        "test_accuracy": result["accuracy"], "majority_class": majority, "majority_baseline": baseline,
        "train_seconds": round(t_train, 1), "examples": list(zip(test["label"][:5], answers[:5], strict=True)),
        "run": str(run),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "gene_tokens"}, indent=2))
    print(f"held-out accuracy {result['accuracy']:.3f} vs majority-class baseline {baseline:.3f} "
          f"({majority!r}); loss {report['first_loss']:.3f} -> {report['last_loss']:.3f}")


if __name__ == "__main__":
    main()
