"""c2t.plm encoders: tiny models built from configs (no downloads), pre-training, embedding, saving, loading."""

from __future__ import annotations

import pickle
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from c2t import plm  # noqa: E402
from c2t._errors import C2TInputError  # noqa: E402
from c2t.cli import app  # noqa: E402

KANG = Path(__file__).resolve().parents[2] / "shared" / "data" / "kang2018_8donors_muscat.h5ad"
TINY = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32, "batch_size": 16,
        "max_steps": 3, "threads": 1, "validation_fraction": 0.2}


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    rng = np.random.default_rng(0)
    n, g = 40, 25
    x = rng.negative_binomial(1, 0.4, size=(n, g)).astype(np.float32)
    x[3] = 0  # an empty cell
    obs = pd.DataFrame({"batch": rng.choice(["b1", "b2"], n), "sample": rng.choice(["s1", "s2"], n)},
                       index=[f"c{i}" for i in range(n)])
    return ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(g)]))


def tables(genes):
    emb = pd.DataFrame(np.random.default_rng(1).standard_normal((len(genes), 6)), index=genes)
    chrom = pd.DataFrame({"chromosome": [str(1 + i % 3) for i in range(len(genes))], "start": range(len(genes))},
                         index=genes)
    return emb, chrom


def recipes(genes):
    emb, chrom = tables(genes)
    return {
        "scbert": {},
        "geneformer": {"version": 2, "max_length": 16},
        "scgpt": {"n_bins": 11, "max_length": 12, "batch_key": "batch"},
        "tgpt": {"top_k": 8},
        "scfoundation": {},
        "uce": {"gene_embeddings": emb, "chromosomes": chrom, "sample_size": 12, "pad_length": 24},
        "cellplm": {"gene_embeddings": emb, "group_key": "sample", "max_cells": 8},
        "rank_metadata": {"metadata_keys": ["batch"], "max_length": 10, "with_values": True},
        "scmulan": {"metadata_keys": ["batch"], "max_genes": 8},
    }


@pytest.mark.parametrize("name", list(recipes([f"G{i}" for i in range(25)])))
def test_round_trip_through_a_tiny_model(name, cells, tmp_path):
    options = recipes(list(cells.var_names))[name]
    enc = plm.pretrain(cells, tokenizer=name, tokenizer_options=options, **TINY)
    assert enc.report["steps"] == 3 and enc.report["losses"]
    assert np.isfinite(enc.report["losses"][-1]["loss"])
    x = enc.embed(cells, batch_size=7)
    assert x.shape == (cells.n_obs, 16) and x.dtype == np.float32 and np.isfinite(x).all()
    assert isinstance(enc, plm.CellEncoder)
    enc.save(tmp_path / "enc")
    again = plm.load_encoder(tmp_path / "enc")
    assert np.allclose(again.embed(cells, batch_size=40), x, atol=1e-5)
    plm.embed(cells, again, key_added=f"X_{name}")
    assert cells.obsm[f"X_{name}"].shape == (cells.n_obs, 16)


def test_next_token_objective_gpt2(cells):
    enc = plm.pretrain(cells, tokenizer="tgpt", objective="clm", tokenizer_options={"top_k": 8}, **TINY)
    assert type(enc.model.backbone).__name__ == "GPT2LMHeadModel"
    assert enc.report["validation"]["metric"] == "held-out next-token accuracy"
    assert enc.embed(cells).shape == (cells.n_obs, 16)


@pytest.mark.parametrize("name", ["geneformer", "scgpt", "scfoundation", "tgpt"])
def test_a_cell_embedding_ignores_the_rest_of_its_batch(name, cells):
    options = recipes(list(cells.var_names))[name]
    enc = plm.pretrain(cells, tokenizer=name, tokenizer_options=options, **{**TINY, "max_steps": 1})
    tokens = enc.tokenizer(cells)  # cells padded to the longest of all
    together = enc.embed_encoding(tokens)
    assert np.allclose(together, enc.embed(cells, batch_size=40), atol=1e-6)
    for i in range(0, cells.n_obs, 5):  # each cell alone, without any padding
        width = int(tokens["attention_mask"][i].sum())
        one = tokens._like({k: v[i : i + 1, :width] if v.ndim > 1 else v[i : i + 1] for k, v in tokens.items()},
                           rows=slice(i, i + 1))
        one.special_mask = one.special_mask[:, :width]
        assert np.allclose(enc.embed_encoding(one)[0], together[i], atol=1e-5), i


def test_cells_as_tokens_depend_on_their_group_not_on_batches(cells):
    options = recipes(list(cells.var_names))["cellplm"]
    enc = plm.pretrain(cells, tokenizer="cellplm", tokenizer_options=options, **{**TINY, "max_steps": 1})
    assert np.allclose(enc.embed(cells, batch_size=1), enc.embed(cells, batch_size=40), atol=1e-5)


