"""Numba kernels: the per-cell loops that numpy cannot vectorise without padding every row.

Ranking packs each non-zero into one ``uint64`` key: the float32 bit pattern of the value in the high 32
bits (for non-negative floats the bit pattern orders like the value) and a per-cell permutation of the gene
id in the low 32 bits. Keys are unique within a cell, so "value descending, then the seeded permutation"
is a total order: ties are broken deterministically by ``(seed, global cell index, gene id)`` alone, the
same in every chunking and worker count. The permutation is invertible, so the gene id comes back from
the key and no index array has to travel with the values.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@nb.njit(inline="always")
def _mix(z):
    # splitmix64 finaliser: a good 64-bit hash of a 64-bit integer
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@nb.njit(inline="always")
def _cell_constants(seed, cell):
    z = _mix(np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(cell))
    mult = (z & np.uint64(0xFFFFFFFF)) | np.uint64(1)  # odd: invertible modulo 2**m
    add = z >> np.uint64(32)
    inv = mult
    for _ in range(6):  # Newton iteration for the inverse modulo 2**64
        inv = inv * (np.uint64(2) - mult * inv)
    return mult, add, inv


@nb.njit(inline="always")
def _sift_up(heap, i):
    """Restore the min-heap order after ``heap[i]`` was appended."""
    while i > 0:
        parent = (i - 1) // 2
        if heap[i] >= heap[parent]:
            return
        tmp = heap[i]
        heap[i] = heap[parent]
        heap[parent] = tmp
        i = parent


@nb.njit(inline="always")
def _sift_down(heap, i, size):
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        child = left
        if left + 1 < size and heap[left + 1] < heap[left]:
            child = left + 1
        if heap[child] < heap[i]:
            tmp = heap[child]
            heap[child] = heap[i]
            heap[i] = tmp
            i = child
        else:
            return


#: Rows per parallel work item. Scratch buffers are allocated once per block (a per-row allocation costs
#: about as much as ranking the row) and the threshold guess is carried from row to row within a block.
_BLOCK = 128
#: The guess for a row's k-th largest value is the previous row's, lowered by this much in float32 bits
#: (1/8 of a binade: about 6-12 % in value) so that usually a little more than k values pass it.
_GUESS_MARGIN = np.uint32(1 << 20)


@nb.njit(parallel=True, cache=True, nogil=True)
def scan_rows(indptr, indices, data, col_map, identity):
    """Per row: the number of positive kept entries; and for the block: bad values and non-integers.

    Returns ``(n_positive, n_bad, n_non_integer)``; ``n_bad`` counts negative, NaN and infinite values.
    ``identity`` says every column is kept as itself (``col_map`` is ``arange``), which skips the lookups.
    """
    n = len(indptr) - 1
    n_positive = np.zeros(n, np.int64)
    bad = np.zeros(n, np.int64)
    non_integer = np.zeros(n, np.int64)
    for i in nb.prange(n):
        # int32 counters and bitwise (not short-circuit) operators keep the loop branch-free: it vectorises
        count = np.int32(0)
        n_bad = np.int32(0)
        n_frac = np.int32(0)
        for j in range(indptr[i], indptr[i + 1]):
            v = data[j]
            n_bad += np.int32((v < 0.0) | (v != v) | (v == np.inf))
            n_frac += np.int32(v != np.floor(v))
            count += np.int32(v > 0.0)
        if not identity:  # recount without the dropped columns (rare: most inputs keep every column)
            count = np.int32(0)
            for j in range(indptr[i], indptr[i + 1]):
                count += np.int32((data[j] > 0.0) & (col_map[indices[j]] >= 0))
        n_positive[i] = count
        bad[i] = n_bad
        non_integer[i] = n_frac
    return n_positive, bad.sum(), non_integer.sum()


@nb.njit(inline="always")
def _median3(a, b, c):
    if a < b:
        return b if b < c else max(a, c)
    return a if a < c else max(b, c)


@nb.njit(inline="always")
def _select_top(values, n, k):
    """Partition ``values[:n]`` in place so that ``values[:k]`` are the ``k`` largest; return the k-th largest.

    Quickselect (Hoare partition, median-of-three pivot); equal values are fine.
    """
    lo, hi = 0, n - 1
    target = k - 1
    while lo < hi:
        pivot = _median3(values[lo], values[(lo + hi) >> 1], values[hi])
        i, j = lo, hi
        while i <= j:
            while values[i] > pivot:
                i += 1
            while values[j] < pivot:
                j -= 1
            if i <= j:
                tmp = values[i]
                values[i] = values[j]
                values[j] = tmp
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break
    return values[target]


@nb.njit(inline="always")
def _collect(value_bits, indices, col_map, identity, start, stop, floor, out):
    """Copy the kept values with bits >= ``floor`` (>= 1: zeros never pass) of one row into ``out``."""
    count = 0
    for j in range(start, stop):
        bits = value_bits[j]
        if bits >= floor and bits < np.uint32(0x80000000) and (identity or col_map[indices[j]] >= 0):
            out[count] = bits
            count += 1
    return count


@nb.njit(parallel=True, cache=True, nogil=True)
def rank_rows(indptr, indices, value_bits, col_map, identity, row0, seed, mbits, lengths, offsets, out_ids,
              out_values):
    """Write each row's top ``lengths[i]`` genes (value descending, seeded tie-break) at ``offsets[i]``.

    ``value_bits`` is the float32 data viewed as uint32 (see :func:`float_bits`); values were validated
    (no NaN, no negatives) before, so positive values are exactly the non-zero bit patterns.

    Count data has few distinct values per cell (hundreds of genes share the value of one count), so the
    work is split in two passes. The first finds the k-th largest value: the values at or above a guess
    (the previous row's k-th value, lowered a little; neighbouring cells look alike) are copied out and a
    quickselect picks the k-th among them; if fewer than k pass the guess, every value is a candidate.
    The second builds keys for the genes above that value (all kept) and, among the genes tied at it,
    keeps those with the largest seeded permutation; the kept keys are then sorted. The guess only
    decides how much work the first pass does, never the result.
    """
    n = len(indptr) - 1
    mask = np.uint64((1 << mbits) - 1)
    shift = np.uint64((mbits + 1) // 2)  # 2 * shift >= mbits: x ^ (x >> shift) is its own inverse
    for b in nb.prange((n + _BLOCK - 1) // _BLOCK):
        lo, hi = b * _BLOCK, min(n, (b + 1) * _BLOCK)
        max_len, max_k = 1, 1
        for i in range(lo, hi):
            max_len = max(max_len, indptr[i + 1] - indptr[i])
            max_k = max(max_k, lengths[i])
        candidates = np.empty(max_len, np.uint32)
        keys = np.empty(max_k, np.uint64)
        tied = np.empty(max_k, np.uint64)  # min-heap of the best tied keys
        guess = np.uint32(1)
        for i in range(lo, hi):
            k = lengths[i]
            if k == 0:
                continue
            start, stop = indptr[i], indptr[i + 1]
            # pass 1: the k-th largest value (as bits) among the kept positive entries
            n_candidates = _collect(value_bits, indices, col_map, identity, start, stop, guess, candidates)
            if n_candidates < k:
                n_candidates = _collect(value_bits, indices, col_map, identity, start, stop, np.uint32(1), candidates)
            threshold = _select_top(candidates, n_candidates, k)
            guess = threshold - _GUESS_MARGIN if threshold > _GUESS_MARGIN else np.uint32(1)
            n_above = 0
            for t in range(k):
                n_above += candidates[t] > threshold
            n_tied = k - n_above  # how many of the genes at the threshold value are kept
            # pass 2: keys of the kept genes
            mult, add, inv = _cell_constants(seed, row0 + i)
            n_keys = 0
            n_tied_kept = 0
            for j in range(start, stop):
                bits = value_bits[j]
                if bits < threshold or bits >= np.uint32(0x80000000):
                    continue
                gene = indices[j] if identity else col_map[indices[j]]
                if gene < 0:
                    continue
                x = (np.uint64(gene) * mult + add) & mask
                x = x ^ (x >> shift)
                key = (np.uint64(bits) << np.uint64(32)) | x
                if bits > threshold:
                    keys[n_keys] = key
                    n_keys += 1
                elif n_tied_kept < n_tied:
                    tied[n_tied_kept] = key
                    _sift_up(tied, n_tied_kept)
                    n_tied_kept += 1
                elif key > tied[0]:
                    tied[0] = key
                    _sift_down(tied, 0, n_tied_kept)
            for t in range(n_tied_kept):
                keys[n_keys + t] = tied[t]
            keys[:k].sort()
            base = offsets[i]
            for t in range(k):  # ascending keys: write from the end for descending order
                key = keys[t]
                x = key & mask
                x = x ^ (x >> shift)
                out_ids[base + k - 1 - t] = np.int32(((x - add) * inv) & mask)
                out_values[base + k - 1 - t] = np.uint32(key >> np.uint64(32))


@nb.njit(inline="always")
def _radix_sort(keys, scratch, n, counts):
    """Sort ``keys[:n]`` (uint32) ascending by three 11-bit LSD radix passes that alternate between ``keys``
    and ``scratch``; return the one holding the result. About twice as fast as a comparison sort on rows
    of hundreds to thousands of values."""
    src, dst = keys, scratch
    for shift in (0, 11, 22):
        counts[:] = 0
        for t in range(n):
            counts[(src[t] >> shift) & 2047] += 1
        total = 0
        for d in range(2048):
            c = counts[d]
            counts[d] = total
            total += c
        for t in range(n):
            d = (src[t] >> shift) & 2047
            dst[counts[d]] = src[t]
            counts[d] += 1
        src, dst = dst, src
    return src


@nb.njit(parallel=True, cache=True, nogil=True)
def sorted_row_values(indptr, indices, data, value_bits, col_map, rows, lengths, offsets, out_values, out_totals):
    """For each row in ``rows``: its positive kept values in descending order (at ``offsets``, as float32)
    and the sum of all its values (the library size, over every column). ``value_bits`` is
    :func:`float_bits` of ``data``."""
    n = len(rows)
    for b in nb.prange((n + _BLOCK - 1) // _BLOCK):
        lo, hi = b * _BLOCK, min(n, (b + 1) * _BLOCK)
        size = max(1, lengths[lo:hi].max())
        keys, scratch = np.empty(size, np.uint32), np.empty(size, np.uint32)
        counts = np.empty(2048, np.int64)
        for r in range(lo, hi):
            i = rows[r]
            count = 0
            total = 0.0
            for j in range(indptr[i], indptr[i + 1]):
                total += data[j]
                bits = value_bits[j]
                if bits > 0 and bits < np.uint32(0x80000000) and col_map[indices[j]] >= 0:
                    keys[count] = bits
                    count += 1
            ordered = _radix_sort(keys, scratch, count, counts).view(np.float32)
            base = offsets[r]
            for t in range(count):
                out_values[base + t] = ordered[count - 1 - t]
            out_totals[r] = total


@nb.njit(cache=True, nogil=True)
def accumulate_rank_stats(offsets, values, count, total, total_sq):
    """Add each row's values (in rank order) to the per-rank count, sum and sum of squares."""
    for r in range(len(offsets) - 1):
        base = offsets[r]
        for t in range(offsets[r + 1] - base):
            v = values[base + t]
            count[t] += 1.0
            total[t] += v
            total_sq[t] += v * v


@nb.njit(cache=True)
def dedupe_tokens(rows, genes, n_rows, n_genes):
    """Keep the first occurrence of each gene in each row; return the kept mask and each kept token's rank.

    ``rows`` is non-decreasing. Ranks count kept tokens within the row from 1.
    """
    seen = np.full(n_genes, -1, np.int64)
    keep = np.zeros(len(rows), np.bool_)
    rank = np.zeros(len(rows), np.int32)
    current = -1
    r = 0
    for t in range(len(rows)):
        row = rows[t]
        if row != current:
            current = row
            r = 0
        g = genes[t]
        if g < 0 or seen[g] == row:
            continue
        seen[g] = row
        r += 1
        keep[t] = True
        rank[t] = r
    return keep, rank


def float_bits(data: np.ndarray) -> np.ndarray:
    """The values as float32 bit patterns (uint32): for non-negative floats they order like the values."""
    return np.ascontiguousarray(data, dtype=np.float32).view(np.uint32)


def bits_for(n_genes: int) -> int:
    """Bits needed to hold gene ids ``0..n_genes-1`` (at least 1)."""
    return max(1, int(n_genes - 1).bit_length())
