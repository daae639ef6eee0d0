"""Cell sentences: ranks against an independent reference, tie-breaking, save/load and streaming convert."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from c2t import C2TInputError
from c2t.sentences import CellSentences, convert, from_adata, load

PBMC3K = Path(__file__).parents[2] / "shared" / "data" / "pbmc3k_raw_seurat_labels.h5ad"
needs_pbmc3k = pytest.mark.skipif(not PBMC3K.is_file(), reason=f"real data {PBMC3K} is absent")
EMPTY_CELLS = (5, 17, 130)  # all-zero rows of the synthetic fixture (see conftest.py)


# ------------------------------------------------------------------------------------------------ helpers
def sentence(cs: CellSentences, i: int) -> np.ndarray:
    return cs.gene_ids[cs.offsets[i] : cs.offsets[i + 1]]


def assert_ranks_match(cs: CellSentences, values, top_k: int | None) -> None:
    """Each cell's genes, read in c2t's rank order, carry the reference's values sorted descending.

    ``values`` (cells x vocabulary, float64, any sparse/dense) is the reference expression. Tied genes
    may come in any order, so values (not gene ids) are compared; the genes strictly above the k-th value
    must all be in the sentence.
    """
    ref = sp.csr_matrix(values)
    assert len(cs) == ref.shape[0]
    assert len(cs.vocabulary) == ref.shape[1]
    buf = np.zeros(ref.shape[1])
    got_all, expected_all = [], []
    for i in range(ref.shape[0]):
        lo, hi = ref.indptr[i], ref.indptr[i + 1]
        cols, vals = ref.indices[lo:hi], ref.data[lo:hi]
        cols, vals = cols[vals > 0], vals[vals > 0]
        expected = np.sort(vals)[::-1]
        if top_k is not None:
            expected = expected[:top_k]
        ids = sentence(cs, i)
        assert len(np.unique(ids)) == len(ids), f"cell {i}: a gene appears twice"
        buf[cols] = vals
        got = buf[ids]
        buf[cols] = 0.0
        assert len(got) == len(expected), f"cell {i}: {len(got)} genes, reference has {len(expected)}"
        got_all.append(got)
        expected_all.append(expected)
        if len(expected):
            above = set(cols[vals > expected[-1]].tolist())
            assert above <= set(ids.tolist()), f"cell {i}: genes above the k-th value are missing"
    np.testing.assert_array_equal(np.concatenate(got_all), np.concatenate(expected_all))


def pbmc_reference(pbmc) -> sp.csr_matrix:
    """log1p(CP10k) of the pbmc3k counts, computed here with numpy on the CSR arrays (float64)."""
    X = sp.csr_matrix(pbmc.X)
    totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    out = sp.csr_matrix((X.data.astype(np.float64), X.indices, X.indptr), shape=X.shape)
    out.data = np.log1p(out.data * np.repeat(1e4 / totals, np.diff(X.indptr)))
    return out


def assert_same_sentences(a: CellSentences, b: CellSentences, *, obs: bool = True) -> None:
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.gene_ids, b.gene_ids)
    np.testing.assert_array_equal(a.vocabulary, b.vocabulary)
    np.testing.assert_array_equal(a.cell_ids, b.cell_ids)
    if obs:
        assert list(a.obs.columns) == list(b.obs.columns)
        pd.testing.assert_frame_equal(a.obs, b.obs, check_column_type=False)  # no columns: empty vs RangeIndex


def assert_same_inverse_model(a: CellSentences, b: CellSentences) -> None:
    """Equal up to float summation order (per-rank sums are added chunk by chunk)."""
    ma, mb = a.manifest["inverse_model"], b.manifest["inverse_model"]
    assert ma.keys() == mb.keys()
    for key in ma:
        if isinstance(ma[key], str):
            assert ma[key] == mb[key]
        else:
            np.testing.assert_allclose(ma[key], mb[key], rtol=1e-9, err_msg=key)


def dense_counts(adata) -> np.ndarray:
    return adata.X.toarray().astype(np.float64)


# ------------------------------------------------------------------------------------- ranks vs reference
@needs_pbmc3k
@pytest.mark.parametrize("top_k", [100, None])
def test_pbmc3k_ranks_equal_reference(pbmc3k, top_k):
    cs = from_adata(pbmc3k, top_k=top_k, obs_keys=["seurat_celltype"])
    np.testing.assert_array_equal(cs.vocabulary, np.asarray(pbmc3k.var_names))
    assert_ranks_match(cs, pbmc_reference(pbmc3k), top_k)
    n_expressed = np.diff(sp.csr_matrix(pbmc3k.X).indptr)
    expected_len = n_expressed if top_k is None else np.minimum(n_expressed, top_k)
    np.testing.assert_array_equal(cs.lengths, expected_len)
    assert cs.manifest["normalization"]["input"] == "counts"
    assert cs.manifest["report"]["n_empty_cells"] == 0
    assert cs.obs["seurat_celltype"].value_counts()["Naive CD4 T"] == 697


@needs_pbmc3k
def test_pbmc3k_log1p_input_gives_the_same_sentences(pbmc3k):
    """Ranking already-normalised values (float32 log1p CP10k, as scanpy stores them) changes nothing."""
    ref = pbmc_reference(pbmc3k)
    logged = ad.AnnData(ref.astype(np.float32), obs=pbmc3k.obs[[]], var=pbmc3k.var[[]])
    from_counts = from_adata(pbmc3k, top_k=100)
    from_log = from_adata(logged, top_k=100)
    assert from_log.manifest["normalization"]["input"] == "log1p"
    assert_ranks_match(from_log, logged.X.astype(np.float64), 100)
    assert_same_sentences(from_counts, from_log)


@pytest.mark.parametrize("storage", ["csr", "csc", "dense"])
@pytest.mark.parametrize("kind", ["counts", "log1p"])
@pytest.mark.parametrize("top_k", [10, None])
def test_synthetic_ranks_equal_reference(synth, reference_norm, storage, kind, top_k):
    ref = reference_norm(synth.X)
    values = synth.X.toarray() if kind == "counts" else ref.astype(np.float32)
    X = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}[storage](values)
    data = ad.AnnData(X, obs=synth.obs, var=synth.var)
    cs = from_adata(data, top_k=top_k)
    assert cs.manifest["normalization"]["input"] == kind
    assert cs.manifest["normalization"]["decided_by"] == "detected"
    assert_ranks_match(cs, ref if kind == "counts" else values.astype(np.float64), top_k)
    assert_same_sentences(cs, from_adata(synth, top_k=top_k), obs=False)


@pytest.mark.parametrize("top_k", [1, 7, 40, 260])
def test_ranks_are_exact_when_neighbouring_cells_differ_in_scale(top_k):
    """The ranking kernel guesses each cell's k-th value from the previous cell's; cells 1000x apart in
    scale, long and short, real-valued and tied, must still rank exactly like the reference (260: past
    the 128 keys up to which the kernel sorts by counting larger keys, the radix sort)."""
    rng = np.random.default_rng(7)
    n_cells, n_genes = 600, 300
    density = rng.choice([0.02, 0.3, 0.9], size=n_cells)[:, None]
    scale = rng.choice([1e-3, 1.0, 1e3], size=n_cells)[:, None]
    counts = rng.poisson(2.0, size=(n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < density)
    jitter = np.where(rng.random((n_cells, 1)) < 0.5, rng.random((n_cells, n_genes)), 0.0)  # ties or none
    values = ((counts + jitter * (counts > 0)) * scale).astype(np.float32)
    data = ad.AnnData(sp.csr_matrix(values), var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]))
    cs = from_adata(data, top_k=top_k, normalize="log1p")
    assert_ranks_match(cs, values.astype(np.float64), top_k)
    # with dropped columns (an Ensembl-style map that misses some genes) the kept genes rank the same way
    mapped = {f"G{j}": f"S{j}" for j in range(0, n_genes, 3)}
    kept = from_adata(data, top_k=top_k, normalize="log1p", gene_map=mapped)
    assert_ranks_match(kept, values[:, ::3].astype(np.float64), top_k)


@pytest.mark.parametrize("top_k", [3, None])
def test_explicitly_stored_zeros_are_not_expressed(top_k):
    """A CSR matrix may store zeros (and -0.0) explicitly; they are not genes of the sentence, and the
    rows around them still rank exactly."""
    rng = np.random.default_rng(3)
    values = (rng.poisson(1.5, size=(200, 40)) * (rng.random((200, 40)) < 0.5)).astype(np.float32)
    X = sp.csr_matrix(values)
    stored = sp.csr_matrix((np.ones_like(values) * (rng.random((200, 40)) < 0.3)) + X)  # more stored entries
    stored.data[:] = values[stored.nonzero()]  # ... whose values are the same matrix: many stored zeros
    stored.data[stored.data == 0] = np.where(rng.random((stored.data == 0).sum()) < 0.5, 0.0, -0.0)
    assert (stored.data == 0).sum() > 1000 and np.array_equal(stored.toarray(), values)
    var = pd.DataFrame(index=[f"G{j}" for j in range(40)])
    cs = from_adata(ad.AnnData(stored, var=var), top_k=top_k, normalize="log1p")
    n_expressed = (values > 0).sum(axis=1)
    np.testing.assert_array_equal(cs.lengths, n_expressed if top_k is None else np.minimum(n_expressed, top_k))
    assert_ranks_match(cs, values.astype(np.float64), top_k)
    assert_same_sentences(cs, from_adata(ad.AnnData(X, var=var), top_k=top_k, normalize="log1p"), obs=False)


def test_x_layer_and_raw_give_the_same_sentences(synth, reference_norm):
    """Log-normalised X, a counts layer and counts in raw all rank the same way."""
    logged = ad.AnnData(
        sp.csr_matrix(reference_norm(synth.X).astype(np.float32)), obs=synth.obs.copy(), var=synth.var.copy()
    )
    logged.layers["counts"] = synth.X.copy()
    logged.raw = synth.copy()
    by_x = from_adata(logged, top_k=20)
    by_layer = from_adata(logged, top_k=20, layer="counts")
    by_raw = from_adata(logged, top_k=20, use_raw=True)
    assert [c.manifest["source"]["matrix"] for c in (by_x, by_layer, by_raw)] == ["X", "layers/counts", "raw/X"]
    assert [c.manifest["normalization"]["input"] for c in (by_x, by_layer, by_raw)] == ["log1p", "counts", "counts"]
    assert by_layer.manifest["normalization"]["target_sum"] == 1e4
    assert by_x.manifest["normalization"]["target_sum"] is None
    assert_same_sentences(by_x, by_layer)
    assert_same_sentences(by_x, by_raw)
    assert_ranks_match(by_raw, reference_norm(synth.X), 20)


def test_normalize_can_be_stated(synth):
    """normalize='log1p' on counts is allowed (ranks are the same); the manifest says who decided."""
    cs = from_adata(synth, top_k=10, normalize="log1p")
    assert cs.manifest["normalization"]["decided_by"] == "user"
    assert cs.manifest["normalization"]["input"] == "log1p"
    assert_same_sentences(cs, from_adata(synth, top_k=10))


def test_all_zero_cells_are_kept_with_empty_sentences(synth):
    cs = from_adata(synth, top_k=10, obs_keys=["cell_type"])
    assert len(cs) == synth.n_obs
    np.testing.assert_array_equal(cs.cell_ids, np.asarray(synth.obs_names))
    texts = cs.texts()
    for i in EMPTY_CELLS:
        assert cs.lengths[i] == 0
        assert texts[i] == ""
    assert (cs.lengths > 0).sum() == synth.n_obs - len(EMPTY_CELLS)
    assert cs.manifest["report"]["n_empty_cells"] == len(EMPTY_CELLS)
    assert cs.manifest["n_cells"] == synth.n_obs


def test_short_cells_keep_every_expressed_gene(synth):
    cs = from_adata(synth, top_k=30)
    n_expressed = (dense_counts(synth) > 0).sum(axis=1)
    np.testing.assert_array_equal(cs.lengths, np.minimum(n_expressed, 30))
    assert (n_expressed < 30).any()
    assert (n_expressed > 30).any()


def test_texts_are_gene_names_in_rank_order(synth):
    cs = from_adata(synth, top_k=5)
    for i in (0, 1, 2):
        assert cs.texts()[i] == " ".join(synth.var_names[sentence(cs, i)])
        assert cs.texts(delimiter=",")[i] == ",".join(cs.genes_of(i))


@pytest.mark.parametrize("chunk_genes", [1, 37, 10_000_000])
def test_texts_are_the_same_however_they_are_chunked(synth, monkeypatch, chunk_genes):
    """Full sentences are rendered a bounded number of gene names at a time; chunk edges change nothing."""
    import c2t.sentences._core as core

    cs = from_adata(synth, top_k=None)
    expected = [" ".join(synth.var_names[sentence(cs, i)]) for i in range(len(cs))]
    monkeypatch.setattr(core, "_TEXT_CHUNK_GENES", chunk_genes)
    assert cs.texts() == expected
    assert cs.texts_arrow().to_pylist() == expected
    assert cs.texts(top_k=4) == [" ".join(t.split()[:4]) for t in expected]
    assert cs[:0].texts() == []


def test_truncating_full_sentences_equals_converting_with_top_k(synth):
    """Ties are broken by a total order per cell, so top-k of a full sentence is the top_k sentence."""
    full = from_adata(synth, top_k=None)
    for k in (1, 7, 25):
        assert full.texts(top_k=k) == from_adata(synth, top_k=k).texts()


# --------------------------------------------------------------------------------------------- tie-break
def tie_groups(cs: CellSentences, values: np.ndarray):
    """Yield, per cell and per tied value with 2+ genes, the gene ids in c2t's order."""
    for i in range(len(cs)):
        ids = sentence(cs, i)
        vals = values[i, ids]
        for v in np.unique(vals):
            group = ids[vals == v]
            if len(group) > 1:
                yield i, group


