"""Annotation by likelihood: every label the run knows is scored as the completion of the cell's prompt.

The batched scorer (prompt read once, its key/value cache repeated per label) must give the log-probabilities of
an independent, one-pair-at-a-time forward pass, for chat and raw-prompt decoders and for T5.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from c2t._errors import C2TInputError  # noqa: E402
from c2t.generate import TransformersBackend, model_spec, predict  # noqa: E402
from c2t.generate._candidates import check_candidates, layout_candidates  # noqa: E402
from c2t.generate._scoring import score_layout, softmax_scores  # noqa: E402
from c2t.instruct import load  # noqa: E402


def _independent_logprobs(model, tokenizer, prompt_text: str, candidate: str, *, chat: bool) -> float:
    """log p(candidate + end of answer | prompt), from the whole record's tokens, written without c2t's layout."""
    if chat:
        user = [{"role": "user", "content": prompt_text}]
        prefix = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        whole = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": candidate}], tokenize=False)
        p_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        ids = tokenizer(whole, add_special_tokens=False)["input_ids"]
    else:
        p_ids = tokenizer(prompt_text)["input_ids"]
        ids = tokenizer(prompt_text + candidate)["input_ids"] + [tokenizer.eos_token_id]
    start = 0
    while start < len(p_ids) and p_ids[start] == ids[start]:
        start += 1
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[t - 1, ids[t]] for t in range(start, len(ids))))


@pytest.fixture(scope="module")
def chat_backend(gen_run):
    with TransformersBackend(gen_run) as engine:
        yield engine


@pytest.fixture(scope="module")
def test_prompts(gen_dataset):
    test = load(gen_dataset)["test"].filter(lambda r: r["task"] == "cell_type")
    return list(test["prompt"][:12]), list(test["label"][:12])


def test_batched_scores_equal_one_pair_at_a_time(chat_backend, test_prompts):
    prompts, _ = test_prompts
    labels = ["B", "CD14+ Mono", "NK", "Naive CD4 T", "CD8 T"]
    sums, counts = chat_backend.score_completions(prompts, labels)
    assert sums.shape == counts.shape == (len(prompts), len(labels))
    ref = np.array([[_independent_logprobs(chat_backend.model, chat_backend.tokenizer, p, lab, chat=True)
                     for lab in labels] for p in prompts])
    np.testing.assert_allclose(sums, ref, atol=2e-4)
    assert (counts >= 2).all()  # the label's tokens and the end of the turn


@pytest.mark.parametrize("budget", [1, 300, 1 << 16])
def test_scores_do_not_depend_on_the_batching(gen_run, test_prompts, budget, chat_backend):
    prompts, _ = test_prompts
    labels = ["B", "NK", "CD8 T"]
    ref, _ = chat_backend.score_completions(prompts, labels)
    with TransformersBackend(gen_run, batch_tokens=budget) as engine:
        sums, _ = engine.score_completions(prompts, labels)
    np.testing.assert_allclose(sums, ref, atol=2e-4)


def test_labels_sharing_a_prefix_are_told_apart(chat_backend, test_prompts):
    """"NK" is a prefix of "NK cell": each is scored with its own end-of-answer token, so their probabilities
    differ and neither is the other's prefix score."""
    prompts, _ = test_prompts
    sums, counts = chat_backend.score_completions(prompts[:4], ["NK", "NK cell", "NK cells"])
    assert (counts[:, 1] > counts[:, 0]).all()
    assert not np.allclose(sums[:, 0], sums[:, 1])
    ref = [[_independent_logprobs(chat_backend.model, chat_backend.tokenizer, p, c, chat=True)
            for c in ("NK", "NK cell", "NK cells")] for p in prompts[:4]]
    np.testing.assert_allclose(sums, ref, atol=2e-4)


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_raw_prompt_decoder_and_t5_scores(kind, tiny_models, pbmc_dataset):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    folder = tiny_models[kind]
    tok = AutoTokenizer.from_pretrained(folder)
    model = (AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForCausalLM).from_pretrained(folder).eval()
    records = load(pbmc_dataset)["test"]
    prompts = list(records["prompt"][:6])
    labels = ["B", "B cell", "CD14+ Mono", "NK"]
    layout = layout_candidates(tok, prompts, labels, chat=False, seq2seq=kind == "t5")
    sums, _ = score_layout(model, layout, device="cpu", pad_id=tok.pad_token_id, seq2seq=kind == "t5",
                           batch_tokens=200)
    if kind == "t5":
        ref = []
        for p in prompts:
            row = []
            for lab in labels:
                target = tok(lab)["input_ids"] + [tok.eos_token_id]  # as training appends it
                with torch.inference_mode():
                    logits = model(input_ids=torch.tensor([tok(p)["input_ids"]]),
                                   labels=torch.tensor([target])).logits[0].double()
                row.append(float(torch.log_softmax(logits, -1)[torch.arange(len(target)), torch.tensor(target)].sum()))
            ref.append(row)
    else:
        ref = [[_independent_logprobs(model, tok, p, lab, chat=False) for lab in labels] for p in prompts]
    np.testing.assert_allclose(sums, ref, atol=2e-4)


