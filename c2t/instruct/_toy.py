"""A tiny synthetic AnnData with every ``obs`` column and the coordinates the instruction tasks use.

Used by the docstring examples, the tests and the benchmark; no download, a fraction of a second to make.
"""

from __future__ import annotations

import numpy as np

CELL_TYPES = ("B cell", "CD4 T cell", "NK cell", "Monocyte")
MARKERS = {"B cell": ("MS4A1", "CD79A"), "CD4 T cell": ("CD3D", "IL7R"), "NK cell": ("NKG7", "GNLY"),
           "Monocyte": ("LYZ", "S100A9")}
PERTURBED = ("STAT1", "IRF1", "JAK2")


def toy_adata(n_cells: int = 240, n_genes: int = 40, *, seed: int = 0):
    """Make a small AnnData of integer counts with cell types, donors, drugs, perturbations and coordinates.

    ``obs`` columns: ``cell_type`` (4 types, each with two marker genes), ``donor`` (6), ``tissue`` (2),
    ``condition`` (ctrl/stim), ``sample_id`` (donor x condition), ``response`` (sensitive/resistant),
    ``treatment`` (always erlotinib), ``target`` (non-targeting or one of 3 knocked-out genes), ``bio_rep``
    (2); ``obsm['spatial']``: 2-D coordinates where cells of one type sit together.

    Parameters
    ----------
    n_cells, n_genes
        Size of the matrix (``n_genes`` >= 12).
    seed
        Seeds everything.

    Returns
    -------
    anndata.AnnData

    Examples
    --------
    >>> adata = toy_adata(60)
    >>> adata.shape, sorted(adata.obs["cell_type"].unique())[:2]
    ((60, 40), ['B cell', 'CD4 T cell'])
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    genes = [g for pair in MARKERS.values() for g in pair] + list(PERTURBED)
    genes += [f"GENE{i:03d}" for i in range(n_genes - len(genes))]
    cell_type = np.array(CELL_TYPES)[np.arange(n_cells) % len(CELL_TYPES)]
    rng.shuffle(cell_type)
    counts = rng.negative_binomial(2, 0.7, size=(n_cells, n_genes)).astype(np.float32)
    for t, (a, b) in MARKERS.items():
        rows = np.flatnonzero(cell_type == t)
        counts[rows, genes.index(a)] += rng.poisson(20, len(rows))
        counts[rows, genes.index(b)] += rng.poisson(12, len(rows))
    donor = np.array([f"donor{i}" for i in range(6)])[rng.integers(0, 6, n_cells)]
    condition = np.where(rng.random(n_cells) < 0.5, "ctrl", "stim")
    target = np.array(["non-targeting", *PERTURBED])[rng.choice(4, n_cells, p=[0.4, 0.2, 0.2, 0.2])]
    for gene in PERTURBED:
        counts[target == gene, genes.index(gene)] = 0
    centres = {t: rng.uniform(0, 100, 2) for t in CELL_TYPES}
    spatial = np.stack([centres[t] for t in cell_type]) + rng.normal(0, 8, (n_cells, 2))
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(cell_type),
            "donor": pd.Categorical(donor),
            "tissue": pd.Categorical(np.where(rng.random(n_cells) < 0.5, "blood", "lymph node")),
            "condition": pd.Categorical(condition),
            "sample_id": pd.Categorical(np.char.add(np.char.add(donor, "_"), condition)),
            "response": pd.Categorical(np.where(rng.random(n_cells) < 0.4, "resistant", "sensitive")),
            "treatment": pd.Categorical(np.full(n_cells, "erlotinib")),
            "target": pd.Categorical(target),
            "bio_rep": pd.Categorical(np.where(rng.random(n_cells) < 0.5, "rep1", "rep2")),
        },
        index=[f"cell{i:04d}" for i in range(n_cells)],
    )
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))
    adata.obsm["spatial"] = spatial
    return adata
