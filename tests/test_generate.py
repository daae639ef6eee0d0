"""c2t.generate on the transformers backend: cells from prompts, annotation by generation, hidden-state embeddings,
and the bad inputs. The model is a tiny LLaMA LoRA run trained by c2t on 300 real pbmc3k cells (conftest)."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from c2t._errors import C2TInputError
from c2t.cli import app
from c2t.generate import (
    OpenAIBackend,
    Sampling,
    TransformersBackend,
    embed_hidden,
    generate_cells,
    masked_mean,
    match_labels,
    model_spec,
    parse_labels,
    predict,
)
from c2t.generate._run import read_run_info
from c2t.instruct import load
from c2t.io import read_h5ad

SAMPLE = Sampling(max_new_tokens=24, seed=3)


@pytest.fixture(scope="module")
def backend(gen_run):
    with TransformersBackend(gen_run) as engine:
        yield engine


@pytest.fixture(scope="module")
def cells_in(pbmc3k):
    rows = np.random.default_rng(5).choice(pbmc3k.n_obs, 40, replace=False)
    return pbmc3k[np.sort(rows)].copy()


# ----------------------------------------------------------------------------------------------- backends
def test_run_spec_reads_the_manifest(gen_run, gen_dataset):
    spec = model_spec(gen_run)
    info = read_run_info(gen_run)
    assert spec.chat and spec.is_adapter and not spec.seq2seq
    assert set(info.tasks) == {"cell_type", "generation", "unconditional"}
    built = json.loads((gen_dataset / "manifest.json").read_text())["tasks"][0]["label_counts"]["train"]
    assert set(built) <= set(info.labels("cell_type"))
    assert (info.vocabulary() == np.array((gen_dataset / "vocabulary.txt").read_text().split("\n")[:-1])).all()


def test_same_seed_same_outputs_and_n_per_prompt(backend, gen_dataset):
    prompts = list(load(gen_dataset)["test"]["prompt"][:5])
    first = backend.complete(prompts, sampling=SAMPLE, n=[1, 2, 3, 1, 1])
    assert [len(g) for g in first] == [1, 2, 3, 1, 1]
    assert backend.complete(prompts, sampling=SAMPLE, n=[1, 2, 3, 1, 1]) == first
    other = backend.complete(prompts, sampling=SAMPLE.replace(seed=4), n=[1, 2, 3, 1, 1])
    assert other != first
    greedy = backend.complete(prompts, sampling=Sampling(temperature=0, max_new_tokens=24), n=2)
    assert all(g[0] == g[1] for g in greedy)  # greedy copies agree; sampled ones differ
    assert len(set(first[2])) > 1


def test_greedy_answers_match_a_direct_generate_call(backend, gen_run, gen_dataset):
    """The backend formats prompts as the run trained (chat template) and decodes only the new tokens."""
    import torch

    from c2t.train import load_model

    model, tok = load_model(gen_run)
    prompt = load(gen_dataset)["test"]["prompt"][0]
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    direct = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert backend.complete([prompt], sampling=Sampling(temperature=0, max_new_tokens=16)) == [[direct]]


# ----------------------------------------------------------------------------------------------- cells
def test_generate_cells_by_label_decodes_each_completion(backend, gen_run):
    cells = generate_cells(gen_run, labels="B:4,NK:3", backend=backend, sampling=SAMPLE)
    info = read_run_info(gen_run)
    vocab = set(info.vocabulary())
    assert cells.n_obs == 7 and cells.n_vars == len(vocab)
    assert cells.obs["condition"].value_counts().to_dict() == {"B": 4, "NK": 3}
    assert cells.obs["c2t_known_label"].all()
    assert set(cells.obs["template_id"]) <= set(info.template_ids("generation"))
    X = cells.X.tocsr()
    for i, text in enumerate(cells.obs["c2t_text"]):
        row_genes = set(cells.var_names[X.indices[X.indptr[i]:X.indptr[i + 1]]])
        tokens = [t.strip(".,;:") for t in text.split()]
        assert row_genes <= {t for t in tokens if t in vocab} | {g for g in vocab if g.upper() in {t.upper() for t in tokens}}
        assert X.indptr[i + 1] - X.indptr[i] == cells.obs["c2t_n_genes"].iloc[i]
    report = cells.uns["c2t_generate"]
    assert report["n_empty"] == int((cells.obs["c2t_n_genes"] == 0).sum())  # no genes at all: counted, not a crash
    n_tokens = sum(len(t.split()) for t in cells.obs["c2t_text"])
    assert report["decode"]["n_tokens"] == n_tokens
    assert report["conditions"] == {"B": 4, "NK": 3}
    again = generate_cells(gen_run, labels={"B": 4, "NK": 3}, backend=backend, sampling=SAMPLE)
    assert list(again.obs["c2t_text"]) == list(cells.obs["c2t_text"])


def test_unknown_label_warns_and_is_flagged(backend, gen_run):
    with pytest.warns(UserWarning, match="'Alien'.*not in the run's training data"):
        cells = generate_cells(gen_run, labels="B:1,Alien:2", backend=backend, sampling=SAMPLE)
    flags = dict(zip(cells.obs["condition"], cells.obs["c2t_known_label"], strict=True))
    assert flags == {"B": True, "Alien": False}
    assert cells.uns["c2t_generate"]["unknown_labels"] == ["Alien"]


def test_prompt_and_unconditional_generation(backend, gen_run):
    own = generate_cells(gen_run, prompt="List the top genes of a B cell.", n_cells=3, backend=backend, sampling=SAMPLE)
    assert own.n_obs == 3 and set(own.obs["condition"]) == {"List the top genes of a B cell."}
    free = generate_cells(gen_run, n_cells=4, backend=backend, sampling=SAMPLE)
    assert free.n_obs == 4 and set(free.obs["template_id"]) <= set(read_run_info(gen_run).template_ids("unconditional"))


def test_parse_labels_errors():
    assert parse_labels({"B": 2}) == {"B": 2}
    for bad in ("B", "B:0", "B:x", ":3", ""):
        with pytest.raises(C2TInputError, match="labels"):
            parse_labels(bad)


# ----------------------------------------------------------------------------------------------- predict
def test_predict_writes_labels_and_scores_them_with_sklearn(backend, gen_run, cells_in):
    from sklearn.metrics import accuracy_score, f1_score

    adata = cells_in.copy()
    report = predict(gen_run, adata, backend=backend)
    labels = read_run_info(gen_run).labels("cell_type")
    column = adata.obs["c2t_cell_type"]
    assert list(column.cat.categories) == [*labels, "unknown"]
    keep = adata.obs["seurat_celltype"].notna().to_numpy()
    truth = adata.obs["seurat_celltype"].astype(str).to_numpy()[keep]
    pred = column.astype(str).to_numpy()[keep]
    assert report["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert report["macro_f1"] == pytest.approx(f1_score(truth, pred, labels=sorted(set(truth)), average="macro",
                                                       zero_division=0))
    assert report["n_unknown"] == int((column == "unknown").sum())
    answers = adata.obs["c2t_cell_type_answer"]
    assert list(column[keep]) == match_labels(list(answers[keep].str.split("\n").str[0]), labels)


def test_predict_without_labels_and_with_an_empty_cell(backend, gen_run, cells_in):
    adata = cells_in.copy()
    del adata.obs["seurat_celltype"]
    X = adata.X.toarray()
    X[0] = 0
    adata.X = X
    report = predict(gen_run, adata, backend=backend, key_added="pred")
    assert "accuracy" not in report and report["n_prompted"] == adata.n_obs - 1
    assert adata.obs["pred"].iloc[0] == "unknown" and adata.obs["pred_answer"].iloc[0] == ""


def test_match_labels_cases():
    labels = ["CD14+ Mono", "FCGR3A+ Mono", "B", "NK"]
    got = match_labels(["The answer is B cells.", "FCGR3A+ monocytes", "cd14 mono", "Mono", "", "NK cell or B cell"],
                       labels)
    assert got == ["B", "FCGR3A+ Mono", "CD14+ Mono", "unknown", "unknown", "unknown"]


# ----------------------------------------------------------------------------------------------- hidden states
def test_hidden_embeddings_do_not_depend_on_the_batch(gen_run, cells_in):
    a = cells_in.copy()
    embed_hidden(gen_run, a, batch_size=1)
    b = embed_hidden(gen_run, cells_in, batch_size=7, copy=True)
    assert a.obsm["X_c2t_llm"].shape == (a.n_obs, 64)
    np.testing.assert_allclose(a.obsm["X_c2t_llm"], b.obsm["X_c2t_llm"], atol=1e-5)
    assert "X_c2t_llm" not in cells_in.obsm
    assert np.linalg.matrix_rank(a.obsm["X_c2t_llm"]) > 10  # cells differ


def test_masked_mean_ignores_padding_where_a_plain_mean_does_not():
    import torch

    hidden = torch.arange(12, dtype=torch.float32).reshape(1, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0]])
    assert masked_mean(hidden, mask).tolist() == [[1.5, 2.5, 3.5]]
    assert hidden.mean(1).tolist() != masked_mean(hidden, mask).tolist()


def test_hidden_embeddings_of_an_encoder_decoder(tiny_models, cells_in):
    out = embed_hidden(tiny_models["t5"], cells_in, top_k=10, layer=0, copy=True)
    assert out.obsm["X_c2t_llm"].shape == (cells_in.n_obs, 32)
    with pytest.raises(C2TInputError, match="layer 9 out of range"):
        embed_hidden(tiny_models["t5"], cells_in, top_k=10, layer=9, copy=True)


# ----------------------------------------------------------------------------------------------- bad input
def test_folders_that_are_not_finished_runs(tmp_path, gen_run, vllm_llama, cells_in):
    few = cells_in[:5].copy()
    with pytest.raises(C2TInputError, match="no such model folder"):
        model_spec(tmp_path / "absent")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "train_config.yaml").write_text("dataset: x\n")
    with pytest.raises(C2TInputError, match=r"no manifest\.json; the training run did not finish"):
        generate_cells(unfinished, labels="B:1")
    with pytest.raises(C2TInputError, match="need a c2t training run"):
        predict(vllm_llama, few)
    with pytest.raises(C2TInputError, match="not trained on the drug_response task"):
        predict(gen_run, few, task="drug_response")
    with pytest.raises(C2TInputError, match="label tasks"):
        predict(gen_run, few, task="perturbation")
    with pytest.raises(C2TInputError, match="unknown backend 'tgi'"):
        generate_cells(gen_run, labels="B:1", backend="tgi")


def test_vllm_not_installed_names_the_pip_line(gen_run):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is installed in this environment")
    with pytest.raises(ImportError, match=r"pip install 'c2t\[vllm\]'"):
        generate_cells(gen_run, labels="B:1", backend="vllm")


def test_unreachable_server_fails_clearly_after_bounded_retries(gen_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "cells", spec=model_spec(gen_run), max_retries=1, timeout=5)
    with pytest.raises(ConnectionError, match=f"could not reach the OpenAI-compatible server at http://127.0.0.1:{port}/v1 after 1 retries"):
        generate_cells(gen_run, labels="B:1", backend=engine)


def test_sampling_settings_validate_and_load_from_yaml(tmp_path):
    file = tmp_path / "s.yaml"
    file.write_text(yaml.safe_dump({"sampling": {"temperature": 0.5, "max_new_tokens": 8, "seed": 2}}))
    assert Sampling.from_yaml(file) == Sampling(temperature=0.5, max_new_tokens=8, seed=2)
    with pytest.raises(C2TInputError, match=r"unknown sampling setting.*temp"):
        Sampling.from_mapping({"temp": 1})
    with pytest.raises(C2TInputError, match="top_p"):
        Sampling(top_p=0)


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_generate_predict_and_embed(gen_run, cells_in, tmp_path):
    runner = CliRunner()
    data = tmp_path / "in.h5ad"
    cells_in.write_h5ad(data)
    out = tmp_path / "gen.h5ad"
    result = runner.invoke(app, ["generate", "cells", "--model", str(gen_run), "--labels", "B:2,CD8 T:1", "-o", str(out),
                                 "--max-new-tokens", "16", "--seed", "1"])
    assert result.exit_code == 0, result.output
    generated = read_h5ad(out)
    assert generated.obs["condition"].value_counts().to_dict() == {"B": 2, "CD8 T": 1}
    assert "valid genes" in result.output
    report = tmp_path / "pred.json"
    result = runner.invoke(app, ["predict", "--model", str(gen_run), str(data), "-o", str(tmp_path / "pred.h5ad"),
                                 "--report", str(report)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(report.read_text())
    assert f"accuracy {metrics['accuracy']:.3f}" in " ".join(result.output.split())
    assert "c2t_cell_type" in read_h5ad(tmp_path / "pred.h5ad").obs
    result = runner.invoke(app, ["embed", "llm", "--model", str(gen_run), str(data), "-o", str(tmp_path / "emb.h5ad")])
    assert result.exit_code == 0, result.output
    assert read_h5ad(tmp_path / "emb.h5ad").obsm["X_c2t_llm"].shape == (cells_in.n_obs, 64)
    result = runner.invoke(app, ["generate", "cells", "--model", str(tmp_path), "--labels", "B:1", "-o", str(out)])
    assert result.exit_code == 2 and "neither a c2t run" in result.output


# ----------------------------------------------------------------------------------------------- perturbation
@pytest.fixture(scope="module")
def perturb_run(tmp_path_factory, vllm_llama):
    from c2t.instruct import build, toy_adata
    from c2t.train import train

    folder = tmp_path_factory.mktemp("perturb")
    build(toy_adata(), out=folder / "ds", top_k=8, tasks=[{"task": "perturbation", "perturbation_key": "target",
                                                           "match_key": "bio_rep"}])
    return train({"dataset": str(folder / "ds"), "base_model": str(vllm_llama), "output_dir": str(folder / "run"),
                  "method": "lora", "lora_r": 8, "max_steps": 4, "per_device_train_batch_size": 8,
                  "learning_rate": 3e-3, "eval_split": None, "max_length": 256, "format": "messages"})


def test_predict_perturbed_cells_scores_them_against_the_real_ones(perturb_run, tmp_path):
    from c2t.generate import predict_cells
    from c2t.instruct import score_generation, toy_adata
    from c2t.sentences import from_adata

    adata = toy_adata()
    cells = predict_cells(perturb_run, adata, sampling={"max_new_tokens": 12})
    perturbed = adata.obs["target"] != "non-targeting"
    assert cells.n_obs == int(perturbed.sum())
    assert set(cells.obs["perturbation"]) == set(adata.obs["target"][perturbed])
    truth = dict(zip(adata.obs_names, from_adata(adata, top_k=8, seed=0).texts(), strict=True))
    vocab = set(adata.var_names)
    for row in cells.obs.head(10).itertuples():
        assert adata.obs.loc[row.control_cell_id, "target"] == "non-targeting"
        assert adata.obs.loc[row.control_cell_id, "bio_rep"] == adata.obs.loc[row.cell_id, "bio_rep"]
        assert row.overlap == score_generation(row.c2t_text, truth[row.cell_id], vocabulary=vocab)["overlap"]
        assert row.control_overlap == score_generation(truth[row.control_cell_id], truth[row.cell_id],
                                                       vocabulary=vocab)["overlap"]
    summary = cells.uns["c2t_predict"]
    assert summary["mean_control_overlap"] == pytest.approx(cells.obs["control_overlap"].mean())
    data = tmp_path / "toy.h5ad"
    adata.write_h5ad(data)
    result = CliRunner().invoke(app, ["predict", "--model", str(perturb_run), str(data), "--task", "perturbation",
                                      "-o", str(tmp_path / "pred.h5ad")])
    assert result.exit_code == 0, result.output
    assert read_h5ad(tmp_path / "pred.h5ad").n_obs == cells.n_obs
    assert "(unchanged control:" in " ".join(result.output.split())


def test_predict_drug_response_uses_the_runs_task_settings(tmp_path_factory, vllm_llama):
    """A drug-response run: prompts name the drug from the run's settings; answers map onto sensitive/resistant
    (with the built-in synonyms); metrics are scikit-learn's over the response column."""
    from sklearn.metrics import accuracy_score

    from c2t.instruct import toy_adata
    from c2t.train import train

    folder = tmp_path_factory.mktemp("drug")
    from c2t.instruct import build

    build(toy_adata(), out=folder / "ds", top_k=8,
          tasks=[{"task": "drug_response", "response_key": "response", "drug_key": "treatment"}])
    run = train({"dataset": str(folder / "ds"), "base_model": str(vllm_llama), "output_dir": str(folder / "run"),
                 "method": "lora", "lora_r": 8, "max_steps": 4, "per_device_train_batch_size": 8,
                 "learning_rate": 3e-3, "eval_split": None, "max_length": 256, "format": "messages"})
    adata = toy_adata()
    report = predict(run, adata, task="drug_response")
    assert report["labels"] == ["sensitive", "resistant"] and report["label_key"] == "response"
    pred = adata.obs["c2t_drug_response"].astype(str)
    assert set(pred) <= {"sensitive", "resistant", "unknown"}
    assert report["accuracy"] == pytest.approx(accuracy_score(adata.obs["response"].astype(str), pred))
    assert match_labels(["Resistance.", "the cell is susceptible"], report["labels"],
                        synonyms={"sensitive": ["susceptible"], "resistant": ["resistance"]}) == ["resistant", "sensitive"]


