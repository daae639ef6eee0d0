"""The rank -> expression inverse model, against Cell2Sentence's log-linear recipe implemented here."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from c2t import C2TInputError
from c2t.sentences import InverseModel, RankStats, decode, from_adata

PBMC3K = Path(__file__).parents[2] / "shared" / "data" / "pbmc3k_raw_seurat_labels.h5ad"
needs_pbmc3k = pytest.mark.skipif(not PBMC3K.is_file(), reason=f"real data {PBMC3K} is absent")


def log1p_cp10k_csr(counts) -> sp.csr_matrix:
    X = sp.csr_matrix(counts)
    totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    out = sp.csr_matrix((X.data.astype(np.float64), X.indices, X.indptr), shape=X.shape)
    out.data = np.log1p(out.data * np.repeat(scale, np.diff(X.indptr)))
    out.eliminate_zeros()
    return out


def ranked_nonzeros(values: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(1-based rank within its cell, value) of every non-zero entry, ranks by value descending."""
    ranks, vals = [], []
    for i in range(values.shape[0]):
        v = np.sort(values.data[values.indptr[i] : values.indptr[i + 1]])[::-1]
        ranks.append(np.arange(1, len(v) + 1))
        vals.append(v)
    return np.concatenate(ranks), np.concatenate(vals)


def cell2sentence_fit(values: sp.csr_matrix) -> tuple[float, float]:
    """Cell2Sentence: expression ~ intercept + slope * log10(rank) over all non-zero entries (np.polyfit)."""
    ranks, vals = ranked_nonzeros(values)
    slope, intercept = np.polyfit(np.log10(ranks), vals, 1)
    return float(slope), float(intercept)


def cell2sentence_reconstruct(cs, slope: float, intercept: float) -> sp.csr_matrix:
    """The recipe's expression for the genes of each sentence (rank r -> intercept + slope*log10 r), 0 elsewhere."""
    ranks = np.concatenate([np.arange(1, n + 1) for n in cs.lengths])
    return sp.csr_matrix(
        (intercept + slope * np.log10(ranks), cs.gene_ids, cs.offsets), shape=(len(cs), len(cs.vocabulary))
    )


def pearson_per_cell(pred: sp.csr_matrix, truth: sp.csr_matrix) -> np.ndarray:
    """Pearson r of each row of ``pred`` with the same row of ``truth``, over all genes (zeros included)."""
    pred, truth = sp.csr_matrix(pred, dtype=np.float64), sp.csr_matrix(truth, dtype=np.float64)
    n = pred.shape[1]

    def rowsum(m):
        return np.asarray(m.sum(axis=1)).ravel()

    sp_, st = rowsum(pred), rowsum(truth)
    cov = rowsum(pred.multiply(truth)) - sp_ * st / n
    var_p = rowsum(pred.multiply(pred)) - sp_**2 / n
    var_t = rowsum(truth.multiply(truth)) - st**2 / n
    return cov / np.sqrt(var_p * var_t)


def check_model(model: InverseModel) -> None:
    assert 0 < model.r2_monotone <= 1
    assert 0 < model.r2_linear <= 1
    knots = np.asarray(model.knot_values)
    assert np.all(np.diff(knots) <= 0), "monotone knots must be non-increasing"
    assert np.all(np.diff(model.knot_ranks) > 0)
    assert model.knot_ranks[0] == 1
    assert model.slope < 0
    curve = model.predict(np.arange(1, model.knot_ranks[-1] + 100))
    assert np.all(np.diff(curve) <= 0)
    assert np.all(curve >= 0)
    assert curve[-1] == np.float32(max(knots[-1], 0.0))  # held beyond the last knot


