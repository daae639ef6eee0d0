"""Which tokens to score when a model rates candidate completions (labels) of prompts.

A candidate is scored the way training saw it: the record ``prompt + completion`` is tokenised whole (TRL does the
same), the completion starts where that tokenisation leaves the prompt's own one (usually right after the prompt;
earlier when tokens merge across the boundary), and it ends with what training appended: EOS for a raw prompt,
the chat template's end-of-turn for a chat run, EOS for T5. Ending on that token is what tells "CD4 T" from
"CD4 T memory": a label that is the prefix of another still gets its own probability.

Prompts whose formatted text ends the same way share one layout of their candidates (a tokeniser's merges do not
reach across more than a few characters), so a thousand cells cost one tokenisation of ``prompt + candidate`` per
candidate and template ending, not per cell.

Only the standard library here: the vLLM backend uses this in an environment without c2t's scientific stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from c2t._errors import C2TInputError

#: Characters at the end of a formatted prompt that decide how its boundary with a completion tokenises.
SUFFIX_CHARS = 64


@dataclass(frozen=True)
class CandidateLayout:
    """Token ids of prompts and of their candidate completions.

    Attributes
    ----------
    prefixes
        Per prompt: the tokens every candidate continues (the model reads them once).
    group
        Per prompt: the index of its candidates' layout in ``continuations`` / ``skip``.
    continuations
        Per group, per candidate: the tokens after the prefix (the completion, and before it any prompt tokens
        that a boundary merge moved into the completion's tokenisation).
    skip
        Per group, per candidate: how many leading continuation tokens are context, not scored.
    """

    prefixes: list[list[int]]
    group: list[int]
    continuations: list[list[list[int]]]
    skip: list[list[int]]

    @property
    def n_candidates(self) -> int:
        return len(self.continuations[0]) if self.continuations else 0

    def scored_tokens(self, prompt: int, candidate: int) -> list[int]:
        """The tokens whose log-probabilities make candidate ``candidate``'s score after prompt ``prompt``."""
        g = self.group[prompt]
        return self.continuations[g][candidate][self.skip[g][candidate]:]

    def full(self, prompt: int, candidate: int) -> tuple[list[int], int]:
        """``(token ids of prompt + candidate, index of the first scored token)`` for one pair."""
        g = self.group[prompt]
        prefix = self.prefixes[prompt]
        return prefix + self.continuations[g][candidate], len(prefix) + self.skip[g][candidate]


def check_candidates(candidates: Sequence[str]) -> list[str]:
    """Candidates as a list of distinct, non-empty strings; at least two (one label is no choice)."""
    if isinstance(candidates, str):
        msg = "candidates must be a list of strings, not one string"
        raise C2TInputError(msg)
    candidates = list(candidates)
    bad = [c for c in candidates if not isinstance(c, str) or not c.strip()]
    if bad:
        msg = f"candidates must be non-empty strings; found {bad[0]!r}"
        raise C2TInputError(msg)
    if len(set(candidates)) != len(candidates):
        seen: set[str] = set()
        dup = next(c for c in candidates if c in seen or seen.add(c))
        msg = f"candidate {dup!r} is listed twice"
        raise C2TInputError(msg)
    if len(candidates) < 2:
        msg = (f"scoring by likelihood needs at least two candidate labels, found {len(candidates)} "
               f"({', '.join(map(repr, candidates)) or 'none'}): with one label there is nothing to choose")
        raise C2TInputError(msg)
    return candidates


def _ids(encoded) -> list[list[int]]:
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return [list(x) for x in ids]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def layout_candidates(tokenizer, prompts: Sequence[str], candidates: Sequence[str], *, chat: bool,
                      seq2seq: bool = False) -> CandidateLayout:
    """Tokenise prompts and candidate completions as the run trained on them.

    Parameters
    ----------
    tokenizer
        The run's tokenizer (a transformers tokenizer).
    prompts
        The task's prompt text, one per cell (what the instruction dataset's ``prompt`` column holds).
    candidates
        The completions to score (the run's labels).
    chat
        Prompts go through the tokenizer's chat template (a ``messages`` run).
    seq2seq
        An encoder-decoder model: the prompt is the encoder's input and each candidate the decoder's, with EOS.

    Returns
    -------
    CandidateLayout
    """
    candidates = check_candidates(candidates)
    prompts = list(prompts)
    if seq2seq:
        prefixes = _ids(tokenizer(prompts))
        targets = _ids(tokenizer(candidates))
        eos = tokenizer.eos_token_id
        targets = [t if t and t[-1] == eos else [*t, eos] for t in targets]
        return CandidateLayout(prefixes, [0] * len(prompts), [targets], [[0] * len(candidates)])
    if chat:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
        special = False
    else:
        texts, special = prompts, True
    prefixes = _ids(tokenizer(texts, add_special_tokens=special))
    groups: dict[str, int] = {}
    group = []
    continuations: list[list[list[int]]] = []
    skips: list[list[int]] = []
    trims: list[int] = []
    eos = tokenizer.eos_token_id
    for i, text in enumerate(texts):
        key = text[-SUFFIX_CHARS:]
        if key not in groups:
            groups[key] = len(continuations)
            if chat:
                fulls = [tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompts[i]}, {"role": "assistant", "content": c}], tokenize=False)
                    for c in candidates]
            else:
                fulls = [text + c for c in candidates]
            full_ids = _ids(tokenizer(fulls, add_special_tokens=special))
            if not chat:  # training appends EOS to a raw completion
                full_ids = [f if f and f[-1] == eos else [*f, eos] for f in full_ids]
            starts = [_common_prefix(prefixes[i], f) for f in full_ids]
            shared = min(starts)
            for c, (f, start) in enumerate(zip(full_ids, starts, strict=True)):
                if start >= len(f):
                    msg = (f"candidate {candidates[c]!r} adds no token after the prompt; it cannot be scored "
                           "(is the tokenizer dropping it?)")
                    raise C2TInputError(msg)
            continuations.append([f[shared:] for f in full_ids])
            skips.append([start - shared for start in starts])
            trims.append(len(prefixes[i]) - shared)
        g = groups[key]
        group.append(g)
        if trims[g]:
            prefixes[i] = prefixes[i][:len(prefixes[i]) - trims[g]]
    return CandidateLayout(prefixes, group, continuations, skips)