def test_masking_picks_only_maskable_positions():
    from c2t.plm._pretrain import mask_tokens

    ids = torch.arange(10, 10 + 2000).reshape(20, 100)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, :10] = False
    out, labels = mask_tokens(ids, maskable, mask_id=1, probability=0.15, generator=torch.Generator().manual_seed(0))
    picked = labels >= 0
    assert not picked[:, :10].any()
    assert 0.12 < picked.float().mean() / 0.9 < 0.18
    assert (labels[picked] == ids[picked]).all()
    assert 0.7 < (out[picked] == 1).float().mean() < 0.9  # ~80% become <mask>


def save_geneformer(folder: Path, genes, *, version: int = 1, medians: bool = True) -> dict:
    from transformers import BertConfig, BertForMaskedLM

    special = ["<pad>", "<mask>"] + (["<cls>", "<eos>"] if version == 2 else [])
    dictionary = {t: i for i, t in enumerate([*special, *genes])}
    config = BertConfig(vocab_size=len(dictionary), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, pad_token_id=0)
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(folder)
    with open(folder / "token_dictionary_gc104M.pkl", "wb") as f:
        pickle.dump(dictionary, f)
    if medians:
        with open(folder / "gene_median_dictionary_gc104M.pkl", "wb") as f:
            pickle.dump(dict.fromkeys(genes, 2.0), f)
    return dictionary


def test_load_geneformer_folder(cells, tmp_path):
    genes = [f"ENSG{i:05d}" for i in range(30)]
    save_geneformer(tmp_path / "gf", genes)
    data = cells.copy()
    data.var["ensembl"] = genes[:25]
    enc = plm.load_geneformer(tmp_path / "gf", gene_key="ensembl")
    x = enc.embed(data)
    assert x.shape == (data.n_obs, 16) and enc.hidden_layer == -2
    assert enc.report["genes"]["n_matched"] == 25
    assert enc.tokenizer.version == 1 and enc.tokenizer.max_length == 32
    # the benchmark's plm method takes the same checkpoint (c2t bench: methods: {plm: {path: ..., ...}})
    from c2t.eval._methods import plm as plm_method

    by_bench = plm_method(data, path=str(tmp_path / "gf"), checkpoint_options={"gene_key": "ensembl"})
    np.testing.assert_allclose(by_bench, x, rtol=1e-5)
    # v2 (<cls>/<eos>) and medians computed from the data when the folder has none
    save_geneformer(tmp_path / "gf2", genes, version=2, medians=False)
    enc2 = plm.load_checkpoint(tmp_path / "gf2", gene_key="ensembl", pooling="cls")
    assert enc2.tokenizer.version == 2 and enc2.embed(data).shape == (data.n_obs, 16)
    assert enc2.tokenizer.medians  # fitted on the data it embedded
    # the published layout: the model folder holds config + weights only, the dictionaries ship in the
    # geneformer package (geneformer/token_dictionary_gc104M.pkl, gene_median_dictionary_gc104M.pkl)
    package = tmp_path / "geneformer"
    package.mkdir()
    for name in ("token_dictionary_gc104M.pkl", "gene_median_dictionary_gc104M.pkl"):
        (tmp_path / "gf" / name).rename(package / name)
    with pytest.raises(C2TInputError, match="pass token_dictionary="):
        plm.load_geneformer(tmp_path / "gf", gene_key="ensembl")
    split = plm.load_geneformer(tmp_path / "gf", gene_key="ensembl",
                                token_dictionary=package / "token_dictionary_gc104M.pkl",
                                gene_medians=package / "gene_median_dictionary_gc104M.pkl")
    np.testing.assert_allclose(split.embed(data), x, rtol=1e-5)
    # some genes absent from the vocabulary: counted and reported
    partial = data.copy()
    partial.var["ensembl"] = genes[:20] + [f"OTHER{i}" for i in range(5)]
    enc.embed(partial)
    assert enc.report["genes"]["n_unmatched"] == 5
    assert enc.report["genes"]["unmatched_examples"][0] == "OTHER0"


def test_geneformer_bad_folders_and_data(cells, tmp_path):
    genes = [f"ENSG{i:05d}" for i in range(30)]
    save_geneformer(tmp_path / "gf", genes)
    (tmp_path / "gf" / "token_dictionary_gc104M.pkl").unlink()
    with pytest.raises(C2TInputError, match="no token dictionary"):
        plm.load_geneformer(tmp_path / "gf")
    save_geneformer(tmp_path / "ok", genes)
    enc = plm.load_geneformer(tmp_path / "ok")
    with pytest.raises(C2TInputError, match="none of the 25 genes of the data"):
        enc.embed(cells)  # symbols against an Ensembl dictionary
    data = cells.copy()
    data.var["ensembl"] = genes[:25]
    data.X = data.X * 0.5
    with pytest.raises(C2TInputError, match="needs raw counts"):
        enc.embed(data, gene_key="ensembl")
    with pytest.raises(C2TInputError, match="no such folder"):
        plm.load_geneformer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(C2TInputError, match=r"no config\.json"):
        plm.load_geneformer(tmp_path / "empty")


