"""Streaming safetensors I/O for masked checkpoints (used by :mod:`masters.masked_teacher`).

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype,
shape, data_offsets; ``__metadata__``) and the tensors' raw bytes.  Masking changes no dtype,
shape or name, so an output file is the input's header bytes verbatim followed by the data at
the same offsets: this module reads headers and raw bytes, and writes raw bytes - it never
parses a tensor.

Writes are synchronous (:class:`Writer`; the worker threads mask the next chunks meanwhile: a
background writer thread measured no faster, see :mod:`masters.masked_teacher`).  Read and output
buffers are recycled (:class:`Buffers`: a freshly allocated buffer page-faults on every page),
and the output file is written back as it grows, its written-back pages dropped from the page
cache (:class:`Writeback`).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import struct
import sys
import threading
from pathlib import Path

import numpy as np

INDEX_FILE = "model.safetensors.index.json"
# Weight formats that must not be copied into a masked checkpoint (they would hold unmasked weights).
FOREIGN_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.gguf", "pytorch_model.bin.index.json")
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
            "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
WRITEBACK_LAG = 2  # written-back pages are dropped this many writeback steps behind


# --------------------------------------------------------------------------------------------
# Reading


def weight_files(checkpoint: Path) -> list[Path]:
    """The ``*.safetensors`` files of a checkpoint directory (every shard of its index present)."""
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"teacher checkpoint directory not found: {checkpoint}")
    index = checkpoint / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"cannot read shard index {index}: {e!r}") from None
        for shard in shards:
            if not (checkpoint / shard).is_file():
                raise FileNotFoundError(f"shard {checkpoint / shard} listed in {index} is missing")
    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weight files in teacher checkpoint {checkpoint}")
    return files


def read_header(path: Path) -> tuple[bytes, list[tuple[str, dict]]]:
    """The raw header (8-byte length + JSON, as on disk) and its tensors ``(name, info)`` in data
    order, after validation (``safe_open`` and the file size)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            f.keys()
    except Exception as e:  # SafetensorError, OSError ...
        raise ValueError(f"corrupt or truncated safetensors file {path}: {e}") from None
    size = path.stat().st_size
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n)
    entries = sorted(((k, v) for k, v in json.loads(raw).items() if k != "__metadata__"),
                     key=lambda kv: kv[1]["data_offsets"][0])
    end = max((v["data_offsets"][1] for _, v in entries), default=0)
    if 8 + n + end != size:
        raise ValueError(f"corrupt or truncated safetensors file {path}: header needs {8 + n + end} bytes, file has {size}")
    return struct.pack("<Q", n) + raw, entries


def read_pooled(fin, nbytes: int, buffers: "Buffers") -> tuple[np.ndarray, np.ndarray]:
    """``nbytes`` from ``fin`` into a pooled buffer: (the data as a uint8 view, the pooled buffer)."""
    base = buffers.get(nbytes)
    data = base[:nbytes]
    if fin.readinto(memoryview(data)) != nbytes:
        buffers.put(base)
        raise ValueError(f"corrupt or truncated safetensors file {fin.name}: unexpected end of data")
    return data, base


def read_chunks(fin, nbytes: int, chunk: int, buffers: "Buffers"):
    """``nbytes`` from ``fin`` as pooled ``(data, buffer)`` pieces of ``chunk`` bytes at most."""
    while nbytes > 0:
        data, base = read_pooled(fin, min(chunk, nbytes), buffers)
        nbytes -= data.size
        yield data, base