def test_benchmark_scores_annotation_by_generation_like_predict(gen_run, pbmc3k, tmp_path):
    """``llm_generate`` in ``c2t bench``: the tuned run labels the test cells itself; its rows equal a direct
    predict() on the same split, next to an embedding method."""
    from sklearn.metrics import accuracy_score

    from c2t.eval import run_benchmark, split_random

    cells = pbmc3k[pbmc3k.obs["seurat_celltype"].notna().to_numpy()]
    cells = cells[np.random.default_rng(3).choice(cells.n_obs, 120, replace=False)].copy()
    cells.write_h5ad(tmp_path / "cells.h5ad")
    config = {"seeds": [0], "datasets": {"pbmc": {"path": str(tmp_path / "cells.h5ad"), "label_key": "seurat_celltype",
                                                  "split": "random", "test_size": 0.3}},
              "methods": {"pca": {"n_comps": 10}, "tuned": {"method": "llm_generate", "model": str(gen_run)}},
              "tasks": ["annotation", "clustering"], "heads": ["knn"]}
    rows = run_benchmark(config, tmp_path / "bench", report=False)
    tuned = rows[rows["method"] == "tuned"]
    assert set(tuned["status"]) == {"ok"} and set(tuned["head"]) == {"generation"}
    assert set(tuned["task"]) == {"annotation"}  # no embedding: no clustering rows
    _, test = split_random(cells.obs["seurat_celltype"].astype(str).to_numpy(), test_size=0.3, seed=0)
    direct = cells[test].copy()
    predict(gen_run, direct, key_added="p")
    value = tuned.loc[tuned["metric"] == "accuracy", "value"].item()
    assert value == pytest.approx(accuracy_score(direct.obs["seurat_celltype"].astype(str), direct.obs["p"].astype(str)))
    assert {"pca"} < set(rows["method"]) and (rows.loc[rows["method"] == "pca", "head"] == "knn").any()
