"""Log-probabilities of candidate completions under a transformers model, with the prompt read once.

A decoder reads each prompt once (left-padded batch, explicit positions so that padding does not shift them);
its key/value cache is then repeated for every candidate and the candidates' tokens are read in one more forward
pass. An encoder-decoder encodes each prompt once and decodes every candidate against it. Batches are sized by a
token budget. :func:`score_pairs_naively` reads every ``prompt + candidate`` on its own: the reference the tests
compare with.
"""

from __future__ import annotations

import numpy as np

from c2t._errors import C2TInputError
from c2t.generate._candidates import CandidateLayout

#: Floats of logits held at once while scoring (512 MB in float32).
LOGITS_BUDGET = 1 << 27


def max_positions(model) -> int | None:
    """The longest sequence the model's position encoding covers (``None``: no fixed limit known)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_fits(model, lengths, *, what: str, names=None) -> None:
    """Refuse sequences longer than the model's positions, naming the first (by ``names``, else its index)."""
    limit = max_positions(model)
    if limit is None:
        return
    lengths = np.asarray(lengths)
    over = np.flatnonzero(lengths > limit)
    if over.size:
        i = int(over[0])
        who = names[i] if names is not None else f"prompt {i}"
        msg = (f"{who}: {what} of {int(lengths[i])} tokens is longer than the model's {limit} positions "
               f"({over.size} of {lengths.size} too long); use fewer genes per cell (top_k)")
        raise C2TInputError(msg)


