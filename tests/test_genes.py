"""Gene text: descriptions matched to a dataset, the embedding cache, and saved gene embeddings."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from c2t import C2TInputError
from c2t.genes import (
    GeneDescriptions,
    GeneEmbeddings,
    SentenceTransformerEncoder,
    describe_genes_with_llm,
    embed_genes,
    encode_cached,
    load_descriptions,
)
from c2t.models import minilm_path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DESCRIPTIONS = DATA / "human_gene_descriptions.parquet"
PBMC3K = DATA / "pbmc3k_raw_seurat_labels.h5ad"
needs_descriptions = pytest.mark.skipif(not DESCRIPTIONS.is_file(), reason=f"real data {DESCRIPTIONS} is absent")
needs_pbmc3k = pytest.mark.skipif(not PBMC3K.is_file(), reason=f"real data {PBMC3K} is absent")


# ------------------------------------------------------------------------------------------------ fixtures
class CountingEncoder(SentenceTransformerEncoder):
    """The real MiniLM encoder, counting how often (and on how many texts) the model is asked to encode."""

    def __init__(self, path, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.calls = 0
        self.n_texts = 0

    def encode(self, texts):
        self.calls += 1
        self.n_texts += len(texts)
        return super().encode(texts)


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEncoder:
    encoder = SentenceTransformerEncoder(minilm_path())
    encoder.model.max_seq_length = 64  # short texts, fast tests
    return encoder


@pytest.fixture
def counting(minilm) -> CountingEncoder:
    """A fresh counter around the already loaded model (same id, same cache folder)."""
    encoder = CountingEncoder(minilm.path)
    encoder._model = minilm.model
    return encoder


@pytest.fixture(scope="module")
def ncbi() -> pd.DataFrame:
    if not DESCRIPTIONS.is_file():
        pytest.skip(f"{DESCRIPTIONS} is absent")
    return pd.read_parquet(DESCRIPTIONS)


@pytest.fixture(scope="module")
def ncbi_descriptions() -> GeneDescriptions:
    if not DESCRIPTIONS.is_file():
        pytest.skip(f"{DESCRIPTIONS} is absent")
    return load_descriptions(DESCRIPTIONS)


@pytest.fixture(scope="module")
def pbmc3k_genes() -> list[str]:
    if not PBMC3K.is_file():
        pytest.skip(f"{PBMC3K} is absent")
    import anndata as ad

    backed = ad.read_h5ad(PBMC3K, backed="r")
    names = backed.var_names.astype(str).tolist()
    backed.file.close()
    return names


TEXTS = [f"Gene number {i} is expressed in {cell} cells." for i, cell in
         enumerate(["T", "B", "NK", "monocyte", "dendritic", "platelet", "erythroid", "stem", "mast", "plasma"])]


# ------------------------------------------------------------------------------------------- descriptions
def independent_match(table: pd.DataFrame, genes: list[str]) -> list[str]:
    """The matching rule written out again: exact symbol, then a unique case-insensitive symbol, then an
    alias that names exactly one gene and is nobody's official symbol."""
    symbols = set(table["symbol"])
    upper = Counter(s.upper() for s in table["symbol"])
    upper_to_symbol = {s.upper(): s for s in table["symbol"]}
    owners: dict[str, set[str]] = {}
    for symbol, synonyms in zip(table["symbol"], table["synonyms"].fillna(""), strict=True):
        for alias in str(synonyms).split(";"):
            if alias.strip():
                owners.setdefault(alias.strip().upper(), set()).add(symbol)
    out = []
    for gene in genes:
        if gene in symbols:
            out.append(gene)
        elif upper.get(gene.upper()) == 1:
            out.append(upper_to_symbol[gene.upper()])
        elif len(owners.get(gene.upper(), ())) == 1 and gene.upper() not in upper:
            out.append(next(iter(owners[gene.upper()])))
        else:
            out.append("")
    return out


