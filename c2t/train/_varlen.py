"""Padding-free attention: records concatenated into one row attend only within themselves.

TRL's padding-free collator puts a batch's records end to end in one row and passes their boundaries
(``cu_seq_lens_q`` / ``cu_seq_lens_k``). transformers' ``sdpa`` attention would turn that row into one dense
(tokens x tokens) block-diagonal mask: correct, but its cost grows with the square of the batch's tokens. The
attention registered here as ``"c2t_varlen"`` reads the boundaries instead: on a CUDA GPU it calls PyTorch's
variable-length flash attention (``torch.nn.attention.varlen``), elsewhere it runs ``sdpa`` on each record on its
own. Without boundaries (padded batches in evaluation, generation) it is transformers' ``sdpa`` unchanged.
"""

from __future__ import annotations

import inspect
import itertools
from functools import cache

NAME = "c2t_varlen"


@cache
def _kernel():
    """PyTorch's varlen flash attention and the keyword that makes it causal, or ``None`` where absent."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:  # torch >= 2.11
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in params:  # torch 2.10
        causal = {"is_causal": True}
    else:
        return None
    return varlen_attn, causal, "enable_gqa" in params, "scale" in params


def _kernel_device(tensor) -> bool:
    """Whether ``tensor`` is where the varlen kernel runs (CUDA)."""
    return tensor.is_cuda


@cache
def cuda_varlen_available() -> bool:
    """Whether padding-free training can use a varlen kernel here: a CUDA GPU, a torch that has one, and the
    kernel answering a small causal two-record call (GQA heads, bfloat16) as ``sdpa`` does on each record."""
    import torch

    if not torch.cuda.is_available() or _kernel() is None:
        return False
    try:
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(12, heads, 64, device="cuda", dtype=torch.bfloat16, generator=gen)
                   for heads in (4, 2, 2))
        bounds = torch.tensor([0, 5, 12], dtype=torch.int32, device="cuda")
        module = type("Probe", (), {"is_causal": True})()
        out, _ = varlen_attention(module, q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                  None, scaling=64**-0.5, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds,
                                  max_length_q=7, max_length_k=7)
        ref = torch.cat([torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1).repeat_interleave(2, 0),
            v[a:b].transpose(0, 1).repeat_interleave(2, 0), is_causal=True).transpose(0, 1) for a, b in ((0, 5), (5, 12))])
        return bool((out[0].float() - ref.float()).abs().max() < 2e-2)
    except Exception as err:  # a kernel that fails here would fail every training step: train padded instead
        import warnings

        warnings.warn(f"PyTorch's varlen attention does not run here ({type(err).__name__}: {err}); "
                      "padding-free training is off", RuntimeWarning, stacklevel=2)
        return False


def _boundaries(position_ids):
    """Record starts (cumulative lengths, int32) from positions that restart at 0 in each record."""
    import torch

    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    return torch.cat([starts, torch.tensor([flat.numel()], device=flat.device)]).to(torch.int32)


def varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     is_causal=None, **kwargs):
    """transformers attention interface: ``query`` (1, heads, tokens, dim) of records end to end -> (1, tokens,
    heads, dim), each record attending causally to itself only."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    positions = kwargs.get("position_ids")
    if cu_q is None and attention_mask is None and query.shape[0] == 1 and positions is not None:
        cu_q = cu_k = _boundaries(positions)  # packed rows passed without boundaries: find them (one sync)
    if cu_q is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (tokens, heads, dim)
    kernel = _kernel()
    fused = kernel is not None and _kernel_device(q) and dropout == 0.0 and causal
    if fused and q.dtype == torch.float32:
        # flash kernels take half precision: under autocast (rotary embeddings in float32 promote q and k) run in
        # the autocast dtype, as transformers' flash attention does; plain float32 training keeps float32 (sdpa)
        if torch.is_autocast_enabled(q.device.type):
            target = torch.get_autocast_dtype(q.device.type)
            q, k, v = q.to(target), k.to(target), v.to(target)
        else:
            fused = False
    if fused and not kernel[3] and scaling is not None and abs(scaling - q.shape[-1] ** -0.5) > 1e-6:
        fused = False  # a kernel without `scale` applies 1/sqrt(dim) only
    groups = q.shape[1] // k.shape[1]
    if groups > 1 and not (fused and kernel[2]):
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if fused:
        fn, causal_kw, gqa, has_scale = kernel
        max_q = int(kwargs.get("max_length_q") or int((cu_q[1:] - cu_q[:-1]).max()))
        max_k = int(kwargs.get("max_length_k") or max_q)
        extra = {**causal_kw, **({"enable_gqa": True} if gqa and groups > 1 else {}),
                 **({"scale": scaling} if has_scale else {})}
        out = fn(q, k, v, cu_q.to(q.device, torch.int32), cu_k.to(q.device, torch.int32), max_q, max_k, **extra)
        return out.unsqueeze(0), None
    out = torch.empty_like(q)
    bounds = cu_q.tolist()
    for start, stop in itertools.pairwise(bounds):  # each record on its own
        piece = torch.nn.functional.scaled_dot_product_attention(
            q[start:stop].transpose(0, 1), k[start:stop].transpose(0, 1), v[start:stop].transpose(0, 1),
            dropout_p=dropout, is_causal=causal, scale=scaling)
        out[start:stop] = piece.transpose(0, 1)
    return out.unsqueeze(0), None


def varlen_mask(*args, attention_mask=None, **kwargs):
    """Mask for ``"c2t_varlen"``: none for records end to end (the attention reads their boundaries), transformers'
    ``sdpa`` mask for a padded batch."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Register ``"c2t_varlen"`` with transformers (idempotent); returns the name for ``attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention)
    AttentionMaskInterface.register(NAME, varlen_mask)
    return NAME
