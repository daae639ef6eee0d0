"""scripts/unseen_cells.py: the cells of an instruction dataset's held-out splits, for a fair LLM benchmark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad

from c2t.instruct import load

SCRIPT = Path(__file__).parents[1] / "scripts" / "unseen_cells.py"
PBMC3K = Path(__file__).parents[2] / "shared" / "data" / "pbmc3k_raw_seurat_labels.h5ad"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


def test_writes_exactly_the_held_out_cells(pbmc_dataset, tmp_path):
    out = tmp_path / "unseen.h5ad"
    done = run(str(pbmc_dataset), "--data", str(PBMC3K), "-o", str(out))
    assert done.returncode == 0, done.stderr
    dsd = load(pbmc_dataset)
    held_out = set(dsd["test"]["cell_id"]) | set(dsd["validation"]["cell_id"])
    trained = set(dsd["train"]["cell_id"])
    cells = set(ad.read_h5ad(out).obs_names)
    assert cells == held_out and not cells & trained
    assert f"wrote {out}: {len(held_out)} cells" in done.stdout

    test_only = tmp_path / "test_only.h5ad"
    assert run(str(pbmc_dataset), "--data", str(PBMC3K), "--splits", "test", "-o", str(test_only)).returncode == 0
    assert set(ad.read_h5ad(test_only).obs_names) == set(dsd["test"]["cell_id"])


def test_unknown_split_is_named(pbmc_dataset, tmp_path):
    done = run(str(pbmc_dataset), "--data", str(PBMC3K), "--splits", "holdout", "-o", str(tmp_path / "x.h5ad"))
    assert done.returncode != 0 and "has no split(s) ['holdout']" in done.stderr
    assert not (tmp_path / "x.h5ad").exists()
