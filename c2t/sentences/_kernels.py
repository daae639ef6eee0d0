"""Numba kernels: the per-cell loops that numpy cannot vectorise without padding every row.

Ranking packs each non-zero into one ``uint64`` key: the float32 bit pattern of the value in the high 32
bits (for non-negative floats the bit pattern orders like the value) and a per-cell permutation of the gene
id in the low 32 bits. Keys are unique within a cell, so "value descending, then the seeded permutation"
is a total order: ties are broken deterministically by ``(seed, global cell index, gene id)`` alone, the
same in every chunking and worker count. The permutation is invertible, so the gene id comes back from
the key and no index array has to travel with the values.

Helpers are plain ``@nb.njit`` functions (same speed, measured), except the few tiny ones called in tight
loops: numba-level ``inline="always"`` copies a helper's IR into every call site and made compiling
``rank_rows`` 3 s slower per signature (the test suite compiles several).
"""

from __future__ import annotations

import numba as nb
import numpy as np


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


#: Rows per parallel work item. Scratch buffers are allocated once per block (a per-row allocation costs
#: about as much as ranking the row) and the threshold guess is carried from row to row within a block.
_BLOCK = 128
#: The guess for a row's k-th largest value is the previous row's, lowered by this much in float32 bits
#: (1/8 of a binade: about 6-12 % in value) so that usually a little more than k values pass it.
_GUESS_MARGIN = np.uint32(1 << 20)
#: One binade (a factor of 2 in value) in float32 bits: the first step down when the guess was too high.
_BINADE = np.uint32(1 << 23)
#: Up to this many keys are sorted by counting larger keys (O(k^2) but vectorised), beyond it radix-sorted
#: (measured: counting wins at k = 120 by 7%, radix at k = 180 by 7% and at k = 250 by 22%).
_RANK_SORT_MAX = 128


@nb.njit
def _median3(a, b, c):
    if a < b:
        return b if b < c else max(a, c)
    return a if a < c else max(b, c)


@nb.njit
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


#: Float32 bit patterns: ``1 .. _POSITIVE_MAX`` are the positive finite floats; at or above ``_INF`` (except
#: ``-0.0``) come +inf, NaN and every negative value.
_POSITIVE_MAX = np.uint32(0x7F7FFFFF)
_INF = np.uint32(0x7F800000)
_NEGATIVE_ZERO = np.uint32(0x80000000)


@nb.njit
def _count_row(bits_row, idx_row, col_map, identity):
    """A row's kept positive values (every column kept when ``identity``, else those with ``col_map >= 0``) and
    its largest bit pattern other than ``-0.0`` (>= ``_INF``: a negative, NaN or infinite value is present).

    The row arrives as slices: with indices from 0 numba knows no index is negative and LLVM vectorises the
    loop (``range(start, stop)`` over the whole array runs ~3x slower). ``identity`` is loop-invariant:
    LLVM takes the test out of the loop (measured: as fast as a loop without the column map).
    """
    n_positive = 0
    worst = np.uint32(0)
    for j in range(len(bits_row)):
        bits = bits_row[j]
        worst = max(worst, np.uint32(0) if bits == _NEGATIVE_ZERO else bits)
        # 1 <= bits <= _POSITIVE_MAX, by unsigned wrap-around
        n_positive += ((bits - np.uint32(1)) < _POSITIVE_MAX) & (identity or col_map[idx_row[j]] >= 0)
    return n_positive, worst


@nb.njit
def _has_fraction(values_row):
    """Whether any value of the row is not a whole number (an or-reduction: vectorised)."""
    found = False
    for j in range(len(values_row)):
        found |= values_row[j] != np.floor(values_row[j])
    return found


@nb.njit
def _collect_row(bits_row, idx_row, col_map, identity, floor, out):
    """Write the row positions of the kept values (see :func:`_count_row`) with bits >= ``floor`` (>= 1) to
    ``out``; return how many. Branch-free (every position is written; the count advances by the condition)."""
    count = 0
    for j in range(len(bits_row)):
        bits = bits_row[j]
        out[count] = np.uint32(j)
        count += ((bits - np.uint32(1)) < _POSITIVE_MAX) & (bits >= floor) & (identity or col_map[idx_row[j]] >= 0)
    return count