def test_load_tgpt_folder(cells, tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, **{g: i + 2 for i, g in enumerate(cells.var_names)}}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>")
    folder = tmp_path / "tgpt"
    hf.save_pretrained(folder)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=16, n_layer=2, n_head=2)).save_pretrained(folder)
    enc = plm.load_checkpoint(folder)
    assert enc.tokenizer.recipe == "tgpt" and enc.tokenizer.top_k == 64
    x = enc.embed(cells)
    assert x.shape == (cells.n_obs, 16)
    # the tokens are the HF tokenizer's ids of the ranked gene symbols
    tokens = enc.tokenizer(cells[:1])
    text = " ".join(enc.tokenizer.vocab.tokens()[tokens["input_ids"][0][tokens["attention_mask"][0] == 1]])
    assert hf(text)["input_ids"] == tokens["input_ids"][0][tokens["attention_mask"][0] == 1].tolist()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (folder / f).unlink()
    with pytest.raises(C2TInputError, match="no tokenizer"):
        plm.load_tgpt(folder)


def test_other_architectures_are_refused_clearly(tmp_path):
    folder = tmp_path / "scgpt_human"
    folder.mkdir()
    for f in ("args.json", "best_model.pt", "vocab.json"):
        (folder / f).write_text("{}")
    with pytest.raises(C2TInputError, match=r"looks like a scgpt checkpoint.*not a transformers architecture"):
        plm.load_checkpoint(folder)
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text('{"model_type": "t5"}')
    with pytest.raises(C2TInputError, match="model_type 't5' is not one c2t loads"):
        plm.load_checkpoint(tmp_path / "t5")


def test_encoder_folder_is_checked(cells, tmp_path):
    enc = plm.pretrain(cells, tokenizer="tgpt", tokenizer_options={"top_k": 8}, **TINY)
    enc.save(tmp_path / "e")
    vocab = tmp_path / "e" / "tokenizer" / "c2t_tokenizer.json"
    vocab.write_text(vocab.read_text().replace('"G1"', '"G1x"'))
    with pytest.raises(C2TInputError, match="does not match the manifest"):
        plm.load_encoder(tmp_path / "e")


def test_pretrain_bad_settings(cells):
    with pytest.raises(C2TInputError, match="tokenizer must be one of"):
        plm.pretrain(cells, tokenizer="scfoo")
    with pytest.raises(C2TInputError, match="unknown setting 'epoch'"):
        plm.pretrain(cells, epoch=2)
    with pytest.raises(C2TInputError, match="multiple of num_heads"):
        plm.pretrain(cells, tokenizer="tgpt", hidden_size=10, num_heads=3, max_steps=1)
    with pytest.raises(C2TInputError, match="tokenizer 'tgpt'"):
        plm.pretrain(cells, tokenizer="tgpt", tokenizer_options={"topk": 3})


def test_cli_pretrain(cells, tmp_path):
    path = tmp_path / "cells.h5ad"
    cells.write_h5ad(path)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data: {path}\nout: {tmp_path / 'enc'}\ntokenizer: geneformer\ntokenizer_options:\n  max_length: 12\n"
        "hidden_size: 16\nnum_layers: 1\nnum_heads: 2\nintermediate_size: 32\nmax_steps: 2\nthreads: 1\n"
    )
    runner = CliRunner()
    result = runner.invoke(app, ["pretrain", str(config)])
    assert result.exit_code == 0, result.output
    assert "held-out masked-token accuracy" in result.output
    assert plm.load_encoder(tmp_path / "enc").embed(cells).shape == (cells.n_obs, 16)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data: {path}\nout: {tmp_path / 'x'}\nlearning_rat: 0.1\n")
    result = runner.invoke(app, ["pretrain", str(bad)])
    assert result.exit_code == 2
    assert result.output.startswith("error:") and "unknown setting 'learning_rat'" in " ".join(result.output.split())
    result = runner.invoke(app, ["pretrain", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "no such file" in result.output


@pytest.mark.slow
def test_mlm_on_kang_beats_the_most_frequent_gene():
    if not KANG.is_file():
        pytest.skip(f"{KANG} is not present (shared test data)")
    adata = ad.read_h5ad(KANG)
    sub = adata[np.random.default_rng(0).choice(adata.n_obs, 1500, replace=False)].copy()
    enc = plm.pretrain(sub, tokenizer="geneformer", tokenizer_options={"max_length": 48}, hidden_size=64,
                       num_layers=2, num_heads=4, intermediate_size=128, epochs=4, batch_size=32, learning_rate=5e-3,
                       dropout=0.0, validation_fraction=0.2, threads=1)
    val = enc.report["validation"]
    assert val["positions"] > 1000
    assert val["accuracy"] > 1.5 * val["most_frequent_token_accuracy"], val
    assert enc.report["genes"]["n_matched"] == adata.n_vars
