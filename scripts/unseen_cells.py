#!/usr/bin/env python
"""Write the cells a tuned run never trained on: those of an instruction dataset's held-out splits, as .h5ad.

A benchmark of a tuned LLM (``llm`` hidden-state embeddings, ``llm_generate`` annotation by generation) is fair
only on cells whose labels the run did not see in training. ``c2t instruct`` splits by cell, so the cells of its
``test`` (and ``validation``, used for the evaluation loss only) splits are such cells; this script takes them
out of the source ``.h5ad`` for ``c2t bench`` (see scripts/bench_configs/llm_pbmc3k.yaml).

    python scripts/unseen_cells.py bench_out/tune/pbmc3k_ct \\
        --data ../shared/data/pbmc3k_raw_seurat_labels.h5ad -o bench_out/pbmc3k_unseen.h5ad
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="an instruction dataset folder from `c2t instruct`")
    parser.add_argument("--data", type=Path, required=True, help="the .h5ad the dataset was built from")
    parser.add_argument("--splits", default="test,validation", help="held-out splits, comma-separated")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output .h5ad")
    args = parser.parse_args()

    import numpy as np

    from c2t.instruct import load
    from c2t.io import read_h5ad, write_h5ad

    dsd = load(args.dataset)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    missing = [s for s in splits if s not in dsd]
    if missing:
        parser.error(f"{args.dataset} has no split(s) {missing}; it has {list(dsd)}")
    held_out = {c for s in splits for c in dsd[s]["cell_id"]}
    seen = {c for s in dsd if s not in splits for c in dsd[s]["cell_id"]}
    adata = read_h5ad(args.data)
    keep = np.isin(adata.obs_names.astype(str), sorted(held_out - seen))
    if not keep.any():
        parser.error(f"none of the held-out cells of {args.dataset} is in {args.data}")
    write_h5ad(adata[keep].copy(), args.out)
    print(f"wrote {args.out}: {int(keep.sum())} cells of splits {', '.join(splits)} "
          f"({len(seen)} cells of the other splits left out)")


if __name__ == "__main__":
    main()
