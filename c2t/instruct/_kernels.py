"""Numba kernels for the byte-copying steps that Arrow's compute functions would do in several passes.

- cell sentences (gene names joined by a delimiter) straight from ranked ids, one copy of the bytes
  instead of a ``take`` of every gene name followed by a join;
- :func:`gather`: some rows of a string array (cached sentences);
- :func:`assemble`: rendered prompts and completions (grouped by template) back in the dataset's order,
  with the chat ``messages`` contents (prompt, completion interleaved) written in the same pass.

Each step sizes its output first, then fills a buffer from Arrow's memory pool (reused from chunk to
chunk, so the pages are not faulted in again). The loops run over rows inside compiled code, no Python
per example, and only copy bytes.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import pyarrow as pa


def allocate(n_bytes: int) -> tuple[pa.Buffer, np.ndarray]:
    """A writable byte buffer from Arrow's memory pool, and a numpy view of it."""
    buffer = pa.allocate_buffer(int(n_bytes))
    return buffer, np.frombuffer(buffer, dtype=np.uint8)


@nb.njit(inline="always")
def _copy(dst, dst_pos, src, start, stop):
    end = dst_pos + stop - start
    dst[dst_pos:end] = src[start:stop]
    return end


@nb.njit(cache=True, nogil=True)
def _sentence_sizes(vocab_offsets, offsets, ids, rows, top_k, width):
    n = rows.shape[0]
    out_offsets = np.empty(n + 1, np.int64)
    n_genes = np.empty(n, np.int64)
    out_offsets[0] = 0
    for i in range(n):
        start = offsets[rows[i]]
        stop = offsets[rows[i] + 1]
        if top_k >= 0 and stop - start > top_k:
            stop = start + top_k
        n_genes[i] = stop - start
        total = width * (stop - start - 1) if stop > start else 0
        for j in range(start, stop):
            total += vocab_offsets[ids[j] + 1] - vocab_offsets[ids[j]]
        out_offsets[i + 1] = out_offsets[i] + total
    return out_offsets, n_genes


@nb.njit(cache=True, nogil=True)
def _sentence_fill(vocab_offsets, vocab_data, offsets, ids, rows, n_genes, delimiter, data):
    pos = 0
    width = delimiter.shape[0]
    for i in range(rows.shape[0]):
        start = offsets[rows[i]]
        for j in range(start, start + n_genes[i]):
            if j > start:
                for d in range(width):
                    data[pos] = delimiter[d]
                    pos += 1
            pos = _copy(data, pos, vocab_data, vocab_offsets[ids[j]], vocab_offsets[ids[j] + 1])


def join_sentences(vocab_offsets, vocab_data, offsets, ids, rows, top_k: int, delimiter: bytes):
    """Sentences of ``rows`` (top_k < 0: all genes): int64 offsets, an Arrow buffer of UTF-8 bytes, gene counts."""
    sep = np.frombuffer(delimiter, dtype=np.uint8)
    out_offsets, n_genes = _sentence_sizes(vocab_offsets, offsets, ids, rows, top_k, len(sep))
    buffer, data = allocate(out_offsets[-1])
    _sentence_fill(vocab_offsets, vocab_data, offsets, ids, rows, n_genes, sep, data)
    return out_offsets, buffer, n_genes


@nb.njit(cache=True, nogil=True)
def _gather_sizes(offsets, rows):
    out_offsets = np.empty(rows.shape[0] + 1, np.int64)
    out_offsets[0] = 0
    for i in range(rows.shape[0]):
        out_offsets[i + 1] = out_offsets[i] + offsets[rows[i] + 1] - offsets[rows[i]]
    return out_offsets


@nb.njit(cache=True, nogil=True)
def _gather_fill(offsets, data, rows, out_offsets, out):
    for i in range(rows.shape[0]):
        _copy(out, out_offsets[i], data, offsets[rows[i]], offsets[rows[i] + 1])


def gather(offsets, data, rows):
    """Rows ``rows`` of the strings given by ``offsets`` and ``data``: int64 offsets and an Arrow buffer."""
    out_offsets = _gather_sizes(offsets, rows)
    buffer, out = allocate(out_offsets[-1])
    _gather_fill(offsets, data, rows, out_offsets, out)
    return out_offsets, buffer


@nb.njit(cache=True, nogil=True)
def _assemble_sizes(p_offsets, c_offsets, source, with_pairs, with_messages):
    n = source.shape[0]
    po = np.zeros(n + 1 if with_pairs else 1, np.int64)
    co = np.zeros(n + 1 if with_pairs else 1, np.int64)
    mo = np.zeros(2 * n + 1 if with_messages else 1, np.int64)
    for i in range(n):
        s = source[i]
        lp = p_offsets[s + 1] - p_offsets[s]
        lc = c_offsets[s + 1] - c_offsets[s]
        if with_pairs:
            po[i + 1] = po[i] + lp
            co[i + 1] = co[i] + lc
        if with_messages:
            mo[2 * i + 1] = mo[2 * i] + lp
            mo[2 * i + 2] = mo[2 * i + 1] + lc
    return po, co, mo


@nb.njit(cache=True, nogil=True)
def _assemble_fill(p_offsets, p_data, c_offsets, c_data, source, po, pd, co, cd, mo, md, with_pairs, with_messages):
    for i in range(source.shape[0]):
        s = source[i]
        if with_pairs:
            _copy(pd, po[i], p_data, p_offsets[s], p_offsets[s + 1])
            _copy(cd, co[i], c_data, c_offsets[s], c_offsets[s + 1])
        if with_messages:
            pos = _copy(md, mo[2 * i], p_data, p_offsets[s], p_offsets[s + 1])
            _copy(md, pos, c_data, c_offsets[s], c_offsets[s + 1])


def assemble(p_offsets, p_data, c_offsets, c_data, source, *, with_pairs: bool, with_messages: bool):
    """Row ``i`` of the output is row ``source[i]`` of the inputs.

    Returns prompt offsets and buffer, completion offsets and buffer (empty unless ``with_pairs``) and the
    interleaved ``[prompt, completion]`` offsets (2n+1) and buffer (empty unless ``with_messages``).
    """
    po, co, mo = _assemble_sizes(p_offsets, c_offsets, source, with_pairs, with_messages)
    (pb, pd), (cb, cd), (mb, md) = allocate(po[-1]), allocate(co[-1]), allocate(mo[-1])
    _assemble_fill(p_offsets, p_data, c_offsets, c_data, source, po, pd, co, cd, mo, md, with_pairs, with_messages)
    return po, pb, co, cb, mo, mb
