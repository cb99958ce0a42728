"""What a block kernel declares about one schedule: its scratch buffers and how it uses threads.

Each kernel backend provides one function `contract(geometry, schedule, threads) -> KernelContract`
(beside the kernel that honours it) and passes it in every block `Step`. The scheduler only reads the
numbers: scratch bytes to place in the arena, and the threads the kernel keeps busy (the cost model
divides a block's time by them). It never interprets buffer names or backends.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .blocks import BlockGeometry, BlockSchedule

# Thread splits (ThreadSplit.kind)
SINGLE = "single"            # one thread runs the whole block
WHOLE_BANDS = "whole_bands"  # each thread takes whole bands, in its own slice of every scratch buffer
BY_CHANNELS = "channels"     # threads share one slice and split each (band, chunk) step by channels
BY_ROWS = "rows"             # threads share one slice and split each (band, chunk) step by rows
SPLIT_KINDS = (SINGLE, WHOLE_BANDS, BY_CHANNELS, BY_ROWS)


@dataclass(frozen=True)
class ScratchBuffer:
    """`nbytes` of arena scratch named `name`, cut into `slices` equal per-thread slices
    (thread k works in bytes [k * slice_bytes, (k + 1) * slice_bytes))."""

    name: str
    nbytes: int
    slices: int = 1

    def __post_init__(self) -> None:
        if self.nbytes < 0 or self.slices < 1 or self.nbytes % self.slices:
            raise ValueError(f"scratch {self.name!r}: {self.nbytes} bytes do not cut into {self.slices} slices")

    @property
    def slice_bytes(self) -> int:
        return self.nbytes // self.slices


@dataclass(frozen=True)
class ThreadSplit:
    """How the kernel shares a block between `threads` threads; `busy`: how many it keeps busy."""

    kind: str
    threads: int
    busy: int

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"unknown thread split {self.kind!r}; known: {SPLIT_KINDS}")
        if not 1 <= self.busy <= self.threads:
            raise ValueError(f"a split keeps 1..{self.threads} threads busy, not {self.busy}")

    @property
    def whole_bands(self) -> bool:
        return self.kind == WHOLE_BANDS


@dataclass(frozen=True)
class KernelContract:
    """A block kernel's contract for one schedule and thread count."""

    schedule: BlockSchedule
    scratch: tuple[ScratchBuffer, ...]
    split: ThreadSplit

    @property
    def threads(self) -> int:
        return self.split.threads

    def scratch_bytes(self) -> dict[str, int]:
        """Scratch bytes by name, in declaration order."""
        return {buf.name: buf.nbytes for buf in self.scratch}

    def buffer(self, name: str) -> ScratchBuffer:
        for buf in self.scratch:
            if buf.name == name:
                return buf
        raise KeyError(f"the contract declares no scratch {name!r}")


ContractFunction = Callable[[BlockGeometry, BlockSchedule, int], KernelContract]