# ---------------------------------------------------------------------------------------------- pbmc3k
@pytest.fixture(scope="module")
def pbmc_split(pbmc3k):
    rng = np.random.default_rng(0)
    order = rng.permutation(pbmc3k.n_obs)
    fit, held_out = np.sort(order[: pbmc3k.n_obs // 2]), np.sort(order[pbmc3k.n_obs // 2 :])
    return pbmc3k[fit].copy(), pbmc3k[held_out].copy()


@needs_pbmc3k
def test_pbmc3k_inverse_model_beats_the_cell2sentence_recipe(pbmc_split):
    fit_cells, held_out = pbmc_split
    model = from_adata(fit_cells, top_k=None)
    fit_values = log1p_cp10k_csr(fit_cells.X)
    slope, intercept = cell2sentence_fit(fit_values)
    truth = log1p_cp10k_csr(held_out.X)

    inverse = model.inverse_model
    check_model(inverse)
    assert inverse.n_cells == fit_cells.n_obs
    assert inverse.n_values == fit_values.nnz
    # c2t's stored log-linear fit is the recipe itself, fitted on the same entries
    assert inverse.slope == pytest.approx(slope, rel=1e-9)
    assert inverse.intercept == pytest.approx(intercept, rel=1e-9)
    assert inverse.r2_monotone > inverse.r2_linear

    results = {}
    for top_k in (100, None):
        sentences = from_adata(held_out, top_k=top_k)
        ours = pearson_per_cell(decode(sentences, model=model).X, truth)
        recipe = pearson_per_cell(cell2sentence_reconstruct(sentences, slope, intercept), truth)
        assert np.isfinite(ours).all()
        assert np.isfinite(recipe).all()
        results[top_k] = (ours.mean(), recipe.mean())
        print(
            f"\npbmc3k held-out {held_out.n_obs} cells, top_k={top_k}: mean Pearson r c2t={ours.mean():.5f} "
            f"Cell2Sentence recipe={recipe.mean():.5f}"
        )
        assert ours.mean() >= recipe.mean()
    assert results[None][0] > 0.98  # full sentences: almost the whole log-expression profile comes back
    assert results[100][0] > 0.5


@needs_pbmc3k
def test_pbmc3k_manifest_model_is_sane(pbmc3k):
    cs = from_adata(pbmc3k, top_k=100)
    check_model(cs.inverse_model)
    assert cs.manifest["inverse_model"]["method"] == "monotone"
    # the model is fitted on full sentences even when only the top 100 genes are kept
    assert cs.inverse_model.knot_ranks[-1] == np.diff(sp.csr_matrix(pbmc3k.X).indptr).max()


# ------------------------------------------------------------------------------------------- synthetic
def test_monotone_model_is_the_isotonic_per_rank_mean(synth):
    from sklearn.isotonic import IsotonicRegression

    model = from_adata(synth, top_k=10).inverse_model
    check_model(model)
    ranks, vals = ranked_nonzeros(log1p_cp10k_csr(synth.X))
    count = np.bincount(ranks)[1:]
    mean = np.bincount(ranks, weights=vals)[1:] / count
    iso = IsotonicRegression(increasing=False).fit(np.arange(1, len(mean) + 1), mean, sample_weight=count)
    assert model.knot_ranks == list(range(1, len(mean) + 1))  # fewer than 100 ranks: one knot per rank
    np.testing.assert_allclose(model.knot_values, iso.predict(np.arange(1, len(mean) + 1)), atol=1e-6)
    assert model.n_cells == synth.n_obs - 3  # all-zero cells do not count
    assert model.n_values == len(vals)


def test_linear_fit_equals_polyfit(synth):
    model = from_adata(synth, top_k=10).inverse_model
    slope, intercept = cell2sentence_fit(log1p_cp10k_csr(synth.X))
    assert model.slope == pytest.approx(slope, rel=1e-9)
    assert model.intercept == pytest.approx(intercept, rel=1e-9)
    ranks, vals = ranked_nonzeros(log1p_cp10k_csr(synth.X))
    for name, pred in (
        ("r2_linear", intercept + slope * np.log10(ranks)),
        ("r2_monotone", np.interp(np.log10(ranks), np.log10(model.knot_ranks), model.knot_values)),
    ):
        r2 = 1 - ((vals - pred) ** 2).sum() / ((vals - vals.mean()) ** 2).sum()
        assert getattr(model, name) == pytest.approx(r2, rel=1e-6), name


def test_linear_method_predicts_the_recipe(synth):
    stats = RankStats.from_ranked(*ranked_nonzeros(log1p_cp10k_csr(synth.X)), n_cells=synth.n_obs)
    linear = InverseModel.fit(stats, method="linear")
    ranks = np.arange(1, 200)
    expected = np.maximum(linear.intercept + linear.slope * np.log10(ranks), 0).astype(np.float32)
    np.testing.assert_array_equal(linear.predict(ranks), expected)
    with pytest.raises(ValueError, match="'monotone' or 'linear'"):
        InverseModel.fit(stats, method="spline")


def test_log1p_input_fits_on_the_values_as_given(synth):
    logged = ad.AnnData(log1p_cp10k_csr(synth.X).astype(np.float32), obs=synth.obs, var=synth.var)
    from_log = from_adata(logged, top_k=10).inverse_model
    from_counts = from_adata(synth, top_k=10).inverse_model
    np.testing.assert_allclose(from_log.knot_values, from_counts.knot_values, atol=1e-5)
    assert from_log.slope == pytest.approx(from_counts.slope, rel=1e-5)


def test_rank_stats_add_up_over_chunks(synth):
    ranks, vals = ranked_nonzeros(log1p_cp10k_csr(synth.X))
    half = len(ranks) // 2
    whole = RankStats.from_ranked(ranks, vals, 10)
    parts = RankStats.from_ranked(ranks[:half], vals[:half], 4) + RankStats.from_ranked(ranks[half:], vals[half:], 6)
    assert parts.n_cells == 10
    for name in ("count", "total", "total_sq"):
        np.testing.assert_allclose(getattr(parts, name), getattr(whole, name), rtol=1e-12)
    assert (RankStats() + whole).n_cells == 10


def test_inverse_sample_is_a_seeded_subset_independent_of_chunking(synth):
    a = from_adata(synth, top_k=5, inverse_sample=60, chunk_size=1000).inverse_model
    b = from_adata(synth, top_k=5, inverse_sample=60, chunk_size=7).inverse_model
    assert 30 <= a.n_cells <= 90
    assert (a.n_cells, a.n_values) == (b.n_cells, b.n_values)
    np.testing.assert_allclose(a.knot_values, b.knot_values, atol=1e-6)
    full = from_adata(synth, top_k=5).inverse_model
    assert full.n_cells == synth.n_obs - 3


def test_inverse_sample_with_no_expressed_cell_is_named(synthetic_factory):
    data = synthetic_factory(n_cells=400, n_genes=20)
    counts = data.X.toarray()
    counts[2:] = 0  # 2 expressed cells out of 400
    assert (counts[:2].sum(axis=1) > 0).all()
    data.X = sp.csr_matrix(counts)
    with pytest.raises(C2TInputError, match="pass a larger inverse_sample"):
        from_adata(data, inverse_sample=1)
    assert from_adata(data, inverse_sample=400).inverse_model.n_cells == 2


@pytest.mark.parametrize("counts_input", [False, True])
def test_rank_statistics_kernel_equals_sorting_each_cell(counts_input):
    """The kernel groups a cell's equal values (count data) and sorts only the distinct ones, and falls back to
    sorting every value for cells with many distinct values (continuous data) and for the rest of their block;
    either way the per-rank statistics equal sorting each cell's values."""
    from c2t.sentences._kernels import float_bits, rank_value_stats

    rng = np.random.default_rng(5)
    n_cells, n_genes = 400, 600
    counts = rng.poisson(rng.gamma(0.3, 3.0, size=(n_cells, n_genes))).astype(np.float64)
    continuous = rng.random(n_cells) < 0.3  # these cells get jittered values: nearly all distinct
    values = counts * np.where(continuous[:, None], 1 + rng.random((n_cells, n_genes)), 1.0)
    if counts_input:
        values = counts  # integer counts, normalised inside the kernel
    X = sp.csr_matrix(values.astype(np.float32))
    col_map = np.where(rng.random(n_genes) < 0.9, np.arange(n_genes), -1)  # some dropped columns
    rows = np.sort(rng.choice(n_cells, 300, replace=False)).astype(np.int64)
    kept = X[:, col_map >= 0]
    lengths = np.diff(kept.indptr)[rows].astype(np.int64)
    sizes = np.asarray(X.sum(axis=1)).ravel()[rows] * 1.5 if counts_input else np.zeros(0)
    count, total, total_sq = rank_value_stats(X.indptr, X.indices, float_bits(X.data), col_map, rows, lengths,
                                              sizes, 1e4, counts_input)
    ranks, vals = [], []
    for r, i in enumerate(rows):
        v = np.sort(kept[i].data.astype(np.float32).astype(np.float64))[::-1]
        if counts_input:
            v = np.log1p(v * 1e4 / sizes[r])
        ranks.append(np.arange(1, len(v) + 1))
        vals.append(v)
    ref = RankStats.from_ranked(np.concatenate(ranks), np.concatenate(vals), len(rows))
    np.testing.assert_array_equal(count, ref.count)
    np.testing.assert_allclose(total, ref.total, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(total_sq, ref.total_sq, rtol=1e-9, atol=1e-9)
