"""The model on the wire: every tensor packed into one flat array per dtype, in state-dict order.

Flower moves each array of an ``ArrayRecord`` as its own content-addressed object, one gRPC call
per object per hop, so a message's cost grows with the number of tensors, not their bytes
(DenseNet-121 has 727). Packed, a model is one float32 buffer plus one small int64 buffer
(BatchNorm's ``num_batches_tracked`` counters), whatever the architecture.

One buffer per dtype, not one float buffer for everything, keeps the packing lossless with no
rule about which integers fit a float: an int64 counter stays int64 bit for bit, and averaging
it (FedAvg) or masking it (SecAgg+) works on it exactly as on the unpacked tensor. Every
operation the strategies apply (weighted mean, SecAgg+ quantisation and masking, DP clipping of
the whole update) is elementwise or a sum over all values, so on the packed buffers it gives the
same numbers as on the tensors one by one.

The layout (names, dtypes, shapes and offsets) is not sent: both sides derive it from the model
the run config names, in state-dict order. Messages carry its ``digest`` so that a site whose
model differs from the server's (another pacsmesh version) fails with a clear error instead of
loading misplaced weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# ConfigRecord key of the layout digest in train and evaluate messages.
LAYOUT_CONFIG_KEY = "packed-layout"
_PREFIX = "packed."


class PackingError(ValueError):
    """Packed arrays that do not fit the layout; the message says what differs."""


@dataclass(frozen=True)
class Slot:
    """Where one tensor lives: its buffer (by dtype), offset and shape."""

    name: str
    dtype: np.dtype[np.generic]
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        """Number of values."""
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class Layout:
    """The packing of one model: a slot per tensor, one buffer per dtype."""

    slots: tuple[Slot, ...]
    buffers: tuple[tuple[str, np.dtype[np.generic], int], ...]  # (wire key, dtype, length)

    @classmethod
    def of(cls, tensors: Iterable[tuple[str, np.ndarray]]) -> Layout:
        """The layout of named arrays (a state dict's items, in its order)."""
        slots: list[Slot] = []
        lengths: dict[np.dtype[np.generic], int] = {}
        for name, value in tensors:
            arr = np.asarray(value)
            dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
            offset = lengths.get(dtype, 0)
            slots.append(Slot(name, dtype, tuple(int(d) for d in arr.shape), offset))
            lengths[dtype] = offset + int(arr.size)
        if len({s.name for s in slots}) != len(slots):
            raise PackingError("tensor names must be unique")
        buffers = tuple((_PREFIX + d.name, d, n) for d, n in lengths.items())
        return cls(tuple(slots), buffers)

    @property
    def names(self) -> list[str]:
        """Tensor names in packing order."""
        return [s.name for s in self.slots]

    def digest(self) -> str:
        """SHA-256 over names, dtypes and shapes: equal digests mean the same packing."""
        spec = [[s.name, s.dtype.str, list(s.shape)] for s in self.slots]
        return hashlib.sha256(json.dumps(spec, separators=(",", ":")).encode()).hexdigest()

    def pack(
        self, tensors: Mapping[str, np.ndarray] | Sequence[np.ndarray]
    ) -> dict[str, np.ndarray]:
        """One contiguous buffer per dtype; ``tensors`` by name or in layout order."""
        values = (
            [tensors[s.name] for s in self.slots] if isinstance(tensors, Mapping) else list(tensors)
        )
        if len(values) != len(self.slots):
            raise PackingError(f"got {len(values)} tensors for a layout of {len(self.slots)}")
        out = {key: np.empty(length, dtype=dtype) for key, dtype, length in self.buffers}
        for slot, value in zip(self.slots, values, strict=True):
            arr = np.asarray(value)
            if arr.shape != slot.shape:
                raise PackingError(f"{slot.name}: shape {arr.shape}, layout {slot.shape}")
            if arr.dtype != slot.dtype:
                raise PackingError(f"{slot.name}: dtype {arr.dtype}, layout {slot.dtype}")
            out[_PREFIX + slot.dtype.name][slot.offset : slot.offset + slot.size] = arr.ravel()
        return out

    def unpack(self, packed: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        """Named tensors in layout order: views into the buffers (no copy)."""
        expected = {key for key, _, _ in self.buffers}
        if set(packed) != expected:
            raise PackingError(f"packed buffers {sorted(packed)}, layout has {sorted(expected)}")
        for key, dtype, length in self.buffers:
            buf = packed[key]
            if buf.ndim != 1 or buf.shape[0] != length or buf.dtype != dtype:
                raise PackingError(
                    f"{key}: {buf.dtype} x {buf.shape}, layout wants {dtype} x ({length},)"
                )
        return [
            (
                s.name,
                packed[_PREFIX + s.dtype.name][s.offset : s.offset + s.size].reshape(s.shape),
            )
            for s in self.slots
        ]

    def unpack_list(self, arrays: Sequence[np.ndarray]) -> list[tuple[str, np.ndarray]]:
        """Like ``unpack`` for buffers given in layout order (a legacy ``Parameters`` list)."""
        if len(arrays) != len(self.buffers):
            raise PackingError(f"got {len(arrays)} buffers, layout has {len(self.buffers)}")
        return self.unpack({key: a for (key, _, _), a in zip(self.buffers, arrays, strict=True)})

    def buffer_list(self, packed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Packed buffers in layout order (for a legacy ``Parameters`` list)."""
        return [packed[key] for key, _, _ in self.buffers]
