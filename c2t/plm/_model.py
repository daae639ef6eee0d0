"""Torch side of the PLM encoders: a Hugging Face backbone plus the inputs a recipe adds, and pooling.

:class:`CellLM` wraps a plain transformers model (``BertForMaskedLM`` for masked gene modelling,
``GPT2LMHeadModel`` for next-gene prediction, ``BertModel`` for cells as tokens). When a tokeniser gives only
``input_ids`` and ``attention_mask`` it calls the backbone unchanged; otherwise it builds ``inputs_embeds``:
token embedding + a value encoder (scGPT, scFoundation, GeneCompass, scMulan values) + batch and modality
embeddings (scGPT), or a projection of fixed gene embeddings (UCE) or of cell vectors (CellPLM).
:class:`PLMEncoder` pairs it with its tokeniser and implements :class:`c2t.plm.CellEncoder`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from c2t._errors import C2TInputError
from c2t.plm._base import CellTokenizer
from c2t.plm._encoding import Encoding

KIND = "plm_encoder"
Pooling = Literal["cls", "mean", "last", "cells"]


@dataclass
class ModelSpec:
    """Everything needed to rebuild a :class:`CellLM` (saved in the manifest)."""

    objective: Literal["mlm", "clm", "cells"] = "mlm"
    vocab_size: int = 0
    max_length: int = 512
    pad_id: int = 0
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    dropout: float = 0.1
    positional: bool = True
    values: bool = False  # a continuous value per token
    batch_tokens: bool = False
    modality_tokens: bool = False
    fixed_embedding_dim: int | None = None  # UCE: fixed gene embeddings of this size
    input_dim: int | None = None  # CellPLM: cell vectors of this size
    extra: dict[str, Any] = field(default_factory=dict)


def build_backbone(spec: ModelSpec):
    """A randomly initialised transformers model for ``spec`` (nothing is downloaded)."""
    from transformers import BertConfig, BertForMaskedLM, BertModel, GPT2Config, GPT2LMHeadModel

    if spec.hidden_size % spec.num_heads:
        msg = f"hidden_size ({spec.hidden_size}) must be a multiple of num_heads ({spec.num_heads})"
        raise C2TInputError(msg)
    if spec.objective == "clm":
        config = GPT2Config(vocab_size=spec.vocab_size, n_positions=spec.max_length, n_embd=spec.hidden_size,
                            n_layer=spec.num_layers, n_head=spec.num_heads, n_inner=spec.intermediate_size,
                            resid_pdrop=spec.dropout, embd_pdrop=spec.dropout, attn_pdrop=spec.dropout,
                            pad_token_id=spec.pad_id, bos_token_id=spec.pad_id, eos_token_id=spec.pad_id)
        return GPT2LMHeadModel(config)
    config = BertConfig(vocab_size=max(spec.vocab_size, 1), hidden_size=spec.hidden_size,
                        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                        intermediate_size=spec.intermediate_size, hidden_dropout_prob=spec.dropout,
                        attention_probs_dropout_prob=spec.dropout, max_position_embeddings=spec.max_length,
                        pad_token_id=spec.pad_id, type_vocab_size=1)
    return BertModel(config, add_pooling_layer=False) if spec.objective == "cells" else BertForMaskedLM(config)


class CellLM(nn.Module):
    """A transformers backbone plus the extra inputs of a recipe (see the module docstring).

    ``forward`` takes the keys of an :class:`~c2t.plm.Encoding` (as tensors) and ``labels``; it returns the
    backbone's output (``loss``, ``logits``, ``hidden_states``); for cells as tokens the loss is the masked-cell
    reconstruction error and ``logits`` the reconstructed cell vectors.
    """

    def __init__(self, spec: ModelSpec, backbone=None, fixed_embeddings: np.ndarray | None = None,
                 special_ids: np.ndarray | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone if backbone is not None else build_backbone(spec)
        h = self.backbone.config.hidden_size
        self.value_encoder = (nn.Sequential(nn.Linear(1, h), nn.ReLU(), nn.Linear(h, h), nn.LayerNorm(h))
                              if spec.values else None)
        self.fixed_projection = None
        if spec.fixed_embedding_dim:
            table = torch.zeros(spec.vocab_size, spec.fixed_embedding_dim)
            if fixed_embeddings is not None:
                table = torch.as_tensor(fixed_embeddings, dtype=torch.float32)
            self.register_buffer("fixed_embeddings", table)
            learned = torch.zeros(spec.vocab_size)
            if special_ids is not None:
                learned[torch.as_tensor(special_ids, dtype=torch.long)] = 1.0
            self.register_buffer("learned_rows", learned)
            self.fixed_projection = nn.Sequential(nn.Linear(spec.fixed_embedding_dim, h), nn.GELU(), nn.LayerNorm(h))
        self.input_projection = nn.Linear(spec.input_dim, h) if spec.input_dim else None
        if spec.objective == "cells":
            self.mask_vector = nn.Parameter(torch.zeros(spec.input_dim))
            self.reconstruction = nn.Linear(h, spec.input_dim)

    @property
    def plain(self) -> bool:
        """The backbone takes the encoding as it is (ids and mask only, positions as usual)."""
        s = self.spec
        return not (s.values or s.batch_tokens or s.modality_tokens or s.fixed_embedding_dim or s.input_dim
                    or not s.positional)

    def embed_inputs(self, input_ids=None, values=None, batch_ids=None, modality_ids=None, inputs_embeds=None):
        if self.input_projection is not None:
            return self.input_projection(inputs_embeds)
        ids = input_ids.long()
        x = self.backbone.get_input_embeddings()(ids)
        if self.fixed_projection is not None:
            x = x * self.learned_rows[ids].unsqueeze(-1) + self.fixed_projection(self.fixed_embeddings[ids])
        if self.value_encoder is not None and values is not None:
            x = x + self.value_encoder(values.float().unsqueeze(-1))
        emb = self.backbone.get_input_embeddings()
        if self.spec.batch_tokens and batch_ids is not None:
            x = x + emb(batch_ids.long()).unsqueeze(1)
        if self.spec.modality_tokens and modality_ids is not None:
            x = x + emb(modality_ids.long())
        return x

    def _body_and_head(self):
        b = self.backbone
        return (b.bert, b.cls) if hasattr(b, "bert") else (b.transformer, b.lm_head)

    def forward(self, input_ids=None, attention_mask=None, values=None, batch_ids=None, modality_ids=None,
                inputs_embeds=None, labels=None, cell_mask=None, predict_at=None, *,
                output_hidden_states: bool = False):
        """Run the model. The output head only scores the positions that need it — the masked ones (``labels``
        >= 0), those in ``predict_at``, or none when only ``hidden_states`` are wanted — so a vocabulary of
        20,000 genes costs little. ``logits`` are ``(positions, vocabulary)`` rows in row-major order of those
        positions; for next-token models, position *t* predicts token *t + 1* (``labels`` are not shifted)."""
        from transformers.modeling_outputs import MaskedLMOutput

        if self.spec.objective == "cells":
            return self._forward_cells(inputs_embeds, attention_mask, cell_mask, output_hidden_states)
        body, head = self._body_and_head()
        kwargs = {"attention_mask": attention_mask, "output_hidden_states": output_hidden_states}
        if self.plain:
            kwargs["input_ids"] = input_ids.long()
        else:
            kwargs["inputs_embeds"] = self.embed_inputs(input_ids, values, batch_ids, modality_ids)
            if not self.spec.positional:
                kwargs["position_ids"] = torch.zeros(input_ids.shape[:2], dtype=torch.long, device=input_ids.device)
        out = body(**kwargs)
        hidden = out.last_hidden_state
        clm = self.spec.objective == "clm"
        if clm:
            hidden = hidden[:, :-1]
            labels = labels[:, 1:] if labels is not None else None
        at = (labels >= 0) if labels is not None else predict_at
        logits = loss = None
        if at is not None:
            logits = head(hidden[at.bool()])
            if labels is not None:
                loss = nn.functional.cross_entropy(logits.float(), labels[at].long()) if at.any() else None
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)

    def _forward_cells(self, inputs_embeds, attention_mask, cell_mask, output_hidden_states):
        from transformers.modeling_outputs import MaskedLMOutput

        target = inputs_embeds.float()
        x = target if cell_mask is None else torch.where(cell_mask.unsqueeze(-1), self.mask_vector, target)
        x = self.input_projection(x)
        positions = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
        out = self.backbone(inputs_embeds=x, attention_mask=attention_mask, position_ids=positions,
                            output_hidden_states=True)
        recon = self.reconstruction(out.last_hidden_state)
        loss = None
        if cell_mask is not None and cell_mask.any():
            loss = ((recon - target) ** 2)[cell_mask].mean()
        return MaskedLMOutput(loss=loss, logits=recon,
                              hidden_states=out.hidden_states if output_hidden_states else None)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, special_mask: torch.Tensor | None,
         pooling: Pooling) -> torch.Tensor:
    """One vector per row: the first token (``cls``), the last real token (``last``) or the mean over real,
    non-special tokens (``mean``; padding never counts; a row with no gene token falls back to its real tokens)."""
    real = attention_mask.bool()
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        last = real.long().sum(1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0]), last]
    weight = real & ~special_mask if special_mask is not None else real
    empty = weight.sum(1) == 0
    weight = torch.where(empty.unsqueeze(1), real, weight).to(hidden.dtype).unsqueeze(-1)
    return (hidden * weight).sum(1) / weight.sum(1).clamp(min=1.0)


class PLMEncoder:
    """A tokeniser and a transformer that embed cells: a :class:`c2t.plm.CellEncoder`.

    Make one with :func:`c2t.plm.pretrain`, :func:`c2t.plm.load_encoder`, :func:`c2t.plm.load_geneformer` or
    :func:`c2t.plm.load_tgpt`.

    Attributes
    ----------
    name
        Label for tables and the default ``obsm`` key.
    tokenizer, model
        The :class:`~c2t.plm.CellTokenizer` and the :class:`CellLM`.
    pooling
        ``"cls"`` (first token), ``"mean"`` (masked mean over gene tokens), ``"last"`` (last real token, for
        next-token models) or ``"cells"`` (cells as tokens: each cell's own output).
    hidden_layer
        Which entry of the model's ``hidden_states`` to pool (-1: the last layer; Geneformer uses -2).
    gene_key, layer, use_raw
        Where :meth:`embed` reads gene names and values in an AnnData.
    report
        What training or loading recorded (losses, accuracies, gene matching).
    """

    def __init__(self, tokenizer: CellTokenizer, model: CellLM, *, name: str | None = None,
                 pooling: Pooling | None = None, hidden_layer: int = -1, gene_key: str | None = None,
                 layer: str | None = None, use_raw: bool = False, report: dict[str, Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.name = name or tokenizer.recipe
        self.pooling = pooling or ("cells" if model.spec.objective == "cells" else
                                   "mean" if model.spec.objective == "clm" else tokenizer.default_pooling)
        if self.pooling not in ("cls", "mean", "last", "cells"):
            msg = f"pooling must be 'cls', 'mean', 'last' or 'cells', not {self.pooling!r}"
            raise C2TInputError(msg)
        if self.pooling == "cls" and model.spec.objective != "cells" and not tokenizer.vocab.has("cls"):
            msg = f"pooling='cls' needs a <cls> token, and the {tokenizer.recipe} vocabulary has none; use 'mean'"
            raise C2TInputError(msg)
        self.hidden_layer = int(hidden_layer)
        self.gene_key, self.layer, self.use_raw = gene_key, layer, use_raw
        self.report = dict(report or {})

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (f"PLMEncoder({self.name!r}, recipe={self.tokenizer.recipe}, objective={self.model.spec.objective}, "
                f"{n:,} parameters, pooling={self.pooling}, hidden_layer={self.hidden_layer})")

    @torch.no_grad()
    def embed_encoding(self, enc: Encoding) -> np.ndarray:
        """Embeddings of the rows of one encoding (cells; for cells as tokens, one row per real position)."""
        self.model.eval()
        t = enc.to_torch()
        out = self.model(**t, output_hidden_states=True)
        hidden = out.hidden_states[self.hidden_layer]
        if self.pooling == "cells":
            real = torch.as_tensor(enc.cell_index) >= 0
            return hidden[real].float().numpy()
        special = torch.from_numpy(np.ascontiguousarray(enc.special_mask)) if enc.special_mask is not None else None
        return pool(hidden, t["attention_mask"], special, self.pooling).float().numpy()

    def embed(self, adata, *, batch_size: int = 64, gene_key: str | None = None, layer: str | None = None,
              use_raw: bool | None = None) -> np.ndarray:
        """Embed every cell of ``adata``: a ``(n_obs, hidden_size)`` float32 array, row ``i`` = cell ``i``.

        Each cell's embedding depends on that cell alone (padding is masked and never pooled); with cells as
        tokens (CellPLM) it depends on the cells of its group, grouped over all of ``adata`` whatever the batches.
        """
        options = {"gene_key": gene_key if gene_key is not None else self.gene_key,
                   "layer": layer if layer is not None else self.layer,
                   "use_raw": self.use_raw if use_raw is None else use_raw}
        parts, rows = [], []
        if self.pooling == "cells":  # cells attend to the cells of their group: group over all cells first
            whole = self.tokenizer(adata, **options)
            batches = (whole._like({k: v[i : i + batch_size] for k, v in whole.items()}, rows=slice(i, i + batch_size))
                       for i in range(0, len(whole["attention_mask"]), batch_size))
        else:
            batches = self.tokenizer.batches(adata, batch_size=batch_size, **options)
        for enc in batches:
            parts.append(self.embed_encoding(enc))
            if self.pooling == "cells":
                rows.append(enc.cell_index[enc.cell_index >= 0])
        self.report["genes"] = self.tokenizer._report.get("genes")
        out = np.concatenate(parts).astype(np.float32)
        if self.pooling == "cells":
            order = np.argsort(np.concatenate(rows))
            out = out[order]
        return out

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the encoder to ``folder``: ``model/`` (transformers), ``extras.safetensors``, ``tokenizer/``
        (recipe, parameters, vocabulary) and ``manifest.json``; atomically (a staging folder, then a rename)."""
        from c2t.plm._checkpoints import save_encoder

        return save_encoder(self, folder)

    def spec_dict(self) -> dict[str, Any]:
        return asdict(self.model.spec)