def test_synthetic_data_has_many_ties(synth):
    cs = from_adata(synth, top_k=None)
    assert sum(1 for _ in tie_groups(cs, dense_counts(synth))) > 500


def test_same_output_for_every_chunk_size_and_source(synth, synth_h5ad):
    reference = from_adata(synth, top_k=15, obs_keys=["cell_type", "batch"], chunk_size=1000)
    for chunk_size in (1, 7, 1000):
        cs = from_adata(synth, top_k=15, obs_keys=["cell_type", "batch"], chunk_size=chunk_size)
        assert_same_sentences(cs, reference)
        assert_same_inverse_model(cs, reference)
    from_path = from_adata(synth_h5ad, top_k=15, obs_keys=["cell_type", "batch"], chunk_size=7)
    assert_same_sentences(from_path, reference)
    assert_same_inverse_model(from_path, reference)
    backed = ad.read_h5ad(synth_h5ad, backed="r")
    try:
        from_backed = from_adata(backed, top_k=15, obs_keys=["cell_type", "batch"], chunk_size=13)
    finally:
        backed.file.close()
    assert_same_sentences(from_backed, reference)
    assert from_path.manifest["source"]["path"] == str(synth_h5ad)
    assert from_path.manifest["source"]["sha256"].startswith("sha256:")
    assert from_backed.manifest["source"] == from_path.manifest["source"]
    assert reference.manifest["source"]["path"] is None


