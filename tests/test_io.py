"""Input handling: reading files, detecting counts, gene names and maps, duplicates, and bad input."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from c2t import C2TInputError
from c2t.io import detect_input_kind, normalize_log1p, open_source, read_gene_map, read_h5ad, resolve_genes
from c2t.sentences import convert, from_adata

PBMC3K = Path(__file__).parents[2] / "shared" / "data" / "pbmc3k_raw_seurat_labels.h5ad"
needs_pbmc3k = pytest.mark.skipif(not PBMC3K.is_file(), reason=f"real data {PBMC3K} is absent")


def small(values, genes, *, var=None, obs_names=None) -> ad.AnnData:
    X = np.asarray(values, dtype=np.float32)
    var = pd.DataFrame(index=pd.Index(genes)) if var is None else var
    obs = pd.DataFrame(index=pd.Index(obs_names or [f"c{i}" for i in range(X.shape[0])]))
    return ad.AnnData(sp.csr_matrix(X), obs=obs, var=var)


def first_genes(cs) -> list[list[str]]:
    return [t.split() for t in cs.texts()]


# ------------------------------------------------------------------------------------------------- files
def test_read_h5ad_reads_a_file(synth_h5ad, synth):
    data = read_h5ad(synth_h5ad)
    assert data.shape == synth.shape
    backed = read_h5ad(synth_h5ad, backed=True)
    try:
        assert backed.isbacked
        assert backed.shape == synth.shape
    finally:
        backed.file.close()


@needs_pbmc3k
def test_read_h5ad_reads_pbmc3k():
    data = read_h5ad(PBMC3K)
    assert data.shape == (2700, 32738)
    assert "seurat_celltype" in data.obs


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.h5ad"
    for call in (lambda: read_h5ad(missing), lambda: from_adata(missing), lambda: convert(missing, tmp_path / "o")):
        with pytest.raises(C2TInputError, match=r"nope\.h5ad: no such file"):
            call()
    assert not (tmp_path / "o").exists()


def test_a_folder_is_not_a_file(tmp_path):
    with pytest.raises(C2TInputError, match=r"is a folder, expected an \.h5ad file"):
        read_h5ad(tmp_path)


def write_truncated(synth, tmp_path) -> Path:
    path = tmp_path / "truncated.h5ad"
    synth.write_h5ad(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def write_not_hdf5(synth, tmp_path) -> Path:
    path = tmp_path / "text.h5ad"
    path.write_text("cell,CD3D\nc1,4\n")
    return path


@pytest.mark.parametrize("make", [write_truncated, write_not_hdf5], ids=["truncated", "not_hdf5"])
def test_unreadable_files_raise_one_clear_error(synth, tmp_path, make):
    path = make(synth, tmp_path)
    out = tmp_path / "out"
    for call in (lambda: read_h5ad(path), lambda: from_adata(path), lambda: convert(path, out)):
        with pytest.raises(C2TInputError, match=rf"{path.name}: cannot be read as h5ad, the file is truncated or not HDF5"):
            call()
    assert not out.exists()
    assert not (tmp_path / ".out.partial").exists()


def test_open_source_names_missing_layers_and_raw(synth, synth_h5ad):
    with pytest.raises(C2TInputError, match=r"layer 'spliced' not found in adata\.layers; layers are: \(none\)"):
        open_source(synth, layer="spliced")
    with pytest.raises(C2TInputError, match=r"layer 'spliced' not found in .*synth\.h5ad; layers are: counts"):
        open_source(synth_h5ad, layer="spliced")
    with pytest.raises(C2TInputError, match=r"use_raw=True but adata\.raw is None"):
        open_source(synth, use_raw=True)
    with pytest.raises(C2TInputError, match="either layer or use_raw"):
        open_source(synth, layer="counts", use_raw=True)


def test_sources_read_the_same_rows(synth, synth_h5ad):
    expected = synth.X[10:20].toarray()
    with open_source(synth_h5ad) as on_disk:
        assert on_disk.n_obs == synth.n_obs
        np.testing.assert_array_equal(on_disk.rows(10, 20).toarray(), expected)
        np.testing.assert_array_equal(on_disk.obs_names(10, 12), ["cell0010", "cell0011"])
        np.testing.assert_array_equal(on_disk.var.index, synth.var_names)
    with open_source(synth_h5ad, layer="counts") as layer, open_source(synth_h5ad, use_raw=True) as raw:
        np.testing.assert_array_equal(layer.rows(10, 20).toarray(), expected)
        np.testing.assert_array_equal(raw.rows(10, 20).toarray(), expected)
        assert (layer.matrix, raw.matrix) == ("layers/counts", "raw/X")


@pytest.mark.parametrize("layout", ["canonical", "unsorted", "duplicates"])
def test_csr_with_unsorted_or_duplicate_entries_ranks_like_its_canonical_form(layout):
    """A CSR matrix built from raw arrays may hold a row's entries out of order, or one gene twice (scipy sums
    duplicates); c2t's parallel canonical check must catch both, agree with scipy, and rank the summed values."""
    from c2t._csr import is_canonical

    rng = np.random.default_rng(11)
    dense = (rng.poisson(1.5, size=(300, 50)) * (rng.random((300, 50)) < 0.4)).astype(np.float32)
    canonical = sp.csr_matrix(dense)
    indptr, indices, data = canonical.indptr.copy(), canonical.indices.copy(), canonical.data.copy()
    row = int(np.argmax(np.diff(indptr)))  # the longest row (late in the matrix: not in the first block)
    a, b = indptr[row], indptr[row + 1]
    if layout == "unsorted":
        indices[a:b], data[a:b] = indices[a:b][::-1].copy(), data[a:b][::-1].copy()
    elif layout == "duplicates":  # split the row's first value across two entries of the same gene
        half = data[a] / 2
        indices = np.insert(indices, a, indices[a])
        data = np.insert(data, a, half)
        data[a + 1] -= half
        indptr[row + 1 :] += 1
    X = sp.csr_matrix((data, indices, indptr), shape=dense.shape)
    expected = sp.csr_matrix((data, indices, indptr), shape=dense.shape).has_canonical_format  # scipy's answer
    assert expected is (layout == "canonical")
    assert is_canonical(X) is expected
    assert X.has_canonical_format is expected  # the answer is cached where scipy keeps it
    genes = [f"G{j}" for j in range(50)]
    got = from_adata(ad.AnnData(X, var=pd.DataFrame(index=genes)), top_k=None, normalize="log1p")
    want = from_adata(ad.AnnData(canonical, var=pd.DataFrame(index=genes)), top_k=None, normalize="log1p")
    assert got.texts() == want.texts()


