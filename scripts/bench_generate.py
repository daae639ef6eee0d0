"""Generation throughput: cells generated per second and cells annotated per second for the same model and the
same prompts on each backend, in one run: transformers, vLLM's offline engine and vLLM's OpenAI-compatible server.

vLLM runs from ``$C2T_VLLM_PYTHON`` (its own venv on a CPU machine; see scripts/test.sh): the offline engine
through ``scripts/vllm_complete.py``, the server through :class:`c2t.servers.VLLMServer`. Model loading and server
start-up are timed apart from the work; transformers is timed on a first (cold) and a second (warm) pass over the
same work. Ratios are against the warm transformers backend on the same machine.

    python scripts/bench_generate.py bench_out/tune/run_tiny-gpt2 --cells 400 --annotate 400
    python scripts/bench_generate.py RUN --backends transformers --device cuda   # a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("C2T_DATA", ROOT.parent / "shared" / "data")) / "pbmc3k_raw_seurat_labels.h5ad"


def prompt_sets(run: Path, n_cells: int, n_annotate: int, seed: int):
    """The generation prompts (unique prompts with their cell counts) and one annotation prompt per cell."""
    from c2t.generate._cells import _plan
    from c2t.generate._predict import _records
    from c2t.generate._run import read_run_info
    from c2t.io import read_h5ad

    info = read_run_info(run)
    labels = info.labels("generation")
    per = {label: n_cells // len(labels) + (i < n_cells % len(labels)) for i, label in enumerate(labels)}
    gen_prompts, counts, _, _ = _plan(info, {k: v for k, v in per.items() if v}, None, n_cells, seed)
    adata = read_h5ad(DATA)
    rows = np.sort(np.random.default_rng(seed).choice(adata.n_obs, n_annotate, replace=False))
    params = {k: v for k, v in (info.task_entry("cell_type").get("params") or {}).items() if k not in ("weight", "top_k")}
    ann_prompts, _, _, _ = _records(adata[rows].copy(), info, "cell_type", params, seed)
    return info, gen_prompts, counts, ann_prompts


def valid_rate(completions, vocabulary: set[str]) -> float:
    tokens = [t for group in completions for text in group for t in text.split()]
    return float(np.mean([t in vocabulary for t in tokens])) if tokens else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a c2t run folder (e.g. from scripts/tune_pbmc3k.py)")
    parser.add_argument("--cells", type=int, default=400, help="cells to generate")
    parser.add_argument("--annotate", type=int, default=400, help="cells to annotate")
    parser.add_argument("--backends", default="transformers,vllm,server")
    parser.add_argument("--device", default=None, help="transformers backend device (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per batch / requests in flight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench_out/bench_generate.json"))
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"{DATA} is absent")

    from c2t.generate import OpenAIBackend, Sampling, TransformersBackend, model_spec
    from c2t.servers import VLLMServer, vllm_python

    info, gen_prompts, counts, ann_prompts = prompt_sets(args.run, args.cells, args.annotate, args.seed)
    vocabulary = set(info.vocabulary())
    gen_sampling = Sampling(temperature=1.0, seed=args.seed, max_new_tokens=3 * (info.top_k or 100) + 16,
                            batch_size=args.batch_size)
    ann_sampling = Sampling(temperature=0.0, max_new_tokens=8, batch_size=args.batch_size)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    report = {"run": str(args.run), "cells": args.cells, "annotate": len(ann_prompts), "machine": platform.processor()
              or platform.machine(), "cpu_count": os.cpu_count(), "sampling": gen_sampling.to_dict(), "backends": {}}

    def record(name, load_s, gen, gen_s, ann_s):
        entry = {"load_seconds": round(load_s, 1), "generate_seconds": round(gen_s, 2),
                 "cells_generated_per_s": round(args.cells / gen_s, 1), "annotate_seconds": round(ann_s, 2),
                 "cells_annotated_per_s": round(len(ann_prompts) / ann_s, 1),
                 "valid_gene_rate": round(valid_rate(gen, vocabulary), 4),
                 "mean_words_per_cell": round(float(np.mean([len(t.split()) for g in gen for t in g])), 1)}
        report["backends"][name] = entry
        print(name, json.dumps(entry), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # kept up to date: a later backend may fail

    if "transformers" in backends:
        start = time.perf_counter()
        engine = TransformersBackend(args.run, device=args.device)
        load_s = time.perf_counter() - start
        # the first pass over new tensor shapes is slow on a CPU (kernel set-up per shape); vLLM warms up at load,
        # so time transformers cold (first pass) and warm (the same work again) and report both
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            gen = engine.complete(gen_prompts, sampling=gen_sampling, n=counts)
            gen_s = time.perf_counter() - start
            start = time.perf_counter()
            engine.complete(ann_prompts, sampling=ann_sampling)
            timings.append((gen_s, time.perf_counter() - start))
        record(f"transformers ({engine.device}, first pass)", load_s, gen, *timings[0])
        record(f"transformers ({engine.device})", load_s, gen, *timings[1])
        engine.close()

    python = vllm_python()
    if ("vllm" in backends or "server" in backends) and python is None:
        print("vLLM is not installed here (set C2T_VLLM_PYTHON); skipping the vLLM backends")
    if "vllm" in backends and python is not None:
        with tempfile.TemporaryDirectory() as tmp:
            job = {"model": str(args.run), "engine": {"dtype": "float32", "enforce_eager": True}, "jobs": [
                {"name": "generate", "prompts": gen_prompts, "n": counts, "sampling": gen_sampling.to_dict()},
                {"name": "annotate", "prompts": ann_prompts, "sampling": ann_sampling.to_dict()}]}
            Path(tmp, "job.json").write_text(json.dumps(job))
            env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
                   "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
            done = subprocess.run([python, str(ROOT / "scripts" / "vllm_complete.py"), f"{tmp}/job.json",
                                   f"{tmp}/out.json"], capture_output=True, text=True, env=env, check=False)
            if done.returncode:
                raise SystemExit(f"vLLM offline run failed:\n{done.stderr[-3000:]}")
            out = json.loads(Path(tmp, "out.json").read_text())
        r = out["results"]
        record("vllm offline (cpu)", out["load_seconds"], r["generate"]["completions"], r["generate"]["seconds"],
               r["annotate"]["seconds"])

    if "server" in backends and python is not None:
        spec = model_spec(args.run)
        model, extra, name = args.run, [], "run"
        if spec.is_adapter:
            model = Path(spec.manifest["base_model"])
            extra = ["--enable-lora", "--lora-modules", f"run={args.run}", "--max-lora-rank", "64"]
            if spec.manifest.get("target_modules"):  # lm_head left out: vLLM's prompt log-probabilities need that
                extra += ["--lora-target-modules", *spec.manifest["target_modules"]]
        start = time.perf_counter()
        with VLLMServer(model, name="base" if spec.is_adapter else name, max_model_len=None, extra_args=extra) as server:
            load_s = time.perf_counter() - start
            engine = OpenAIBackend(server.base_url, name, spec=spec, timeout=1800)
            start = time.perf_counter()
            gen = engine.complete(gen_prompts, sampling=gen_sampling, n=counts)
            gen_s = time.perf_counter() - start
            start = time.perf_counter()
            engine.complete(ann_prompts, sampling=ann_sampling)
            record("vllm server (cpu, openai client)", load_s, gen, gen_s, time.perf_counter() - start)
            engine.close()

    base = next((v for k, v in report["backends"].items() if k.startswith("transformers") and "first" not in k), None)
    if base:
        for entry in report["backends"].values():
            entry["generate_ratio_vs_transformers"] = round(entry["cells_generated_per_s"] / base["cells_generated_per_s"], 2)
            entry["annotate_ratio_vs_transformers"] = round(entry["cells_annotated_per_s"] / base["cells_annotated_per_s"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'backend':<36}{'cells gen/s':>12}{'x':>7}{'annotated/s':>13}{'x':>7}{'valid genes':>13}")
    for name, e in report["backends"].items():
        print(f"{name:<36}{e['cells_generated_per_s']:>12}{e.get('generate_ratio_vs_transformers', ''):>7}"
              f"{e['cells_annotated_per_s']:>13}{e.get('annotate_ratio_vs_transformers', ''):>7}{e['valid_gene_rate']:>13.1%}")


if __name__ == "__main__":
    main()