def test_obs_dtypes_are_the_same_from_memory_and_from_a_file(synth, tmp_path):
    """Nullable integer/boolean obs columns keep their dtype and missing values when read from a file."""
    data = obs_with_many_dtypes(synth)
    data.obs["maybe_bool"] = pd.array([None if i % 7 == 0 else bool(i % 2) for i in range(data.n_obs)], dtype="boolean")
    path = tmp_path / "obs.h5ad"
    data.write_h5ad(path)
    keys = ["cell_type", "ordered", "maybe_int", "maybe_bool", "score", "flag"]
    in_memory = from_adata(data, top_k=5, obs_keys=keys)
    assert in_memory.obs["maybe_int"].dtype == "Int64"
    from_file = from_adata(path, top_k=5, obs_keys=keys, chunk_size=50)
    assert_same_sentences(from_file, in_memory)
    converted = load(convert(path, tmp_path / "out", top_k=5, obs_keys=keys, chunk_size=50))
    assert_same_sentences(converted, in_memory)


def test_convert_output_independent_of_workers_and_chunk_size(synth, synth_h5ad, tmp_path):
    """Workers (spawned processes) and shard sizes change nothing in the sentences."""
    reference = from_adata(synth, top_k=15, obs_keys=["cell_type"])
    one = load(convert(synth_h5ad, tmp_path / "one", top_k=15, obs_keys=["cell_type"], workers=1, chunk_size=1000))
    two = load(convert(synth_h5ad, tmp_path / "two", top_k=15, obs_keys=["cell_type"], workers=2, chunk_size=50))
    assert len(two.manifest["shards"]) == 5
    assert two.manifest["chunk_size"] == 50
    for cs in (one, two):
        assert_same_sentences(cs, reference)
        assert_same_inverse_model(cs, reference)
        assert cs.manifest["report"] == one.manifest["report"]
    assert not (tmp_path / ".two.partial").exists()