class Buffers:
    """Reusable byte buffers (uint8 numpy arrays), handed back once written.

    Freshly allocated buffers page-fault on first touch, which costs more than the masking
    itself; recycled ones are already mapped.  ``get`` returns the smallest free buffer that
    holds ``nbytes`` (at most twice as large), else a new one.  Thread-safe; buffers handed back
    beyond ``keep_bytes`` in total are dropped (largest first) so the pool never outgrows what
    was in flight at once.
    """

    def __init__(self, keep_bytes: int = 1 << 30) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._keep = keep_bytes

    def get(self, nbytes: int) -> np.ndarray:
        with self._lock:
            for i, buf in enumerate(self._free):  # sorted by size: the first that holds nbytes
                if buf.size >= nbytes:
                    if buf.size <= 2 * nbytes + (1 << 20):
                        return self._free.pop(i)
                    break
        return np.empty(nbytes, dtype=np.uint8)

    def put(self, buf: np.ndarray) -> None:
        with self._lock:
            self._free.append(buf)
            self._free.sort(key=lambda b: b.size)
            while sum(b.size for b in self._free) > self._keep:
                self._free.pop()


# --------------------------------------------------------------------------------------------
# Writing


def _sync_file_range():
    """libc ``sync_file_range`` (Linux) through ctypes, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


class Writeback:
    """Streaming-write page-cache hygiene for one output file (advisory; errors are ignored).

    Every ``step`` bytes the new range's writeback is started (``sync_file_range``,
    asynchronous), and the pages of the range started :data:`WRITEBACK_LAG` steps before - on
    disk by then - are dropped from the page cache (``posix_fadvise(DONTNEED)``, which skips
    pages still dirty).  Without this the kernel lets GBs of dirty output pile up before it
    starts writing, then throttles the writers to disk speed, and every output page is a newly
    allocated page - on a VM whose free memory is handed back to the host, first touching a
    page costs more than copying into it.  Measured on the development VM, 5 x 1.7 GB written
    from memory: 16-19 s without, 5-8 s with (and a third of the CPU time).  The outputs are
    not left in the page cache; this process never reads them.  ``step`` 0: off.
    """

    def __init__(self, fd: int, step: int) -> None:
        self.fd = fd
        self.step = step
        self.written = 0
        self.started = 0
        self.dropped = 0
        self.steps: collections.deque = collections.deque()

    def wrote(self, nbytes: int) -> None:
        self.written += nbytes
        if not self.step or self.written - self.started < self.step:
            return
        try:
            if _SYNC_FILE_RANGE is not None:
                _SYNC_FILE_RANGE(self.fd, self.started, self.written - self.started, _SYNC_FILE_RANGE_WRITE)
            self.started = self.written
            self.steps.append(self.written)
            while len(self.steps) > WRITEBACK_LAG:
                end = self.steps.popleft()
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(self.fd, self.dropped, end - self.dropped, os.POSIX_FADV_DONTNEED)
                self.dropped = end
        except (OSError, ValueError, TypeError):
            self.started = self.written


class Writer:
    """Writes buffers to one output file in order, written back to disk as it grows
    (:class:`Writeback` every ``writeback`` bytes)."""

    def __init__(self, fout, writeback: int = 0) -> None:
        self._fout = fout
        self._writeback = Writeback(fout.fileno(), writeback)

    def write(self, buf) -> None:
        self._fout.write(buf)
        self._writeback.wrote(memoryview(buf).nbytes)


def check_size(src: Path, out: Path) -> None:
    """``out`` has the size of ``src`` (same header, same offsets)."""
    if out.stat().st_size != src.stat().st_size:
        raise RuntimeError(f"internal error: {out} has {out.stat().st_size} bytes, {src} has {src.stat().st_size}")


def copy_other_files(checkpoint: Path, dest: Path, skip: set[Path]) -> None:
    """Copy every non-weight entry of ``checkpoint`` (config, tokenizer, processor, index, ...)."""
    for entry in sorted(checkpoint.iterdir()):
        if entry.resolve() in skip or entry.name == ".cache" or entry.name.startswith(".masked_r"):
            continue
        if entry.is_file() and (entry.suffix == ".safetensors" or any(entry.match(g) for g in FOREIGN_WEIGHTS)):
            continue
        if entry.is_dir():
            shutil.copytree(entry, dest / entry.name, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, dest / entry.name)