# ------------------------------------------------------------------------------------------------ values
def test_detect_input_kind(synth, reference_norm):
    assert detect_input_kind(sp.csr_matrix(synth.X)) == "counts"
    assert detect_input_kind(sp.csr_matrix(reference_norm(synth.X))) == "log1p"


def test_normalize_log1p_matches_reference(synth, reference_norm):
    out = normalize_log1p(sp.csr_matrix(synth.X))
    np.testing.assert_allclose(out.toarray(), reference_norm(synth.X), rtol=1e-6)
    assert not out.toarray()[5].any()  # an all-zero cell stays zero (no division by zero)


def test_non_integer_values_after_counts_were_detected_are_refused():
    counts = np.ones((2_001, 3), dtype=np.float32)  # detection reads the first 2,000 cells
    counts[2_000] = [0.5, 1.25, 2.0]
    data = small(counts, ["A", "B", "C"])
    with pytest.raises(C2TInputError, match=r"cells 0-2001 hold non-integer values.*normalize='counts' or 'log1p'"):
        from_adata(data, top_k=2)
    assert from_adata(data, top_k=2, normalize="log1p").manifest["normalization"]["input"] == "log1p"


# ------------------------------------------------------------------------------------------------- genes
def test_gene_names_from_a_var_column():
    var = pd.DataFrame({"symbol": ["CD3D", "LYZ", "MS4A1"]}, index=["ENSG00000167286", "ENSG00000090382", "ENSG00000156738"])
    data = small([[1, 5, 0], [0, 2, 7]], list(var.index), var=var)
    cs = from_adata(data, top_k=None, gene_key="symbol")
    assert cs.vocabulary.tolist() == ["CD3D", "LYZ", "MS4A1"]
    assert cs.texts() == ["LYZ CD3D", "MS4A1 LYZ"]
    assert cs.manifest["report"]["genes"]["source"] == "var['symbol']"


def test_gene_key_that_does_not_exist_is_named():
    var = pd.DataFrame({"symbol": ["A", "B"], "biotype": ["x", "y"]}, index=["g1", "g2"])
    with pytest.raises(C2TInputError, match=r"gene_key 'gene_symbols' not found in var; columns are: symbol, biotype"):
        from_adata(small([[1, 2]], ["g1", "g2"], var=var), gene_key="gene_symbols")


