"""Numba kernels for the PLM tokenisers: one pass over each cell's non-zeros, parallel over cells.

Randomness (scGPT tie spreading and gene sampling, UCE gene sampling and chromosome order) comes from a
hash of ``(seed, global cell index, item)``, never from a stream, so a cell's tokens do not depend on the
chunking, the batch it is in or the number of threads. Ranking itself reuses
:func:`c2t.sentences._kernels.rank_rows` (value descending, seeded tie-break).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from c2t.sentences._kernels import _cell_constants, _mix, _radix_sort, _sift_down

_SALT_TIES = np.uint64(0x5C6F_7A11)
_SALT_SAMPLE = np.uint64(0x5A4D_9E21)
_SALT_CHROM = np.uint64(0xC4_0B0C)


@nb.njit(inline="always")
def _uniform(seed, cell, item, salt):
    """A uniform float in [0, 1) from ``(seed, cell, item, salt)``."""
    z = _mix(_mix(np.uint64(seed) ^ salt) + np.uint64(cell))
    z = _mix(z + np.uint64(item))
    return np.float64(z >> np.uint64(11)) / 9007199254740992.0


@nb.njit(inline="always")
def _sort_by_token(tok, m, buf, tmp, count):
    """Positions ``0..m-1`` ordered by ``tok`` (stable); free when ``tok`` is already sorted (the usual case:
    vocabulary built from the data, whose CSR columns are sorted)."""
    ordered = True
    for q in range(1, m):
        if tok[q] < tok[q - 1]:
            ordered = False
            break
    if ordered:
        for q in range(m):
            buf[q] = q
        return buf[:m]
    for q in range(m):
        buf[q] = (np.uint64(tok[q]) << np.uint64(32)) | np.uint64(q)
    _radix_sort(buf[:m], tmp[:m], count)
    for q in range(m):
        buf[q] = buf[q] & np.uint64(0xFFFFFFFF)
    return buf[:m]


@nb.njit(parallel=True, cache=True, nogil=True)
def gather_sorted(indptr, indices, data, col_map, row_scale, log1p, offsets, out_ids, out_values):
    """Each row's positive mapped entries, in token-id order, written at ``offsets[i]``.

    ``out_values`` gets ``log1p(value * row_scale[i])`` when ``log1p`` else ``value * row_scale[i]``.
    """
    n = len(indptr) - 1
    for i in nb.prange(n):
        a, b = indptr[i], indptr[i + 1]
        tok = np.empty(b - a, np.int64)
        src = np.empty(b - a, np.int64)
        m = 0
        for j in range(a, b):
            t = col_map[indices[j]]
            if t >= 0 and data[j] > 0:
                tok[m] = t
                src[m] = j
                m += 1
        order = _sort_by_token(tok, m, np.empty(m, np.uint64), np.empty(m, np.uint64), np.zeros(2048, np.int64))
        base = offsets[i]
        s = row_scale[i]
        for q in range(m):
            k = order[q]
            v = data[src[k]] * s
            out_ids[base + q] = tok[k]
            out_values[base + q] = np.log1p(v) if log1p else v


@nb.njit(parallel=True, cache=True, nogil=True)
def dense_bins(indptr, indices, data, col_map, row_scale, inv_log_base, cap, out):
    """scBERT bins into a dense ``(cells, positions)`` array: ``min(floor(log_b(1 + x * scale)), cap)``.

    ``out`` is zero-filled by the caller; ``col_map`` holds the position of each column (-1: not in the panel).
    """
    n = len(indptr) - 1
    for i in nb.prange(n):
        s = row_scale[i]
        for j in range(indptr[i], indptr[i + 1]):
            p = col_map[indices[j]]
            v = data[j]
            if p >= 0 and v > 0:
                b = np.floor(np.log1p(v * s) * inv_log_base)
                out[i, p] = np.int32(min(b, cap))


@nb.njit(inline="always")
def _quantile_sorted(s, m, p):
    """numpy's default ('linear') quantile of the sorted ``s[:m]`` at probability ``p``."""
    h = (m - 1) * p
    lo = int(np.floor(h))
    if lo >= m - 1:
        return s[m - 1]
    return s[lo] + (h - lo) * (s[lo + 1] - s[lo])


@nb.njit(inline="always")
def _scgpt_bin(v, edges, seed, cell, token):
    """scGPT's bin of a non-zero ``v``: ``left`` when it spans at most one interval, else uniform in
    ``right + 1 .. left`` (drawn from ``(seed, cell, token)``), where ``left``/``right`` count the edges at or
    below / below ``v``."""
    left = np.searchsorted(edges, v, side="right")
    right = np.searchsorted(edges, v, side="left")
    if left - right <= 1:
        return max(left, 1)
    return right + 1 + int(_uniform(seed, cell, token, _SALT_TIES) * (left - right))