@needs_descriptions
@needs_pbmc3k
def test_pbmc3k_coverage_equals_an_independent_count(ncbi, ncbi_descriptions, pbmc3k_genes):
    matched = ncbi_descriptions.match(pbmc3k_genes)
    coverage = matched.attrs["coverage"]
    print("pbmc3k coverage", coverage)

    has_summary = ncbi["summary"].fillna("").str.strip() != ""
    with_summary = set(ncbi.loc[has_summary, "symbol"])
    all_symbols = set(ncbi["symbol"])
    assert has_summary.sum() == 18_744  # the data README's count
    assert len(ncbi_descriptions) == len(ncbi) and ncbi_descriptions.n_with_text == 18_744

    assert coverage["n_genes"] == len(pbmc3k_genes) == 32_738
    assert coverage["by"]["symbol"] == sum(g in all_symbols for g in pbmc3k_genes)
    by_symbol = matched["how"] == "symbol"
    assert (matched.loc[by_symbol, "text"] != "").sum() == sum(g in with_summary for g in pbmc3k_genes)

    expected = independent_match(ncbi, pbmc3k_genes)
    assert matched["symbol"].tolist() == expected
    assert coverage["matched"] == sum(s != "" for s in expected)
    assert coverage["with_text"] == sum(s in with_summary for s in expected) == (matched["text"] != "").sum()
    assert coverage["fraction_with_text"] == round(coverage["with_text"] / len(pbmc3k_genes), 4)
    assert sum(coverage["by"].values()) == len(pbmc3k_genes)
    assert coverage["by"]["case"] + coverage["by"]["alias"] > 0  # hg19 names: some only match an alias
    # the text of a gene with a summary is "SYMBOL (full name). summary"
    row = ncbi.set_index("symbol").loc["CD3D"]
    cd3d = matched.set_index("gene").loc["CD3D", "text"]
    assert cd3d == f"CD3D ({row['full_name']}). {row['summary'].strip()}"


def small_table() -> pd.DataFrame:
    return pd.DataFrame({
        "symbol": ["CD3D", "MS4A1", "LYZ", "GENEA", "GENEB", "ABC", "Abc", "NONAME"],
        "full_name": ["CD3 delta", "membrane spanning 4A1", "lysozyme", "gene a", "gene b", "abc upper",
                      "abc mouse", None],
        "synonyms": ["T3D", "CD20; B1; lyz", None, "SHARED; ONLYA", "shared", None, None, None],
        "summary": ["Part of the T cell receptor.", "B cell surface.", "An enzyme.", "A.", "B.", "x.", "y.", None],
    })


def test_symbol_case_and_alias_matching():
    desc = GeneDescriptions.from_frame(small_table())
    genes = ["CD3D", "cd3d", "t3d", "CD20", "lyz", "LYZ", "shared", "OnlyA", "abc", "Abc", "NONAME", "XYZ"]
    m = desc.match(genes)
    assert m["symbol"].tolist() == ["CD3D", "CD3D", "CD3D", "MS4A1", "LYZ", "LYZ", "", "GENEA", "", "Abc",
                                    "NONAME", ""]
    # an alias that is another gene's symbol ("lyz" of MS4A1) never beats the symbol; an alias of two genes
    # ("shared") and a name two symbols share ignoring case ("abc") are ambiguous and stay unmatched
    assert m["how"].tolist() == ["symbol", "case", "alias", "alias", "case", "symbol", "none", "alias", "none",
                                 "symbol", "symbol", "none"]
    assert m.loc[0, "text"] == "CD3D (CD3 delta). Part of the T cell receptor."
    assert m.loc[1, "text"] == m.loc[0, "text"]
    assert m.loc[10, "text"] == ""  # matched, but no summary
    assert m.attrs["coverage"]["by"] == {"symbol": 4, "map": 0, "ensembl": 0, "case": 2, "alias": 3, "none": 3}
    assert m.attrs["coverage"]["matched"] == 9
    assert m.attrs["coverage"]["with_text"] == 8


def test_require_name_gives_text_to_genes_with_only_a_name():
    table = small_table()
    table.loc[table["symbol"] == "LYZ", "summary"] = "  "
    by_summary = GeneDescriptions.from_frame(table).match(["LYZ", "NONAME"])
    by_name = GeneDescriptions.from_frame(table, require="name").match(["LYZ", "NONAME"])
    assert by_summary["text"].tolist() == ["", ""]  # a blank summary is no summary
    assert by_name["text"].tolist() == ["LYZ (lysozyme).", ""]


