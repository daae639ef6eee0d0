"""scInterpreter-style tuning (c2t.train._projector): a projector from gene embeddings into a frozen tiny LLaMA,
a classification head, predict/embed on an AnnData, save/load with a manifest, and the bad-input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from c2t import C2TInputError  # noqa: E402
from c2t.genes import GeneEmbeddings  # noqa: E402
from c2t.train import cell_gene_tokens, fit_projector, load_projector, soft_token_classifier  # noqa: E402
from c2t.train._projector import _load_llm  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                         initializer_range=0.2))
    out = tmp_path_factory.mktemp("llama")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gene_vectors(synth):
    rng = np.random.default_rng(0)
    genes = np.array(synth.var_names, dtype=object)
    has_text = np.ones(len(genes), bool)
    has_text[::10] = False  # genes without a description are never tokens
    return GeneEmbeddings(genes, rng.standard_normal((len(genes), 12)).astype(np.float32), has_text,
                          {"encoder": "random-test"})


def _fit(adata, genes, base, **kw):
    options = {"label_key": "cell_type", "base_model": base, "top_k": 8, "hidden_dim": 16, "epochs": 6,
               "batch_size": 32, "learning_rate": 1e-2, "dropout": 0.0, "seed": 0, **kw}
    return fit_projector(adata, genes, **options)


def test_cell_gene_tokens_rank_by_expression_and_skip_genes_without_vectors(synth):
    from c2t.io import normalize_log1p

    genes = list(synth.var_names[5:])  # the first five genes have no vector
    ids, values = cell_gene_tokens(synth, genes, top_k=6)
    norm = normalize_log1p(synth.X.tocsr()).toarray()
    for cell in (0, 1, 50):
        row = norm[cell, 5:]
        expected = np.lexsort((np.arange(len(row)), -row))[: (row > 0).sum()][:6]
        assert ids[cell, : len(expected)].tolist() == expected.tolist()
        np.testing.assert_allclose(values[cell, : len(expected)], row[expected], rtol=1e-6)
    assert (ids[5] == -1).all() and (values[5] == 0).all()  # an empty cell: padding only


@pytest.mark.parametrize(("pooling", "scale"), [("mean", False), ("last", True)])
def test_only_projector_and_head_train_and_the_loss_falls(synth, gene_vectors, tiny_llama, pooling, scale):
    frozen = {k: v.clone() for k, v in _load_llm(tiny_llama, llm_layers=None, dtype="float32").state_dict().items()}
    llm = _load_llm(tiny_llama, llm_layers=None, dtype="float32")
    torch.manual_seed(0)  # what fit_projector does after loading the LLM: the same initial parameters
    initial = soft_token_classifier(llm, 12, 3, hidden_dim=16, pooling=pooling, scale_by_expression=scale, dropout=0.0)
    before = {n: p.detach().clone() for n, p in initial.named_parameters() if p.requires_grad}

    clf = _fit(synth, gene_vectors, tiny_llama, pooling=pooling, scale_by_expression=scale)
    losses = [e["loss"] for e in clf.history]
    assert len(losses) == 6 * 8  # 240 cells / 32 per step, 6 epochs
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    trainable = {n for n, p in clf.module.named_parameters() if p.requires_grad}
    assert trainable == set(before) and not any(n.startswith("llm.") for n in trainable)
    assert {n.split(".")[0] for n in trainable} == {"projector", "head", "readout"}
    for name, param in clf.module.named_parameters():
        if name.startswith("llm."):
            assert torch.equal(param, frozen[name[4:]]), name
        else:
            assert not torch.equal(param, before[name]), f"{name} did not change"
    assert clf.manifest["training"]["steps"] == 48


def test_predict_embed_save_load(synth, gene_vectors, tiny_llama, tmp_path):
    adata = synth.copy()
    clf = _fit(adata, gene_vectors, tiny_llama, epochs=8)
    clf.predict(adata)
    accuracy = float((adata.obs["c2t_projector"].astype(str) == adata.obs["cell_type"].astype(str)).mean())
    assert accuracy > 0.8, accuracy
    proba = adata.obsm["c2t_projector_proba"]
    assert proba.shape == (240, 3) and np.isfinite(proba).all()  # empty cells too
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert list(adata.obs["c2t_projector"].cat.categories) == ["B", "Mono", "T"]
    np.testing.assert_allclose(adata.obs["c2t_projector_confidence"], proba.max(axis=1))
    assert adata.uns["c2t_projector"]["c2t_projector"]["classes"] == ["B", "Mono", "T"]
    other = clf.embed(adata, key_added="X_proj", copy=True)
    assert other.obsm["X_proj"].shape == (240, 32) and "X_proj" not in adata.obsm

    folder = clf.save(tmp_path / "proj")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "projector_classifier" and manifest["classes"] == ["B", "Mono", "T"]
    assert manifest["settings"]["top_k"] == 8 and manifest["gene_embeddings"]["encoder"] == "random-test"
    assert manifest["parameters"]["trained"] == sum(p.numel() for p in clf.module.parameters() if p.requires_grad)
    assert not any(k.startswith("llm.") for k in __import__("safetensors.torch").torch.load_file(folder / "projector.safetensors"))
    again = load_projector(folder)
    np.testing.assert_allclose(again.predict_proba(synth), proba, rtol=1e-5, atol=1e-6)
    assert len(again.history) == len(clf.history)

    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(1)  # same architecture, other weights
    other = LlamaModel(LlamaConfig.from_pretrained(tiny_llama))
    other.save_pretrained(tmp_path / "other_llama")
    with pytest.raises(C2TInputError, match=r"not the LLM .* was trained with"):
        load_projector(folder, base_model=tmp_path / "other_llama")

    (folder / "classes.txt").write_text("B\nT\nMono\n")
    with pytest.raises(C2TInputError, match="do not match the manifest"):
        load_projector(folder)


def test_llm_layers_uses_the_first_layers(synth, gene_vectors, tiny_llama):
    clf = _fit(synth, gene_vectors, tiny_llama, llm_layers=1, epochs=1)
    assert len(clf.module.llm.layers) == 1 and clf.manifest["llm"]["layers_used"] == 1
    full = _load_llm(tiny_llama, llm_layers=None, dtype="float32").state_dict()
    for name, value in clf.module.llm.state_dict().items():
        assert torch.equal(value, full[name]), name


def test_bad_input(synth, gene_vectors, tiny_llama, tmp_path):
    with pytest.raises(C2TInputError, match=r"'celltype' not found in adata\.obs; columns are: cell_type, batch"):
        _fit(synth, gene_vectors, tiny_llama, label_key="celltype")
    one = synth.copy()
    one.obs["cell_type"] = "T"
    with pytest.raises(C2TInputError, match="at least 2"):
        _fit(one, gene_vectors, tiny_llama)
    other = GeneEmbeddings(np.array(["CD3D", "LYZ"]), np.eye(2, dtype=np.float32), np.ones(2, bool))
    with pytest.raises(C2TInputError, match="another vocabulary"):
        _fit(synth, other, tiny_llama)
    with pytest.raises(C2TInputError, match="no such transformers model folder"):
        _fit(synth, gene_vectors, tmp_path / "missing")
    with pytest.raises(C2TInputError, match="llm_layers must be between 1 and 2"):
        _fit(synth, gene_vectors, tiny_llama, llm_layers=3)
    with pytest.raises(C2TInputError, match="pooling must be one of mean, last"):
        _fit(synth, gene_vectors, tiny_llama, pooling="cls")
    with pytest.raises(C2TInputError, match="GeneEmbeddings"):
        _fit(synth, np.zeros((120, 4)), tiny_llama)
    from transformers import T5Config, T5Model

    T5Model(T5Config(vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).save_pretrained(tmp_path / "t5")
    with pytest.raises(C2TInputError, match="encoder-decoder"):
        _fit(synth, gene_vectors, tmp_path / "t5")


def test_cli_fit_and_predict(synth_h5ad, gene_vectors, tiny_llama, tmp_path):
    import anndata as ad
    from typer.testing import CliRunner

    from c2t.cli import app

    runner = CliRunner()
    genes_dir = gene_vectors.save(tmp_path / "genes")
    model = tmp_path / "proj"
    result = runner.invoke(app, ["projector", "fit", str(synth_h5ad), "--gene-embeddings", str(genes_dir),
                                 "--label-key", "cell_type", "--base-model", str(tiny_llama), "-o", str(model),
                                 "--top-k", "8", "--hidden-dim", "16", "--epochs", "6", "--learning-rate", "0.01"])
    assert result.exit_code == 0, result.output
    assert "3 classes, 240 cells, 48 steps" in " ".join(result.output.split())
    out = tmp_path / "pred.h5ad"
    result = runner.invoke(app, ["projector", "predict", str(synth_h5ad), "--model", str(model), "-o", str(out),
                                 "--embed"])
    assert result.exit_code == 0, result.output
    pred = ad.read_h5ad(out)
    assert (pred.obs["c2t_projector"].astype(str) == pred.obs["cell_type"].astype(str)).mean() > 0.8
    assert pred.obsm["c2t_projector_proba"].shape == (240, 3) and pred.obsm["X_c2t_projector"].shape == (240, 32)

    bad = runner.invoke(app, ["projector", "fit", str(synth_h5ad), "--gene-embeddings", str(genes_dir),
                              "--label-key", "celltype", "--base-model", str(tiny_llama), "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and bad.output.startswith("error:") and "'celltype' not found" in bad.output
    assert not (tmp_path / "x").exists()