@nb.njit(parallel=True, cache=True, nogil=True)
def scgpt_sequences(indptr, indices, data, col_map, row0, seed, n_bins, keep, offsets, out_ids, out_values):
    """scGPT per cell: bin every non-zero mapped value, keep a seeded random subset of ``keep[i]`` genes when
    there are more, and write the genes in token order with their bins (as float32) at ``offsets[i]``.

    Bin edges are the quantiles (numpy's linear rule) of the cell's non-zero values at ``n_bins - 1`` evenly
    spaced probabilities from 0 to 1; non-zero values get bins ``1 .. n_bins - 1`` (see :func:`_scgpt_bin`,
    here computed by one merge of the sorted values with the edges); tie draws and the subset are hashed
    from ``(seed, cell, token)``.
    """
    n = len(indptr) - 1
    n_edges = n_bins - 1
    for i in nb.prange(n):
        a, b = indptr[i], indptr[i + 1]
        tok = np.empty(b - a, np.int64)
        val = np.empty(b - a, np.float32)
        m = 0
        for j in range(a, b):
            t = col_map[indices[j]]
            if t >= 0 and data[j] > 0:
                tok[m] = t
                val[m] = data[j]
                m += 1
        if m == 0:
            continue
        buf = np.empty(m, np.uint64)
        tmp = np.empty(m, np.uint64)
        count = np.zeros(2048, np.int64)
        vbits = val[:m].view(np.uint32)
        for q in range(m):  # positive float32 bits sort like the values; the low half keeps the entry
            buf[q] = (np.uint64(vbits[q]) << np.uint64(32)) | np.uint64(q)
        _radix_sort(buf, tmp, count)
        srt = np.empty(m, np.float64)
        for p in range(m):
            srt[p] = val[np.int64(buf[p] & np.uint64(0xFFFFFFFF))]
        edges = np.empty(n_edges, np.float64)
        for e in range(n_edges):
            edges[e] = _quantile_sorted(srt, m, e / (n_edges - 1))
        bins = np.empty(m, np.float32)
        left = 0  # edges <= v
        right = 0  # edges < v
        for p in range(m):
            v = srt[p]
            while right < n_edges and edges[right] < v:
                right += 1
            while left < n_edges and edges[left] <= v:
                left += 1
            q = np.int64(buf[p] & np.uint64(0xFFFFFFFF))
            if left - right <= 1:
                bins[q] = max(left, 1)
            else:
                bins[q] = right + 1 + int(_uniform(seed, row0 + i, tok[q], _SALT_TIES) * (left - right))
        k = keep[i]
        if m > k:  # seeded random subset: the k smallest hashed priorities
            for q in range(m):
                u = _uniform(seed, row0 + i, tok[q], _SALT_SAMPLE)
                buf[q] = (np.uint64(u * 4294967296.0) << np.uint64(32)) | np.uint64(q)
            _radix_sort(buf, tmp, count)
            chosen = np.empty(k, np.int64)
            for q in range(k):
                chosen[q] = buf[q] & np.uint64(0xFFFFFFFF)
        else:
            chosen = np.arange(m)
        ctok = tok[chosen]
        order = _sort_by_token(ctok, len(chosen), buf, tmp, count)
        base = offsets[i]
        for q in range(len(chosen)):
            src = chosen[order[q]]
            out_ids[base + q] = tok[src]
            out_values[base + q] = bins[src]


@nb.njit(parallel=True, cache=True, nogil=True)
def scgpt_dense_bins(indptr, indices, data, col_map, pos_of_token, row0, seed, n_bins, out):
    """scGPT bins into ``out[i, pos_of_token[token]]`` (dense cells x panel, zero-filled by the caller);
    the same bins as :func:`scgpt_sequences`."""
    n = len(indptr) - 1
    n_edges = n_bins - 1
    for i in nb.prange(n):
        a, b = indptr[i], indptr[i + 1]
        srt = np.empty(b - a, np.float64)
        m = 0
        for j in range(a, b):
            if col_map[indices[j]] >= 0 and data[j] > 0:
                srt[m] = data[j]
                m += 1
        if m == 0:
            continue
        srt = np.sort(srt[:m])
        edges = np.empty(n_edges, np.float64)
        for e in range(n_edges):
            edges[e] = _quantile_sorted(srt, m, e / (n_edges - 1))
        for j in range(a, b):
            t = col_map[indices[j]]
            if t >= 0 and data[j] > 0:
                out[i, pos_of_token[t]] = _scgpt_bin(np.float64(data[j]), edges, seed, row0 + i, t)


_LOG1P = np.log1p(np.arange(4096, dtype=np.float64))


