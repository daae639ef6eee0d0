"""Writing a ``datasets.DatasetDict`` folder in bounded memory.

``DatasetDict.save_to_disk`` needs the whole dataset as a ``Dataset`` and copies it shard by shard. A build
instead streams record batches straight into Arrow IPC files named as ``save_to_disk`` names them; the
``dataset_dict.json``, ``state.json`` and ``dataset_info.json`` files come from ``save_to_disk`` itself
(run on an empty dataset with the same features), and only ``state.json``'s list of data files and its
fingerprint are filled in. ``datasets.load_from_disk`` reads the result like any saved dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa

MAX_SHARD_BYTES = 500 * 2**20


def features_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the Hugging Face features metadata ``datasets`` writes into its Arrow files."""
    import datasets

    return datasets.Features.from_arrow_schema(schema).arrow_schema


def write_skeleton(folder: Path, schema: pa.Schema, splits) -> None:
    """Let ``save_to_disk`` write the JSON files of an empty DatasetDict with these features."""
    import datasets

    empty = pa.Table.from_batches([], schema=schema)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        datasets.DatasetDict(
            {name: datasets.Dataset(empty, split=datasets.NamedSplit(name)) for name in splits}
        ).save_to_disk(str(folder))
    finally:
        if bars:
            datasets.enable_progress_bars()


class SplitWriter:
    """Append record batches to the Arrow shards of one split; at least one shard, even when empty."""

    def __init__(self, folder: Path, schema: pa.Schema, *, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
        self.folder = folder
        self.schema = schema
        self.max_shard_bytes = max_shard_bytes
        self.files: list[Path] = []
        self.n_rows = 0
        self._sink = self._writer = None
        self._bytes = 0
        self._open()

    def _open(self) -> None:
        path = self.folder / f".shard-{len(self.files):05d}.arrow"
        self.files.append(path)
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._bytes = 0

    def _close_current(self) -> None:
        self._writer.close()
        self._sink.close()

    def write(self, batch: pa.RecordBatch) -> None:
        if self._bytes and self._bytes + batch.nbytes > self.max_shard_bytes:
            self._close_current()
            self._open()
        self._writer.write_batch(batch)
        self._bytes += batch.nbytes
        self.n_rows += batch.num_rows

    def close(self, fingerprint: str) -> list[str]:
        """Finish the shards, give them ``save_to_disk``'s names and record them in ``state.json``."""
        self._close_current()
        n = len(self.files)
        names = [f"data-{i:05d}-of-{n:05d}.arrow" for i in range(n)]
        for path, name in zip(self.files, names, strict=True):
            os.replace(path, self.folder / name)
        state_file = self.folder / "state.json"
        state = json.loads(state_file.read_text(encoding="utf-8"))
        state["_data_files"] = [{"filename": name} for name in names]
        state["_fingerprint"] = fingerprint
        state_file.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        return names
