"""The dataset side of a run: open and check an instruction dataset, shape its records, measure their lengths,
find its gene names (for gene tokens). Shared by the decoder and the seq2seq path."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from c2t._errors import C2TInputError
from c2t.train._config import TrainConfig

_WORD = re.compile(r"[\s,;]+")


def template_ids(manifest: dict[str, Any]) -> list[str]:
    """Every template id of an instruction dataset, from its manifest (sorted)."""
    return sorted({tid for entry in (manifest.get("templates") or {}).values() for tid in entry.get("template_ids", [])})


def open_dataset(cfg: TrainConfig):
    """Load ``cfg.dataset`` and check it against what the config expects; return ``(DatasetDict, manifest)``."""
    from c2t.instruct import load, read_info

    manifest = read_info(cfg.dataset)
    problems = []
    if cfg.expect_vocabulary_hash is not None and manifest.get("vocabulary_hash") != cfg.expect_vocabulary_hash:
        problems.append(f"gene vocabulary hash: expected {cfg.expect_vocabulary_hash}, found "
                        f"{manifest.get('vocabulary_hash')} ({manifest.get('n_genes')} genes)")
    if cfg.expect_template_ids is not None:
        found = template_ids(manifest)
        missing = sorted(set(cfg.expect_template_ids) - set(found))
        extra = sorted(set(found) - set(cfg.expect_template_ids))
        if missing or extra:
            problems.append("template ids: " + "; ".join(
                part for part in (f"missing {', '.join(missing)}" if missing else "",
                                  f"not expected {', '.join(extra)}" if extra else "") if part))
    if problems:
        msg = f"{cfg.dataset}: built with another vocabulary/template set than the config expects: " + "; ".join(problems)
        raise C2TInputError(msg)
    if cfg.format not in manifest.get("formats", []):
        msg = f"{cfg.dataset}: has no {cfg.format!r} records (formats: {', '.join(manifest.get('formats', []))})"
        raise C2TInputError(msg)
    dsd = load(cfg.dataset)
    for split in (cfg.train_split, cfg.eval_split):
        if split is not None and split not in dsd:
            msg = f"{cfg.dataset}: no split {split!r}; splits are: {', '.join(dsd)}"
            raise C2TInputError(msg)
    if dsd[cfg.train_split].num_rows == 0:
        msg = f"{cfg.dataset}: split {cfg.train_split!r} is empty"
        raise C2TInputError(msg)
    return dsd, manifest


def shape_records(ds, cfg: TrainConfig, *, seq2seq: bool, limit: int | None):
    """Keep the columns a trainer reads: ``prompt``/``completion`` strings, or (decoder, messages format) the
    conversational prompt/completion TRL applies the chat template to (loss on the assistant turn)."""
    if limit is not None:
        ds = ds.select(range(min(limit, ds.num_rows)))
    if cfg.format == "prompt_completion" or seq2seq:
        if "prompt" in ds.column_names:
            return ds.select_columns(["prompt", "completion"])

        def contents(example):  # seq2seq on a messages-only dataset: the turns' text
            turns = example["messages"]
            return {"prompt": "\n".join(t["content"] for t in turns[:-1]), "completion": turns[-1]["content"]}

        return ds.map(contents, remove_columns=ds.column_names)

    def split_turns(example):
        turns = example["messages"]
        if not turns or turns[-1]["role"] != "assistant":
            msg = "a messages record must end with the assistant turn"
            raise C2TInputError(msg)
        return {"prompt": turns[:-1], "completion": turns[-1:]}

    return ds.map(split_turns, remove_columns=ds.column_names)


def _ids(encoded) -> list[list[int]]:
    return [list(x) for x in (encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded)]


def record_lengths(tokenizer, ds, *, seq2seq: bool) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of each record's prompt and of the whole record as the trainer sees it.

    Decoder: prompt, and prompt + completion + EOS (or the chat template of both); seq2seq: prompt and completion.
    """
    prompts, completions = list(ds["prompt"]), list(ds["completion"])
    if prompts and not isinstance(prompts[0], str):  # conversational
        p = _ids(tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True))
        full = _ids(tokenizer.apply_chat_template([a + b for a, b in zip(prompts, completions, strict=True)],
                                                  tokenize=True, return_dict=True))
        return np.array([len(x) for x in p]), np.array([len(x) for x in full])
    p = _ids(tokenizer(list(prompts)))
    if seq2seq:
        c = _ids(tokenizer(list(completions)))
        return np.array([len(x) for x in p]), np.array([len(x) for x in c])
    eos = tokenizer.eos_token or ""
    full = _ids(tokenizer([a + b + ("" if b.endswith(eos) else eos) for a, b in zip(prompts, completions, strict=True)]))
    return np.array([len(x) for x in p]), np.array([len(x) for x in full])