def test_mouse_casing_is_kept():
    cs = from_adata(small([[3, 1, 2]], ["Cd3e", "Lyz2", "Ms4a1"]), top_k=None)
    assert cs.vocabulary.tolist() == ["Cd3e", "Lyz2", "Ms4a1"]
    assert cs.texts() == ["Cd3e Ms4a1 Lyz2"]


ENSEMBL = ["ENSG00000167286.5", "ENSG00000090382.6", "ENSG00000000001.1", "ENSG00000156738.17"]
SYMBOLS = {"ENSG00000167286": "CD3D", "ENSG00000090382": "LYZ", "ENSG00000156738": "MS4A1"}
COUNTS = [[4, 1, 9, 2], [0, 3, 5, 7]]


def check_mapped(cs) -> None:
    assert cs.vocabulary.tolist() == ["CD3D", "LYZ", "MS4A1"]
    assert cs.texts() == ["CD3D MS4A1 LYZ", "MS4A1 LYZ"]  # the unmapped column (the largest value) is gone
    genes = cs.manifest["report"]["genes"]
    assert genes["n_unmapped"] == 1
    assert genes["unmapped_examples"] == ["ENSG00000000001.1"]
    assert genes["n_genes"] == 3
    assert cs.manifest["n_genes"] == 3


def test_ensembl_to_symbol_with_a_dict_ignores_version_suffixes():
    check_mapped(from_adata(small(COUNTS, ENSEMBL), top_k=None, gene_map=SYMBOLS))


def test_ensembl_to_symbol_with_a_csv_file(tmp_path):
    csv = tmp_path / "genes.csv"
    pd.DataFrame({"gene_id": list(SYMBOLS), "symbol": list(SYMBOLS.values())}).to_csv(csv, index=False)
    check_mapped(from_adata(small(COUNTS, ENSEMBL), top_k=None, gene_map=csv))
    tsv = tmp_path / "genes.tsv"
    pd.DataFrame({"gene_id": list(SYMBOLS), "symbol": list(SYMBOLS.values())}).to_csv(tsv, sep="\t", index=False)
    check_mapped(from_adata(small(COUNTS, ENSEMBL), top_k=None, gene_map=tsv))


def test_headerless_gzipped_features_table_keeps_its_first_gene(tmp_path):
    """A 10x features.tsv.gz (id, symbol, feature type; no header) is a valid gene map."""
    import gzip

    features = tmp_path / "features.tsv.gz"
    lines = [f"{k}\t{v}\tGene Expression\n" for k, v in SYMBOLS.items()]
    with gzip.open(features, "wt") as f:
        f.writelines(lines)
    assert read_gene_map(features) == SYMBOLS
    check_mapped(from_adata(small(COUNTS, ENSEMBL), top_k=None, gene_map=features))


def test_versioned_ids_in_the_map_match_unversioned_names():
    versioned = {f"{k}.3": v for k, v in SYMBOLS.items()}
    unversioned_names = [e.split(".")[0] for e in ENSEMBL]
    cs = from_adata(small(COUNTS, unversioned_names), top_k=None, gene_map=versioned)
    assert cs.vocabulary.tolist() == ["CD3D", "LYZ", "MS4A1"]
    assert cs.manifest["report"]["genes"]["n_unmapped"] == 1


def test_gene_map_errors(tmp_path):
    data = small(COUNTS, ENSEMBL)
    with pytest.raises(C2TInputError, match=r"gene map .*nomap\.csv: no such file"):
        from_adata(data, gene_map=tmp_path / "nomap.csv")
    one_column = tmp_path / "one.csv"
    one_column.write_text("gene_id\nENSG00000167286\n")
    with pytest.raises(C2TInputError, match=r"needs two columns \(id, symbol\); the first line is \['gene_id'\]"):
        read_gene_map(one_column)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(C2TInputError, match=r"empty\.csv: the file is empty"):
        read_gene_map(empty)
    with pytest.raises(C2TInputError, match="none of the 4 genes in var_names is in the gene map"):
        from_adata(data, gene_map={"ENSG99": "X"})
    with pytest.raises(C2TInputError, match="the gene map is empty"):
        from_adata(data, gene_map={})