def _token_logprobs(logits, targets):
    """log p(target) at each position: ``logits`` (..., vocab), ``targets`` (...) -> float32 (...)."""
    import torch

    flat = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    step = max(1, LOGITS_BUDGET // (8 * flat.shape[-1]))
    for s in range(0, flat.shape[0], step):
        chunk = flat[s:s + step].float()
        out[s:s + step] = chunk.gather(-1, flat_targets[s:s + step, None]).squeeze(-1) - chunk.logsumexp(-1)
    return out.view(targets.shape)


def _batches(layout: CandidateLayout, *, batch_tokens: int, vocab: int) -> list[list[int]]:
    """Prompts in batches of similar prefix length whose tokens (prefix + every candidate) and logits fit."""
    n_cand = layout.n_candidates
    cont_len = [max(len(c) for c in group) for group in layout.continuations]
    order = sorted(range(len(layout.prefixes)), key=lambda i: (len(layout.prefixes[i]), i))
    batches, current, widest_prefix, widest_cont = [], [], 0, 0
    for i in order:
        p, c = max(widest_prefix, len(layout.prefixes[i])), max(widest_cont, cont_len[layout.group[i]])
        rows = len(current) + 1
        tokens = rows * (p + n_cand * c)
        logits = rows * (1 + n_cand * c) * vocab
        if current and (tokens > batch_tokens or logits > LOGITS_BUDGET):
            batches.append(current)
            current, p, c = [], len(layout.prefixes[i]), cont_len[layout.group[i]]
        current.append(i)
        widest_prefix, widest_cont = p, c
    if current:
        batches.append(current)
    return batches


def score_layout(model, layout: CandidateLayout, *, device, pad_id: int, seq2seq: bool,
                 batch_tokens: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Sum of log-probabilities of each prompt's candidates, and how many tokens each sum covers.

    Parameters
    ----------
    model
        A transformers causal or seq2seq LM in eval mode on ``device``.
    layout
        From :func:`c2t.generate._candidates.layout_candidates`.
    device
        Where the model is.
    pad_id
        The padding token id.
    seq2seq
        The model is an encoder-decoder.
    batch_tokens
        Tokens read per forward pass, at most (prompt + every candidate, per prompt); one prompt at least.

    Returns
    -------
    tuple of numpy.ndarray
        ``(sums, counts)``, each prompts x candidates; ``sums`` float64, ``counts`` int64.
    """
    import torch

    n_prompts, n_cand = len(layout.prefixes), layout.n_candidates
    sums = np.zeros((n_prompts, n_cand))
    counts = np.zeros((n_prompts, n_cand), dtype=np.int64)
    if n_prompts == 0:
        return sums, counts
    vocab = model.get_output_embeddings().weight.shape[0]
    if not seq2seq:
        longest = [len(p) + max(len(c) for c in layout.continuations[g])
                   for p, g in zip(layout.prefixes, layout.group, strict=True)]
        check_fits(model, longest, what="prompt + candidate label")
    for batch in _batches(layout, batch_tokens=batch_tokens, vocab=vocab):
        conts = [layout.continuations[layout.group[i]] for i in batch]
        width = max(len(c) for group in conts for c in group)
        cont = torch.full((len(batch), n_cand, width), pad_id, dtype=torch.long)
        cont_mask = torch.zeros((len(batch), n_cand, width), dtype=torch.long)
        scored = torch.zeros((len(batch), n_cand, width), dtype=torch.bool)
        for b, (i, group) in enumerate(zip(batch, conts, strict=True)):
            skip = layout.skip[layout.group[i]]
            for c, tokens in enumerate(group):
                cont[b, c, :len(tokens)] = torch.tensor(tokens)
                cont_mask[b, c, :len(tokens)] = 1
                scored[b, c, skip[c]:len(tokens)] = True
        cont, cont_mask = cont.to(device), cont_mask.to(device)
        with torch.inference_mode():
            if seq2seq:
                logp = _seq2seq_logprobs(model, [layout.prefixes[i] for i in batch], cont, cont_mask, pad_id, device)
            else:
                logp = _decoder_logprobs(model, [layout.prefixes[i] for i in batch], cont, cont_mask, pad_id, device)
        logp = logp.double().cpu() * scored
        sums[batch] = logp.sum(-1).numpy()
        counts[batch] = scored.sum(-1).numpy()
    return sums, counts


def _left_pad(rows: list[list[int]], pad_id: int, device):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            ids[b, width - len(r):] = torch.tensor(r)
            mask[b, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _decoder_logprobs(model, prefixes, cont, cont_mask, pad_id, device):
    """log p of every continuation token: (batch, candidates, width) float32."""
    import torch

    batch, n_cand, width = cont.shape
    ids, mask = _left_pad(prefixes, pad_id, device)
    # explicit positions: left padding must not shift the prompt (training saw it unpadded, from position 0)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=width > 1, logits_to_keep=1)
    first = _token_logprobs(out.logits[:, -1:].expand(batch, n_cand, -1), cont[:, :, 0])
    if width == 1:
        return first.unsqueeze(-1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(n_cand)
    lengths = mask.sum(-1).repeat_interleave(n_cand)
    step_ids = cont[:, :, :-1].reshape(batch * n_cand, width - 1)
    step_mask = torch.cat([mask.repeat_interleave(n_cand, 0), cont_mask[:, :, :-1].reshape(batch * n_cand, -1)], -1)
    step_pos = lengths[:, None] + torch.arange(width - 1, device=device)
    rest = model(input_ids=step_ids, attention_mask=step_mask, position_ids=step_pos, past_key_values=cache,
                 use_cache=True).logits
    rest = _token_logprobs(rest, cont[:, :, 1:].reshape(batch * n_cand, width - 1)).view(batch, n_cand, width - 1)
    return torch.cat([first.unsqueeze(-1), rest], -1)


def _seq2seq_logprobs(model, prefixes, cont, cont_mask, pad_id, device):
    import torch

    batch, n_cand, width = cont.shape
    longest = max(len(p) for p in prefixes)
    ids = torch.full((batch, longest), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, longest), dtype=torch.long)
    for b, p in enumerate(prefixes):
        ids[b, :len(p)] = torch.tensor(p)
        mask[b, :len(p)] = 1
    ids, mask = ids.to(device), mask.to(device)
    encoded = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    start = model.config.decoder_start_token_id
    start = pad_id if start is None else start
    flat = cont.reshape(batch * n_cand, width)
    decoder_in = torch.cat([torch.full((batch * n_cand, 1), start, dtype=torch.long, device=device), flat[:, :-1]], -1)
    decoder_mask = torch.cat([torch.ones_like(flat[:, :1]), cont_mask.reshape(batch * n_cand, width)[:, :-1]], -1)
    from transformers.modeling_outputs import BaseModelOutput

    logits = model(encoder_outputs=BaseModelOutput(last_hidden_state=encoded.repeat_interleave(n_cand, 0)),
                   attention_mask=mask.repeat_interleave(n_cand, 0), decoder_input_ids=decoder_in,
                   decoder_attention_mask=decoder_mask, use_cache=False).logits
    return _token_logprobs(logits, flat).view(batch, n_cand, width)


def score_pairs_naively(model, layout: CandidateLayout, *, device, seq2seq: bool) -> np.ndarray:
    """The same sums, one unpadded forward pass per ``prompt + candidate`` (slow; the tests' reference)."""
    import torch

    n_prompts, n_cand = len(layout.prefixes), layout.n_candidates
    sums = np.zeros((n_prompts, n_cand))
    with torch.inference_mode():
        for i in range(n_prompts):
            for c in range(n_cand):
                if seq2seq:
                    target = layout.continuations[layout.group[i]][c]
                    logits = model(input_ids=torch.tensor([layout.prefixes[i]], device=device),
                                   labels=torch.tensor([target], device=device)).logits[0]
                    logp = torch.log_softmax(logits.float(), -1)[torch.arange(len(target)), torch.tensor(target)]
                    sums[i, c] = float(logp.sum())
                    continue
                full, first = layout.full(i, c)
                logits = model(input_ids=torch.tensor([full], device=device)).logits[0].float()
                logp = torch.log_softmax(logits, -1)
                sums[i, c] = float(sum(logp[t - 1, full[t]] for t in range(first, len(full))))
    return sums


def softmax_scores(sums: np.ndarray, counts: np.ndarray, *, by: str = "sum") -> np.ndarray:
    """Probabilities over candidates from log-probability sums: ``by="sum"`` (the completion's probability) or
    ``"mean"`` (per token, so long labels are not penalised for their length).

    Examples
    --------
    >>> softmax_scores(np.log([[0.2, 0.1]]), np.array([[1, 1]])).round(3).tolist()
    [[0.667, 0.333]]
    """
    if by not in ("sum", "mean"):
        msg = f"score_by must be 'sum' or 'mean', not {by!r}"
        raise C2TInputError(msg)
    scores = sums if by == "sum" else sums / np.maximum(counts, 1)
    scores = scores - scores.max(axis=1, keepdims=True)
    weights = np.exp(scores)
    return weights / weights.sum(axis=1, keepdims=True)

