"""`c2t embed genes`, `c2t embed cells` and `c2t annotate`: each does what the library does, every export
format reloads to the same matrix, and bad flags exit 2 with a one-line error."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import c2t.embed as emb
from c2t.cli import app
from c2t.genes import GeneEmbeddings, SentenceTransformerEncoder, load_descriptions
from c2t.heads import load_head
from c2t.models import minilm_path

runner = CliRunner()
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PBMC3K = DATA / "pbmc3k_raw_seurat_labels.h5ad"
DESCRIPTIONS = DATA / "human_gene_descriptions.parquet"
pytestmark = [
    pytest.mark.skipif(not PBMC3K.is_file(), reason=f"real data {PBMC3K} is absent"),
    pytest.mark.skipif(not DESCRIPTIONS.is_file(), reason=f"real data {DESCRIPTIONS} is absent"),
]
LABEL = "seurat_celltype"


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # rich wraps long lines in the test terminal


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert text.startswith("error:"), text
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli_embed")


@pytest.fixture(scope="module")
def cells_h5ad(workdir) -> Path:
    """300 labelled pbmc3k cells (seeded), raw counts, as an .h5ad."""
    from c2t.io import read_h5ad

    pbmc = read_h5ad(PBMC3K)
    labelled = np.flatnonzero(pbmc.obs[LABEL].notna().to_numpy())
    rows = np.sort(np.random.default_rng(0).choice(labelled, 300, replace=False))
    path = workdir / "cells.h5ad"
    pbmc[rows].copy().write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def genes_txt(workdir, cells_h5ad) -> Path:
    """The 30 most expressed genes of the cells that have a summary, plus one unknown name."""
    cells = ad.read_h5ad(cells_h5ad)
    matched = load_descriptions(DESCRIPTIONS).match(cells.var_names)
    total = np.asarray(cells.X.sum(axis=0)).ravel()
    total[matched["text"].to_numpy() == ""] = -1
    genes = [*cells.var_names[np.argsort(-total)[:30]], "NOT-A-GENE"]
    path = workdir / "genes.txt"
    path.write_text("\n".join(genes) + "\n\n")
    return path


@pytest.fixture(scope="module")
def gene_dir(workdir, genes_txt) -> Path:
    out = workdir / "gene_embeddings"
    text = ok(runner.invoke(app, ["embed", "genes", "--descriptions", str(DESCRIPTIONS), "--genes-from",
                                  str(genes_txt), "--model", str(minilm_path()), "-o", str(out),
                                  "--cache-dir", str(workdir / "cache")]))
    assert "wrote " in text and "'with_text': 30" in text
    return out


# ----------------------------------------------------------------------------------------------- embed genes
def test_embed_genes_writes_the_descriptions_embeddings(gene_dir, genes_txt):
    genes = GeneEmbeddings.load(gene_dir)
    names = genes_txt.read_text().split()
    assert genes.genes.tolist() == names
    assert genes.has_text.tolist() == [True] * 30 + [False]
    assert genes.vectors.shape == (31, 384) and not genes.vectors[30].any()
    assert genes.manifest["coverage"]["with_text"] == 30
    assert genes.manifest["descriptions"] == str(DESCRIPTIONS)
    # the vectors are MiniLM's embeddings of the matched texts (checked on a few genes)
    texts = load_descriptions(DESCRIPTIONS).match(names[:3])["text"].tolist()
    np.testing.assert_allclose(genes.vectors[:3], SentenceTransformerEncoder(minilm_path()).encode(texts), atol=1e-5)


# ----------------------------------------------------------------------------------------------- embed cells
def test_every_export_format_reloads_to_the_same_matrix(gene_dir, cells_h5ad, workdir):
    import pyarrow.parquet as pq

    outputs = {}
    for suffix in (".h5ad", ".parquet", ".npy"):
        out = workdir / f"genept_w{suffix}"
        text = ok(runner.invoke(app, ["embed", "cells", str(cells_h5ad), "--method", "genept-w",
                                      "--gene-embeddings", str(gene_dir), "-o", str(out)]))
        assert "obsm['X_genept_w'] (300, 384)" in text
        outputs[suffix] = out
    from_h5ad = ad.read_h5ad(outputs[".h5ad"])
    matrix = from_h5ad.obsm["X_genept_w"]
    table = pq.read_table(outputs[".parquet"])
    assert table.column_names == ["cell_id", "X_genept_w"]
    from_parquet = np.stack(table["X_genept_w"].to_pylist()).astype(np.float32)
    from_npy = np.load(outputs[".npy"])
    assert matrix.shape == (300, 384) and matrix.dtype == np.float32
    np.testing.assert_array_equal(from_parquet, matrix)
    np.testing.assert_array_equal(from_npy, matrix)
    assert table["cell_id"].to_pylist() == from_h5ad.obs_names.tolist()

    # the same as the library call, and the h5ad keeps the cells' obs and a record of the method
    cells = ad.read_h5ad(cells_h5ad)
    emb.genept_w(cells, GeneEmbeddings.load(gene_dir))
    np.testing.assert_array_equal(cells.obsm["X_genept_w"], matrix)
    assert from_h5ad.obs[LABEL].tolist() == cells.obs[LABEL].tolist()
    assert from_h5ad.uns["c2t_embed"]["X_genept_w"]["method"] == "genept-w"
    assert not [p.name for p in workdir.iterdir() if ".tmp" in p.name]  # atomic writes leave no temp file


def test_random_control_and_key_added(gene_dir, cells_h5ad, workdir):
    out = workdir / "control.npy"
    ok(runner.invoke(app, ["embed", "cells", str(cells_h5ad), "--gene-embeddings", str(gene_dir),
                           "--random-control", "--key-added", "X_control", "-o", str(out)]))
    control = np.load(out)
    cells = ad.read_h5ad(cells_h5ad)
    emb.genept_w(cells, GeneEmbeddings.load(gene_dir).random_control())
    np.testing.assert_array_equal(control, cells.obsm["X_genept_w"])


def test_pca_and_cellama_methods(cells_h5ad, workdir):
    out = workdir / "pca.h5ad"
    ok(runner.invoke(app, ["embed", "cells", str(cells_h5ad), "--method", "pca", "-o", str(out)]))
    pca = ad.read_h5ad(out).obsm["X_pca"]
    expected = emb.pca(ad.read_h5ad(cells_h5ad), copy=True).obsm["X_pca_log"]
    np.testing.assert_allclose(pca, expected, atol=1e-4)

    few = workdir / "few.h5ad"
    ad.read_h5ad(cells_h5ad)[:8].copy().write_h5ad(few)
    out = workdir / "cellama.npy"
    ok(runner.invoke(app, ["embed", "cells", str(few), "--method", "cellama", "--model", str(minilm_path()),
                           "--top-k", "10", "--metadata-keys", LABEL, "--cache-dir", str(workdir / "cache"),
                           "-o", str(out)]))
    texts = emb.cellama_texts(ad.read_h5ad(few), top_k=10, metadata_keys=[LABEL])
    assert texts[0].endswith(f" The seurat celltype is {ad.read_h5ad(few).obs[LABEL].iloc[0]}.")
    np.testing.assert_allclose(np.load(out), SentenceTransformerEncoder(minilm_path()).encode(texts), atol=1e-5)


# ----------------------------------------------------------------------------------------------- annotate
@pytest.fixture(scope="module")
def ref_and_query(cells_h5ad, workdir) -> tuple[Path, Path]:
    out = workdir / "with_pca.h5ad"
    ok(runner.invoke(app, ["embed", "cells", str(cells_h5ad), "--method", "pca", "--key-added", "X_pca_log",
                           "-o", str(out)]))
    cells = ad.read_h5ad(out)
    query = np.random.default_rng(1).random(cells.n_obs) < 0.3
    ref_path, query_path = workdir / "ref.h5ad", workdir / "query.h5ad"
    cells[~query].copy().write_h5ad(ref_path)
    cells[query].copy().write_h5ad(query_path)
    return ref_path, query_path


def test_annotate_writes_labels_and_prints_accuracy(ref_and_query, workdir):
    ref, query = ref_and_query
    out, head_dir = workdir / "annotated.h5ad", workdir / "head"
    text = ok(runner.invoke(app, ["annotate", "--reference", str(ref), "--query", str(query), "--label-key", LABEL,
                                  "--use-rep", "X_pca_log", "-o", str(out), "--save-head", str(head_dir)]))
    annotated = ad.read_h5ad(out)
    truth = annotated.obs[LABEL].astype(str).to_numpy()
    accuracy = float((annotated.obs["c2t_label"].to_numpy() == truth).mean())
    print("c2t annotate:", text)
    assert f"accuracy {accuracy:.3f}" in text and "macro-F1" in text
    assert accuracy > 0.75
    assert annotated.obs["c2t_label_confidence"].between(0, 1).all()
    head = load_head(head_dir)
    labels, _ = head.predict(annotated.obsm["X_pca_log"])
    assert labels.tolist() == annotated.obs["c2t_label"].tolist()

    unknown = workdir / "unknown.h5ad"
    ok(runner.invoke(app, ["annotate", "--reference", str(ref), "--query", str(query), "--label-key", LABEL,
                           "--use-rep", "X_pca_log", "-o", str(unknown), "--method", "logistic",
                           "--unknown-threshold", "0.9", "--key-added", "pred"]))
    result = ad.read_h5ad(unknown).obs
    low = result["pred_confidence"] < 0.9
    assert low.any() and (result.loc[low, "pred"] == "unknown").all()
    assert (result.loc[~low, "pred"] != "unknown").all()

    wrong = runner.invoke(app, ["annotate", "--reference", str(ref), "--query", str(query), "--label-key", LABEL,
                                "--use-rep", "X_pca_log", "-o", str(workdir / "annotated.csv")])
    assert wrong.exit_code != 0 and "annotated.csv: the output must be an .h5ad file" in wrong.output
    assert not (workdir / "annotated.csv").exists()


# ----------------------------------------------------------------------------------------------- bad flags
def test_bad_flags_exit_2_with_one_line(cells_h5ad, gene_dir, genes_txt, ref_and_query, tmp_path):
    cells = str(cells_h5ad)
    out = str(tmp_path / "out.npy")
    embed_cells = ["embed", "cells", cells, "-o", out]
    assert "unknown method 'umap'; choose one of genept-w, genept-s, cellama, pca, random" in one_line_error(
        runner.invoke(app, [*embed_cells, "--method", "umap"]))
    assert "--method genept-w needs --gene-embeddings" in one_line_error(runner.invoke(app, embed_cells))
    assert "out.csv: the output must end in .h5ad, .parquet or .npy" in one_line_error(
        runner.invoke(app, ["embed", "cells", str(tmp_path / "missing.h5ad"), "--method", "pca",
                            "-o", str(tmp_path / "out.csv")]))
    assert "missing.h5ad" in one_line_error(
        runner.invoke(app, ["embed", "cells", str(tmp_path / "missing.h5ad"), "--method", "pca", "-o", out]))
    assert "give exactly one of --model" in one_line_error(
        runner.invoke(app, [*embed_cells, "--method", "genept-s"]))
    assert "give exactly one of --model" in one_line_error(
        runner.invoke(app, [*embed_cells, "--method", "cellama", "--model", str(minilm_path()),
                            "--openai-model", "m"]))
    assert "no such folder" in one_line_error(
        runner.invoke(app, [*embed_cells, "--method", "genept-s", "--model", str(tmp_path / "no-model")]))
    assert "no such folder" in one_line_error(
        runner.invoke(app, [*embed_cells, "--gene-embeddings", str(tmp_path / "nothing")]))
    assert "'donor' not found in adata.obs" in one_line_error(
        runner.invoke(app, [*embed_cells, "--method", "cellama", "--model", str(minilm_path()),
                            "--metadata-keys", "donor"]))
    assert not (tmp_path / "out.npy").exists()

    embed_genes = ["embed", "genes", "--model", str(minilm_path()), "-o", str(tmp_path / "g"),
                   "--cache-dir", str(tmp_path / "cache")]
    assert "nothere.parquet: no such file" in one_line_error(
        runner.invoke(app, [*embed_genes, "--descriptions", str(tmp_path / "nothere.parquet"),
                            "--genes-from", str(genes_txt)]))
    assert "nogenes.txt: no such file" in one_line_error(
        runner.invoke(app, [*embed_genes, "--descriptions", str(DESCRIPTIONS),
                            "--genes-from", str(tmp_path / "nogenes.txt")]))
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("NOT-A-GENE\nALSO-NOT-ONE\n")
    assert "none of the 2 genes has a description" in one_line_error(
        runner.invoke(app, [*embed_genes, "--descriptions", str(DESCRIPTIONS), "--genes-from", str(unknown)]))
    no_summary = tmp_path / "no_summary.csv"
    pd.DataFrame({"symbol": ["CD3D"], "full_name": ["CD3 delta"], "synonyms": [""]}).to_csv(no_summary, index=False)
    assert "column 'summary' not found" in one_line_error(
        runner.invoke(app, [*embed_genes, "--descriptions", str(no_summary), "--genes-from", str(genes_txt)]))
    assert not (tmp_path / "g").exists()

    ref, query = ref_and_query
    annotate = ["annotate", "--reference", str(ref), "--query", str(query), "-o", str(tmp_path / "a.h5ad")]
    assert "'cell_type' not found in adata.obs" in one_line_error(
        runner.invoke(app, [*annotate, "--label-key", "cell_type", "--use-rep", "X_pca_log"]))
    assert "'X_genept_w' not found in adata.obsm; keys are: X_pca_log" in one_line_error(
        runner.invoke(app, [*annotate, "--label-key", LABEL, "--use-rep", "X_genept_w"]))
    assert "unknown head 'forest'" in one_line_error(
        runner.invoke(app, [*annotate, "--label-key", LABEL, "--use-rep", "X_pca_log", "--method", "forest"]))
    assert not (tmp_path / "a.h5ad").exists()