def test_seed_changes_only_the_order_of_tied_genes(synth):
    counts = dense_counts(synth)
    a = from_adata(synth, top_k=None, seed=0)
    b = from_adata(synth, top_k=None, seed=1)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    n_changed = 0
    for i in range(len(a)):
        ids_a, ids_b = sentence(a, i), sentence(b, i)
        np.testing.assert_array_equal(counts[i, ids_a], counts[i, ids_b])  # same values at every rank
        n_changed += not np.array_equal(ids_a, ids_b)
    assert n_changed > len(a) // 2
    assert a.manifest["seed"] == 0
    assert b.manifest["seed"] == 1
    top_a = from_adata(synth, top_k=5, seed=0)
    top_b = from_adata(synth, top_k=5, seed=1)
    assert top_a.texts() != top_b.texts()


def test_same_seed_gives_identical_output(synth):
    a = from_adata(synth, top_k=None, seed=7)
    b = from_adata(synth, top_k=None, seed=7)
    assert_same_sentences(a, b)
    assert a.manifest == b.manifest


def test_tie_order_is_not_gene_order(synth):
    """Tied genes are shuffled per cell, not listed by column position (no positional bias)."""
    cs = from_adata(synth, top_k=None)
    groups = [g for _, g in tie_groups(cs, dense_counts(synth)) if len(g) >= 3]
    ascending = np.mean([np.all(np.diff(g) > 0) for g in groups])
    descending = np.mean([np.all(np.diff(g) < 0) for g in groups])
    assert len(groups) > 100
    assert ascending < 0.4
    assert descending < 0.4
    # the first gene of a tie group is not always the same one across cells
    firsts = {}
    for _, g in tie_groups(cs, dense_counts(synth)):
        key = tuple(sorted(g.tolist()))
        firsts.setdefault(key, set()).add(int(g[0]))
    assert any(len(v) > 1 for v in firsts.values())


