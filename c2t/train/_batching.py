"""Training batches sized by tokens, not by a record count.

On a GPU the cost of a step is its tokens; a fixed number of records per step wastes the GPU on short records
and overflows it on long ones. :class:`TokenBudgetBatchSampler` fills each batch up to a token budget with
records of similar length (little padding), and shuffles the order of the batches every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from c2t._errors import C2TInputError


class TokenBudgetBatchSampler:
    """Batches of record indices whose tokens fit ``max_tokens``.

    Each epoch the records are ordered by length (ties in a seeded random order, new each epoch) and cut into
    batches greedily; the batches are then shuffled. The cut points depend only on the sorted lengths, so every
    epoch has the same number of batches (what the learning-rate schedule counts), while which records of
    equal length share a batch changes.

    Parameters
    ----------
    lengths
        Tokens of each record.
    max_tokens
        Token budget of a batch: ``records x longest record`` when ``padded``, the sum of the records' tokens
        otherwise (padding-free batches). A record longer than the budget gets a batch of its own.
    max_records
        At most this many records per batch (``None``: no limit).
    padded
        Whether batches are padded to their longest record.
    seed
        Seeds the tie order and the batch order (with the epoch).

    Examples
    --------
    >>> s = TokenBudgetBatchSampler([5, 5, 5, 9, 2, 2], max_tokens=10, padded=True, seed=0)
    >>> batches = list(s)
    >>> sorted(len(b) for b in batches), sorted(i for b in batches for i in b), len(s)
    ([1, 1, 2, 2], [0, 1, 2, 3, 4, 5], 4)
    """

    def __init__(self, lengths: Sequence[int], *, max_tokens: int, max_records: int | None = None,
                 padded: bool = True, seed: int = 0) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            msg = f"max_tokens_per_batch must be a positive integer, not {max_tokens!r}"
            raise C2TInputError(msg)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.max_tokens, self.max_records, self.padded, self.seed = max_tokens, max_records, padded, seed
        self.epoch = 0
        self._cuts = self._cut(np.sort(self.lengths, kind="stable"))

    def _cut(self, sorted_lengths: np.ndarray) -> list[int]:
        """Batch end positions in the length-sorted order."""
        cuts, count, tokens = [], 0, 0
        for position, length in enumerate(sorted_lengths.tolist()):
            grown = (count + 1) * length if self.padded else tokens + length  # sorted: this record is the longest
            if count and (grown > self.max_tokens or (self.max_records is not None and count >= self.max_records)):
                cuts.append(position)
                count, tokens = 0, 0
            count += 1
            tokens += length
        if count:
            cuts.append(len(sorted_lengths))
        return cuts

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._cuts)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = np.lexsort((rng.random(len(self.lengths)), self.lengths))  # by length, ties at random
        starts = [0, *self._cuts[:-1]]
        batches = [order[a:b].tolist() for a, b in zip(starts, self._cuts, strict=True)]
        for i in rng.permutation(len(batches)):
            yield batches[i]