def check_lengths(tokenizer, ds, cfg: TrainConfig, *, seq2seq: bool, split: str) -> dict[str, float]:
    """Refuse records that do not fit ``max_length`` (never truncate a completion away); return length stats."""
    prompt_len, full_len = record_lengths(tokenizer, ds, seq2seq=seq2seq)
    if seq2seq:
        checks = [(prompt_len > cfg.max_length, prompt_len, "prompt", "max_length", cfg.max_length),
                  (full_len + 1 > cfg.max_target_length, full_len + 1, "completion (+EOS)", "max_target_length",
                   cfg.max_target_length)]
    else:
        checks = [(prompt_len >= cfg.max_length, prompt_len, "prompt", "max_length", cfg.max_length),
                  (full_len > cfg.max_length, full_len, "prompt + completion", "max_length", cfg.max_length)]
    for bad, lengths, what, name, limit in checks:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            msg = (f"{split}: {int(bad.sum())} of {len(bad)} records do not fit {name}={limit}: e.g. record {i} has a "
                   f"{what} of {int(lengths[i])} tokens (longest {int(lengths.max())}); raise {name} or use fewer genes "
                   f"per cell (top_k). Records are never truncated: that would drop the completion.")
            if what == "prompt" and not seq2seq:
                msg = msg.replace("tokens (longest", "tokens, leaving no room for the completion (longest")
            raise C2TInputError(msg)
    return {"mean_prompt_tokens": float(prompt_len.mean()), "max_record_tokens": int(full_len.max()),
            "mean_record_tokens": float(full_len.mean())}


# ----------------------------------------------------------------------------------------------- gene tokens
def read_vocabulary(folder: str | Path, manifest: dict[str, Any]) -> list[str]:
    path = Path(folder) / (manifest.get("files") or {}).get("vocabulary", "vocabulary.txt")
    if not path.is_file():
        msg = f"{folder}: no gene vocabulary file {path.name}"
        raise C2TInputError(msg)
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line]


def _texts(ds) -> list[str]:
    out = []
    for name in ("prompt", "completion"):
        if name in ds.column_names:
            for value in ds[name]:
                out.append(value if isinstance(value, str) else "\n".join(t["content"] for t in value))
    return out


def gene_sentences(ds, vocabulary: Sequence[str]) -> list[list[str]]:
    """Each record's gene names in order of appearance (its cell sentences, joined)."""
    vocab = set(vocabulary)
    n = ds.num_rows
    texts = _texts(ds)
    per_record = [[] for _ in range(n)]
    for i, text in enumerate(texts):
        per_record[i % n].extend(w for w in _WORD.split(text) if w in vocab)
    return per_record


def dataset_labels(manifest: dict[str, Any]) -> list[str]:
    labels = set()
    for task in manifest.get("tasks", []):
        for counts in (task.get("label_counts") or {}).values():
            labels.update(counts)
    return sorted(labels)


def add_gene_tokens(tokenizer, genes: Sequence[str], labels: Sequence[str] = ()) -> list[str]:
    """Add genes (and labels) as whole tokens (matched as single words); return the tokens added."""
    from tokenizers import AddedToken

    existing = set(tokenizer.get_vocab())
    new = [t for t in dict.fromkeys([*genes, *labels]) if t not in existing]
    tokenizer.add_tokens([AddedToken(t, single_word=True, normalized=False) for t in new])
    return new


def word_pieces(tokenizer, words: Sequence[str]) -> dict[str, list[int]]:
    """The token ids each word is split into where it stands in a sentence (after a space)."""
    words = list(dict.fromkeys(words))
    if not words:
        return {}
    ids = _ids(tokenizer([f" {w}" for w in words], add_special_tokens=False))
    return dict(zip(words, ids, strict=True))


def tokens_per_sentence(tokenizer, sentences: Sequence[Sequence[str]]) -> float:
    """Mean tokens of the cell sentences (gene names joined by spaces)."""
    texts = [" ".join(s) for s in sentences if s]
    if not texts:
        return 0.0
    return float(np.mean([len(x) for x in _ids(tokenizer(texts, add_special_tokens=False))]))