# --------------------------------------------------------------------------------------------- save/load
def obs_with_many_dtypes(synth) -> ad.AnnData:
    data = synth.copy()
    n = data.n_obs
    data.obs["ordered"] = pd.Categorical(np.where(np.arange(n) % 2, "hi", "lo"), categories=["lo", "hi"], ordered=True)
    data.obs["maybe_int"] = pd.array([None if i % 5 == 0 else i for i in range(n)], dtype="Int64")
    data.obs["score"] = np.linspace(0, 1, n)
    data.obs["flag"] = np.arange(n) % 3 == 0
    return data


def test_save_load_round_trip_is_exact(synth, tmp_path):
    data = obs_with_many_dtypes(synth)
    keys = ["cell_type", "batch", "n_counts", "ordered", "maybe_int", "score", "flag"]
    cs = from_adata(data, top_k=12, obs_keys=keys)
    folder = cs.save(tmp_path / "sentences", shard_size=64)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "shards", "vocabulary.txt"]
    back = load(folder)
    assert_same_sentences(back, cs)  # obs values and dtypes, categorical categories and order included
    assert back.obs["cell_type"].cat.categories.tolist() == ["T", "B", "Mono"]
    assert back.obs["ordered"].cat.ordered
    assert back.texts() == cs.texts()
    assert back.manifest["kind"] == "cell_sentences"
    assert [s["n_cells"] for s in back.manifest["shards"]] == [64, 64, 64, 48]
    assert back.manifest["c2t_version"]
    assert {k: v for k, v in back.manifest.items() if k not in ("shards", "c2t_version")} == cs.manifest
    assert back.inverse_model == cs.inverse_model
    # saving again over the folder replaces it atomically and leaves no staging folder
    cs[:10].save(folder)
    assert len(load(folder)) == 10
    assert not (tmp_path / ".sentences.partial").exists()


def test_save_load_without_obs_columns(synth, tmp_path):
    cs = from_adata(synth, top_k=3)
    back = load(cs.save(tmp_path / "s"))
    assert_same_sentences(back, cs, obs=False)
    assert list(back.obs.columns) == []
    np.testing.assert_array_equal(back.cell_ids, np.asarray(synth.obs_names))


def test_load_checks_expected_manifest_fields(synth, tmp_path):
    folder = from_adata(synth, top_k=100).save(tmp_path / "s")
    with pytest.raises(C2TInputError, match=r"top_k: expected 50, found 100"):
        load(folder, expect={"top_k": 50})
    cs = load(folder, expect={"top_k": 100, "seed": 0})
    assert cs.top_k == 100


