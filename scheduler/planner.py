"""Arena memory planners: give each buffer (size, lifetime) an offset in one arena.

Steps are integers; a buffer lives at every step in [first_step, last_step]
inclusive.  Two buffers may share bytes only if their lifetimes do not
intersect.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PlanOverlapError


def align_up(size: int, alignment: int) -> int:
    return -(-size // alignment) * alignment


@dataclass(frozen=True)
class BufferRequest:
    index: int
    size: int  # aligned
    first_step: int
    last_step: int
    name: str

    def lives_with(self, other: "BufferRequest") -> bool:
        return self.first_step <= other.last_step and other.first_step <= self.last_step


class MemoryPlanner:
    """Collects buffers, then computes offsets lazily on the first query."""

    name = "abstract"

    def __init__(self, alignment: int = 64) -> None:
        if alignment < 1:
            raise ValueError(f"alignment must be >= 1, got {alignment}")
        self.alignment = alignment
        self._buffers: list[BufferRequest] = []
        self._offsets: list[int] | None = None

    def add_buffer(self, size: int, first_step: int, last_step: int, name: str | None = None) -> int:
        if size < 0:
            raise ValueError(f"buffer size must be >= 0, got {size}")
        if last_step < first_step:
            raise ValueError(f"last_step {last_step} before first_step {first_step}")
        index = len(self._buffers)
        label = name if name is not None else f"buffer#{index}"
        self._buffers.append(
            BufferRequest(index, align_up(size, self.alignment), first_step, last_step, label)
        )
        self._offsets = None
        return index

    def __len__(self) -> int:
        return len(self._buffers)

    def aligned_size(self, index: int) -> int:
        return self._buffers[index].size

    def buffer_name(self, index: int) -> str:
        return self._buffers[index].name

    def lifetime(self, index: int) -> tuple[int, int]:
        buf = self._buffers[index]
        return buf.first_step, buf.last_step

    def offset(self, index: int) -> int:
        return self._placed()[index]

    def peak(self) -> int:
        offsets = self._placed()
        return max((offsets[b.index] + b.size for b in self._buffers), default=0)

    def lower_bound(self) -> int:
        """Max over steps of the aligned bytes alive at that step: no planner can beat it."""
        if not self._buffers:
            return 0
        # Sweep over lifetime boundaries: +size at first_step, -size after last_step.
        events: dict[int, int] = {}
        for b in self._buffers:
            events[b.first_step] = events.get(b.first_step, 0) + b.size
            events[b.last_step + 1] = events.get(b.last_step + 1, 0) - b.size
        live = best = 0
        for step in sorted(events):
            live += events[step]
            best = max(best, live)
        return best

    def check(self) -> None:
        """Raise PlanOverlapError if two buffers alive at a common step share bytes."""
        offsets = self._placed()
        by_offset = sorted(self._buffers, key=lambda b: offsets[b.index])
        for i, a in enumerate(by_offset):
            a_end = offsets[a.index] + a.size
            for b in by_offset[i + 1:]:
                if offsets[b.index] >= a_end:
                    break
                if a.size and b.size and a.lives_with(b):
                    raise PlanOverlapError(
                        f"buffers {a.name!r} [{offsets[a.index]}, {a_end}) steps "
                        f"{a.first_step}..{a.last_step} and {b.name!r} "
                        f"[{offsets[b.index]}, {offsets[b.index] + b.size}) steps "
                        f"{b.first_step}..{b.last_step} overlap",
                        a.name,
                        b.name,
                    )

    def _placed(self) -> list[int]:
        if self._offsets is None:
            self._offsets = self._place(self._buffers)
        return self._offsets

    def _place(self, buffers: list[BufferRequest]) -> list[int]:
        raise NotImplementedError


class NoReusePlanner(MemoryPlanner):
    """Every buffer gets its own bytes, in insertion order (for debugging)."""

    name = "noreuse"

    def _place(self, buffers: list[BufferRequest]) -> list[int]:
        offsets, cursor = [], 0
        for b in buffers:
            offsets.append(cursor)
            cursor += b.size
        return offsets


class GreedyBySizePlanner(MemoryPlanner):
    """Largest buffer first, each at the lowest offset clear of every placed,
    time-overlapping buffer (first gap that fits).  Ties: earlier first_step,
    then insertion order, so plans are deterministic."""

    name = "greedy"

    def _place(self, buffers: list[BufferRequest]) -> list[int]:
        offsets = [0] * len(buffers)
        placed: list[BufferRequest] = []
        order = sorted(buffers, key=lambda b: (-b.size, b.first_step, b.index))
        for buf in order:
            offsets[buf.index] = self._first_fit(buf, placed, offsets)
            placed.append(buf)
        return offsets

    @staticmethod
    def _first_fit(buf: BufferRequest, placed: list[BufferRequest], offsets: list[int]) -> int:
        conflicts = sorted(
            (offsets[p.index], offsets[p.index] + p.size)
            for p in placed
            if p.size and p.lives_with(buf)
        )
        candidate = 0
        for start, end in conflicts:
            if candidate + buf.size <= start:
                break
            candidate = max(candidate, end)
        return candidate


class GreedyLongLivedFirstPlanner(GreedyBySizePlanner):
    """First fit as greedy-by-size, but buffers alive over several steps (tensors) are placed before
    one-step buffers (scratch, segment arenas), largest first in each group: the one-step buffers then
    fill the gaps the tensors leave.  The segment search tries it beside greedy-by-size (plans without
    segments never use it unless asked)."""

    name = "greedy-long"

    def _place(self, buffers: list[BufferRequest]) -> list[int]:
        offsets = [0] * len(buffers)
        placed: list[BufferRequest] = []
        order = sorted(buffers, key=lambda b: (b.first_step == b.last_step, -b.size, b.first_step, b.index))
        for buf in order:
            offsets[buf.index] = self._first_fit(buf, placed, offsets)
            placed.append(buf)
        return offsets


class GreedyByStartPlanner(GreedyBySizePlanner):
    """First fit in execution order (first step, then largest first): a linear scan."""

    name = "greedy-start"

    def _place(self, buffers: list[BufferRequest]) -> list[int]:
        offsets = [0] * len(buffers)
        placed: list[BufferRequest] = []
        for buf in sorted(buffers, key=lambda b: (b.first_step, -b.size, b.index)):
            offsets[buf.index] = self._first_fit(buf, placed, offsets)
            placed.append(buf)
        return offsets


PLANNERS = {"greedy": GreedyBySizePlanner, "noreuse": NoReusePlanner, "greedy-long": GreedyLongLivedFirstPlanner,
            "greedy-start": GreedyByStartPlanner}
# what the segment search tries beside greedy-by-size when it lays out a segmented plan
SEGMENT_PLANNER_ORDERS = {"greedy": ("greedy", "greedy-long", "greedy-start")}


def make_planner(kind, alignment: int = 64) -> MemoryPlanner:
    """A planner from a name in PLANNERS or a callable taking the alignment."""
    if isinstance(kind, str):
        try:
            return PLANNERS[kind](alignment=alignment)
        except KeyError:
            raise ValueError(f"unknown planner {kind!r}; choose from {sorted(PLANNERS)}") from None
    return kind(alignment=alignment)
