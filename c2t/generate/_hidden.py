"""Cell embeddings from a tuned LLM's hidden states: the mean over the cell sentence's tokens, padding excluded.

Cell2Sentence averages over every position of the padded batch, so a cell's embedding changes with the length
of the other cells in its batch; here the attention mask weights the mean and sequences are right-padded, so a
cell's embedding does not depend on its batch.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from c2t._errors import C2TInputError
from c2t.generate._backends import load_transformers, model_spec


def masked_mean(hidden, mask):
    """Mean of ``hidden`` (batch x tokens x dim) over the positions where ``mask`` (batch x tokens) is 1.

    Examples
    --------
    >>> import torch
    >>> h = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> masked_mean(h, torch.tensor([[1, 1, 0]])).tolist()
    [[2.0]]
    """
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def embed_hidden(
    model: str | os.PathLike,
    adata,
    *,
    top_k: int | None = None,
    layer: int = -1,
    batch_size: int = 16,
    device: str | None = None,
    dtype: str = "float32",
    key_added: str = "X_c2t_llm",
    seed: int = 0,
    copy: bool = False,
    **sentence_options: Any,
):
    """Embed cells with a tuned (or any) language model: masked mean of one layer's hidden states over the
    tokens of each cell sentence.

    Parameters
    ----------
    model
        A c2t training run / merged model folder, or a plain Hugging Face model folder.
    adata
        The cells.
    top_k
        Genes per cell sentence (default: the run's ``top_k``; 100 for a plain model).
    layer
        Which hidden state (``-1``: the last layer; ``0``: the embeddings). Encoder-decoder models use the
        encoder's.
    batch_size
        Sentences per forward pass (does not change the result).
    device, dtype
        Where and in which precision to run the model.
    key_added
        ``obsm`` key of the embedding.
    seed
        The ranking tie-break seed.
    copy
        Return a copy with the embedding instead of writing into ``adata``.
    sentence_options
        More :func:`c2t.sentences.from_adata` options (``layer``, ``gene_key`` ...).

    Returns
    -------
    anndata.AnnData or None
        ``adata.obsm[key_added]`` (cells x hidden size, float32) and ``adata.uns[key_added]`` (model, layer,
        pooling); a copy when ``copy=True``.
    """
    import torch

    from c2t.sentences import from_adata

    spec = model_spec(model)
    if top_k is None:
        top_k = ((spec.manifest or {}).get("dataset") or {}).get("top_k") or 100
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        msg = f"batch_size must be a positive integer, not {batch_size!r}"
        raise C2TInputError(msg)
    adata = adata.copy() if copy else adata
    texts = from_adata(adata, top_k=top_k, seed=seed, **sentence_options).texts()
    net, tokenizer = load_transformers(spec, dtype=dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    encoder = net.get_encoder() if spec.seq2seq else net
    out = np.zeros((len(texts), 0), dtype=np.float32)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            states = encoder(**enc, output_hidden_states=True).hidden_states
            if not -len(states) <= layer < len(states):
                msg = f"layer {layer} out of range: the model has {len(states)} hidden states (embeddings + layers)"
                raise C2TInputError(msg)
            chunks.append(masked_mean(states[layer].float(), enc["attention_mask"]).cpu().numpy())
    out = np.concatenate(chunks).astype(np.float32) if chunks else out
    adata.obsm[key_added] = out
    adata.uns[key_added] = {"model": str(spec.path), "layer": layer, "top_k": top_k,
                            "pooling": "mean over the cell sentence's tokens (attention mask; padding excluded)"}
    return adata if copy else None
