"""Vectorised rendering with Arrow: templates from literal pieces and columns (``binary_join_element_wise``),
chat ``messages`` from prompt and completion. No Python loop runs per example.

Examples
--------
>>> import pyarrow as pa
>>> from c2t.instruct._templates import parse_template
>>> t = parse_template("demo.01", "Genes: {cell_sentence}. Type?", where="demo")
>>> render(t, {"cell_sentence": pa.array(["CD3D IL7R", "LYZ"])}, 2).to_pylist()
['Genes: CD3D IL7R. Type?', 'Genes: LYZ. Type?']
>>> messages(pa.array(["Q?"]), pa.array(["A"])).to_pylist()
[[{'role': 'user', 'content': 'Q?'}, {'role': 'assistant', 'content': 'A'}]]
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from c2t.instruct._templates import Template

STRING = pa.string()
MESSAGE = pa.struct([("role", STRING), ("content", STRING)])
MESSAGES = pa.list_(MESSAGE)


def scalar(text: str) -> pa.Scalar:
    return pa.scalar(text, STRING)


def as_string(values) -> pa.Array:
    """Any Arrow array (or chunked array) as a plain ``string`` array."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values if values.type == STRING else values.cast(STRING)


def buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (int64) and data bytes of a ``string`` array, without copying the data (nulls read as empty)."""
    values = as_string(values)
    offsets = np.frombuffer(values.buffers()[1], np.int32, count=len(values) + 1, offset=values.offset * 4)
    data = values.buffers()[2]
    return offsets.astype(np.int64), (np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8))


def from_buffers(offsets: np.ndarray, data) -> pa.Array:
    """A ``string`` array over ``data`` (an Arrow buffer or bytes-like; not copied) with int64 ``offsets``."""
    assert offsets[-1] < 2**31, "chunk too large for 32-bit string offsets"
    data = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
    return pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets.astype(np.int32)), data)


def render(template: Template, fields: Mapping[str, pa.Array | pa.Scalar], n: int) -> pa.Array:
    """Render ``template`` for ``n`` examples; each field is an Arrow string array of length ``n`` or a scalar."""
    if len(template.pieces) == 3 and template.pieces[0] == template.pieces[2] == "":
        only = fields[template.pieces[1]]
        if isinstance(only, pa.Array):
            return as_string(only)  # a bare field such as "{cell_type}": no copy
    args = [scalar(p) if i % 2 == 0 else fields[p] for i, p in enumerate(template.pieces)]
    out = pc.binary_join_element_wise(*args, scalar(""))
    if isinstance(out, pa.Scalar):  # every field was a constant
        return pa.repeat(out, n).cast(STRING)
    return out


def messages(prompt: pa.Array, completion: pa.Array) -> pa.Array:
    """Chat records ``[{role: user, content: prompt}, {role: assistant, content: completion}]``, one per row."""
    n = len(prompt)
    interleave = np.empty(2 * n, dtype=np.int64)
    interleave[0::2] = np.arange(n)
    interleave[1::2] = np.arange(n, 2 * n)
    content = as_string(pa.chunked_array([prompt, completion], type=STRING).take(pa.array(interleave)))
    roles = pa.DictionaryArray.from_arrays(pa.array(np.tile(np.array([0, 1], np.int8), n)), pa.array(["user", "assistant"]))
    struct = pa.StructArray.from_arrays([roles.cast(STRING), content], fields=list(MESSAGE))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), struct)