def test_ensembl_ids_through_a_gene_map_or_a_table_column(tmp_path):
    ids = ["ENSG00000167286", "ENSG00000156738.17", "ENSG00000090382", "ENSG00000000000"]
    gene_map = {"ENSG00000167286": "CD3D", "ENSG00000156738": "MS4A1", "ENSG00000090382": "LYZ"}
    desc = GeneDescriptions.from_frame(small_table())
    by_symbol = desc.match(["CD3D", "MS4A1", "LYZ"])
    m = desc.match(ids, gene_map=gene_map)
    assert m["how"].tolist() == ["map", "map", "map", "none"]  # the version suffix .17 is ignored
    assert m["symbol"].tolist() == ["CD3D", "MS4A1", "LYZ", ""]
    assert m["text"].tolist()[:3] == by_symbol["text"].tolist()
    assert m["gene"].tolist() == ids  # rows keep the dataset's own ids

    map_file = tmp_path / "features.tsv"
    map_file.write_text("".join(f"{k}\t{v}\n" for k, v in gene_map.items()))
    assert desc.match(ids, gene_map=map_file)["symbol"].tolist() == m["symbol"].tolist()

    table = small_table()
    table["ensembl"] = ["ENSG00000167286", "ENSG00000156738", "", "", "", "", "", ""]
    with_column = GeneDescriptions.from_frame(table, ensembl_col="ensembl").match(ids)
    assert with_column["how"].tolist() == ["ensembl", "ensembl", "none", "none"]
    assert with_column["text"].tolist()[:2] == by_symbol["text"].tolist()[:2]


@needs_descriptions
def test_real_table_through_an_ensembl_map_gives_the_symbol_text(ncbi_descriptions):
    gene_map = {"ENSG00000167286": "CD3D", "ENSG00000105374": "NKG7", "ENSG00000163736": "PPBP"}
    by_id = ncbi_descriptions.match(list(gene_map), gene_map=gene_map)
    by_symbol = ncbi_descriptions.match(list(gene_map.values()))
    assert by_id["how"].tolist() == ["map"] * 3
    assert by_id["text"].tolist() == by_symbol["text"].tolist()
    assert all(by_id["text"] != "")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(C2TInputError, match=r"nothere\.parquet: no such file"):
        load_descriptions(tmp_path / "nothere.parquet")


def test_empty_table_is_refused(tmp_path):
    path = tmp_path / "empty.parquet"
    small_table().iloc[:0].to_parquet(path)
    with pytest.raises(C2TInputError, match=r"gene description table .*empty\.parquet is empty"):
        load_descriptions(path)


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "nosummary.csv"
    small_table().drop(columns="summary").to_csv(path, index=False)
    with pytest.raises(C2TInputError, match=r"column 'summary' not found .*nosummary\.csv; columns are: symbol"):
        load_descriptions(path)
    with pytest.raises(C2TInputError, match="column 'gene_name' not found"):
        GeneDescriptions.from_frame(small_table(), symbol_col="gene_name")
    with pytest.raises(C2TInputError, match="require must be"):
        GeneDescriptions.from_frame(small_table(), require="anything")


def test_csv_and_tsv_tables_load_like_parquet(tmp_path):
    table = small_table()
    table.to_parquet(tmp_path / "t.parquet")
    table.to_csv(tmp_path / "t.csv", index=False)
    table.to_csv(tmp_path / "t.tsv", index=False, sep="\t")
    genes = ["CD3D", "cd20", "LYZ", "XYZ"]
    reference = load_descriptions(tmp_path / "t.parquet").match(genes)
    for name in ("t.csv", "t.tsv"):
        m = load_descriptions(tmp_path / name).match(genes)
        pd.testing.assert_frame_equal(m, reference)


# --------------------------------------------------------------------------------------------- the cache
def test_cache_returns_identical_vectors_without_calling_the_model(tmp_path, counting, minilm):
    first = encode_cached(counting, TEXTS, cache_dir=tmp_path)
    assert (counting.calls, counting.n_texts) == (1, len(TEXTS))
    assert first.shape == (len(TEXTS), 384) and first.dtype == np.float32
    np.testing.assert_allclose(first, minilm.encode(TEXTS), atol=1e-6)

    again = encode_cached(counting, TEXTS, cache_dir=tmp_path)
    assert counting.calls == 1  # nothing new to encode
    np.testing.assert_array_equal(again, first)

    # any order, repeats and a subset come from the cache too; one new text is the only one encoded
    mixed = [TEXTS[3], TEXTS[0], TEXTS[3], "A text never seen before."]
    out = encode_cached(counting, mixed, cache_dir=tmp_path)
    assert (counting.calls, counting.n_texts) == (2, len(TEXTS) + 1)
    np.testing.assert_array_equal(out[:3], first[[3, 0, 3]])


