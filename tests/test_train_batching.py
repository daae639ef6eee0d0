"""Training at speed: padding-free batches (records end to end in one row, each attending only to itself),
batches filled to a token budget, and the precision / worker settings resolved per machine."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from c2t import C2TInputError  # noqa: E402
from c2t.train import TrainConfig, read_run, train  # noqa: E402
from c2t.train._batching import TokenBudgetBatchSampler  # noqa: E402


def _config(tmp_path, pbmc_dataset, base, **kw) -> TrainConfig:
    fields = {"dataset": str(pbmc_dataset), "base_model": str(base), "output_dir": str(tmp_path / "run"),
              "eval_split": None, "max_train_examples": 96, "max_steps": 8, "per_device_train_batch_size": 8,
              "learning_rate": 1e-2, "logging_steps": 1, "save_steps": 100, "max_length": 128, "lora_r": 8,
              "lora_dropout": 0.0, **kw}
    return TrainConfig.from_mapping(fields)


# ----------------------------------------------------------------------------------------------- padding-free
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_records_in_one_row_never_attend_to_each_other(tmp_path, pbmc_dataset, tiny_models, kind):
    """The trainer's padding-free batch (records end to end, as TRL's collator builds it) gives every record the
    logits it gets alone: nothing leaks across the record boundaries."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from c2t.train._data import open_dataset, shape_records
    from c2t.train._run import _build_model, _sft_trainer, resolve_runtime

    cfg = _config(tmp_path, pbmc_dataset, tiny_models[kind], padding_free=True, method="full")
    tok = AutoTokenizer.from_pretrained(tiny_models[kind])
    runtime = resolve_runtime(cfg, seq2seq=False)
    assert runtime.padding_free and runtime.attention == "c2t_varlen"
    records = shape_records(open_dataset(cfg)[0]["train"], cfg, seq2seq=False, limit=6)
    model, _ = _build_model(cfg, tok, [], seq2seq=False, runtime=runtime)
    trainer = _sft_trainer(cfg, model, tok, records, None, [], runtime=runtime)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one row, no padding
    bounds = batch["cu_seq_lens_q"].tolist()
    assert len(bounds) == 7
    alone = AutoModelForCausalLM.from_pretrained(tiny_models[kind], attn_implementation="eager").eval()
    model.eval()
    with torch.inference_mode():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        for start, stop in itertools.pairwise(bounds):
            own = alone(input_ids=batch["input_ids"][:, start:stop]).logits[0]
            torch.testing.assert_close(packed[start:stop], own, atol=1e-4, rtol=1e-4)
        # the same row read as one sequence (no boundaries) differs after the first record: the test can fail
        whole = alone(input_ids=batch["input_ids"][:, :bounds[2]]).logits[0]
        assert not torch.allclose(whole[bounds[1]:bounds[2]], packed[bounds[1]:bounds[2]], atol=1e-3)


def test_varlen_attention_finds_boundaries_from_positions(tiny_models):
    """Rows passed with restarting positions but without boundaries are split by the positions."""
    from transformers import AutoModelForCausalLM

    from c2t.train._varlen import register

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], attn_implementation=register()).eval()
    ids = torch.randint(5, 200, (1, 30))
    positions = torch.cat([torch.arange(12), torch.arange(18)])[None]
    with torch.inference_mode():
        packed = model(input_ids=ids, position_ids=positions).logits[0]
        first = model(input_ids=ids[:, :12]).logits[0]
        second = model(input_ids=ids[:, 12:]).logits[0]
        padded = model(input_ids=torch.cat([ids[:, 12:], ids[:, :12].new_zeros(1, 6) + 3], 1),
                       attention_mask=torch.cat([torch.ones(1, 18), torch.zeros(1, 6)], 1).long()).logits[0]
    torch.testing.assert_close(packed[:12], first, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[12:], second, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[:18], second, atol=1e-5, rtol=1e-5)  # padded batches: sdpa with the mask


