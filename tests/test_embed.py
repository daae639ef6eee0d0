"""Cell embeddings: GenePT-w against numpy, per-cell independence, CELLama sentences and neighbours, the
fine-tuning recipe, and the real-data floor (PCA and GenePT-w above the random control on pbmc3k)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import c2t.embed as emb
from c2t import C2TInputError
from c2t.eval import knn_cross_validation
from c2t.genes import GeneEmbeddings, SentenceTransformerEncoder, embed_genes, load_descriptions
from c2t.models import minilm_path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PBMC3K = DATA / "pbmc3k_raw_seurat_labels.h5ad"
OSMFISH = DATA / "osmfish_sscortex_codeluppi2018.h5ad"
DESCRIPTIONS = DATA / "human_gene_descriptions.parquet"
needs_pbmc3k = pytest.mark.skipif(not PBMC3K.is_file(), reason=f"real data {PBMC3K} is absent")
needs_osmfish = pytest.mark.skipif(not OSMFISH.is_file(), reason=f"real data {OSMFISH} is absent")
needs_descriptions = pytest.mark.skipif(not DESCRIPTIONS.is_file(), reason=f"real data {DESCRIPTIONS} is absent")
LABEL = "seurat_celltype"


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEncoder:
    encoder = SentenceTransformerEncoder(minilm_path())
    encoder.model.max_seq_length = 64  # short texts, fast tests
    return encoder


@pytest.fixture(scope="module")
def pbmc_sample(pbmc3k) -> ad.AnnData:
    """About 600 labelled pbmc3k cells (a seeded sample, stratified, at least 10 of each type), raw counts."""
    return stratified_sample(pbmc3k, 600)


def stratified_sample(adata: ad.AnnData, n: int, *, seed: int = 0) -> ad.AnnData:
    labels = adata.obs[LABEL]
    rng = np.random.default_rng(seed)
    rows = []
    for label, count in labels.value_counts().items():
        members = np.flatnonzero((labels == label).to_numpy())
        take = min(count, max(10, round(n * count / labels.notna().sum())))
        rows.extend(rng.choice(members, take, replace=False))
    return adata[np.sort(rows)].copy()


def gene_vectors(names, *, dim=16, seed=0, with_text=None) -> GeneEmbeddings:
    """Random vectors for ``names``; every fourth gene has no text unless ``with_text`` says otherwise."""
    rng = np.random.default_rng(seed)
    has_text = np.arange(len(names)) % 4 != 3 if with_text is None else np.asarray(with_text)
    return GeneEmbeddings(np.asarray(names, dtype=object), rng.standard_normal((len(names), dim)), has_text,
                          {"encoder": "test-vectors"})


def reference_genept_w(log_values: np.ndarray, vectors: np.ndarray, has_text: np.ndarray, *, average=True,
                       l2=True) -> np.ndarray:
    """GenePT-w written out in numpy (float64): weighted mean over the genes with text, then unit length."""
    E = np.where(has_text[:, None], vectors.astype(np.float64), 0.0)
    out = log_values @ E
    if average:
        weight = log_values @ has_text.astype(np.float64)
        out = np.divide(out, weight[:, None], out=np.zeros_like(out), where=weight[:, None] > 0)
    if l2:
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        out = np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)
    return out


# ----------------------------------------------------------------------------------------------- GenePT-w
@pytest.mark.parametrize(("average", "l2"), [(True, True), (False, False), (True, False)])
def test_genept_w_equals_numpy(synth, reference_norm, average, l2):
    # the embeddings cover genes the data lacks and miss genes the data has; order differs from var_names
    names = [*(f"G{j:03d}" for j in range(109, -1, -1)), "NOT_IN_DATA"]
    ge = gene_vectors(names)
    adata = synth.copy()
    emb.genept_w(adata, ge, average=average, l2=l2)
    got = adata.obsm["X_genept_w"]
    assert got.shape == (synth.n_obs, 16) and got.dtype == np.float32

    aligned = ge.aligned(adata.var_names)
    has_text = np.isin(adata.var_names, np.asarray(names)[ge.has_text])
    expected = reference_genept_w(reference_norm(synth.X), aligned, has_text, average=average, l2=l2)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert not got[[5, 17, 130]].any()  # all-zero cells get a zero vector, not NaN
    if l2:
        norms = np.linalg.norm(np.delete(got, [5, 17, 130], axis=0), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    record = adata.uns["c2t_embed"]["X_genept_w"]
    assert record["input"] == "counts" and record["genes_with_text"] == int(has_text.sum())


def test_genes_without_text_contribute_nothing(synth):
    names = list(synth.var_names)
    ge = gene_vectors(names)
    adata = synth.copy()
    emb.genept_w(adata, ge, l2=False)
    # changing the vectors of genes without text changes nothing
    other = GeneEmbeddings(ge.genes, np.where(ge.has_text[:, None], ge.vectors, 1e6), ge.has_text)
    np.testing.assert_array_equal(emb.genept_w(synth, other, l2=False, copy=True).obsm["X_genept_w"],
                                  adata.obsm["X_genept_w"])
    # a cell that expresses only genes without text gets zeros
    only_silent = ad.AnnData(sp.csr_matrix(np.array([[0, 0, 0, 5], [1, 0, 0, 5]], dtype=np.float32)))
    only_silent.var_names = names[:4]
    emb.genept_w(only_silent, ge)  # gene 3 has no text
    assert not only_silent.obsm["X_genept_w"][0].any()
    np.testing.assert_allclose(only_silent.obsm["X_genept_w"][1], ge.vectors[0] / np.linalg.norm(ge.vectors[0]),
                               atol=1e-6)


def test_weighted_sum_equals_scipy_across_gene_blocks():
    """The product kernel adds eight genes at a time within blocks of 1,024 genes; rows of every length
    (0 to ~1,500 non-zeros over 3,000 genes, so groups straddle block edges) must equal scipy's product."""
    from c2t.embed._kernels import weighted_sum

    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 1500, size=200)
    lengths[:5] = [0, 1, 7, 8, 9]
    rows = [np.sort(rng.choice(3000, size=m, replace=False)) for m in lengths]
    X = sp.csr_matrix((rng.random(lengths.sum()).astype(np.float32), np.concatenate(rows),
                       np.concatenate([[0], np.cumsum(lengths)])), shape=(200, 3000))
    dense = rng.standard_normal((3000, 24)).astype(np.float32)
    np.testing.assert_allclose(weighted_sum(X, dense), (X @ dense.astype(np.float64)), rtol=1e-4, atol=1e-4)