def test_softmax_by_sum_or_mean():
    sums = np.array([[-1.0, -4.0], [-2.0, -2.0]])
    counts = np.array([[1, 4], [1, 2]])
    by_sum = softmax_scores(sums, counts, by="sum")
    by_mean = softmax_scores(sums, counts, by="mean")
    np.testing.assert_allclose(by_sum.sum(1), 1.0)
    assert by_sum[0, 0] > 0.9 and by_mean[0, 0] == pytest.approx(0.5)  # -1/1 == -4/4
    assert by_mean[1, 1] > by_mean[1, 0]
    with pytest.raises(C2TInputError, match="score_by"):
        softmax_scores(sums, counts, by="max")


def test_bad_candidate_sets():
    with pytest.raises(C2TInputError, match="at least two"):
        check_candidates(["B"])
    with pytest.raises(C2TInputError, match="listed twice"):
        check_candidates(["B", "NK", "B"])
    with pytest.raises(C2TInputError, match="non-empty"):
        check_candidates(["B", " "])


def test_merged_adapter_answers_like_the_adapter(gen_run, test_prompts):
    """Merging the LoRA adapter in memory (the default) changes nothing but rounding."""
    from c2t.generate import Sampling

    prompts, _ = test_prompts
    greedy = Sampling(temperature=0, max_new_tokens=12)
    with TransformersBackend(gen_run, merge_adapter=False) as plain, TransformersBackend(gen_run) as merged:
        assert not hasattr(merged.model, "peft_config") and hasattr(plain.model, "peft_config")
        assert merged.complete(prompts, sampling=greedy) == plain.complete(prompts, sampling=greedy)
        a, _ = plain.score_completions(prompts, ["B", "NK"])
        b, _ = merged.score_completions(prompts, ["B", "NK"])
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert model_spec(gen_run).is_adapter


# ----------------------------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def cells_in(pbmc3k):
    rows = np.random.default_rng(7).choice(pbmc3k.n_obs, 30, replace=False)
    return pbmc3k[np.sort(rows)].copy()


def test_predict_by_likelihood_writes_probabilities(chat_backend, gen_run, cells_in, tmp_path):
    from sklearn.metrics import accuracy_score

    from c2t.generate._run import read_run_info
    from c2t.io import read_h5ad, write_h5ad

    adata = cells_in.copy()
    report = predict(gen_run, adata, backend=chat_backend, scoring="likelihood")
    labels = read_run_info(gen_run).labels("cell_type")
    proba = adata.obsm["c2t_cell_type_proba"]
    assert proba.shape == (adata.n_obs, len(labels)) and adata.uns["c2t_cell_type"]["labels"] == labels
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    best = np.asarray(labels, dtype=object)[proba.argmax(1)]
    assert list(adata.obs["c2t_cell_type"].astype(str)) == list(best)  # no threshold: never unknown
    np.testing.assert_allclose(adata.obs["c2t_cell_type_confidence"], proba.max(1), rtol=1e-6)
    assert adata.obs["c2t_cell_type_top"].iloc[0].startswith(f"{best[0]} (")
    keep = adata.obs["seurat_celltype"].notna().to_numpy()
    truth = adata.obs["seurat_celltype"].astype(str).to_numpy()[keep]
    assert report["accuracy"] == pytest.approx(accuracy_score(truth, best[keep]))
    assert report["scoring"] == "likelihood" and report["accuracy"] <= report["top3_accuracy"] <= 1
    # the probabilities are the softmax of the backend's label log-probabilities for the cells' prompts
    threshold = float(np.quantile(proba.max(1), 0.5))
    again = cells_in.copy()
    report = predict(gen_run, again, backend=chat_backend, scoring="likelihood", unknown_threshold=threshold,
                     key_added="lik")
    unknown = again.obs["lik"].astype(str).to_numpy() == "unknown"
    assert report["n_unknown"] == unknown.sum() and (unknown == (proba.max(1) < threshold)).all()
    write_h5ad(again, tmp_path / "lik.h5ad")
    back = read_h5ad(tmp_path / "lik.h5ad")
    np.testing.assert_allclose(back.obsm["lik_proba"], proba, rtol=1e-6)


def test_likelihood_of_an_empty_cell_and_without_truth(chat_backend, gen_run, cells_in):
    adata = cells_in.copy()
    del adata.obs["seurat_celltype"]
    X = adata.X.toarray()
    X[0] = 0
    adata.X = X
    report = predict(gen_run, adata, backend=chat_backend, scoring="likelihood", key_added="p")
    assert "accuracy" not in report and report["n_prompted"] == adata.n_obs - 1
    assert adata.obs["p"].iloc[0] == "unknown" and np.isnan(adata.obsm["p_proba"][0]).all()
    assert np.isnan(adata.obs["p_confidence"].iloc[0]) and adata.obs["p_top"].iloc[0] == ""