@nb.njit(parallel=True, cache=True, nogil=True)
def uce_sentences(indptr, indices, data, col_map, gene_chrom, gene_order, chrom_token, n_chrom, row0, seed,
                  sample_size, cls_id, end_id, out, lengths):
    """UCE cell sentences, written into ``out`` (pre-filled with the pad id).

    Per cell: ``sample_size`` genes drawn with replacement, probability proportional to ``log1p(count)``
    (inverse-CDF draws hashed from (seed, cell, draw), located with a guide table); chromosomes in a per-cell
    random order; within one, genes by genomic position; layout ``<cls> (<chrom_c> genes... <chrom_end>)...``,
    truncated to ``out.shape[1]``. ``gene_order[token]`` ranks gene tokens by (chromosome, start).
    """
    n = len(indptr) - 1
    width = out.shape[1]
    table = _LOG1P
    for i in nb.prange(n):
        a, b = indptr[i], indptr[i + 1]
        cum = np.empty(b - a, np.float64)
        tok = np.empty(b - a, np.int64)
        m = 0
        total = 0.0
        for j in range(a, b):
            t = col_map[indices[j]]
            v = data[j]
            if t >= 0 and v > 0:
                iv = int(v)
                total += table[iv] if iv == v and iv < 4096 else np.log1p(v)
                cum[m] = total
                tok[m] = t
                m += 1
        out[i, 0] = cls_id
        if m == 0:
            lengths[i] = 1
            continue
        guide = np.empty(m + 1, np.int64)  # guide[g]: first entry whose cum exceeds g / m of the total
        q = 0
        for g in range(m + 1):
            limit = total * g / m
            while q < m - 1 and cum[q] <= limit:
                q += 1
            guide[g] = q
        hits = np.zeros(m, np.int64)
        cell_key = _mix(_mix(np.uint64(seed) ^ _SALT_SAMPLE) + np.uint64(row0 + i))
        for s in range(sample_size):
            r = np.float64(_mix(cell_key + np.uint64(s)) >> np.uint64(11)) / 9007199254740992.0
            u = r * total
            q = guide[int(r * m)]
            while q < m - 1 and cum[q] <= u:
                q += 1
            hits[q] += 1
        rank = np.empty(n_chrom, np.int64)  # this cell's random chromosome order
        prio = np.empty(n_chrom, np.float64)
        for c in range(n_chrom):
            prio[c] = _uniform(seed, row0 + i, c, _SALT_CHROM)
        perm = np.argsort(prio)
        for r in range(n_chrom):
            rank[perm[r]] = r
        keys = np.empty(m, np.uint64)
        d = 0
        for q in range(m):
            if hits[q]:
                t = tok[q]
                keys[d] = (np.uint64(rank[gene_chrom[t]]) << np.uint64(40)) | (np.uint64(gene_order[t]) << np.uint64(20)) | np.uint64(q)
                d += 1
        keys = keys[:d]
        _radix_sort(keys, np.empty(d, np.uint64), np.zeros(2048, np.int64))
        p = 1
        current = -1
        for e in range(d):
            q = np.int64(keys[e] & np.uint64(0xFFFFF))
            t = tok[q]
            c = gene_chrom[t]
            if c != current:
                if current >= 0 and p < width:
                    out[i, p] = end_id
                    p += 1
                if p < width:
                    out[i, p] = chrom_token[c]
                    p += 1
                current = c
            for _ in range(hits[q]):
                if p < width:
                    out[i, p] = t
                    p += 1
        if p < width:
            out[i, p] = end_id
            p += 1
        lengths[i] = p


@nb.njit(parallel=True, cache=True, nogil=True, fastmath=True)
def expression_embed(indptr, indices, data, col_map, row_scale, log1p, emb, out):
    """``out[i] = sum_j f(x_ij) * emb[col_map[j]]`` with ``f = log1p(x * row_scale)`` or ``x * row_scale``."""
    n = len(indptr) - 1
    d = emb.shape[1]
    for i in nb.prange(n):
        acc = np.zeros(d, np.float32)
        s = row_scale[i]
        for j in range(indptr[i], indptr[i + 1]):
            g = col_map[indices[j]]
            v = data[j]
            if g >= 0 and v > 0:
                w = np.float32(np.log1p(v * s) if log1p else v * s)
                for k in range(d):
                    acc[k] += w * emb[g, k]
        out[i, :] = acc