def test_genept_w_of_a_cell_does_not_depend_on_the_other_cells(synth):
    ge = gene_vectors(list(synth.var_names))
    full = emb.genept_w(synth, ge, copy=True).obsm["X_genept_w"]
    rows = np.array([200, 3, 17, 99, 150, 151])
    subset = emb.genept_w(synth[rows].copy(), ge, copy=True).obsm["X_genept_w"]
    np.testing.assert_allclose(subset, full[rows], atol=1e-6)
    alone = emb.genept_w(synth[99:100].copy(), ge, copy=True).obsm["X_genept_w"]
    np.testing.assert_allclose(alone[0], full[99], atol=1e-6)
    for chunk_size in (1, 7, 1000):
        chunked = emb.genept_w(synth, ge, chunk_size=chunk_size, copy=True).obsm["X_genept_w"]
        np.testing.assert_allclose(chunked, full, atol=1e-6)


def test_genept_w_counts_log_layer_raw_and_dense_agree(synth, reference_norm):
    ge = gene_vectors(list(synth.var_names))
    from_counts = emb.genept_w(synth, ge, copy=True).obsm["X_genept_w"]
    logged = reference_norm(synth.X).astype(np.float32)
    log_adata = ad.AnnData(sp.csr_matrix(logged), obs=synth.obs.copy(), var=synth.var.copy())
    log_adata.layers["counts"] = synth.X.copy()
    log_adata.raw = ad.AnnData(synth.X.copy(), var=synth.var.copy())
    emb.genept_w(log_adata, ge)
    assert log_adata.uns["c2t_embed"]["X_genept_w"]["input"] == "log1p"
    np.testing.assert_allclose(log_adata.obsm["X_genept_w"], from_counts, atol=1e-5)
    emb.genept_w(log_adata, ge, layer="counts", key_added="X_layer")
    np.testing.assert_allclose(log_adata.obsm["X_layer"], from_counts, atol=1e-6)
    emb.genept_w(log_adata, ge, use_raw=True, key_added="X_raw")
    np.testing.assert_allclose(log_adata.obsm["X_raw"], from_counts, atol=1e-6)
    dense = ad.AnnData(synth.X.toarray(), obs=synth.obs.copy(), var=synth.var.copy())
    np.testing.assert_allclose(emb.genept_w(dense, ge, copy=True).obsm["X_genept_w"], from_counts, atol=1e-6)
    csc = ad.AnnData(sp.csc_matrix(synth.X), obs=synth.obs.copy(), var=synth.var.copy())
    np.testing.assert_allclose(emb.genept_w(csc, ge, copy=True).obsm["X_genept_w"], from_counts, atol=1e-6)