def test_padding_free_run_with_a_token_budget(tmp_path, pbmc_dataset, tiny_models):
    from c2t.train._data import open_dataset

    seen = []

    from transformers import TrainerCallback

    class Batches(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
            seen.append(len(train_dataloader))

    cfg = _config(tmp_path, pbmc_dataset, tiny_models["llama"], padding_free=True, max_tokens_per_batch=400,
                  per_device_train_batch_size=64, max_steps=-1, num_train_epochs=2)
    run = train(cfg, callbacks=[Batches()])
    manifest = read_run(run)
    runtime = manifest["runtime"]
    assert runtime["padding_free"] and runtime["attention"] == "c2t_varlen" and runtime["weights"] == "float32"
    assert not runtime["bf16"] and runtime["workers"] == 0  # the CPU
    lengths = manifest["lengths"]["train"]
    n_records = min(96, open_dataset(cfg)[0]["train"].num_rows)
    # about (records x mean tokens) / budget batches an epoch, never fewer
    assert seen[0] >= n_records * lengths["mean_record_tokens"] / 400
    assert manifest["training"]["global_step"] == 2 * seen[0]
    losses = [float(r.split(",")[2]) for r in (run / "loss.csv").read_text().splitlines()[1:] if r.split(",")[2]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_token_budget_sampler():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, 500)
    for padded in (True, False):
        sampler = TokenBudgetBatchSampler(lengths, max_tokens=256, max_records=32, padded=padded, seed=3)
        epochs = []
        for epoch in range(3):
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler)
            assert sorted(i for b in batches for i in b) == list(range(500))  # every record once
            for b in batches:
                cost = len(b) * lengths[b].max() if padded else lengths[b].sum()
                assert cost <= 256 and len(b) <= 32
            epochs.append(batches)
        assert epochs[0] != epochs[1]  # a new order each epoch
        sampler.set_epoch(1)
        assert list(sampler) == epochs[1]  # the same epoch again: the same batches (resume)
    # records of similar length share a batch: little padding
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=1024, padded=True, seed=0)
    padding = sum(len(b) * lengths[b].max() - lengths[b].sum() for b in sampler)
    assert padding < 0.1 * lengths.sum()  # random batches of 20 would pad ~45%
    assert [len(b) for b in TokenBudgetBatchSampler([300, 10], max_tokens=100, seed=0)] in ([1, 1],)
    with pytest.raises(C2TInputError, match="max_tokens_per_batch must be a positive integer"):
        TokenBudgetBatchSampler([1, 2], max_tokens=0)


# ----------------------------------------------------------------------------------------------- settings
def test_auto_settings_and_bad_values(tmp_path, pbmc_dataset, tiny_models, monkeypatch):
    from c2t.train._run import resolve_runtime

    cfg = _config(tmp_path, pbmc_dataset, tiny_models["llama"])
    assert cfg.dtype == "auto" and cfg.padding_free is None and cfg.dataloader_num_workers is None
    cpu = resolve_runtime(cfg, seq2seq=False)
    assert (cpu.weights, cpu.bf16, cpu.padding_free, cpu.attention, cpu.workers) == ("float32", False, False, None, 0)
    from c2t.train import _varlen

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(_varlen, "cuda_varlen_available", lambda: True)
    gpu = resolve_runtime(cfg, seq2seq=False)
    assert (gpu.weights, gpu.bf16, gpu.workers) == ("bfloat16", True, 2)  # a frozen base in bfloat16
    assert gpu.padding_free and gpu.attention == "c2t_varlen"  # where the kernel runs
    monkeypatch.setattr(_varlen, "cuda_varlen_available", lambda: False)
    assert not resolve_runtime(cfg, seq2seq=False).padding_free  # a kernel that fails its check: padded batches
    full = resolve_runtime(_config(tmp_path, pbmc_dataset, tiny_models["llama"], method="full"), seq2seq=False)
    assert (full.weights, full.bf16) == ("float32", True)  # trained weights stay float32, compute in bfloat16
    with pytest.raises(C2TInputError, match="padding_free is for decoder models"):
        resolve_runtime(_config(tmp_path, pbmc_dataset, tiny_models["t5"], padding_free=True), seq2seq=True)
    for field, value, match in (("learning_rate", -1e-4, "learning_rate must be >= 0"),
                                ("max_tokens_per_batch", 0, "max_tokens_per_batch must be positive"),
                                ("dtype", "float8", "dtype must be one of"),
                                ("dataloader_num_workers", -1, "dataloader_num_workers must be >= 0")):
        with pytest.raises(C2TInputError, match=match):
            _config(tmp_path, pbmc_dataset, tiny_models["llama"], **{field: value})


