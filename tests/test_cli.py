"""The `c2t` command line: each verb does what the library does, and bad input exits non-zero on one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from c2t.cli import app
from c2t.sentences import from_adata, load

runner = CliRunner()
PBMC3K = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc3k_raw_seurat_labels.h5ad"


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    counts = rng.negative_binomial(2, 0.6, size=(60, 40)).astype(np.float32)
    counts[5] = 0  # an all-zero cell
    adata = ad.AnnData(
        sp.csr_matrix(counts),
        obs=pd.DataFrame({"cell_type": rng.choice(["T", "B", "NK"], 60)}, index=[f"c{i}" for i in range(60)]),
        var=pd.DataFrame({"symbol": [f"Gene{i}" for i in range(40)]}, index=[f"ENSG{i:011d}" for i in range(40)]),
    )
    path = tmp_path_factory.mktemp("cli") / "small.h5ad"
    adata.write_h5ad(path)
    return path


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert text.startswith("error:"), text
    return " ".join(text.split())  # rich may wrap long lines in the test terminal


def test_console_script_help_and_version():
    done = subprocess.run([sys.executable, "-m", "c2t.cli", "--help"], capture_output=True, text=True, check=True)
    for verb in ("sentences", "decode", "version", "demo"):
        assert verb in done.stdout
    version = subprocess.run([sys.executable, "-m", "c2t.cli", "version"], capture_output=True, text=True, check=True)
    import c2t

    assert version.stdout.strip() == c2t.__version__


def test_import_c2t_is_light():
    code = "import sys, c2t; print(sorted(m for m in ('torch', 'transformers', 'numba', 'anndata') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_sentences_matches_library(small_h5ad, tmp_path):
    out = tmp_path / "s"
    result = runner.invoke(
        app, ["sentences", str(small_h5ad), "-o", str(out), "--top-k", "5", "--gene-key", "symbol",
              "--obs-keys", "cell_type", "--chunk-size", "7"],
    )
    assert result.exit_code == 0, result.output
    assert "empty cells 1" in result.output
    cs = load(out)
    expected = from_adata(small_h5ad, top_k=5, gene_key="symbol", obs_keys=["cell_type"])
    assert cs.texts() == expected.texts()
    assert cs.obs["cell_type"].tolist() == expected.obs["cell_type"].tolist()
    assert cs.manifest["source"]["sha256"].startswith("sha256:")


def test_full_sentences_flag(small_h5ad, tmp_path):
    result = runner.invoke(app, ["sentences", str(small_h5ad), "-o", str(tmp_path / "s"), "--top-k", "all",
                                 "--gene-key", "symbol"])
    assert result.exit_code == 0, result.output
    cs = load(tmp_path / "s")
    counts = ad.read_h5ad(small_h5ad).X
    assert cs.top_k is None
    assert cs.lengths.tolist() == np.diff(sp.csr_matrix(counts).indptr).tolist()


def test_decode_txt_and_parquet(small_h5ad, tmp_path):
    model = tmp_path / "model"
    assert runner.invoke(app, ["sentences", str(small_h5ad), "-o", str(model), "--gene-key", "symbol"]).exit_code == 0
    txt = tmp_path / "gen.txt"
    txt.write_text("Gene3 Gene1 NOTAGENE Gene3\nGene7\n\n")
    out = tmp_path / "gen.h5ad"
    result = runner.invoke(app, ["decode", str(txt), "--model", str(model), "-o", str(out)])
    assert result.exit_code == 0, result.output
    decoded = ad.read_h5ad(out)
    assert decoded.shape == (3, 40)
    assert decoded.obs["c2t_n_unknown"].tolist() == [1, 0, 0]
    assert decoded.obs["c2t_n_duplicate"].tolist() == [1, 0, 0]
    row = decoded.X[0].toarray().ravel()
    names = decoded.var_names.tolist()
    assert row[names.index("Gene3")] > row[names.index("Gene1")] > 0
    # a parquet file with a text column and extra columns that become obs
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"cell_sentence": ["Gene1 Gene2", "Gene9"], "label": ["T", "B"]}), tmp_path / "g.parquet")
    result = runner.invoke(app, ["decode", str(tmp_path / "g.parquet"), "--model", str(model), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(out).obs["label"].tolist() == ["T", "B"]


def test_bad_input_exits_with_one_line(small_h5ad, tmp_path):
    missing = one_line_error(runner.invoke(app, ["sentences", str(tmp_path / "nope.h5ad"), "-o", str(tmp_path / "o")]))
    assert "nope.h5ad" in missing
    bad_key = one_line_error(runner.invoke(app, ["sentences", str(small_h5ad), "-o", str(tmp_path / "o"),
                                                 "--gene-key", "symbol", "--obs-keys", "donor"]))
    assert "'donor' not found" in bad_key and "cell_type" in bad_key
    bad_gene_key = one_line_error(runner.invoke(app, ["sentences", str(small_h5ad), "-o", str(tmp_path / "o"),
                                                      "--gene-key", "nope"]))
    assert "'nope'" in bad_gene_key and "symbol" in bad_gene_key
    zero = one_line_error(runner.invoke(app, ["sentences", str(small_h5ad), "-o", str(tmp_path / "o"), "--top-k", "0"]))
    assert "top_k" in zero
    assert not (tmp_path / "o").exists()
    assert not any(p.name.startswith(".o") for p in tmp_path.iterdir())
    no_model = one_line_error(runner.invoke(app, ["decode", str(small_h5ad), "--model", str(tmp_path / "m"),
                                                  "-o", str(tmp_path / "x.h5ad")]))
    assert "no such folder" in no_model


@pytest.mark.skipif(not PBMC3K.exists(), reason="../shared/data/pbmc3k_raw_seurat_labels.h5ad is absent")
def test_sentences_on_pbmc3k_with_workers(tmp_path):
    out = tmp_path / "pbmc"
    result = runner.invoke(app, ["sentences", str(PBMC3K), "-o", str(out), "--obs-keys", "seurat_celltype",
                                 "--workers", "2", "--chunk-size", "1000"])
    assert result.exit_code == 0, result.output
    cs = load(out)
    assert len(cs) == 2700 and cs.lengths.max() == 100
    assert len(cs.manifest["shards"]) == 3
    assert cs.manifest["normalization"]["input"] == "counts"
    assert cs.texts()[:5] == from_adata(PBMC3K, top_k=100).texts()[:5]


def test_demo_main_job(tmp_path):
    """The README's main job: demo counts -> sentences -> instruction data -> decoded cells."""
    import c2t.instruct

    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    cs = load(tmp_path / "demo" / "sentences")
    assert len(cs) == 700 and cs.manifest["normalization"]["input"] == "counts"
    dsd = c2t.instruct.load(tmp_path / "demo" / "instruction_data")
    assert set(dsd) == {"train", "validation", "test"}
    assert {"cell_type", "cell_type_mc", "generation"} == set(dsd["train"]["task"])
    decoded = ad.read_h5ad(tmp_path / "demo" / "decoded.h5ad")
    assert decoded.shape == (700, 765) and decoded.uns["c2t_decode"]["n_unknown"] == 0
    assert "Pearson" in result.output
    bench = pd.read_csv(tmp_path / "demo" / "bench" / "results.csv")
    knn = bench[(bench["head"] == "knn") & (bench["metric"] == "accuracy")].groupby("method")["value"].mean()
    assert knn["pca"] > 0.6 and knn["random"] < 0.45  # the classical baseline well above the random control
    assert (tmp_path / "demo" / "bench" / "report.html").stat().st_size > 10_000