def test_genept_w_uses_a_gene_key_and_refuses_another_vocabulary(synth):
    ge = gene_vectors([f"SYM{j}" for j in range(synth.n_vars)])
    adata = synth.copy()
    with pytest.raises(C2TInputError, match="only 0 of 120 genes have an embedding"):
        emb.genept_w(adata, ge)
    assert "X_genept_w" not in adata.obsm
    adata.var["symbol"] = [f"SYM{j}" for j in range(synth.n_vars)]
    renamed = gene_vectors(list(synth.var_names))
    emb.genept_w(adata, ge, gene_key="symbol")
    np.testing.assert_allclose(adata.obsm["X_genept_w"], emb.genept_w(synth, renamed, copy=True).obsm["X_genept_w"],
                               atol=1e-6)
    with pytest.raises(C2TInputError, match="layer 'nope' not found"):
        emb.genept_w(adata, ge, gene_key="symbol", layer="nope")


def test_copy_leaves_the_input_alone(synth):
    ge = gene_vectors(list(synth.var_names))
    adata = synth.copy()
    out = emb.genept_w(adata, ge, copy=True)
    assert "X_genept_w" in out.obsm and "X_genept_w" not in adata.obsm and "c2t_embed" not in adata.uns
    assert emb.random_cells(adata, dim=8) is None
    assert adata.obsm["X_random"].shape == (adata.n_obs, 8)


def test_random_cells_are_seeded_noise(synth):
    a = emb.random_cells(synth, dim=32, seed=1, copy=True).obsm["X_random"]
    b = emb.random_cells(synth, dim=32, seed=1, copy=True).obsm["X_random"]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, emb.random_cells(synth, dim=32, seed=2, copy=True).obsm["X_random"])


def test_pca_counts_and_log_give_the_same_space(synth, reference_norm):
    from_counts = emb.pca(synth, n_comps=10, n_top_genes=60, copy=True)
    assert from_counts.obsm["X_pca_log"].shape == (synth.n_obs, 10)
    assert from_counts.uns["c2t_embed"]["X_pca_log"]["input"] == "counts"
    logged = ad.AnnData(sp.csr_matrix(reference_norm(synth.X).astype(np.float32)))
    from_log = emb.pca(logged, n_comps=10, n_top_genes=60, copy=True)
    # components may flip sign; the cell-cell geometry is the same
    a, b = from_counts.obsm["X_pca_log"], from_log.obsm["X_pca_log"]
    np.testing.assert_allclose(np.abs(a), np.abs(b), atol=1e-3)


# ----------------------------------------------------------------------------------- GenePT-s and CELLama
@needs_pbmc3k
def test_sentence_embeddings_of_a_cell_alone_equal_those_in_a_batch(pbmc3k, minilm):
    rows = [2100, 4, 250, 1000, 1999, 7]
    batch = pbmc3k[rows].copy()
    emb.genept_s(batch, minilm, top_k=20)
    emb.cellama(batch, minilm, top_k=12)
    texts = emb.cellama_texts(batch, top_k=12)
    for j in (0, 2, 4):
        alone = pbmc3k[rows[j] : rows[j] + 1].copy()
        assert emb.cellama_texts(alone, top_k=12) == [texts[j]]
        emb.genept_s(alone, minilm, top_k=20)
        emb.cellama(alone, minilm, top_k=12)
        np.testing.assert_allclose(alone.obsm["X_genept_s"][0], batch.obsm["X_genept_s"][j], atol=1e-5)
        np.testing.assert_allclose(alone.obsm["X_cellama"][0], batch.obsm["X_cellama"][j], atol=1e-5)
    assert batch.obsm["X_genept_s"].shape == (6, 384)
    assert batch.uns["c2t_embed"]["X_genept_s"]["top_k"] == 20


@needs_pbmc3k
def test_sentences_follow_expression_order(pbmc3k):
    """The genes of a CELLama sentence are the cell's most expressed, in order (ties in gene order)."""
    rows = [0, 1, 2, 500]
    texts = emb.cellama_texts(pbmc3k[rows].copy(), top_k=10)
    names = np.asarray(pbmc3k.var_names)
    for text, row in zip(texts, rows, strict=True):
        counts = pbmc3k.X[row].toarray().ravel()
        order = np.lexsort((np.arange(len(counts)), -counts))[:10]
        assert text == f"Top genes are {', '.join(names[order[:-1]])} and {names[order[-1]]}."