def test_default_integer_var_names_are_refused():
    data = ad.AnnData(sp.csr_matrix(np.array([[1, 2, 0]], dtype=np.float32)))
    assert data.var_names.tolist() == ["0", "1", "2"]
    with pytest.raises(C2TInputError, match=r"no gene names in var_names .*pass gene_key="):
        from_adata(data)


DUP_GENES = ["A", "DUP", "B", "DUP"]
same_var_names = pytest.mark.filterwarnings("ignore:Variable names are not unique:UserWarning")  # anndata's own
DUP_COUNTS = [[5, 3, 1, 3], [1, 2, 4, 0]]


@same_var_names
def test_duplicate_gene_names_are_an_error_by_default():
    with pytest.raises(C2TInputError, match=r"1 duplicated gene names in var_names \(e\.g\. DUP\).*on_duplicate"):
        from_adata(small(DUP_COUNTS, DUP_GENES))


@same_var_names
def test_on_duplicate_first_keeps_the_first_column():
    cs = from_adata(small(DUP_COUNTS, DUP_GENES), top_k=None, on_duplicate="first")
    assert cs.vocabulary.tolist() == ["A", "DUP", "B"]
    assert cs.texts() == ["A DUP B", "B DUP A"]  # cell 1's second DUP column (0) is ignored, not 2 + 0
    assert cs.manifest["report"]["genes"]["n_duplicate_columns"] == 1
    assert cs.manifest["report"]["genes"]["duplicate_examples"] == ["DUP"]


@same_var_names
def test_on_duplicate_sum_adds_the_counts():
    cs = from_adata(small(DUP_COUNTS, DUP_GENES), top_k=None, on_duplicate="sum")
    assert cs.vocabulary.tolist() == ["A", "DUP", "B"]
    assert cs.texts() == ["DUP A B", "B DUP A"]  # cell 0: DUP = 3 + 3 = 6 > A = 5
    plan = resolve_genes(pd.DataFrame(index=DUP_GENES), on_duplicate="sum")
    summed, col_map = plan.apply(sp.csr_matrix(np.array(DUP_COUNTS, dtype=np.float32)))
    np.testing.assert_array_equal(summed.toarray(), [[5, 6, 1], [1, 2, 4]])
    np.testing.assert_array_equal(col_map, [0, 1, 2])


@same_var_names
def test_on_duplicate_sum_normalises_the_summed_counts():
    """The inverse model sees log1p(CP10k) of the summed gene (total counts unchanged by summing)."""
    cs = from_adata(small([[3, 3, 4]], ["DUP", "DUP", "X"]), top_k=None, on_duplicate="sum", inverse_sample=1)
    assert cs.texts() == ["DUP X"]
    np.testing.assert_allclose(cs.inverse_model.predict(np.array([1, 2])), np.log1p([6e4 / 10, 4e4 / 10]), rtol=1e-5)


def test_on_duplicate_must_be_known():
    with pytest.raises(C2TInputError, match="on_duplicate must be 'error', 'first' or 'sum', not 'max'"):
        resolve_genes(pd.DataFrame(index=["A"]), on_duplicate="max")


def test_missing_gene_names_are_dropped_and_counted():
    var = pd.DataFrame({"symbol": ["A", None, "", "B"]}, index=["g1", "g2", "g3", "g4"])
    cs = from_adata(small([[1, 9, 9, 2]], list(var.index), var=var), top_k=None, gene_key="symbol")
    assert cs.texts() == ["B A"]
    assert cs.manifest["report"]["genes"]["n_missing_name"] == 2


# --------------------------------------------------------------------------------------------- bad input
def with_value(synth, row: int, col: int, value: float) -> ad.AnnData:
    data = synth.copy()
    data.X = data.X.toarray()
    data.X[row, col] = value
    return data