def test_cache_is_kept_apart_per_encoder(tmp_path, counting):
    encode_cached(counting, TEXTS[:2], cache_dir=tmp_path)
    other = CountingEncoder(counting.path)
    other._model = counting.model
    other.id = counting.id + "-another-model"
    encode_cached(other, TEXTS[:2], cache_dir=tmp_path)
    assert other.calls == 1  # another model's vectors are never reused
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


def test_interrupted_run_keeps_finished_shards_and_resumes(tmp_path, counting, minilm):
    class Interrupted(Exception):
        pass

    def stop_after_first_shard(done: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        encode_cached(counting, TEXTS, cache_dir=tmp_path, shard_size=4, progress=stop_after_first_shard)
    assert counting.n_texts == 4
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(list(folder.glob("part-*.npz"))) == 1
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no half-written file

    resumed = CountingEncoder(counting.path)
    resumed._model = counting.model
    seen = []
    out = encode_cached(resumed, TEXTS, cache_dir=tmp_path, shard_size=4, progress=seen.append)
    assert resumed.n_texts == len(TEXTS) - 4  # only the rest
    assert seen == [4, 6]
    np.testing.assert_allclose(out, minilm.encode(TEXTS), atol=1e-5)


def test_encoder_folder_must_exist(tmp_path):
    with pytest.raises(C2TInputError, match="no such folder"):
        SentenceTransformerEncoder(tmp_path / "missing-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(C2TInputError, match="not a sentence-transformers model folder"):
        SentenceTransformerEncoder(tmp_path / "empty")


# ------------------------------------------------------------------------------------------ gene embeddings
def test_embed_genes_zero_vectors_for_genes_without_text(tmp_path, counting):
    desc = GeneDescriptions.from_frame(small_table())
    matched = desc.match(["CD3D", "XYZ", "MS4A1", "NONAME"])
    genes = embed_genes(matched, counting, cache_dir=tmp_path)
    assert genes.has_text.tolist() == [True, False, True, False]
    assert counting.n_texts == 2  # only the genes with text are encoded
    assert not genes.vectors[~genes.has_text].any()
    np.testing.assert_allclose(genes.vectors[genes.has_text], counting.encode(matched["text"][[0, 2]].tolist()),
                               atol=1e-6)
    assert genes.manifest["encoder"] == counting.id
    assert genes.manifest["coverage"]["with_text"] == 2

    none_with_text = desc.match(["XYZ", "NONAME"])
    with pytest.raises(C2TInputError, match="none of the 2 genes has a description"):
        embed_genes(none_with_text, counting)
    with pytest.raises(C2TInputError, match="columns 'gene' and 'text'"):
        embed_genes(pd.DataFrame({"symbol": ["CD3D"]}), counting)


def random_gene_embeddings(genes, dim=8, seed=0) -> GeneEmbeddings:
    rng = np.random.default_rng(seed)
    has_text = rng.random(len(genes)) < 0.7
    has_text[0] = True
    return GeneEmbeddings(np.array(genes, dtype=object), rng.standard_normal((len(genes), dim)), has_text,
                          {"encoder": "test-vectors", "coverage": {"with_text": int(has_text.sum())}})


def test_save_load_round_trip_is_exact(tmp_path):
    # names a CSV reader would turn into NaN, booleans or numbers must come back as they were
    names = ["CD3D", "NA", "nan", "TRUE", "0001", "1e5", "HLA-DRA", "MT-CO1", "None"]
    ge = random_gene_embeddings(names)
    ge.save(tmp_path / "genes")
    back = GeneEmbeddings.load(tmp_path / "genes")
    assert back.genes.tolist() == names
    np.testing.assert_array_equal(back.vectors, ge.vectors)
    np.testing.assert_array_equal(back.has_text, ge.has_text)
    assert back.vectors.dtype == np.float32
    assert back.manifest["encoder"] == "test-vectors" and back.manifest["dim"] == 8
    assert back.manifest["n_genes"] == len(names)
    np.testing.assert_array_equal(back.aligned(names), ge.aligned(names))
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["genes"]  # no staging folder left behind

    # saving again replaces the folder as a whole
    random_gene_embeddings(names[:3], dim=4, seed=1).save(tmp_path / "genes")
    assert GeneEmbeddings.load(tmp_path / "genes").vectors.shape == (3, 4)


def test_modified_folder_is_refused(tmp_path):
    ge = random_gene_embeddings(["CD3D", "MS4A1", "LYZ"])
    folder = ge.save(tmp_path / "genes")
    tsv = folder / "genes.tsv"
    original = tsv.read_text()
    tsv.write_text(original.replace("MS4A1", "CD79A"))
    with pytest.raises(C2TInputError, match="do not match the manifest"):
        GeneEmbeddings.load(folder)
    tsv.write_text(original)
    np.save(folder / "vectors.npy", ge.vectors[:2])
    with pytest.raises(C2TInputError, match="do not match the manifest"):
        GeneEmbeddings.load(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(C2TInputError, match=r"no manifest\.json"):
        GeneEmbeddings.load(folder)
    with pytest.raises(C2TInputError, match="no such folder"):
        GeneEmbeddings.load(tmp_path / "missing")
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"kind": "cell_sentences"}))
    with pytest.raises(C2TInputError, match="expected 'gene_embeddings'"):
        GeneEmbeddings.load(other)


