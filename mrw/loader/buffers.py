"""float16 rows as torch tensors: zero-copy views over Arrow buffers, and conversion into
buffers that go back to a small pool once no tensor refers to them."""

from __future__ import annotations

import sys
import warnings
import weakref

import numpy as np
import pyarrow as pa
import torch


class Spare:
    """Conversion buffers for sequential reading, handed out again once nothing uses them (a
    fresh buffer of a few MiB is new memory each time, and its page faults cost more than the
    conversion itself).

    Each tensor handed out is a view of a fresh NumPy array (`lease`) over a kept byte array;
    torch keeps `lease` alive for as long as any view of the tensor exists, and the byte array
    comes back to the pool only when `lease` is collected, so no item ever shares memory with a
    later one. At most `keep` idle byte arrays are kept.
    """

    def __init__(self, keep: int = 3):
        self.keep = keep
        self.free: list[np.ndarray] = []  # byte arrays that no tensor refers to

    def _give_back(self, backing: np.ndarray) -> None:
        if len(self.free) < self.keep:
            self.free.append(backing)

    def tensor(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        nbytes = numel * torch.empty(0, dtype=dtype).element_size()
        best = None
        for k, backing in enumerate(self.free):
            if backing.nbytes >= nbytes and (
                best is None or backing.nbytes < self.free[best].nbytes
            ):
                best = k
        if best is not None:
            backing = self.free.pop(best)
        else:
            backing = np.empty(nbytes + nbytes // 8, np.uint8)  # room for a few rows more
        lease = backing[:nbytes]  # a new array object: torch holds it, and only it
        weakref.finalize(lease, self._give_back, backing).atexit = False
        return torch.from_numpy(lease).view(dtype)

    def idle(self) -> int:
        """How many buffers wait for reuse."""
        return len(self.free)


def converted(pieces: list[torch.Tensor], dtype: torch.dtype, spare: Spare | None) -> torch.Tensor:
    """The flat tensors `pieces`, one after the other, as one new tensor of `dtype` (in a spare
    buffer when one is free), converted on this thread alone: torch's thread pool would fight
    pyarrow's read-ahead threads for the cores (OpenMP keeps the thread count per thread, so
    setting it here for the copy touches no other thread)."""
    total = sum(p.numel() for p in pieces)
    out = (
        spare.tensor(total, dtype)
        if spare is not None and total
        else torch.empty(total, dtype=dtype)
    )
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        at = 0
        for piece in pieces:
            out[at : at + piece.numel()].copy_(piece)
            at += piece.numel()
    finally:
        if threads > 1:
            torch.set_num_threads(threads)
    return out


def convert(half: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A new tensor of `dtype` from a float16 tensor, converted on this thread."""
    out = torch.empty(half.shape, dtype=dtype)
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        out.copy_(half)
    finally:
        if threads > 1:
            torch.set_num_threads(threads)
    return out


def one_chunk(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if not isinstance(column, pa.ChunkedArray):
        return column
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def half_view(buf: pa.Buffer | None) -> torch.Tensor | None:
    """A read-only float16 view of a buffer (no copy; memory-mapped ones too), or None where
    no view can be made."""
    if buf is None or sys.byteorder != "little" or buf.size & 1:
        return None
    with warnings.catch_warnings():  # read-only: items only ever get converted copies
        warnings.simplefilter("ignore")
        return torch.from_numpy(np.frombuffer(buf, dtype=np.float16))


def binary_views(arr: pa.Array) -> tuple[torch.Tensor | None, np.ndarray]:
    """(float16 tensor over a binary array's data buffer, byte offsets per row); the tensor is
    None if no view can be made (odd offsets, nulls), and rows are then read one by one."""
    width: type[np.signedinteger] = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    _, offsets_buf, buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=width)[arr.offset : arr.offset + len(arr) + 1]
    if sys.byteorder != "little" or arr.null_count or buf is None or (offsets & 1).any():
        return None, offsets
    with warnings.catch_warnings():  # read-only (memory-mapped ones too): items get copies
        warnings.simplefilter("ignore")
        data = torch.from_numpy(np.frombuffer(buf, dtype=np.float16, count=buf.size >> 1))
    return data, offsets
