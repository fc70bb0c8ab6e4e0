"""Streaming safetensors I/O for masked checkpoints (used by :mod:`masters.masked_teacher`).

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype,
shape, data_offsets; ``__metadata__``) and the tensors' raw bytes.  Masking changes no dtype,
shape or name, so an output file is the input's header bytes verbatim followed by the data at
the same offsets: this module reads headers and raw bytes, and writes raw bytes - it never
parses a tensor.

Writing dominates the run time, so it runs on background threads (:class:`Writer`): every
output file of a shard has its own writer thread (the kernel serializes buffered writes to one
file, not to different ones), and the writers serve all shards of a run (no pause between
shards).  Read and output buffers are recycled (:class:`Buffers`: a freshly allocated buffer
page-faults on every page), and each output file is written back as it grows, its written-back
pages dropped from the page cache (:class:`Writeback`).
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
    """Reusable byte buffers (uint8 numpy arrays), handed back by the writer once written.

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
    """Background threads writing queued buffers to their file handles, each handle's in order.

    :meth:`register` gives the i-th file of a shard thread ``i % threads``: buffered writes to
    one file are serialized by the kernel, writes to different files run in parallel.  At most
    ``max_bytes`` wait in the queues in total (a larger buffer waits until they are empty).  An
    item's ``done`` callback runs once every file it goes to has it written (or dropped after an
    error); ``write([], b"", done)`` runs ``done`` once everything queued before it is written.
    Output files are written back as they grow (:class:`Writeback` every ``writeback`` bytes).
    Used as a context manager, its threads are stopped and joined on leaving, error or not.
    """

    def __init__(self, max_bytes: int, threads: int, writeback: int = 0) -> None:
        self._cv = threading.Condition()
        self._n = max(1, threads)
        self._queues: list[collections.deque] = []
        self._slots: dict[int, int] = {}  # id(handle) -> queue index
        self._pending = 0
        self._max = max_bytes
        self._writeback_step = writeback
        self._closed = False
        self._error: BaseException | None = None
        self._writeback: dict[int, Writeback] = {}
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()

    def register(self, handles) -> None:
        """Give ``handles`` (the files of one shard) threads 0, 1, ... in order."""
        with self._cv:
            for i, handle in enumerate(handles):
                self._slots[id(handle)] = self._thread_for(i % self._n)
                self._writeback.pop(id(handle), None)

    def close_files(self, handles) -> None:
        """Close ``handles`` once everything queued so far is written (an error is re-raised
        by a later ``write``/``close``)."""
        def done() -> None:
            with self._cv:
                for handle in handles:
                    self._slots.pop(id(handle), None)
                    self._writeback.pop(id(handle), None)
            for handle in handles:
                handle.close()

        self.write([], b"", done=done)

    def _thread_for(self, slot: int) -> int:
        while len(self._queues) <= slot:  # start the threads up to this one
            self._queues.append(collections.deque())
            thread = threading.Thread(target=self._run, args=(len(self._queues) - 1,),
                                      name=f"mask-writer-{len(self._queues) - 1}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return slot

    def _run(self, slot: int) -> None:
        queue = self._queues[slot]
        while True:
            with self._cv:
                while not queue and not self._closed:
                    self._cv.wait()
                if not queue:
                    return
                handles, buf, ticket = queue.popleft()
            if self._error is None:
                try:
                    for handle in handles:
                        handle.write(buf)
                        self._wrote(handle, ticket[1])
                except BaseException as e:  # reported by the next write() or close()
                    self._error = e
            done = None
            with self._cv:
                ticket[0] -= 1
                if ticket[0] == 0:  # the last queue holding this buffer
                    self._pending -= ticket[1]
                    done = ticket[2]
                    self._cv.notify_all()
            if done is not None:
                try:
                    done()
                except BaseException as e:  # e.g. closing a file failed to flush
                    self._error = self._error or e

    def _wrote(self, handle, nbytes: int) -> None:
        state = self._writeback.get(id(handle))
        if state is None:
            try:
                fd = handle.fileno()
            except (AttributeError, OSError, ValueError):
                return
            with self._cv:
                state = self._writeback.setdefault(id(handle), Writeback(fd, self._writeback_step))
        state.wrote(nbytes)

    def write(self, handles, buf, done=None) -> None:
        """Queue ``buf`` for every one of ``handles`` (registered); it must stay unchanged until ``done``."""
        nbytes = memoryview(buf).nbytes
        with self._cv:
            while self._pending and self._pending + nbytes > self._max and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise self._error
            groups: dict[int, list] = {}
            for handle in handles:
                groups.setdefault(self._slots[id(handle)], []).append(handle)
            if not groups:  # a marker: behind everything queued so far, on every queue
                groups = {slot: [] for slot in range(len(self._queues))}
            if not groups:
                if done is not None:
                    done()
                return
            ticket = [len(groups), nbytes, done]  # queues left, bytes, callback
            for slot, hs in groups.items():
                self._queues[slot].append((hs, buf, ticket))
            self._pending += nbytes
            self._cv.notify_all()

    def close(self) -> None:
        """Wait until everything queued is written; re-raise a write error."""
        self._stop()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Drop what is still queued and stop (error path; never raises, idempotent)."""
        with self._cv:
            if not self._closed:
                self._error = self._error or RuntimeError("aborted")
        self._stop()

    def _stop(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join()


def check_sizes(src: Path, outs: list[Path]) -> None:
    """Every output of ``src`` has its size (same header, same offsets)."""
    size = src.stat().st_size
    for p in outs:
        if p.stat().st_size != size:
            raise RuntimeError(f"internal error: {p} has {p.stat().st_size} bytes, {src} has {size}")


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
