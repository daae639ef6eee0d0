"""c2t.train on tiny random-initialised GPT-2, LLaMA and T5 models and a few hundred real pbmc3k records.

The fixtures (``pbmc_dataset``, ``tokenizer_dir``, ``tiny_models``) are in conftest.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

from c2t import C2TInputError  # noqa: E402
from c2t.train import TrainConfig, load_model, merge, read_run, train  # noqa: E402


def _config(tmp_path, pbmc_dataset, base, **kw) -> TrainConfig:
    fields = {"dataset": str(pbmc_dataset), "base_model": str(base), "output_dir": str(tmp_path / "run"),
              "eval_split": None, "max_train_examples": 128, "max_steps": 16, "per_device_train_batch_size": 8,
              "learning_rate": 1e-2, "logging_steps": 1, "save_steps": 8, "max_length": 128, "lora_r": 8,
              "lora_dropout": 0.0, "warmup_steps": 0, **kw}
    return TrainConfig.from_mapping(fields)


def _state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class _Snapshot:
    """Trainer callback: parameters (and which train) at the start, and the trainer's collator output."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kw):
                outer.before = _state(model)
                outer.trainable = {n for n, p in model.named_parameters() if p.requires_grad}

            def on_train_end(self, args, state, control, model=None, **kw):
                outer.after = _state(model)

        self.callback = CB()


def _losses(run: Path) -> list[float]:
    with open(run / "loss.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]]


@pytest.mark.parametrize("kind", ["gpt2", "llama", "t5"])
def test_lora_trains_only_the_adapter_and_the_loss_falls(tmp_path, pbmc_dataset, tiny_models, kind):
    snap = _Snapshot()
    run = train(_config(tmp_path, pbmc_dataset, tiny_models[kind]), callbacks=[snap.callback])
    losses = _losses(run)
    assert len(losses) == 16 and np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.5, losses
    assert snap.trainable and all("lora_" in n for n in snap.trainable)
    for name, before in snap.before.items():
        changed = not torch.equal(before, snap.after[name])
        assert changed == (name in snap.trainable), name
    manifest = read_run(run)
    ds_manifest = json.loads((pbmc_dataset / "manifest.json").read_text())
    assert manifest["dataset"]["vocabulary_hash"] == ds_manifest["vocabulary_hash"]
    assert manifest["dataset"]["template_ids"][0] == "cell_type.01"
    assert manifest["architecture"] == ("seq2seq" if kind == "t5" else "decoder")
    assert manifest["training"]["global_step"] == 16
    inverse = manifest["inverse_model"]  # generation decodes its sentences with the data's rank -> expression fit
    assert inverse == ds_manifest["sentences"]["inverse_model"] and inverse["knot_values"]
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "train_config.yaml", "loss.png"):
        assert (run / name).is_file(), name


def _label_batch(trainer):
    collator = trainer.data_collator
    return collator([trainer.train_dataset[i] for i in range(4)])


def test_only_completion_tokens_carry_loss(tmp_path, pbmc_dataset, tiny_models):
    from transformers import AutoTokenizer

    from c2t.train._data import open_dataset, shape_records
    from c2t.train._run import _build_model, _seq2seq_trainer, _sft_trainer

    tok = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    for kind, make in (("gpt2", _sft_trainer), ("t5", _seq2seq_trainer)):
        cfg = _config(tmp_path, pbmc_dataset, tiny_models[kind], output_dir=str(tmp_path / kind))
        dsd, _ = open_dataset(cfg)
        records = shape_records(dsd["train"], cfg, seq2seq=kind == "t5", limit=4)
        model, _ = _build_model(cfg, tok, [], seq2seq=kind == "t5")
        batch = _label_batch(make(cfg, model, tok, records, None, []))
        for i, r in enumerate(records):
            target = tok(r["completion"])["input_ids"] + [tok.eos_token_id]
            labels = batch["labels"][i]
            kept = labels[labels != -100].tolist()
            assert kept == target, (kind, r["completion"])
            if kind == "gpt2":
                n_prompt = len(tok(r["prompt"])["input_ids"])
                assert (labels[:n_prompt] == -100).all() and batch["input_ids"][i, n_prompt:n_prompt + len(target)].tolist() == target