def _run_with_labels(gen_run, tmp_path, labels: dict):
    """A copy of the run whose dataset manifest lists ``labels`` (label -> count) for cell_type."""
    import json
    import shutil

    from c2t.generate._run import read_run_info

    info = read_run_info(gen_run)
    data = tmp_path / "ds"
    shutil.copytree(info.dataset_folder(), data)
    manifest = json.loads((data / "manifest.json").read_text())
    for task in manifest["tasks"]:
        if task["task"] == "cell_type":
            task["label_counts"] = {"train": labels}
    (data / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "run"
    shutil.copytree(gen_run, run)
    run_manifest = json.loads((run / "manifest.json").read_text())
    run_manifest["dataset"]["path"] = str(data)
    (run / "manifest.json").write_text(json.dumps(run_manifest))
    return run


def test_bad_likelihood_inputs(chat_backend, gen_run, cells_in, tmp_path):
    one = _run_with_labels(gen_run, tmp_path / "one", {"B": 10})
    with pytest.raises(C2TInputError, match="at least two candidate labels"):
        predict(one, cells_in.copy(), scoring="likelihood")
    none = _run_with_labels(gen_run, tmp_path / "none", {})
    with pytest.raises(C2TInputError, match="lists no labels"):
        predict(none, cells_in.copy(), scoring="likelihood")
    for kwargs, match in (({"scoring": "vote"}, "scoring must be"), ({"score_by": "max"}, "score_by"),
                          ({"unknown_threshold": 1.5}, "between 0 and 1"), ({"n_top": 0}, "n_top")):
        with pytest.raises(C2TInputError, match=match):
            predict(gen_run, cells_in.copy(), backend=chat_backend, **{"scoring": "likelihood", **kwargs})
    long_prompt = " ".join(["RPL13 B2M TMSB4X"] * 400)
    with pytest.raises(C2TInputError, match="longer than the model's 512 positions"):
        chat_backend.score_completions([long_prompt], ["B", "NK"])
    from c2t.generate import Sampling

    with pytest.raises(C2TInputError, match="prompt 0: prompt \\+ max_new_tokens of"):
        chat_backend.complete([long_prompt], sampling=Sampling(max_new_tokens=4))


def test_cli_predict_by_likelihood(gen_run, cells_in, tmp_path):
    import json

    from typer.testing import CliRunner

    from c2t.cli import app
    from c2t.io import read_h5ad

    data = tmp_path / "in.h5ad"
    cells_in.write_h5ad(data)
    out, report = tmp_path / "pred.h5ad", tmp_path / "pred.json"
    result = CliRunner().invoke(app, ["predict", "--model", str(gen_run), str(data), "-o", str(out), "--scoring",
                                      "likelihood", "--unknown-threshold", "0.99", "--report", str(report)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(report.read_text())
    assert metrics["scoring"] == "likelihood" and "(likelihood)" in result.output
    written = read_h5ad(out)
    assert "c2t_cell_type_proba" in written.obsm
    assert metrics["n_unknown"] == int((written.obs["c2t_cell_type"] == "unknown").sum())
    result = CliRunner().invoke(app, ["predict", "--model", str(gen_run), str(data), "-o", str(tmp_path / "x.h5ad"),
                                      "--scoring", "likelihood", "--score-by", "median"])
    assert result.exit_code == 2 and "score_by" in result.output and not (tmp_path / "x.h5ad").exists()


def test_benchmark_scores_annotation_by_likelihood_like_predict(gen_run, pbmc3k, tmp_path):
    """``llm_likelihood`` in ``c2t bench``: rows with head "likelihood", equal to a direct predict() by likelihood on
    the same test cells, beside ``llm_generate``."""
    from sklearn.metrics import accuracy_score

    from c2t.eval import run_benchmark, split_random

    cells = pbmc3k[pbmc3k.obs["seurat_celltype"].notna().to_numpy()]
    cells = cells[np.random.default_rng(4).choice(cells.n_obs, 80, replace=False)].copy()
    cells.write_h5ad(tmp_path / "cells.h5ad")
    config = {"seeds": [0], "datasets": {"pbmc": {"path": str(tmp_path / "cells.h5ad"), "label_key": "seurat_celltype",
                                                  "split": "random", "test_size": 0.3}},
              "methods": {"lik": {"method": "llm_likelihood", "model": str(gen_run)},
                          "gen": {"method": "llm_generate", "model": str(gen_run)}},
              "tasks": ["annotation"], "heads": ["knn"]}
    rows = run_benchmark(config, tmp_path / "bench", report=False)
    lik = rows[rows["method"] == "lik"]
    assert set(lik["status"]) == {"ok"} and set(lik["head"]) == {"likelihood"}
    assert set(rows.loc[rows["method"] == "gen", "head"]) == {"generation"}
    _, test = split_random(cells.obs["seurat_celltype"].astype(str).to_numpy(), test_size=0.3, seed=0)
    direct = cells[test].copy()
    predict(gen_run, direct, key_added="p", scoring="likelihood")
    value = lik.loc[lik["metric"] == "accuracy", "value"].item()
    assert value == pytest.approx(accuracy_score(direct.obs["seurat_celltype"].astype(str), direct.obs["p"].astype(str)))
