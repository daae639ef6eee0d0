"""Encoders on disk: c2t's own folders (manifest + transformers model + tokeniser), Geneformer and tGPT
checkpoints, and a clear refusal for architectures that are not plain transformers."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from c2t._errors import C2TInputError
from c2t.plm._base import load_tokenizer
from c2t.plm._model import KIND, CellLM, ModelSpec, PLMEncoder

MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
EXTRAS_FILE = "extras.safetensors"
VOCAB_FILE = "vocabulary.txt"


# ------------------------------------------------------------------------------------------- c2t folders
def save_encoder(encoder: PLMEncoder, folder: str | os.PathLike) -> Path:
    """Write ``encoder`` to ``folder`` atomically (see :meth:`PLMEncoder.save`)."""
    from safetensors.torch import save_file

    from c2t._atomic import staged_dir, write_text_atomic
    from c2t._manifest import vocabulary_hash, write_manifest

    folder = Path(folder)
    with staged_dir(folder) as staging:
        model = encoder.model
        model.backbone.save_pretrained(staging / MODEL_DIR)
        extras = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
        if extras:
            save_file(extras, str(staging / EXTRAS_FILE))
        tok = encoder.tokenizer
        tok.save(staging / TOKENIZER_DIR)
        tokens = tok.vocab.tokens()
        write_text_atomic(staging / TOKENIZER_DIR / VOCAB_FILE, "".join(f"{t}\n" for t in tokens))
        write_manifest(staging, {
            "kind": KIND,
            "name": encoder.name,
            "recipe": tok.recipe,
            "model": encoder.spec_dict(),
            "architecture": type(model.backbone).__name__,
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
            "pooling": encoder.pooling,
            "hidden_layer": encoder.hidden_layer,
            "data_options": {"gene_key": encoder.gene_key, "layer": encoder.layer, "use_raw": encoder.use_raw},
            "vocabulary_size": len(tok.vocab),
            "vocabulary_hash": vocabulary_hash(tokens),
            "report": encoder.report,
        })
    return folder


def load_encoder(folder: str | os.PathLike) -> PLMEncoder:
    """Load an encoder saved by :meth:`PLMEncoder.save` (e.g. the output of ``c2t pretrain``).

    The manifest is checked against the tokeniser's vocabulary (a modified folder is refused).
    """
    from safetensors.torch import load_file

    from c2t._manifest import read_manifest, vocabulary_hash

    folder = Path(folder)
    manifest = read_manifest(folder, kind=KIND)
    tok = load_tokenizer(folder / TOKENIZER_DIR)
    if vocabulary_hash(tok.vocab.tokens()) != manifest.get("vocabulary_hash"):
        msg = f"{folder}: the tokenizer vocabulary does not match the manifest's vocabulary_hash (the folder was modified)"
        raise C2TInputError(msg)
    spec = ModelSpec(**manifest["model"])
    extra = {"add_pooling_layer": False} if spec.objective == "cells" else {}
    backbone = _backbone_class(spec).from_pretrained(folder / MODEL_DIR, **extra)
    model = CellLM(spec, backbone, fixed_embeddings=_fixed(tok), special_ids=tok.vocab.special_ids())
    if (folder / EXTRAS_FILE).is_file():
        _missing, unexpected = model.load_state_dict(load_file(str(folder / EXTRAS_FILE)), strict=False)
        unexpected = [k for k in unexpected if not k.startswith("backbone.")]
        if unexpected:
            msg = f"{folder}: {EXTRAS_FILE} holds weights this model does not have: {unexpected[:5]}"
            raise C2TInputError(msg)
    options = manifest.get("data_options", {})
    return PLMEncoder(tok, model.eval(), name=manifest.get("name"), pooling=manifest.get("pooling"),
                      hidden_layer=manifest.get("hidden_layer", -1), report=manifest.get("report"), **options)


def _backbone_class(spec: ModelSpec):
    from transformers import BertForMaskedLM, BertModel, GPT2LMHeadModel

    return {"mlm": BertForMaskedLM, "clm": GPT2LMHeadModel, "cells": BertModel}[spec.objective]


def _fixed(tok) -> np.ndarray | None:
    return tok.embedding_matrix if tok.recipe == "uce" else None


# ------------------------------------------------------------------------------------------- external
def _config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        msg = f"{folder}: no such folder"
        raise C2TInputError(msg)
    path = folder / "config.json"
    if not path.is_file():
        msg = f"{folder}: no config.json; not a Hugging Face transformers checkpoint ({_listing(folder)})"
        raise C2TInputError(msg)
    return json.loads(path.read_text(encoding="utf-8"))


def _listing(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return "files: " + (", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "(empty)")


def _read_mapping(path: Path) -> dict:
    """A dict from a ``.json`` or ``.pkl`` file (Geneformer publishes pickles; only load ones you trust)."""
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
    else:
        with open(path, "rb") as f:
            data = pickle.load(f)  # the published Geneformer format
    if not isinstance(data, dict) or not data:
        msg = f"{path}: expected a non-empty dictionary, found {type(data).__name__}"
        raise C2TInputError(msg)
    return data


def _find(folder: Path, words: tuple[str, ...]) -> Path | None:
    for p in sorted(folder.iterdir()):
        name = p.name.lower()
        if p.suffix in (".pkl", ".pickle", ".json") and all(w in name for w in words):
            return p
    return None


def load_geneformer(folder: str | os.PathLike, *, token_dictionary: str | os.PathLike | dict | None = None,
                    gene_medians: str | os.PathLike | dict | None = None, gene_key: str | None = None,
                    total_key: str | None = None, pooling: str | None = None, hidden_layer: int = -2,
                    seed: int = 0) -> PLMEncoder:
    """Load a Geneformer checkpoint folder: a transformers ``BertForMaskedLM`` (``config.json`` + weights)
    with its token dictionary (gene -> token id, ``*token_dictionary*.pkl`` or ``.json``) and, if present,
    its gene median dictionary (``*median*.pkl`` or ``.json``).

    The version follows the dictionary: with ``<cls>``/``<eos>`` tokens it is v2 (``<cls>`` ... ``<eos>``),
    otherwise v1; the input size is the model's ``max_position_embeddings``. Without gene medians, they
    are computed from the first data the encoder embeds (or call ``encoder.tokenizer.fit(reference)``).
    Cell embeddings are the mean over gene tokens of the second-to-last layer (Geneformer's default;
    ``hidden_layer=-1`` for the last), or the ``<cls>`` output with ``pooling="cls"``. Genes are matched by
    the dictionary's ids (Ensembl for the published model): pass ``gene_key`` = the ``var`` column holding them.
    ``total_key="n_counts"`` takes each cell's total count from that ``obs`` column, as the published tokenizer
    does (default: the row sum over every gene).

    Pickle files can run code when loaded: only load dictionaries you trust (or convert them to JSON).
    """
    from transformers import BertForMaskedLM

    from c2t.plm._geneformer import GeneformerTokenizer

    folder = Path(folder)
    config = _config(folder)
    if config.get("model_type") != "bert":
        msg = f"{folder}: model_type is {config.get('model_type')!r}; a Geneformer checkpoint is a BERT model"
        raise C2TInputError(msg)
    if not isinstance(token_dictionary, dict):
        path = Path(token_dictionary) if token_dictionary is not None else _find(folder, ("token", "dict"))
        if path is None or not path.is_file():
            msg = (f"{folder}: no token dictionary (a *token_dictionary*.pkl or .json file mapping genes to token ids); "
                   f"pass token_dictionary= its path ({_listing(folder)})")
            raise C2TInputError(msg)
        token_dictionary = _read_mapping(path)
    if gene_medians is not None and not isinstance(gene_medians, dict):
        gene_medians = _read_mapping(Path(gene_medians))
    elif gene_medians is None:
        found = _find(folder, ("median",))
        gene_medians = _read_mapping(found) if found else None
    version = 2 if "<cls>" in token_dictionary else 1
    max_length = int(config.get("max_position_embeddings", 2048 if version == 1 else 4096))
    vocab_size = int(config.get("vocab_size", 0))
    too_big = [t for t, i in token_dictionary.items() if int(i) >= vocab_size]
    if too_big:
        msg = f"{folder}: the token dictionary has ids beyond the model's vocab_size {vocab_size} (e.g. {too_big[0]!r})"
        raise C2TInputError(msg)
    tok = GeneformerTokenizer(version=version, token_dictionary=token_dictionary, gene_medians=gene_medians,
                              max_length=max_length, total_key=total_key, seed=seed)
    backbone = BertForMaskedLM.from_pretrained(folder)
    spec = ModelSpec(objective="mlm", vocab_size=vocab_size, max_length=max_length,
                     pad_id=int(token_dictionary["<pad>"]), hidden_size=backbone.config.hidden_size,
                     num_layers=backbone.config.num_hidden_layers, num_heads=backbone.config.num_attention_heads,
                     intermediate_size=backbone.config.intermediate_size)
    model = CellLM(spec, backbone).eval()
    return PLMEncoder(tok, model, name="geneformer", pooling=pooling or "mean", hidden_layer=hidden_layer,
                      gene_key=gene_key, report={"source": str(folder), "version": version,
                                                 "medians": "published" if gene_medians else "computed on first data"})


def load_tgpt(folder: str | os.PathLike, *, top_k: int = 64, gene_key: str | None = None,
              pooling: str = "mean", hidden_layer: int = -1, seed: int = 0) -> PLMEncoder:
    """Load a tGPT checkpoint folder: a transformers GPT-2 model with its word-level tokenizer (one token per
    gene symbol, ``tokenizer.json`` / ``vocab.json``). Cells are their top ``top_k`` (64) genes by expression;
    embeddings are the mean of the last layer over the cell's real tokens (``pooling="last"``: the last token).
    """
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from c2t.plm._tgpt import TGPTTokenizer

    folder = Path(folder)
    config = _config(folder)
    if config.get("model_type") != "gpt2":
        msg = f"{folder}: model_type is {config.get('model_type')!r}; a tGPT checkpoint is a GPT-2 model"
        raise C2TInputError(msg)
    if not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        msg = f"{folder}: no tokenizer (tokenizer.json or vocab.json: the gene vocabulary); {_listing(folder)}"
        raise C2TInputError(msg)
    hf_tok = AutoTokenizer.from_pretrained(folder)
    vocab = hf_tok.get_vocab()
    pad = hf_tok.pad_token or hf_tok.eos_token
    if pad is None:
        msg = f"{folder}: the tokenizer has no pad or eos token to pad cells with"
        raise C2TInputError(msg)
    tok = TGPTTokenizer(token_to_id=vocab, pad_token=pad, top_k=top_k, seed=seed)
    backbone = GPT2LMHeadModel.from_pretrained(folder)
    spec = ModelSpec(objective="clm", vocab_size=backbone.config.vocab_size, max_length=backbone.config.n_positions,
                     pad_id=int(vocab[pad]), hidden_size=backbone.config.n_embd, num_layers=backbone.config.n_layer,
                     num_heads=backbone.config.n_head, intermediate_size=backbone.config.n_inner or 4 * backbone.config.n_embd)
    model = CellLM(spec, backbone).eval()
    return PLMEncoder(tok, model, name="tgpt", pooling=pooling, hidden_layer=hidden_layer, gene_key=gene_key,
                      report={"source": str(folder)})


_NOT_PLAIN = {
    "scgpt": (("args.json", "best_model.pt"), "scGPT checkpoints are a custom torch model (its own transformer, "
              "value encoder and decoders), not a transformers architecture"),
    "scfoundation": (("models.ckpt",), "scFoundation's xTrimoGene is a custom asymmetric encoder-decoder"),
    "uce": ((".torch",), "UCE checkpoints are a custom torch model (its own transformer over ESM2 gene embeddings)"),
    "cellplm": ((".best.ckpt",), "CellPLM checkpoints are a custom torch model"),
    "scbert": (("panglao_pretrain.pth",), "scBERT is a Performer, not a transformers architecture"),
}


def load_checkpoint(folder: str | os.PathLike, **kwargs) -> PLMEncoder:
    """Load whatever encoder ``folder`` holds: a c2t encoder, a Geneformer folder or a tGPT folder.

    Checkpoints of architectures that are not plain transformers (scGPT, scFoundation, UCE, CellPLM,
    scBERT) are recognised and refused with the reason; their tokenisations are available in
    :mod:`c2t.plm` and can be pre-trained on your data with :func:`c2t.plm.pretrain`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        msg = f"{folder}: no such folder"
        raise C2TInputError(msg)
    names = [p.name for p in folder.iterdir()]
    if "manifest.json" in names:
        return load_encoder(folder)
    for model, (markers, reason) in _NOT_PLAIN.items():
        if any(any(n == m or (m.startswith(".") and n.endswith(m)) for n in names) for m in markers):
            msg = (f"{folder}: looks like a {model} checkpoint; {reason}, so c2t cannot load it. Use c2t.plm's "
                   f"{model} tokeniser and pre-train an encoder on your data (c2t pretrain), or embed with that "
                   "project's own code and compare the arrays")
            raise C2TInputError(msg)
    config = _config(folder)
    if config.get("model_type") == "bert":
        return load_geneformer(folder, **kwargs)
    if config.get("model_type") == "gpt2":
        return load_tgpt(folder, **kwargs)
    msg = (f"{folder}: model_type {config.get('model_type')!r} is not one c2t loads (a Geneformer BERT, a tGPT "
           "GPT-2 or a c2t encoder folder)")
    raise C2TInputError(msg)