def small_cells() -> ad.AnnData:
    counts = np.array([[3, 1, 0, 0], [0, 2, 5, 1], [0, 0, 0, 0], [0, 0, 0, 4]], dtype=np.float32)
    obs = pd.DataFrame({"cell_type": ["T", "B", "NK", "Mono"], "tissue": ["blood", "lung", "blood", "gut"]},
                       index=[f"c{i}" for i in range(4)])
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs)
    adata.var_names = ["CD3D", "LYZ", "MS4A1", "NKG7"]
    return adata


def test_cellama_wording_with_metadata():
    texts = emb.cellama_texts(small_cells(), top_k=3, metadata_keys=["cell_type", "tissue"])
    assert texts == [
        "Top genes are CD3D and LYZ. The cell type is T. The tissue is blood.",
        "Top genes are MS4A1, LYZ and NKG7. The cell type is B. The tissue is lung.",
        "No genes are expressed. The cell type is NK. The tissue is blood.",
        "Top genes are NKG7. The cell type is Mono. The tissue is gut.",
    ]
    assert emb.cellama_texts(small_cells(), top_k=1)[1] == "Top genes are MS4A1."


def test_genept_s_embeds_the_templated_sentence(minilm):
    adata = small_cells()
    emb.genept_s(adata, minilm, top_k=2, template="Cell: {genes}.")
    expected = minilm.encode(["Cell: CD3D LYZ.", "Cell: MS4A1 LYZ.", "Cell: .", "Cell: NKG7."])
    np.testing.assert_allclose(adata.obsm["X_genept_s"], expected, atol=1e-5)
    assert adata.uns["c2t_embed"]["X_genept_s"]["template"] == "Cell: {genes}."
    with pytest.raises(C2TInputError, match=r"must contain \{genes\}"):
        emb.genept_s(adata, minilm, template="no placeholder")


def test_cellama_bad_input_is_named():
    adata = small_cells()
    with pytest.raises(C2TInputError, match=r"'donor' not found in adata\.obs; columns are: cell_type, tissue"):
        emb.cellama_texts(adata, metadata_keys=["donor"])
    with pytest.raises(C2TInputError, match=r"coordinates in adata.obsm\['spatial'\]"):
        emb.cellama_texts(adata, neighbor_key="cell_type")
    adata.X = adata.X.copy()
    adata.X.data[0] = -1.0
    with pytest.raises(C2TInputError, match="cell 'c0' has a negative"):
        emb.cellama_texts(adata)


def test_neighbours_are_the_nearest_other_cells_even_at_the_same_spot():
    adata = small_cells()
    # c0 and c1 share a spot; c2 is near; c3 is far
    adata.obsm["spatial"] = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    texts = emb.cellama_texts(adata, top_k=1, neighbor_key="cell_type", n_neighbors=2)
    assert texts[0].endswith(" Nearby cells are B and NK.")
    assert texts[1].endswith(" Nearby cells are T and NK.")
    assert texts[3].endswith(" Nearby cells are NK and T.") or texts[3].endswith(" Nearby cells are NK and B.")
    alone = emb.cellama_texts(adata[:1].copy(), top_k=1, neighbor_key="cell_type")
    assert alone == ["Top genes are CD3D."]  # no other cell: no neighbour sentence