@nb.njit
def _rank_sort(keys, n, out):
    """Write ``keys[:n]`` (distinct) to ``out`` in descending order: each key's place is the number of larger
    keys. O(n^2) comparisons, but branch-free and vectorised: faster than a radix sort up to ~150 keys."""
    for t in range(n):
        x = keys[t]
        place = 0
        for u in range(n):
            place += keys[u] > x
        out[place] = x


@nb.njit(parallel=True, cache=True, nogil=True)
def rank_rows(indptr, indices, value_bits, col_map, identity, check_integer, row0, seed, mbits, top_k, offsets,
              out_ids):
    """Validate every row and write its top ``top_k`` genes (value descending, seeded tie-break) at ``offsets[i]``.

    ``value_bits`` is the float32 data viewed as uint32 (see :func:`float_bits`): for non-negative floats the bit
    patterns order like the values. ``offsets`` give each row a slot of ``min(top_k, stored values)``; a row
    fills ``min(top_k, n_positive[i])`` of it (explicit zeros and dropped columns leave the rest unwritten).
    Returns ``(n_positive, n_bad, n_non_integer)``: per-row kept positive values, and the numbers of rows
    holding bad values (negative, NaN, infinite) and non-integer values (checked only when ``check_integer``);
    when ``n_bad`` is not zero the written ids are meaningless.

    A vectorised pass counts and validates the row; a second, branch-free pass over the now cached row collects
    the positions of the values at or above a guess of the k-th largest (the previous row's k-th value, lowered
    a little: neighbouring cells look alike); when fewer than k pass, the guess is lowered by a binade, then to
    every positive value. Keys are built for the collected genes only (usually a little more than k), a
    quickselect keeps the k largest and they are sorted (by counting larger keys up to ``_RANK_SORT_MAX``, else
    radix). The guess only decides how much work is done, never the result.
    """
    n = len(indptr) - 1
    mask = np.uint64((1 << mbits) - 1)
    shift = np.uint64((mbits + 1) // 2)  # 2 * shift >= mbits: x ^ (x >> shift) is its own inverse
    values = value_bits.view(np.float32)
    n_positive = np.zeros(n, np.int64)
    bad = np.zeros(n, np.int64)
    non_integer = np.zeros(n, np.int64)
    for b in nb.prange((n + _BLOCK - 1) // _BLOCK):
        lo, hi = b * _BLOCK, min(n, (b + 1) * _BLOCK)
        max_len = 1
        for i in range(lo, hi):
            max_len = max(max_len, indptr[i + 1] - indptr[i])
        positions = np.empty(max_len, np.uint32)
        keys = np.empty(max_len, np.uint64)
        scratch = np.empty(max_len, np.uint64)
        counts = np.empty(2048, np.int64)
        guess = np.uint32(1)
        for i in range(lo, hi):
            start, stop = indptr[i], indptr[i + 1]
            bits_row, idx_row = value_bits[start:stop], indices[start:stop]
            n_pos, worst = _count_row(bits_row, idx_row, col_map, identity)
            n_positive[i] = n_pos
            bad[i] = worst >= _INF
            if check_integer:
                non_integer[i] = _has_fraction(values[start:stop])
            k = min(top_k, n_pos)
            if k == 0:
                continue
            floor = guess if k < n_pos else np.uint32(1)  # a full row needs every value anyway
            tries = 0
            while True:  # when the guess was too high, lower it by a binade, then take every positive value
                n_cand = _collect_row(bits_row, idx_row, col_map, identity, floor, positions)
                if n_cand >= k:
                    break
                floor = np.uint32(floor - _BINADE) if tries == 0 and floor > _BINADE else np.uint32(1)
                tries += 1
            mult, add, inv = _cell_constants(seed, row0 + i)
            for t in range(n_cand):
                j = positions[t]
                gene = idx_row[j] if identity else col_map[idx_row[j]]
                x = (np.uint64(gene) * mult + add) & mask
                x = x ^ (x >> shift)
                keys[t] = (np.uint64(bits_row[j]) << np.uint64(32)) | x
            if n_cand > k:
                kth = _select_top(keys, n_cand, k)
                guess = np.uint32(kth >> np.uint64(32))
                guess = np.uint32(guess - _GUESS_MARGIN) if guess > _GUESS_MARGIN else np.uint32(1)
            if k <= _RANK_SORT_MAX:
                _rank_sort(keys, k, scratch)
                ordered = scratch
            else:
                _radix_sort(keys[:k], scratch[:k], counts)
                ordered = keys[:k][::-1]
            base = offsets[i]
            for t in range(k):
                x = ordered[t] & mask
                x = x ^ (x >> shift)
                out_ids[base + t] = np.int32(((x - add) * inv) & mask)
    return n_positive, bad.sum(), non_integer.sum()


@nb.njit
def _radix_sort(keys, tmp, count):
    """Sort ``keys`` (unsigned integers) ascending in place: LSD radix on 8-bit digits, every digit's histogram
    in one pass, skipping the digits that all keys share. ``tmp`` is scratch of the same length and dtype;
    ``count`` an int64 scratch array of at least ``256 * keys.itemsize``. Faster than a comparison sort from
    a hundred keys on (no unpredictable branches)."""
    n = len(keys)
    if n < 2:
        return
    n_digits = keys.itemsize
    hist = count[: 256 * n_digits].reshape(n_digits, 256)
    hist[:, :] = 0
    for q in range(n):
        k = np.uint64(keys[q])
        for d in range(n_digits):
            hist[d, (k >> np.uint64(8 * d)) & np.uint64(0xFF)] += 1
    src, dst = keys, tmp
    for d in range(n_digits):
        shift = np.uint64(8 * d)
        h = hist[d]
        if h[(np.uint64(src[0]) >> shift) & np.uint64(0xFF)] == n:
            continue  # every key has this digit: the pass would not move anything
        total = 0
        for b in range(256):
            c = h[b]
            h[b] = total
            total += c
        for q in range(n):
            b = (np.uint64(src[q]) >> shift) & np.uint64(0xFF)
            dst[h[b]] = src[q]
            h[b] += 1
        src, dst = dst, src
    if src is not keys:
        keys[:] = src


@nb.njit(fastmath=True)
def _row_sum(values_row):
    """The sum of a row's values (fastmath lets LLVM reorder the additions and vectorise them; count data are
    integers, whose float64 sum is exact in any order)."""
    total = 0.0
    for j in range(len(values_row)):
        total += values_row[j]
    return total


#: Slots of the hash table that groups a row's equal values (a power of two; at most half of it is filled).
_TABLE = 4096


@nb.njit
def _slot(bits):
    """A slot of the ``_TABLE``-entry hash table for a float32 bit pattern (Fibonacci hashing, top 12 bits)."""
    return np.int64(((bits * np.uint32(0x9E3779B1)) & np.uint32(0xFFFFFFFF)) >> np.uint32(20))


@nb.njit
def _add_run(dcount, dtotal, dtotal_sq, b, rank, length, v):
    """Add value ``v`` at ranks ``rank .. rank + length - 1`` (0-based) to block ``b``'s difference arrays."""
    dcount[b, rank] += 1.0
    dcount[b, rank + length] -= 1.0
    dtotal[b, rank] += v
    dtotal[b, rank + length] -= v
    dtotal_sq[b, rank] += v * v
    dtotal_sq[b, rank + length] -= v * v


@nb.njit(parallel=True, cache=True, nogil=True)
def rank_value_stats(indptr, indices, value_bits, col_map, rows, lengths, library_sizes, target_sum, counts_input):
    """Per-rank count, sum and sum of squares of expression over ``rows`` (each row's positive kept values in
    descending order; ``lengths[r]`` of them).

    With ``counts_input`` a value is first normalised as ``log1p(value * target_sum / library size)``, the
    library size being ``library_sizes[r]`` when that array is not empty, else the sum of the row's values.

    Equal values are interchangeable here, and count data has few distinct values per cell (a few dozen among
    thousands of genes), so a row's values are grouped in a hash table and only the distinct ones are sorted;
    each distinct value then covers a run of ranks, added to difference arrays. A row with many distinct
    values (more than a quarter of its entries: continuous data) is radix-sorted whole instead, and so is the
    rest of its block. Each block of rows adds into its own arrays (summed at the end).
    """
    values = value_bits.view(np.float32)
    dropped = (col_map < 0).any()
    n = len(rows)
    size = max(1, lengths.max()) if n else 1
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    dcount = np.zeros((n_blocks, size + 1))
    dtotal = np.zeros((n_blocks, size + 1))
    dtotal_sq = np.zeros((n_blocks, size + 1))
    for b in nb.prange(n_blocks):
        lo, hi = b * _BLOCK, min(n, (b + 1) * _BLOCK)
        width = max(_TABLE // 2 + 1, lengths[lo:hi].max() + 1)  # + 1: the branch-free fill writes one past
        keys, scratch = np.empty(width, np.uint32), np.empty(width, np.uint32)
        digit_counts = np.empty(1024, np.int64)
        slot_key = np.zeros(_TABLE, np.uint32)
        slot_count = np.zeros(_TABLE, np.int64)
        slot_row = np.full(_TABLE, -1, np.int64)  # which row filled the slot: no clearing between rows
        grouped = True
        for r in range(lo, hi):
            i = rows[r]
            start, stop = indptr[i], indptr[i + 1]
            bits_row, idx_row = value_bits[start:stop], indices[start:stop]  # slices: see _count_row
            limit = min(_TABLE // 2, max(16, (stop - start) // 4))
            m = 0  # distinct values when grouped, else all values
            if grouped:
                for j in range(len(bits_row)):
                    bits = bits_row[j]
                    if (bits - np.uint32(1)) >= _POSITIVE_MAX or (dropped and col_map[idx_row[j]] < 0):
                        continue
                    h = _slot(bits)
                    while slot_row[h] == r and slot_key[h] != bits:  # linear probing
                        h = (h + 1) & (_TABLE - 1)
                    if slot_row[h] == r:
                        slot_count[h] += 1
                        continue
                    slot_row[h], slot_key[h], slot_count[h] = r, bits, 1
                    keys[m] = bits
                    m += 1
                    if m > limit:
                        grouped = False
                        break
            if not grouped:
                m = 0
                for j in range(len(bits_row)):
                    bits = bits_row[j]
                    keys[m] = bits
                    m += ((bits - np.uint32(1)) < _POSITIVE_MAX) & (not dropped or col_map[idx_row[j]] >= 0)
            _radix_sort(keys[:m], scratch[:m], digit_counts)
            ordered = keys.view(np.float32)
            scale = 1.0
            if counts_input:
                scale = target_sum / (library_sizes[r] if len(library_sizes) else _row_sum(values[start:stop]))
            rank = 0
            for t in range(m - 1, -1, -1):  # descending
                run = 1
                if grouped:
                    h = _slot(keys[t])
                    while slot_key[h] != keys[t] or slot_row[h] != r:
                        h = (h + 1) & (_TABLE - 1)
                    run = slot_count[h]
                v = np.float64(ordered[t])
                if counts_input:
                    v = np.log1p(v * scale)
                _add_run(dcount, dtotal, dtotal_sq, b, rank, run, v)
                rank += run
    count = np.cumsum(dcount.sum(axis=0))[:size]
    total = np.cumsum(dtotal.sum(axis=0))[:size]
    total_sq = np.cumsum(dtotal_sq.sum(axis=0))[:size]
    return count, total, total_sq


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
