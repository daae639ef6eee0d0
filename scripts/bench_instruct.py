#!/usr/bin/env python
"""Benchmark ``c2t.instruct.build`` against a plain Python per-example ``str.format`` loop.

What it measures:

* c2t: ``build`` on synthetic cell sentences (``--n-cells`` cells, top-100 genes, gene names of 4-10
  characters, 20 cell types) with a 50/50 mixture of cell type annotation and conditional generation,
  ``--n-examples`` examples in all (both record formats, prompt/completion and messages), from the
  ranked ids to the saved ``DatasetDict`` on disk (splitting, rendering, Arrow write, manifest, examples,
  card and reloading). Each size runs in a fresh subprocess so that its peak memory (``ru_maxrss``, minus
  the RSS after the synthetic cells are made) is its own; two sizes show whether memory grows with the
  number of examples.
* the per-example loop (the reference: cell2sentence's prompt formatter does about 7,500 examples/s on
  two cores): for each example pick a template, ``str.format`` it with a sentence that is already a Python
  string (rendering the sentences is not timed, in the loop's favour), build the record dict with
  prompt, completion and messages, then ``datasets.Dataset.from_list`` + ``save_to_disk``. It runs on
  ``--baseline-examples`` examples in a subprocess too.

Usage (from the repository root, with the c2t virtualenv active)::

    python scripts/bench_instruct.py                        # 1,000,000 examples (and 200,000) from 100,000 cells
    python scripts/bench_instruct.py --n-examples 100000 --n-cells 20000 --baseline-examples 10000   # quick run

Outputs go to ``--scratch`` (default /tmp/c2t_bench_instruct, outside the repository); the JSON report to
``--out`` (default bench_out/instruct.json, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MB = 2**20
TOP_K = 100


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return usage.ru_utime + usage.ru_stime


def synthetic_cells(n_cells: int, n_genes: int = 20_000, seed: int = 0):
    """CellSentences of random ranked ids (top 100 genes per cell) over gene names of 4-10 characters."""
    import pandas as pd

    from c2t._manifest import vocabulary_hash
    from c2t.sentences import CellSentences

    rng = np.random.default_rng(seed)
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    vocabulary = np.array(
        ["".join(rng.choice(letters, rng.integers(2, 6))) + str(i) for i in range(n_genes)], dtype=object
    )
    popularity = 1.0 / np.arange(1, n_genes + 1) ** 0.7
    ids = rng.choice(n_genes, size=n_cells * TOP_K, p=popularity / popularity.sum()).astype(np.int32)
    offsets = np.arange(0, n_cells * TOP_K + 1, TOP_K, dtype=np.int64)
    types = np.array([f"cell type {i}" for i in range(20)])
    obs = pd.DataFrame({"cell_type": pd.Categorical(types[rng.integers(0, 20, n_cells)])},
                       index=[f"cell{i}" for i in range(n_cells)])
    manifest = {"top_k": TOP_K, "seed": 0, "vocabulary_hash": vocabulary_hash(vocabulary),
                "source": {"path": None, "sha256": None, "n_obs": n_cells, "n_vars": n_genes}}
    return CellSentences(offsets, ids, vocabulary, obs, manifest)


def run_c2t(n_cells: int, n_examples: int, scratch: Path) -> dict:
    import c2t.instruct

    cs = synthetic_cells(n_cells)
    before = rss_mb()
    weight = n_examples / (2 * n_cells)
    out = scratch / f"c2t_{n_examples}"
    start, cpu = time.perf_counter(), cpu_s()
    dsd = c2t.instruct.build(cs, out=out, tasks=[{"task": "cell_type", "weight": weight},
                                                 {"task": "generation", "weight": weight}], top_k=TOP_K, seed=0)
    seconds, cpu = time.perf_counter() - start, cpu_s() - cpu
    n = sum(len(ds) for ds in dsd.values())
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"examples": n, "seconds": seconds, "examples_per_s": n / seconds, "cpu_seconds": cpu,
            "rss_before_mb": before, "peak_mb": peak_mb(), "peak_added_mb": peak_mb() - before, "output_mb": size / MB}


def run_loop(n_cells: int, n_examples: int, scratch: Path) -> dict:
    import random

    import datasets

    from c2t.instruct import load_templates

    datasets.disable_progress_bars()
    cs = synthetic_cells(n_cells)
    sentences = cs.texts()  # given to the loop for free
    labels = cs.obs["cell_type"].astype(str).tolist()
    lengths = cs.lengths
    annotation = load_templates("cell_type", provided={"cell_sentence", "n_genes"}, answer_provided={"cell_type"})
    generation = load_templates("generation", provided={"cell_type", "context", "n_genes"},
                                answer_provided={"cell_sentence"})
    texts = {name: [t.text for t in ts.templates] for name, ts in (("cell_type", annotation), ("generation", generation))}
    before = rss_mb()
    rng = random.Random(0)
    start, cpu = time.perf_counter(), cpu_s()
    records = []
    for i in range(n_examples):
        cell = i % n_cells
        if i % 2 == 0:
            prompt = rng.choice(texts["cell_type"]).format(cell_sentence=sentences[cell], n_genes=lengths[cell]) + "\n"
            completion, task = labels[cell], "cell_type"
        else:
            prompt = rng.choice(texts["generation"]).format(cell_type=labels[cell], context="", n_genes=lengths[cell]) + "\n"
            completion, task = sentences[cell], "generation"
        records.append({
            "prompt": prompt,
            "completion": completion,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
            "task": task,
            "cell_id": f"cell{cell}",
        })
    formatted = time.perf_counter() - start
    out = scratch / f"loop_{n_examples}"
    datasets.Dataset.from_list(records).save_to_disk(str(out))
    seconds, cpu = time.perf_counter() - start, cpu_s() - cpu
    return {"examples": n_examples, "seconds": seconds, "cpu_seconds": cpu, "format_seconds": formatted,
            "examples_per_s": n_examples / seconds, "format_examples_per_s": n_examples / formatted,
            "rss_before_mb": before, "peak_mb": peak_mb(), "peak_added_mb": peak_mb() - before}


def subprocess_json(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"worker {args} failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-cells", type=int, default=100_000)
    parser.add_argument("--n-examples", type=int, default=1_000_000)
    parser.add_argument("--small-examples", type=int, default=200_000, help="second size, for memory growth")
    parser.add_argument("--baseline-examples", type=int, default=50_000)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/c2t_bench_instruct"))
    parser.add_argument("--out", type=Path, default=REPO / "bench_out" / "instruct.json")
    parser.add_argument("--worker", choices=["c2t", "loop"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.scratch.mkdir(parents=True, exist_ok=True)
        run = run_c2t if args.worker == "c2t" else run_loop
        print(json.dumps(run(args.n_cells, args.n_examples, args.scratch)))
        return
    shutil.rmtree(args.scratch, ignore_errors=True)
    load_before = os.getloadavg()
    common = ["--n-cells", str(args.n_cells), "--scratch", str(args.scratch)]
    results = {}
    for n in sorted({args.small_examples, args.n_examples}):
        results[f"c2t_{n}"] = subprocess_json(["--worker", "c2t", "--n-examples", str(n), *common])
        shutil.rmtree(args.scratch / f"c2t_{n}", ignore_errors=True)
    results["loop"] = subprocess_json(["--worker", "loop", "--n-examples", str(args.baseline_examples), *common])
    shutil.rmtree(args.scratch, ignore_errors=True)
    big, loop = results[f"c2t_{args.n_examples}"], results["loop"]
    small = results[f"c2t_{args.small_examples}"]
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "n_cells": args.n_cells, "top_k": TOP_K, "results": results,
        "speedup_vs_loop": big["examples_per_s"] / loop["examples_per_s"],
        "speedup_vs_c2s_reference_7500_per_s": big["examples_per_s"] / 7500,
        "peak_added_mb_ratio_big_vs_small": big["peak_added_mb"] / max(small["peak_added_mb"], 1e-9),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(wall times include waiting for other processes; CPU seconds do not)")
    print(f"{'run':<28}{'examples':>11}{'seconds':>10}{'CPU s':>8}{'examples/s':>13}{'peak added MB':>15}")
    for name, r in results.items():
        label = "per-example str.format loop" if name == "loop" else "c2t.instruct.build"
        print(f"{label:<28}{r['examples']:>11,}{r['seconds']:>10.2f}{r['cpu_seconds']:>8.2f}{r['examples_per_s']:>13,.0f}"
              f"{r['peak_added_mb']:>15.0f}")
    print(f"loop formatting alone: {loop['format_examples_per_s']:,.0f} examples/s (write excluded)")
    print(f"c2t vs the loop: {report['speedup_vs_loop']:.1f}x; vs cell2sentence's ~7,500/s: "
          f"{report['speedup_vs_c2s_reference_7500_per_s']:.1f}x; output {big['output_mb']:.0f} MB")
    print(f"peak added memory, {args.n_examples:,} vs {args.small_examples:,} examples: "
          f"{big['peak_added_mb']:.0f} vs {small['peak_added_mb']:.0f} MB; report: {args.out}")


if __name__ == "__main__":
    main()