@needs_osmfish
def test_osmfish_neighbour_labels_are_those_of_the_nearest_cells():
    osm = ad.read_h5ad(OSMFISH)
    osm = osm[osm.obs["Valid"] != 0].copy()
    assert osm.n_obs == 4839
    k = 4
    texts = emb.cellama_texts(osm, top_k=3, neighbor_key="ClusterName", n_neighbors=k)
    coords = np.asarray(osm.obsm["spatial"])
    labels = osm.obs["ClusterName"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    same_spot = np.flatnonzero(pd.DataFrame(coords).duplicated(keep=False).to_numpy())
    checked = np.concatenate([rng.choice(osm.n_obs, 25, replace=False), same_spot[:5]])
    for i in checked:
        distance = np.linalg.norm(coords - coords[i], axis=1)
        distance[i] = np.inf  # the cell itself is not its neighbour
        nearest = np.sort(distance)[:k]
        sentence = re.search(r" Nearby cells are (.*)\.$", texts[i]).group(1)
        head, last = sentence.rsplit(" and ", 1)
        got = np.array([*head.split(", "), last])
        assert len(got) == k
        # nearest first; cells at equal distance (duplicated spots) may come in any order among themselves
        for d in np.unique(nearest):
            at_d = nearest == d
            allowed = Counter(labels[distance == d].tolist())
            assert not Counter(got[at_d].tolist()) - allowed, (i, got, labels[np.argsort(distance)[:k]])
        assert texts[i].startswith("Top genes are ")


# ----------------------------------------------------------------------------------------- fine-tuning
@needs_pbmc3k
@pytest.mark.slow
def test_finetune_cellama_learns_the_pca_similarities(pbmc_sample, tmp_path, minilm):
    from c2t.embed._finetune import cellama_pairs

    cells = pbmc_sample[:40].copy()
    emb.pca(cells, n_comps=10)
    out = emb.finetune_cellama(cells, model_path=minilm_path(), out=tmp_path / "cellama", top_k=12,
                               n_neighbors=2, n_random=2, epochs=1, batch_size=32, learning_rate=1e-4,
                               max_seq_length=64)
    assert out == tmp_path / "cellama"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "cellama_model" and manifest["n_pairs"] == 40 * 4
    assert np.isfinite(manifest["train_loss"]) and manifest["train_loss"] > 0
    assert not list(tmp_path.glob(".*"))  # no staging folder left

    tuned = SentenceTransformerEncoder(out)
    assert tuned.max_tokens == 64 and tuned.id != minilm.id
    base_weights = minilm.model.state_dict()  # the fixture's model is never trained
    tuned_weights = tuned.model.state_dict()
    layers = [k for k in base_weights if ".encoder.layer." in k]
    changed = [k for k in layers if not np.array_equal(base_weights[k].numpy(), tuned_weights[k].numpy())]
    assert len(changed) == len(layers), sorted(set(layers) - set(changed))[:5]

    texts = emb.cellama_texts(cells, top_k=12)
    first, second, target = cellama_pairs(np.asarray(cells.obsm["X_pca_log"]), n_neighbors=2, n_random=2, seed=0)

    def mse(encoder) -> float:
        vectors = encoder.encode(texts)
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return float((((unit[first] * unit[second]).sum(axis=1) - target) ** 2).mean())

    before, after = mse(minilm), mse(tuned)
    print(f"CELLama fine-tuning: MSE on the training pairs {before:.4f} -> {after:.4f}")
    assert after < before

    emb.cellama(cells, tuned, top_k=12)
    assert cells.obsm["X_cellama"].shape == (40, 384)


def test_finetune_cellama_bad_input(synth, tmp_path):
    with pytest.raises(C2TInputError, match=r"'X_pca_log' not found in adata\.obsm"):
        emb.finetune_cellama(synth, model_path=minilm_path(), out=tmp_path / "m")
    cells = synth.copy()
    cells.obsm["X_pca_log"] = np.ones((cells.n_obs, 2))
    with pytest.raises(C2TInputError, match="no-model: no such folder"):
        emb.finetune_cellama(cells, model_path=tmp_path / "no-model", out=tmp_path / "m")
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------ real-data floor
@needs_pbmc3k
@needs_descriptions
@pytest.mark.slow
def test_pbmc3k_pca_and_genept_w_beat_the_random_control(pbmc_sample, minilm, tmp_path):
    cells = pbmc_sample.copy()
    labels = cells.obs[LABEL]
    emb.pca(cells)
    emb.random_cells(cells)

    # GenePT-w from the summaries of the 250 most expressed genes that have one
    matched = load_descriptions(DESCRIPTIONS).match(cells.var_names)
    total = np.asarray(cells.X.sum(axis=0)).ravel()
    total[matched["text"].to_numpy() == ""] = -1
    keep = np.zeros(len(matched), dtype=bool)
    keep[np.argsort(-total)[:250]] = True
    matched.loc[~keep, "text"] = ""
    genes = embed_genes(matched, minilm, cache_dir=tmp_path)
    assert genes.has_text.sum() == 250
    emb.genept_w(cells, genes)
    emb.genept_w(cells, genes.random_control(), key_added="X_genept_w_random_genes")

    scores = {key: knn_cross_validation(cells.obsm[key], labels, folds=5)
              for key in ("X_pca_log", "X_genept_w", "X_genept_w_random_genes", "X_random")}
    for key, score in scores.items():
        print(f"pbmc3k 600 cells, 10-NN 5-fold: {key:26s} accuracy {score['accuracy']:.3f}  "
              f"macro-F1 {score['macro_f1']:.3f}")
    accuracy = {key: s["accuracy"] for key, s in scores.items()}
    assert accuracy["X_random"] < 0.4  # chance: the largest class holds about a quarter of the cells
    assert accuracy["X_pca_log"] > 0.8  # naive and memory CD4 T cells are the usual confusion
    assert accuracy["X_pca_log"] > accuracy["X_random"] + 0.4
    assert accuracy["X_genept_w"] > accuracy["X_random"] + 0.25