def test_messages_format_masks_the_user_turn(tmp_path, pbmc_dataset, tiny_models):
    from transformers import AutoTokenizer

    from c2t.train._data import check_lengths, open_dataset, shape_records
    from c2t.train._run import _build_model, _sft_trainer

    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    cfg = _config(tmp_path, pbmc_dataset, tiny_models["llama"], format="messages", max_length=256)
    dsd, _ = open_dataset(cfg)
    records = shape_records(dsd["train"], cfg, seq2seq=False, limit=4)
    stats = check_lengths(tok, records, cfg, seq2seq=False, split="train")  # through the chat template
    model, _ = _build_model(cfg, tok, [], seq2seq=False)
    trainer = _sft_trainer(cfg, model, tok, records, None, [])
    assert stats["max_record_tokens"] == max(len(r["input_ids"]) for r in trainer.train_dataset)
    batch = _label_batch(trainer)
    for i, r in enumerate(records):
        kept = tok.decode(batch["labels"][i][batch["labels"][i] != -100])
        assert kept.startswith(r["completion"][0]["content"]) and "cell" not in kept


def test_resume_continues_the_same_run(tmp_path, pbmc_dataset, tiny_models):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 10:
                raise KeyboardInterrupt

    cfg = _config(tmp_path, pbmc_dataset, tiny_models["gpt2"])
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[Crash()])
    run = Path(cfg.output_dir)
    assert (run / "checkpoint-8").is_dir() and not (run / "manifest.json").exists()
    train(cfg)
    manifest = read_run(run)
    assert manifest["training"]["global_step"] == 16
    state = json.loads((run / "checkpoint-16" / "trainer_state.json").read_text())
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == list(range(1, 17))  # steps 1-8 from the first process, 9-16 after resuming from checkpoint-8
    assert train(cfg) == run  # finished: a rerun does nothing
    other = _config(tmp_path, pbmc_dataset, tiny_models["gpt2"], lora_r=4)
    with pytest.raises(C2TInputError, match=r"output_dir holds another run .*lora_r: 8 there, 4 here"):
        train(other)


def test_saved_adapter_reloads_merges_and_generates(tmp_path, pbmc_dataset, tiny_models):
    cfg = _config(tmp_path, pbmc_dataset, tiny_models["llama"], max_steps=4, gene_tokens=True, label_tokens=True)
    run = train(cfg)
    manifest = read_run(run)
    report = manifest["gene_tokens"]
    assert report["added"] > 50 and report["tokens_per_sentence"]["with"] < report["tokens_per_sentence"]["without"]
    model, tok = load_model(run)
    assert len(tok) > 1024 and model.get_input_embeddings().weight.shape[0] == len(tok)
    prompt = "Below are genes: CD3D MALAT1\nWhat type of cell is this?\n"
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
        generated = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert generated.shape[1] > enc["input_ids"].shape[1]
    torch.manual_seed(123)  # the resized rows start random: the adapter's token values must replace them
    again, _ = load_model(run)
    with torch.no_grad():
        torch.testing.assert_close(again(**enc).logits, logits)
    merged = merge(run, tmp_path / "merged")
    model2, _ = load_model(merged)
    with torch.no_grad():
        torch.testing.assert_close(model2(**enc).logits, logits, atol=1e-4, rtol=1e-4)
    assert read_run(merged)["kind"] == "merged_model"