@nb.njit(cache=True)
def group_medians(groups, values, n_groups):
    """Median of ``values`` within each group id ``0..n_groups-1`` (NaN for an empty group)."""
    counts = np.zeros(n_groups + 1, np.int64)
    for g in groups:
        counts[g + 1] += 1
    starts = np.cumsum(counts)
    fill = starts[:-1].copy()
    bucket = np.empty(len(values), np.float64)
    for q in range(len(values)):
        g = groups[q]
        bucket[fill[g]] = values[q]
        fill[g] += 1
    out = np.full(n_groups, np.nan)
    for g in range(n_groups):
        a, b = starts[g], starts[g + 1]
        if b > a:
            out[g] = np.median(bucket[a:b])
    return out


@nb.njit(parallel=True, cache=True, nogil=True)
def priorities(row0, n, tokens, seed):
    """``(n, len(tokens))`` uniform floats hashed from ``(seed, cell, token)``: a seeded random order per cell."""
    out = np.empty((n, len(tokens)), np.float64)
    for i in nb.prange(n):
        for q in range(len(tokens)):
            out[i, q] = _uniform(seed, row0 + i, tokens[q], _SALT_SAMPLE)
    return out


@nb.njit(parallel=True, cache=True, nogil=True)
def scan_block(indptr, indices, data, col_map):
    """One pass over a block: per row the positive mapped entries and the row total (all columns);
    for the block the number of negative/NaN/infinite values and of non-integer values."""
    n = len(indptr) - 1
    n_kept = np.zeros(n, np.int64)
    totals = np.zeros(n, np.float64)
    bad = np.zeros(n, np.int64)
    frac = np.zeros(n, np.int64)
    for i in nb.prange(n):
        c = 0
        t = 0.0
        nb_bad = 0
        nb_frac = 0
        for j in range(indptr[i], indptr[i + 1]):
            v = data[j]
            if not (v >= 0.0) or np.isinf(v):
                nb_bad += 1
                continue
            t += v
            if v > 0.0:
                if v != np.floor(v):
                    nb_frac += 1
                if col_map[indices[j]] >= 0:
                    c += 1
        n_kept[i] = c
        totals[i] = t
        bad[i] = nb_bad
        frac[i] = nb_frac
    return n_kept, totals, bad.sum(), frac.sum()


@nb.njit(parallel=True, cache=True, nogil=True)
def rank_sequences(indptr, indices, data, col_map, token_of_gene, row_scale, col_scale, row_group, row0, seed, mbits,
                   lengths, offsets, out_ids, out_values, written):
    """Each row's top ``lengths[i]`` genes by ``data * row_scale[i] * col_scale[row_group[i], column]``,
    written at ``offsets[i]`` as token ids (``token_of_gene[gene]``) with the ranked float32 values (bits).
    ``col_map`` maps columns to gene indices (the tie-break hashes these, as cell sentences do).

    The order is exactly that of :func:`c2t.sentences._kernels.rank_rows` (the same 64-bit keys: the float32
    value's bits, then the seeded per-cell permutation of the gene id); only the selection differs: the keys
    are radix-sorted, after a min-heap has kept the ``k`` largest when ``k`` is under a quarter of the row
    (tGPT's 64) — a full sort beats a heap when ``k`` covers most of the row (Geneformer's 2,048 or 4,096).
    """
    n = len(indptr) - 1
    mask = np.uint64((1 << mbits) - 1)
    shift = np.uint64((mbits + 1) // 2)
    for i in nb.prange(n):
        k = lengths[i]
        written[i] = 0
        if k == 0:
            continue
        mult, add, inv = _cell_constants(seed, row0 + i)
        a, b = indptr[i], indptr[i + 1]
        keys = np.empty(b - a, np.uint64)
        m = 0
        r = row_scale[i]
        g = row_group[i]
        for j in range(a, b):
            gene = col_map[indices[j]]
            if gene >= 0 and data[j] > 0:
                v = np.float32(data[j] * r * col_scale[g, indices[j]])
                if v > 0:
                    x = (np.uint64(gene) * mult + add) & mask
                    x = x ^ (x >> shift)
                    keys[m] = (np.uint64(v.view(np.uint32)) << np.uint64(32)) | x
                    m += 1
        if m == 0:
            continue
        keys = keys[:m]
        if 4 * k < m:  # short top-k: keep the k largest in a min-heap first
            for h in range(k // 2 - 1, -1, -1):
                _sift_down(keys, h, k)
            for q in range(k, m):
                if keys[q] > keys[0]:
                    keys[0] = keys[q]
                    _sift_down(keys, 0, k)
            keys = keys[:k]
            m = k
        _radix_sort(keys, np.empty(m, np.uint64), np.zeros(2048, np.int64))
        base = offsets[i]
        q = min(k, m)
        for p in range(q):
            key = keys[m - 1 - p]
            x = key & mask
            x = x ^ (x >> shift)
            out_ids[base + p] = token_of_gene[np.int64(((x - add) * inv) & mask)]
            out_values[base + p] = np.uint32(key >> np.uint64(32))
        written[i] = q