def test_a_run_saved_with_float32_resumes_under_auto(tmp_path, pbmc_dataset, tiny_models):
    """Runs written before ``dtype: auto`` became the default saved ``float32``: on the CPU that is what auto means,
    so rerunning the same command finds the same run (here: finished, nothing to do)."""
    import yaml

    cfg = _config(tmp_path, pbmc_dataset, tiny_models["gpt2"], max_steps=2)
    run = train(cfg)
    saved = yaml.safe_load((run / "train_config.yaml").read_text())
    saved["dtype"] = "float32"
    (run / "train_config.yaml").write_text(yaml.safe_dump(saved))
    before = json.loads((run / "manifest.json").read_text())
    assert train(cfg) == run and json.loads((run / "manifest.json").read_text()) == before
    with pytest.raises(C2TInputError, match="dtype: 'float32' there, 'bfloat16' here"):
        train(_config(tmp_path, pbmc_dataset, tiny_models["gpt2"], max_steps=2, dtype="bfloat16"))


@pytest.mark.parametrize(("signature", "precision"), [("2.11", "bfloat16"), ("2.10", "bfloat16"), ("2.11", "autocast"),
                                                      ("2.11", "float32")])
def test_varlen_kernel_call(tiny_models, monkeypatch, signature, precision):
    """The CUDA kernel's call, checked on the CPU with a stand-in of PyTorch's varlen_attn of that release
    (torch 2.10: is_causal; 2.11+: window_size, scale, enable_gqa): boundaries, causality, scale, GQA heads and
    half precision under autocast reach it as it expects, and the packed row equals each record alone."""
    from transformers import AutoModelForCausalLM

    from c2t.train import _varlen

    calls = []

    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, **kw):
        calls.append({"dtype": q.dtype, "heads": (q.shape[1], k.shape[1]), **kw})
        assert cu_q.dtype == torch.int32 and max_q == int(cu_q.diff().max()) and torch.equal(cu_q, cu_k)
        if signature == "2.10":
            assert kw == {"is_causal": True} and k.shape[1] == q.shape[1]  # no enable_gqa: heads repeated
        else:
            assert kw.pop("window_size") == (-1, 0) and "scale" in kw
        if kw.get("enable_gqa"):
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        out = torch.empty_like(q)
        for a, b in itertools.pairwise(cu_q.tolist()):
            out[a:b] = torch.nn.functional.scaled_dot_product_attention(
                q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True,
                scale=kw.get("scale")).transpose(0, 1)
        return out

    if signature == "2.10":
        def fake(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False):
            return kernel(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=is_causal)
        found = (fake, {"is_causal": True}, False, False)
    else:
        def fake(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), scale=None, enable_gqa=False):
            return kernel(q, k, v, cu_q, cu_k, max_q, max_k, window_size=window_size, scale=scale,
                          **({"enable_gqa": True} if enable_gqa else {}))
        found = (fake, {"window_size": (-1, 0)}, True, True)
    monkeypatch.setattr(_varlen, "_kernel", lambda: found)
    monkeypatch.setattr(_varlen, "_kernel_device", lambda t: True)
    weights = torch.bfloat16 if precision == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], attn_implementation=_varlen.register(),
                                                 dtype=weights).eval()
    ids = torch.randint(5, 200, (1, 30))
    bounds = torch.tensor([0, 12, 30], dtype=torch.int32)
    positions = torch.cat([torch.arange(12), torch.arange(18)])[None]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast"):
        packed = model(input_ids=ids, position_ids=positions, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds,
                       max_length_q=18, max_length_k=18).logits[0].float()
        packed_calls = list(calls)
        first = model(input_ids=ids[:, :12]).logits[0].float()
        second = model(input_ids=ids[:, 12:]).logits[0].float()
    if precision == "float32":  # flash kernels take half precision: plain float32 runs sdpa per record
        assert not calls
    else:
        assert len(packed_calls) == 2 and all(c["dtype"] == torch.bfloat16 for c in calls)  # one call per layer
        assert all(c["heads"] == ((2, 1) if signature != "2.10" else (2, 2)) for c in calls)  # GQA 2:1
    tol = 1e-5 if precision == "float32" else 5e-2
    torch.testing.assert_close(packed[:12], first, atol=tol, rtol=tol)
    torch.testing.assert_close(packed[12:], second, atol=tol, rtol=tol)