def test_load_refuses_a_modified_vocabulary(synth, tmp_path):
    folder = from_adata(synth, top_k=10).save(tmp_path / "s")
    vocab = folder / "vocabulary.txt"
    genes = vocab.read_text().splitlines()
    genes[0], genes[1] = genes[1], genes[0]
    vocab.write_text("\n".join(genes) + "\n")
    with pytest.raises(C2TInputError, match=r"vocabulary\.txt.*vocabulary_hash"):
        load(folder)


def test_load_refuses_folders_that_are_not_finished_sentences(tmp_path):
    with pytest.raises(C2TInputError, match="no such folder"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(C2TInputError, match=r"no manifest\.json"):
        load(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text(json.dumps({"kind": "instruction_dataset"}))
    with pytest.raises(C2TInputError, match="'instruction_dataset' artifact, expected 'cell_sentences'"):
        load(tmp_path / "other")


def test_load_refuses_a_missing_shard(synth, tmp_path):
    folder = from_adata(synth, top_k=10).save(tmp_path / "s")
    (folder / "shards" / "part-00000.parquet").unlink()
    with pytest.raises(C2TInputError, match=r"shard shards/part-00000\.parquet is missing"):
        load(folder)


def test_to_dataset_text_column_equals_texts(synth):
    import datasets

    cs = from_adata(synth, top_k=8, obs_keys=["cell_type"])
    ds = cs.to_dataset()
    assert isinstance(ds, datasets.Dataset)
    assert len(ds) == len(cs)
    assert ds["cell_sentence"] == cs.texts()
    assert ds["cell_id"] == list(synth.obs_names)
    assert ds["cell_type"][:5] == [str(x) for x in synth.obs["cell_type"][:5]]
    assert [list(g) for g in ds["genes"][:3]] == [sentence(cs, i).tolist() for i in range(3)]
    short = cs.to_dataset(top_k=3, delimiter=", ", text_column="text")
    assert short["text"] == cs.texts(top_k=3, delimiter=", ")


def test_texts_top_k_truncates_and_refuses_more_than_stored(synth):
    cs = from_adata(synth, top_k=10)
    short = cs.texts(top_k=4)
    for full, cut in zip(cs.texts(), short, strict=True):
        assert cut.split() == full.split()[:4]
    assert cs.texts(top_k=10) == cs.texts()
    with pytest.raises(C2TInputError, match=r"top_k=11 asked.*top 10"):
        cs.texts(top_k=11)
    for bad in (0, -1, 1.5):
        with pytest.raises(C2TInputError, match="top_k must be a positive integer"):
            cs.texts(top_k=bad)


def test_selecting_cells(synth):
    cs = from_adata(synth, top_k=10, obs_keys=["batch"])
    mask = (synth.obs["batch"] == "b2").to_numpy()
    part = cs[mask]
    assert len(part) == mask.sum()
    assert part.texts() == [t for t, m in zip(cs.texts(), mask, strict=True) if m]
    pd.testing.assert_frame_equal(part.obs, cs.obs[mask])
    assert cs[[3, 1]].texts() == [cs.texts()[3], cs.texts()[1]]


# ---------------------------------------------------------------------------------------------- convert
def test_convert_equals_from_adata(synth, synth_h5ad, tmp_path):
    out = convert(synth_h5ad, tmp_path / "out", top_k=10, obs_keys=["cell_type", "batch"], chunk_size=100)
    assert out == tmp_path / "out"
    on_disk = load(out)
    in_memory = from_adata(synth_h5ad, top_k=10, obs_keys=["cell_type", "batch"], chunk_size=100)
    assert_same_sentences(on_disk, in_memory)
    skip = ("shards", "chunk_size", "c2t_version")
    assert {k: v for k, v in on_disk.manifest.items() if k not in skip} == in_memory.manifest
    assert sorted(p.name for p in (out / "shards").glob("*.parquet")) == [f"part-0000{i}.parquet" for i in range(3)]
    assert not (tmp_path / ".out.partial").exists()


class Interrupt:
    """A progress callback that raises KeyboardInterrupt once ``after`` cells are done."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.calls: list[int] = []

    def __call__(self, done: int) -> None:
        self.calls.append(done)
        if done >= self.after:
            raise KeyboardInterrupt


def test_convert_resumes_after_an_interrupt(synth_h5ad, tmp_path):
    settings = {"top_k": 10, "obs_keys": ["cell_type"], "chunk_size": 40}
    out = tmp_path / "out"
    staging = tmp_path / ".out.partial"
    stop = Interrupt(after=80)
    with pytest.raises(KeyboardInterrupt):
        convert(synth_h5ad, out, progress=stop, **settings)
    assert stop.calls == [0, 40, 80]
    assert not out.exists()
    finished = sorted(p.name for p in (staging / "shards").iterdir())
    assert finished == [
        "part-00000.parquet", "part-00000.stats.npz", "part-00001.parquet", "part-00001.stats.npz",
    ]
    assert not (staging / "manifest.json").exists()
    with pytest.raises(C2TInputError, match="not a finished c2t output"):
        load(staging)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (staging / "shards").iterdir()}

    resumed = []
    convert(synth_h5ad, out, progress=resumed.append, **settings)
    assert resumed[0] == 80  # the two finished shards are not redone
    assert resumed[-1] == 240
    assert not staging.exists()
    for name, mtime in mtimes.items():
        assert (out / "shards" / name).stat().st_mtime_ns == mtime, f"{name} was recomputed"

    uninterrupted = convert(synth_h5ad, tmp_path / "clean", **settings)
    a, b = load(out), load(uninterrupted)
    assert_same_sentences(a, b)
    assert a.manifest == b.manifest


def test_convert_starts_over_when_the_settings_change(synth_h5ad, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert(synth_h5ad, out, top_k=10, chunk_size=40, progress=Interrupt(after=40))
    assert (tmp_path / ".out.partial").exists()
    convert(synth_h5ad, out, top_k=5, chunk_size=40)
    result = load(out)
    assert result.top_k == 5
    assert_same_sentences(result, from_adata(synth_h5ad, top_k=5))


def test_failed_convert_keeps_the_existing_output(synth, tmp_path):
    good = tmp_path / "good.h5ad"
    synth.write_h5ad(good)
    out = convert(good, tmp_path / "out", top_k=10, chunk_size=50)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    bad_values = synth.copy()
    bad_values.X = bad_values.X.toarray()
    bad_values.X[200, 3] = -2.0  # in the 5th shard: earlier shards are written before the error
    bad = tmp_path / "bad.h5ad"
    bad_values.write_h5ad(bad)
    with pytest.raises(C2TInputError, match=r"negative value -2\.0 in cell 'cell0200', gene 'G003'"):
        convert(bad, out, top_k=10, chunk_size=50)
    with pytest.raises(C2TInputError, match="'missing' not found in obs"):
        convert(good, out, top_k=10, obs_keys=["missing"])

    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not (tmp_path / ".out.partial").exists()
    assert load(out).texts() == from_adata(synth, top_k=10).texts()


def test_convert_error_in_a_worker_process_is_reported_and_cleaned_up(synth, tmp_path):
    data = synth.copy()
    data.X = data.X.toarray()
    data.X[100, 7] = np.nan
    path = tmp_path / "nan.h5ad"
    data.write_h5ad(path)
    with pytest.raises(C2TInputError, match=r"NaN value nan in cell 'cell0100', gene 'G007'"):
        convert(path, tmp_path / "out", top_k=10, chunk_size=60, workers=2)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / ".out.partial").exists()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"chunk_size": 0}, "chunk_size and workers must be at least 1"),
    ({"workers": 0}, "chunk_size and workers must be at least 1"),
    ({"top_k": 0}, "top_k must be a positive integer"),
    ({"normalize": "zscore"}, "normalize must be 'auto', 'counts' or 'log1p'"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"inverse_sample": 0}, "inverse_sample must be a positive integer"),
])
def test_convert_refuses_bad_parameters(synth_h5ad, tmp_path, kwargs, match):
    with pytest.raises(C2TInputError, match=match):
        convert(synth_h5ad, tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_inverse_sample_is_the_same_for_any_seed_and_chunking():
    """The seeded coin flips that pick the inverse model's cells wrap modulo 2**64 without a warning."""
    import warnings

    from c2t.sentences._build import _sampled

    rows = np.arange(10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for seed in (0, 2, 2**62 + 1):
            picked = _sampled(rows, seed, 0.3)
            assert 0.27 < picked.mean() < 0.33
            np.testing.assert_array_equal(picked[5000:], _sampled(rows[5000:], seed, 0.3))