@pytest.mark.parametrize(
    ("value", "kind"), [(-1.0, "negative value -1.0"), (np.nan, "NaN value nan"), (np.inf, "infinite value inf")]
)
def test_bad_values_name_the_cell_and_gene(synth, tmp_path, value, kind):
    data = with_value(synth, 150, 42, value)
    match = rf"{kind} in cell 'cell0150', gene 'G042'"
    with pytest.raises(C2TInputError, match=match):
        from_adata(data)
    with pytest.raises(C2TInputError, match=match):
        from_adata(ad.AnnData(sp.csr_matrix(data.X), obs=data.obs, var=data.var), chunk_size=100)
    path = tmp_path / "bad.h5ad"
    data.write_h5ad(path)
    with pytest.raises(C2TInputError, match=match):
        convert(path, tmp_path / "out", chunk_size=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5ad"]  # no output, no staging folder


def test_missing_obs_key_lists_the_columns(synth, synth_h5ad, tmp_path):
    match = r"'donor' not found in obs of .*; columns are: cell_type, batch, n_counts"
    with pytest.raises(C2TInputError, match=match):
        from_adata(synth, obs_keys=["cell_type", "donor"])
    with pytest.raises(C2TInputError, match=match):
        convert(synth_h5ad, tmp_path / "out", obs_keys=["donor"])
    assert list(tmp_path.iterdir()) == []


@same_var_names
@pytest.mark.parametrize(
    ("var_names", "kwargs", "match"),
    [
        (["0", "1", "2", "3"], {}, r"no gene names in var_names"),
        (DUP_GENES, {}, r"duplicated gene names in var_names \(e\.g\. DUP\)"),
        (["A", "B", "C", "D"], {"gene_key": "symbol"}, r"gene_key 'symbol' not found in var; columns are: \(none\)"),
    ],
    ids=["default_var_names", "duplicated", "missing_gene_key"],
)
def test_convert_with_bad_gene_names_writes_nothing(tmp_path, var_names, kwargs, match):
    good, bad = tmp_path / "good.h5ad", tmp_path / "bad.h5ad"
    small(DUP_COUNTS, ["A", "B", "C", "D"]).write_h5ad(good)
    small(DUP_COUNTS, var_names).write_h5ad(bad)
    with pytest.raises(C2TInputError, match=match):
        convert(bad, tmp_path / "new", top_k=2, **kwargs)
    out = convert(good, tmp_path / "out", top_k=2)  # a complete earlier output
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(C2TInputError, match=match):
        convert(bad, out, top_k=2, **kwargs)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5ad", "good.h5ad", "out"]


def test_zero_cells_are_refused(synth, tmp_path):
    empty = synth[:0].copy()
    with pytest.raises(C2TInputError, match=r"the matrix has no cells \(0 rows\)"):
        from_adata(empty)
    path = tmp_path / "empty.h5ad"
    empty.write_h5ad(path)
    with pytest.raises(C2TInputError, match=r"no cells \(0 rows\)"):
        convert(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zero_genes_are_refused(synth):
    with pytest.raises(C2TInputError, match=r"no genes \(0 columns\)"):
        from_adata(synth[:, :0].copy())


@pytest.mark.parametrize("top_k", [0, -1, 1.5, True, "100"])
def test_bad_top_k_is_refused(synth, synth_h5ad, tmp_path, top_k):
    match = rf"top_k must be a positive integer or None .*not {top_k!r}"
    with pytest.raises(C2TInputError, match=match):
        from_adata(synth, top_k=top_k)
    with pytest.raises(C2TInputError, match=match):
        convert(synth_h5ad, tmp_path / "out", top_k=top_k)
    assert list(tmp_path.iterdir()) == []


def test_all_zero_cells_are_counted_in_the_manifest(synth, synth_h5ad, tmp_path):
    from c2t.sentences import load

    cs = load(convert(synth_h5ad, tmp_path / "out", top_k=10, chunk_size=100))
    assert cs.manifest["report"]["n_empty_cells"] == 3
    assert [cs.texts()[i] for i in (5, 17, 130)] == ["", "", ""]
    assert len(cs) == synth.n_obs
    expected = (synth.X.toarray() > 0).sum() / synth.n_obs
    assert cs.manifest["report"]["mean_expressed_genes"] == pytest.approx(expected, abs=0.01)


def test_an_all_zero_matrix_is_refused(synth, tmp_path):
    zeros = synth.copy()
    zeros.X = sp.csr_matrix(zeros.shape, dtype=np.float32)
    with pytest.raises(C2TInputError, match="every cell is all-zero; there is nothing to rank"):
        from_adata(zeros)
    path = tmp_path / "zeros.h5ad"
    zeros.write_h5ad(path)
    with pytest.raises(C2TInputError, match="every cell is all-zero"):
        convert(path, tmp_path / "out", chunk_size=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zeros.h5ad"]


def test_errors_are_value_errors():
    """Callers that catch ValueError keep working; the CLI catches C2TInputError."""
    assert issubclass(C2TInputError, ValueError)
