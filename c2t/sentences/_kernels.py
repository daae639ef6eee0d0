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


@nb.njit(parallel=True, cache=True, nogil=True)
def scan_rows(indptr, indices, data, col_map):
    """Per row: the number of positive kept entries; and for the block: bad values and non-integers.

    Returns ``(n_positive, n_bad, n_non_integer)``; ``n_bad`` counts negative, NaN and infinite values.
    """
    n = len(indptr) - 1
    n_positive = np.zeros(n, np.int64)
    bad = np.zeros(n, np.int64)
    non_integer = np.zeros(n, np.int64)
    for i in nb.prange(n):
        count = 0
        n_bad = 0
        n_frac = 0
        for j in range(indptr[i], indptr[i + 1]):
            v = data[j]
            if not (v >= 0.0) or np.isinf(v):
                n_bad += 1
            elif v > 0.0:
                if v != np.floor(v):
                    n_frac += 1
                if col_map[indices[j]] >= 0:
                    count += 1
        n_positive[i] = count
        bad[i] = n_bad
        non_integer[i] = n_frac
    return n_positive, bad.sum(), non_integer.sum()


@nb.njit(parallel=True, cache=True, nogil=True)
def rank_rows(indptr, indices, value_bits, col_map, row0, seed, mbits, lengths, offsets, out_ids, out_values):
    """Write each row's top ``lengths[i]`` genes (value descending, seeded tie-break) at ``offsets[i]``.

    ``value_bits`` is the float32 data viewed as uint32 (see :func:`float_bits`); values were validated
    (no NaN, no negatives) before, so positive values are exactly the non-zero bit patterns.

    Count data has few distinct values per cell (hundreds of genes share the value of one count), so the
    work is split in two passes. The first finds the k-th largest value with a heap of value bits alone:
    a value equal to the current k-th cannot change it, so ties cost one comparison. The second builds keys
    for the genes above that value (all kept) and, among the genes tied at it, keeps those with the largest
    seeded permutation; the kept keys are then sorted.
    """
    n = len(indptr) - 1
    mask = np.uint64((1 << mbits) - 1)
    shift = np.uint64((mbits + 1) // 2)  # 2 * shift >= mbits: x ^ (x >> shift) is its own inverse
    for i in nb.prange(n):
        k = lengths[i]
        if k == 0:
            continue
        start, stop = indptr[i], indptr[i + 1]
        # pass 1: the k-th largest value (as bits) among the kept positive entries
        heap = np.empty(k, np.uint32)
        size = 0
        for j in range(start, stop):
            bits = value_bits[j]
            if bits == 0 or bits >= np.uint32(0x80000000):
                continue
            if size == k and bits <= heap[0]:
                continue  # cannot change the k-th largest value: most entries end here
            if col_map[indices[j]] < 0:
                continue
            if size < k:
                heap[size] = bits
                c = size
                size += 1
                while c > 0:
                    p = (c - 1) // 2
                    if heap[c] < heap[p]:
                        tmp = heap[c]
                        heap[c] = heap[p]
                        heap[p] = tmp
                        c = p
                    else:
                        break
            else:
                heap[0] = bits
                _sift_down(heap, 0, size)
        threshold = heap[0]
        n_above = 0
        for t in range(size):
            if heap[t] > threshold:
                n_above += 1
        n_tied = k - n_above  # how many of the genes at the threshold value are kept
        # pass 2: keys of the kept genes
        mult, add, inv = _cell_constants(seed, row0 + i)
        keys = np.empty(k, np.uint64)
        tied = np.empty(n_tied, np.uint64)  # min-heap of the best tied keys
        n_keys = 0
        n_tied_kept = 0
        for j in range(start, stop):
            bits = value_bits[j]
            if bits < threshold or bits >= np.uint32(0x80000000):
                continue
            gene = col_map[indices[j]]
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
                c = n_tied_kept
                n_tied_kept += 1
                while c > 0:
                    p = (c - 1) // 2
                    if tied[c] < tied[p]:
                        tmp = tied[c]
                        tied[c] = tied[p]
                        tied[p] = tmp
                        c = p
                    else:
                        break
            elif key > tied[0]:
                tied[0] = key
                _sift_down(tied, 0, n_tied_kept)
        for t in range(n_tied_kept):
            keys[n_keys + t] = tied[t]
        keys = np.sort(keys)
        base = offsets[i]
        for t in range(k):  # ascending keys: write from the end for descending order
            key = keys[t]
            x = key & mask
            x = x ^ (x >> shift)
            out_ids[base + k - 1 - t] = np.int32(((x - add) * inv) & mask)
            out_values[base + k - 1 - t] = np.uint32(key >> np.uint64(32))


@nb.njit(parallel=True, cache=True, nogil=True)
def sorted_row_values(indptr, indices, data, col_map, rows, lengths, offsets, out_values, out_totals):
    """For each row in ``rows``: its positive kept values in descending order (at ``offsets``) and the sum
    of all its values (the library size, over every column)."""
    for r in nb.prange(len(rows)):
        i = rows[r]
        buffer = np.empty(lengths[r], np.float32)
        count = 0
        total = 0.0
        for j in range(indptr[i], indptr[i + 1]):
            v = data[j]
            total += v
            if v > 0.0 and col_map[indices[j]] >= 0:
                buffer[count] = v
                count += 1
        buffer = np.sort(buffer[:count])
        base = offsets[r]
        for t in range(count):
            out_values[base + t] = buffer[count - 1 - t]
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
