"""Choosing segments: which runs of steps stream (and with what band and chunking), together with
every other block's (t, band_rows), so that a plan fits a budget below the per-block minimum.

The problem offers segment options (`Problem.segments`); a segmentation is a cover of the steps by
single steps and non-overlapping options.  Which buffers are alive at a step outside every segment
does not depend on the segmentation (a segment's inner buffers live only inside it), so each piece's
live bytes are local: a single step holds what is alive at it plus its scratch; a segment holds
what is alive anywhere in its range except its inner buffers, plus its arena.  Two dynamic
programmes over the step order then give the memory-minimal segmentation (smallest largest piece)
and, for a budget, the fastest one whose pieces all fit; the planner lays the result out.

This module knows no layout class: search.py hands it the block candidates and a `make_layout`
callable (problem, {block: schedule}) -> layout with `.peak()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from .planner import align_up
from .problem import CHUNKINGS, Problem, SegmentLayout, SegmentOption

INFINITE = float("inf")


@dataclass(frozen=True)
class SegmentChoice:
    option: SegmentOption
    band_rows: int
    chunking: str
    layout: SegmentLayout
    bytes: int          # aligned bytes alive at the segment's step, its arena included
    seconds: float


@dataclass(frozen=True)
class Segmentation:
    """A cover of the steps: block schedules of the blocks left alone and the chosen segments."""

    blocks: dict                      # block step name -> Candidate (search.Candidate)
    segments: tuple[SegmentChoice, ...]
    bound: int                        # largest piece's live bytes (a lower bound of the planned peak)
    seconds: float

    def arenas(self) -> dict[str, int]:
        return {c.option.name: c.layout.arena_bytes for c in self.segments}


def band_configs(height: int) -> list[tuple[int, str]]:
    """(band_rows, chunking) a segment may use, smallest memory first: one-row calls at band 1, then
    steady calls at bands 1, 2, 4, 8 and the whole height."""
    bands = sorted({b for b in (1, 2, 4, 8) if b < height} | {height})
    return [(1, CHUNKINGS[0])] + [(b, CHUNKINGS[1]) for b in bands]


class SegmentSearch:
    """The pieces of a problem and their live bytes; the two dynamic programmes over them."""

    def __init__(self, problem: Problem, candidates: Mapping[str, list], alignment: int, cost,
                 fixed: Mapping | None = None) -> None:
        self.problem = problem
        self.candidates = candidates
        self.alignment = alignment
        self.cost = cost
        self.index = {s.name: i for i, s in enumerate(problem.steps)}
        self.alive = [problem.alive_at(i) for i in range(len(problem.steps))]
        self.aligned = {n: align_up(size, alignment) for n, size in problem.buffers.items()}
        fixed_steps = set(fixed or {})
        self.options_ending: dict[int, list[SegmentOption]] = {}
        for option in problem.segments:
            if fixed_steps & set(option.steps):
                continue      # a block the caller fixed stays a block
            self.options_ending.setdefault(self.index[option.steps[-1]], []).append(option)
        self._layouts: dict[tuple[str, int, str], SegmentLayout] = {}
        self._outside: dict[str, int] = {}

    # ---- live bytes of the pieces
    def step_bytes(self, i: int, candidate=None) -> int:
        step = self.problem.steps[i]
        alive = sum(self.aligned[n] for n in self.alive[i])
        if step.is_block:
            return alive + candidate.scratch_bytes
        scratch = self.problem.step_scratch(step, None)
        return alive + sum(align_up(size, self.alignment) for size in scratch.values())

    def step_seconds(self, i: int, candidate=None) -> float:
        step = self.problem.steps[i]
        return candidate.seconds if step.is_block else self.cost.step_seconds(step.macs)

    def _outside_bytes(self, option: SegmentOption) -> int:
        """Aligned bytes of the buffers alive somewhere in the segment's range, inner ones apart."""
        if option.name not in self._outside:
            first, last = self.index[option.steps[0]], self.index[option.steps[-1]]
            inner = set(self.problem.inner_buffers(option))
            names = {n for i in range(first, last + 1) for n in self.alive[i]} - inner
            self._outside[option.name] = sum(self.aligned[n] for n in names)
        return self._outside[option.name]

    def layout(self, option: SegmentOption, band_rows: int, chunking: str) -> SegmentLayout | None:
        """The option's layout, or None when its kernel refuses it (ValueError: it cannot stream)."""
        key = (option.name, band_rows, chunking)
        if key not in self._layouts:
            try:
                self._layouts[key] = option.layout(band_rows, chunking)
            except ValueError:
                self._layouts[key] = None
        return self._layouts[key]

    def choice(self, option: SegmentOption, band_rows: int, chunking: str) -> SegmentChoice | None:
        layout = self.layout(option, band_rows, chunking)
        if layout is None:
            return None
        return SegmentChoice(option, band_rows, chunking, layout,
                             self._outside_bytes(option) + align_up(layout.arena_bytes, self.alignment),
                             self.cost.segment_seconds(self._unstreamed_seconds(option), layout.row_calls,
                                                       layout.calls))

    def _unstreamed_seconds(self, option: SegmentOption) -> float:
        """Seconds of the segment's steps run whole (blocks at their fastest schedule)."""
        total = 0.0
        for name in option.steps:
            i = self.index[name]
            step = self.problem.steps[i]
            fastest = min(self.candidates[name], key=lambda c: c.seconds) if step.is_block else None
            total += self.step_seconds(i, fastest)
        return total

    def smallest_choice(self, option: SegmentOption) -> SegmentChoice | None:
        return self.choice(option, *band_configs(option.height)[0])

    def fastest_choice_within(self, option: SegmentOption, budget: int) -> SegmentChoice | None:
        """The fastest configuration whose live bytes fit; None when even the smallest does not."""
        configs = band_configs(option.height)
        smallest = self.choice(option, *configs[0])
        if smallest is None or smallest.bytes > budget:
            return None
        fitting = [smallest] + [c for c in (self.choice(option, *cfg) for cfg in configs[1:])
                                if c is not None and c.bytes <= budget]
        return min(fitting, key=lambda c: (c.seconds, c.bytes))

    # ---- the two programmes
    def minimal(self) -> Segmentation:
        """The segmentation whose largest piece is smallest (ties: fewer seconds)."""
        def single(i):
            step = self.problem.steps[i]
            if not step.is_block:
                return None, self.step_bytes(i), self.step_seconds(i)
            cand = min(self.candidates[step.name], key=lambda c: (self.step_bytes(i, c), c.seconds, c.schedule.t))
            return cand, self.step_bytes(i, cand), cand.seconds

        def segment(option):
            c = self.smallest_choice(option)
            return None if c is None else (c, c.bytes, c.seconds)

        return self._programme(single, segment, key=lambda bound, seconds: (bound, seconds))

    def fastest_within(self, budget: int) -> Segmentation | None:
        """The fastest segmentation whose every piece fits `budget`, or None."""
        def single(i):
            step = self.problem.steps[i]
            if not step.is_block:
                live = self.step_bytes(i)
                return (None, live, self.step_seconds(i)) if live <= budget else None
            fits = [c for c in self.candidates[step.name] if self.step_bytes(i, c) <= budget]
            if not fits:
                return None
            cand = min(fits, key=lambda c: (c.seconds, c.scratch_bytes, c.schedule.t))
            return cand, self.step_bytes(i, cand), cand.seconds

        def segment(option):
            c = self.fastest_choice_within(option, budget)
            return None if c is None else (c, c.bytes, c.seconds)

        found = self._programme(single, segment, key=lambda bound, seconds: (seconds, bound))
        return found if found.bound <= budget else None

    def _programme(self, single: Callable, segment: Callable, key: Callable) -> Segmentation:
        """Best cover of steps [0, n) by `key(bound, seconds)`, pieces scored by `single(i)` /
        `segment(option)` -> (choice, live bytes, seconds) or None (does not fit)."""
        n = len(self.problem.steps)
        best: list[tuple | None] = [None] * (n + 1)
        best[0] = (0, 0.0, None, None)             # bound, seconds, previous index, piece
        for end in range(1, n + 1):
            entries = []
            piece = single(end - 1)
            if piece is not None and best[end - 1] is not None:
                entries.append((end - 1, ("step", end - 1, piece)))
            for option in self.options_ending.get(end - 1, ()):
                start = self.index[option.steps[0]]
                if best[start] is None:
                    continue
                scored = segment(option)
                if scored is not None:
                    entries.append((start, ("segment", option, scored)))
            for start, piece in entries:
                _, live, seconds = piece[2]
                bound, total = max(best[start][0], live), best[start][1] + seconds
                if best[end] is None or key(bound, total) < key(best[end][0], best[end][1]):
                    best[end] = (bound, total, start, piece)
        if best[n] is None:
            return Segmentation({}, (), INFINITE, INFINITE)
        return self._unwind(best, n)

    def _unwind(self, best, n: int) -> Segmentation:
        blocks, segments, end = {}, [], n
        while end > 0:
            _, _, start, piece = best[end]
            if piece[0] == "segment":
                segments.append(piece[2][0])
            elif piece[2][0] is not None:
                blocks[self.problem.steps[piece[1]].name] = piece[2][0]
            end = start
        return Segmentation(blocks, tuple(reversed(segments)), best[n][0], best[n][1])
