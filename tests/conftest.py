"""Shared fixtures: a tiny cached synthetic AnnData (cell types, batches, NB counts) and the real pbmc3k file.

The synthetic data is built once per session; tests that change it take a copy (the ``adata`` fixture).
Real data lives beside the repository in ``../shared/data`` and is never copied into it.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

DATA_DIR = Path(__file__).parents[2] / "shared" / "data"
PBMC3K = DATA_DIR / "pbmc3k_raw_seurat_labels.h5ad"

N_CELLS = 240
N_GENES = 120
EMPTY_CELLS = (5, 17, 130)  # all-zero rows of the synthetic data
CELL_TYPES = ("T", "B", "Mono")


def make_synthetic(n_cells: int = N_CELLS, n_genes: int = N_GENES, seed: int = 0) -> ad.AnnData:
    """Negative-binomial counts with cell-type programs and a batch effect; small counts give many ties."""
    rng = np.random.default_rng(seed)
    cell_type = rng.choice(CELL_TYPES, n_cells)
    batch = rng.choice(["b1", "b2"], n_cells)
    base = rng.lognormal(mean=-0.5, sigma=1.2, size=n_genes)
    programs = {t: base * rng.lognormal(0.0, 1.0, size=n_genes) for t in CELL_TYPES}
    mu = np.stack([programs[t] for t in cell_type]) * np.where(batch == "b2", 1.5, 1.0)[:, None]
    size = 0.6  # NB dispersion: many zeros, many cells with equal small counts
    counts = rng.negative_binomial(size, size / (size + mu)).astype(np.float32)
    counts[list(EMPTY_CELLS)] = 0
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(cell_type, categories=list(CELL_TYPES)),
            "batch": pd.Categorical(batch),
            "n_counts": counts.sum(axis=1).astype(np.int64),
        },
        index=pd.Index([f"cell{i:04d}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(index=pd.Index([f"G{j:03d}" for j in range(n_genes)]))
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=var)


def log1p_cp10k(counts) -> np.ndarray:
    """Independent reference normalisation (float64, dense): CP10k then log1p; all-zero rows stay zero."""
    dense = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    dense = dense.astype(np.float64)
    totals = dense.sum(axis=1, keepdims=True)
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(dense * scale)


@pytest.fixture(scope="session")
def synth() -> ad.AnnData:
    """The cached synthetic AnnData (do not modify; use ``adata`` for a copy)."""
    return make_synthetic()


@pytest.fixture
def adata(synth) -> ad.AnnData:
    """A private copy of the synthetic AnnData."""
    return synth.copy()


@pytest.fixture(scope="session")
def synth_h5ad(synth, tmp_path_factory) -> Path:
    """The synthetic AnnData written once as ``.h5ad`` (CSR counts in X, a 'counts' layer, counts in raw)."""
    path = tmp_path_factory.mktemp("synth") / "synth.h5ad"
    out = synth.copy()
    out.layers["counts"] = out.X.copy()
    out.raw = out.copy()
    out.write_h5ad(path)
    return path


@pytest.fixture(scope="session")
def pbmc3k() -> ad.AnnData:
    """The real pbmc3k file in memory (raw counts, CSR)."""
    if not PBMC3K.is_file():
        pytest.skip(f"{PBMC3K} is absent")
    from c2t.io import read_h5ad

    return read_h5ad(PBMC3K)


@pytest.fixture(scope="session")
def reference_norm():
    """The test suite's own CP10k + log1p (see :func:`log1p_cp10k`), as a fixture for the test modules."""
    return log1p_cp10k


@pytest.fixture(scope="session")
def synthetic_factory():
    """:func:`make_synthetic`, for tests that need data of another shape or seed."""
    return make_synthetic