def test_full_fine_tuning_trains_every_weight(tmp_path, pbmc_dataset, tiny_models):
    snap = _Snapshot()
    run = train(_config(tmp_path, pbmc_dataset, tiny_models["t5"], method="full", max_steps=3, learning_rate=1e-3),
                callbacks=[snap.callback])
    assert snap.trainable == set(snap.before)
    changed = {n for n in snap.before if not torch.equal(snap.before[n], snap.after[n])}
    assert changed == snap.trainable
    model, tok = load_model(run)
    enc = tok("Below are genes: CD3D", return_tensors="pt")
    assert model.generate(**enc, max_new_tokens=3).shape[0] == 1


def test_packing_keeps_completion_only_labels(tmp_path, pbmc_dataset, tiny_models):
    snap = _Snapshot()
    run = train(_config(tmp_path, pbmc_dataset, tiny_models["gpt2"], packing=True, max_length=256, max_steps=3,
                        per_device_train_batch_size=2), callbacks=[snap.callback])
    assert read_run(run)["training"]["global_step"] == 3
    from transformers import AutoTokenizer

    from c2t.train._data import open_dataset, shape_records
    from c2t.train._run import _build_model, _sft_trainer

    cfg = _config(tmp_path, pbmc_dataset, tiny_models["gpt2"], packing=True, max_length=256, output_dir=str(tmp_path / "p"))
    tok = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    records = shape_records(open_dataset(cfg)[0]["train"], cfg, seq2seq=False, limit=16)
    model, _ = _build_model(cfg, tok, [], seq2seq=False)
    trainer = _sft_trainer(cfg, model, tok, records, None, [])
    batch = trainer.data_collator([trainer.train_dataset[0]])
    kept = tok.decode(batch["labels"][batch["labels"] != -100])
    assert batch["input_ids"].shape[1] > 100  # several records in one row
    assert "genes" not in kept and set(records["completion"][:1]) <= {c for c in records["completion"] if c in kept}


def test_t5_with_gene_tokens_chatcell_recipe(tmp_path, pbmc_dataset, tiny_models):
    snap = _Snapshot()
    run = train(_config(tmp_path, pbmc_dataset, tiny_models["t5"], max_steps=3, gene_tokens=True), callbacks=[snap.callback])
    assert any("trainable_tokens" in n for n in snap.trainable)
    assert all(not torch.equal(snap.before[n], snap.after[n]) for n in snap.trainable)
    model, tok = load_model(run)
    genes = (run / "gene_tokens.txt").read_text().split()
    enc = tok(f"Below are genes: {genes[0]} {genes[1]}", return_tensors="pt")
    assert tok.convert_ids_to_tokens(enc["input_ids"][0].tolist()).count(genes[0]) == 1
    assert model.generate(**enc, max_new_tokens=3).shape[0] == 1


def test_new_gene_tokens_start_at_the_mean_of_their_pieces(tmp_path, pbmc_dataset, tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from c2t.train._data import add_gene_tokens, word_pieces
    from c2t.train._run import _build_model

    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).get_input_embeddings().weight.detach()
    for init in ("mean", "random"):
        cfg = _config(tmp_path, pbmc_dataset, tiny_models["llama"], gene_tokens=True, method="full", new_token_init=init)
        tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
        pieces = word_pieces(tok, ["ZNF521", "TMEM176B", "Naive CD4 T"])
        added = add_gene_tokens(tok, ["ZNF521", "TMEM176B"], ["Naive CD4 T"])
        ids = tok.convert_tokens_to_ids(added)
        assert len(added) == 3 and all(len(pieces[t]) > 1 for t in added)
        new = {i: pieces[t] for i, t in zip(ids, added, strict=True)} if init == "mean" else None
        model, _ = _build_model(cfg, tok, ids, seq2seq=False, new_pieces=new)
        rows = model.get_input_embeddings().weight.detach()
        for i, t in zip(ids, added, strict=True):
            assert torch.allclose(rows[i], base[pieces[t]].mean(0), atol=1e-6) == (init == "mean"), (init, t)
        torch.testing.assert_close(rows[:base.shape[0]], base)  # the old rows are untouched