def test_aligned_rows_follow_the_requested_genes():
    ge = random_gene_embeddings(["A", "B", "C", "D"])
    ge.has_text[:] = [True, True, False, True]
    out = ge.aligned(["D", "X", "A", "C"])
    np.testing.assert_array_equal(out[0], ge.vectors[3])
    np.testing.assert_array_equal(out[2], ge.vectors[0])
    assert not out[1].any() and not out[3].any()  # unknown gene, gene without text
    with pytest.raises(C2TInputError, match=r"only 1 of 2 genes have an embedding \(need 2\)"):
        ge.aligned(["A", "X"], min_overlap=2)


def test_aligned_refuses_another_vocabulary():
    ge = random_gene_embeddings(["CD3D", "MS4A1", "LYZ"])
    with pytest.raises(C2TInputError, match=r"only 0 of 3 genes have an embedding .*another vocabulary \(e\.g\. CD3D"):
        ge.aligned(["ENSG00000167286", "ENSG00000156738", "ENSG00000090382"])


def test_random_control_keeps_shape_and_text_mask():
    ge = random_gene_embeddings([f"G{i}" for i in range(50)], dim=16)
    control = ge.random_control(seed=3)
    assert control.vectors.shape == ge.vectors.shape
    np.testing.assert_array_equal(control.has_text, ge.has_text)
    np.testing.assert_array_equal(control.genes, ge.genes)
    assert not control.vectors[~control.has_text].any()
    assert np.all(np.linalg.norm(control.vectors[control.has_text], axis=1) > 0)
    assert not np.allclose(control.vectors, ge.vectors)
    # about the same scale as the real vectors, reproducible by seed, different across seeds
    ratio = np.linalg.norm(control.vectors[ge.has_text], axis=1).mean() / np.linalg.norm(ge.vectors[ge.has_text], axis=1).mean()
    assert 0.7 < ratio < 1.3
    np.testing.assert_array_equal(ge.random_control(seed=3).vectors, control.vectors)
    assert not np.allclose(ge.random_control(seed=4).vectors, control.vectors)
    assert control.manifest["control_of"] == "test-vectors"
    assert control.manifest["encoder"] == "random-control(seed=3)"


def test_gene_embeddings_leave_the_callers_array_alone():
    vectors = np.ones((2, 3), dtype=np.float32)
    ge = GeneEmbeddings(np.array(["A", "B"]), vectors, np.array([True, False]))
    assert vectors[1].tolist() == [1.0, 1.0, 1.0]  # the caller's array is not zeroed in place
    assert ge.vectors[1].tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------- LLM descriptions
def test_llm_prompt_needs_the_gene_placeholder(tmp_path):
    with pytest.raises(C2TInputError, match=r"\{gene\}"):
        describe_genes_with_llm(["CD3D"], model="m", prompt="Describe a gene.", cache_dir=tmp_path)
    with pytest.raises(C2TInputError, match="concurrency must be at least 1"):
        describe_genes_with_llm(["CD3D"], model="m", concurrency=0, cache_dir=tmp_path)
