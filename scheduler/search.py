"""Choose a schedule (t, band_rows) per block and lay out the arena.

Without a budget every block takes its fastest candidate.  With a budget the
search works per step: a block step may use for scratch whatever the budget
leaves after the buffers alive at that step; it takes the fastest candidate
whose scratch fits.  The real planner may fragment and overshoot; then the
offending steps are tightened one block at a time and the layout redone (a
bounded number of rounds, falling back to the memory-minimal schedule, which
is checked against the budget up front); tightened blocks then get their first
choice back wherever the layout still fits.  A returned plan never exceeds
the budget.

Below the smallest per-block peak, a problem that offers segments (`Problem.segments`) is
searched again with them (scheduler.streaming): the fastest cover of the steps by single steps
and segments whose every piece fits, laid out by the same planner; the minimum is then the
smallest over segmentations.  Plans that fit without segments are exactly those of before.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from .blocks import BlockGeometry, BlockSchedule, band_ranges, chunk_ranges
from .contract import KernelContract
from .cost import CostModel
from .errors import BudgetInfeasible, PlanOverlapError
from .plan import Plan, SegmentPlan, StepPlan
from .planner import SEGMENT_PLANNER_ORDERS, MemoryPlanner, align_up, make_planner
from .problem import Problem, RingPlacement, Step
from .streaming import Segmentation, SegmentSearch


@dataclass(frozen=True)
class Candidate:
    schedule: BlockSchedule
    scratch_bytes: int  # aligned total of the block's scratch
    seconds: float


@dataclass(frozen=True)
class SearchSpace:
    max_t: int = 5
    allowed_t: tuple[int, ...] = ()
    band_choices: tuple[int, ...] | None = None
    fixed: Mapping[str, BlockSchedule] | None = None


def t_choices(hidden: int, max_t: int = 5, allowed_t: Iterable[int] = ()) -> list[int]:
    """t in 1..max_t plus allowed larger t (up to `hidden`), one t per distinct chunk size."""
    wanted = set(range(1, min(max_t, hidden) + 1))
    wanted.update(t for t in allowed_t if 1 <= t <= hidden)
    by_chunk: dict[int, int] = {}
    for t in sorted(wanted):
        by_chunk.setdefault(-(-hidden // t), t)
    return sorted(by_chunk.values())


def band_choices_for(out_height: int, band_choices: Iterable[int] | None = None, threads: int = 1) -> list[int]:
    """All rows, plus powers of two below out_height (or the caller's choices, clipped).

    With threads > 1 also ceil(out_height / (k * threads)) rows for k = 1..4: balanced cuts of
    at least `threads` bands where possible, for kernels that give each thread whole bands."""
    if band_choices is None:
        rows, choices = 1, {out_height}
        while rows < out_height:
            choices.add(rows)
            rows *= 2
        if threads > 1:
            choices.update(-(-out_height // (k * threads)) for k in range(1, 5))
        return sorted(choices)
    return sorted({out_height} | {min(r, out_height) for r in band_choices if r >= 1})


def block_candidates(step: Step, problem: Problem, alignment: int, cost: CostModel,
                     space: SearchSpace) -> list[Candidate]:
    geom = step.block
    fixed = (space.fixed or {}).get(step.name)
    if fixed is not None:
        schedules = [_validated(geom, fixed, step.name)]
    else:
        schedules = [
            BlockSchedule(t, rows)
            for t in t_choices(geom.hidden_channels, space.max_t, space.allowed_t)
            for rows in band_choices_for(geom.out_height, space.band_choices, band_threads(step, problem))
        ]
    return [
        Candidate(s, aligned_total(problem.step_scratch(step, s), alignment),
                  block_seconds(cost, geom, problem.step_contract(step, s)))
        for s in schedules
    ]


def band_threads(step: Step, problem: Problem) -> int:
    """The problem's threads when the step's kernel gives each thread whole bands once there are
    enough of them (asked with one-row bands), else 1."""
    if problem.threads == 1:
        return 1
    finest = problem.step_contract(step, BlockSchedule(1, 1))
    return problem.threads if finest.split.whole_bands else 1


def block_seconds(cost, geom: BlockGeometry, contract: KernelContract) -> float:
    """The cost model's estimate for the block, divided by the threads its kernel keeps busy (a
    model without a busy_threads argument is asked for the one-thread figure)."""
    busy = contract.split.busy
    if busy == 1:
        return cost.block_seconds(geom, contract.schedule)
    return cost.block_seconds(geom, contract.schedule, busy_threads=busy)


def _validated(geom: BlockGeometry, sched: BlockSchedule, step_name: str) -> BlockSchedule:
    try:
        chunk_ranges(geom.hidden_channels, sched.t)
        band_ranges(geom.out_height, sched.band_rows)
    except ValueError as exc:
        raise ValueError(f"fixed schedule for step {step_name!r}: {exc}") from None
    return sched


def aligned_total(sizes: Mapping[str, int], alignment: int) -> int:
    return sum(align_up(size, alignment) for size in sizes.values())


def fastest(candidates: list[Candidate]) -> Candidate:
    return min(candidates, key=lambda c: (c.seconds, c.scratch_bytes, c.schedule.t))


def smallest(candidates: list[Candidate]) -> Candidate:
    return min(candidates, key=lambda c: (c.scratch_bytes, c.seconds, c.schedule.t))


def fastest_within(candidates: list[Candidate], limit: int) -> Candidate | None:
    fitting = [c for c in candidates if c.scratch_bytes <= limit]
    return fastest(fitting) if fitting else None


class _Layout:
    """One planner run over the problem's buffers plus each step's scratch."""

    def __init__(self, problem: Problem, choices: Mapping[str, BlockSchedule], alignment: int, planner) -> None:
        self.problem = problem
        self.choices = dict(choices)
        self.planner: MemoryPlanner = make_planner(planner, alignment)
        self.buffer_index: dict[str, int] = {}
        self.sizes: list[int] = []  # unaligned bytes by planner index
        for name, size in problem.buffers.items():
            first, last = problem.lifetime(name)
            self.buffer_index[name] = self._add(size, first, last, name)
        self.scratch_index: list[dict[str, int]] = []
        for i, step in enumerate(problem.steps):
            sizes = problem.step_scratch(step, self.choices.get(step.name))
            self.scratch_index.append({n: self._add(size, i, i, f"{step.name}:{n}") for n, size in sizes.items()})

    def _add(self, size: int, first: int, last: int, name: str) -> int:
        self.sizes.append(size)
        return self.planner.add_buffer(size, first, last, name)

    def peak(self) -> int:
        return self.planner.peak()

    def _alive_indices(self, i: int) -> list[int]:
        buffers = [self.buffer_index[n] for n in self.problem.alive_at(i)]
        return buffers + list(self.scratch_index[i].values())

    def live_bytes(self, i: int) -> int:
        return sum(self.planner.aligned_size(k) for k in self._alive_indices(i))

    def high_water(self, i: int) -> int:
        """Highest arena byte in use at step i."""
        p = self.planner
        return max((p.offset(k) + p.aligned_size(k) for k in self._alive_indices(i)), default=0)

    def limiting_step(self) -> str:
        """The step that reaches the peak (the fullest one if several do)."""
        peak = self.peak()
        at_peak = [i for i in range(len(self.problem.steps)) if self.high_water(i) == peak]
        best = max(at_peak, key=lambda i: (self.live_bytes(i), -i)) if at_peak else 0
        return self.problem.steps[best].name if self.problem.steps else ""

    def to_plan(self, cost: CostModel, budget: int | None) -> Plan:
        p = self.planner
        steps = []
        for i, step in enumerate(self.problem.steps):
            sched = self.choices.get(step.name)
            if step.is_block:
                seconds = block_seconds(cost, step.block, self.problem.step_contract(step, sched))
                t, rows = sched.t, sched.band_rows
            else:
                seconds = cost.step_seconds(step.macs, step.kind)
                t, rows = 1, 0
            scratch = self.scratch_index[i]
            steps.append(StepPlan(
                name=step.name, kind=step.kind, t=t, band_rows=rows, bytes=self.live_bytes(i),
                scratch_offsets={n: p.offset(k) for n, k in scratch.items()},
                estimated_seconds=seconds,
                scratch_sizes={n: self.sizes[k] for n, k in scratch.items()},
            ))
        return Plan(
            peak_bytes=self.peak(),
            offsets={n: p.offset(k) for n, k in self.buffer_index.items()},
            steps=steps,
            alignment=p.alignment,
            estimated_seconds=sum(s.estimated_seconds for s in steps),
            planner=p.name,
            backend=self.problem.backend,
            threads=self.problem.threads,
            activation_dtype=self.problem.activation_dtype,
            budget=budget,
            buffer_sizes=dict(self.problem.buffers),
        )


def _candidates_by_step(problem: Problem, alignment: int, cost: CostModel,
                        space: SearchSpace) -> dict[str, list[Candidate]]:
    unknown = set(space.fixed or {}) - {s.name for s in problem.block_steps()}
    if unknown:
        raise ValueError(f"fixed schedules name steps that are not blocks: {sorted(unknown)}")
    return {s.name: block_candidates(s, problem, alignment, cost, space) for s in problem.block_steps()}


def _space(max_t, allowed_t, band_choices, fixed) -> SearchSpace:
    return SearchSpace(
        max_t=max_t,
        allowed_t=tuple(allowed_t or ()),
        band_choices=None if band_choices is None else tuple(band_choices),
        fixed=dict(fixed or {}),
    )


def schedule(problem: Problem, budget: int | None = None, alignment: int = 64, planner="greedy",
             cost_model: CostModel | None = None, max_t: int = 5, allowed_t: Iterable[int] | None = None,
             band_choices: Iterable[int] | None = None,
             fixed: Mapping[str, BlockSchedule] | None = None) -> Plan:
    """The fastest plan (by the cost model) whose planned peak fits `budget` bytes."""
    cost = cost_model or CostModel.default(problem.backend)
    candidates = _candidates_by_step(problem, alignment, cost, _space(max_t, allowed_t, band_choices, fixed))
    fastest_choice = {name: fastest(c).schedule for name, c in candidates.items()}
    layout = _Layout(problem, fastest_choice, alignment, planner)
    if budget is None or layout.peak() <= budget:
        return layout.to_plan(cost, budget)

    minimal = _Layout(problem, {n: smallest(c).schedule for n, c in candidates.items()}, alignment, planner)
    if minimal.peak() > budget:
        if problem.segments:
            return _streamed(problem, candidates, budget, alignment, planner, cost, fixed, minimal)
        raise BudgetInfeasible(minimal.peak(), minimal.limiting_step(), budget)
    return _fit_budget(problem, candidates, budget, alignment, planner, cost, minimal)


# ---------------------------------------------------------------- segments
def _segmented_layout(problem: Problem, found: Segmentation, alignment: int, planner) -> _Layout:
    """The segmentation laid out; with greedy-by-size asked, also the other first-fit orders
    (SEGMENT_PLANNER_ORDERS): a segment's large one-step arena fragments greedy-by-size's packing
    easily. The smallest peak wins (ties: the order asked)."""
    derived = problem.with_segments(found.arenas())
    choices = {n: c.schedule for n, c in found.blocks.items()}
    names = SEGMENT_PLANNER_ORDERS.get(planner, (planner,)) if isinstance(planner, str) else (planner,)
    layouts = [_Layout(derived, choices, alignment, name) for name in names]
    return min(layouts, key=lambda layout: layout.peak())


def _segmented_plan(layout: _Layout, found: Segmentation, cost: CostModel, budget: int | None) -> Plan:
    """The layout's plan with each segment's seconds, band, chunking and rings."""
    plan = layout.to_plan(cost, budget)
    by_name = {c.option.name: c for c in found.segments}
    steps = [replace(s, estimated_seconds=by_name[s.name].seconds) if s.name in by_name else s for s in plan.steps]
    segments = []
    for choice in found.segments:
        offset = plan.step(choice.option.name).scratch_offsets["segment"]
        rings = tuple(replace(r, offset=offset + r.offset) for r in choice.layout.rings)
        segments.append(SegmentPlan(choice.option.name, tuple(choice.option.steps), choice.band_rows,
                                    choice.chunking, offset, choice.layout.arena_bytes, rings))
    return replace(plan, steps=steps, segments=tuple(segments),
                   estimated_seconds=sum(s.estimated_seconds for s in steps))


def _streamed(problem: Problem, candidates, budget: int, alignment: int, planner, cost: CostModel, fixed,
              unstreamed_minimal: _Layout) -> Plan:
    """The fastest segmented plan within `budget`; the segmentation's own live-bytes bound is lowered by
    any overshoot of the planner (fragmentation) a few times, then the memory-minimal segmented layout is
    the last resort.  BudgetInfeasible names the smallest peak over segmentations."""
    search = SegmentSearch(problem, candidates, alignment, cost, fixed)
    found, layout = _fastest_layout_within(problem, search, budget, alignment, planner)
    if found is not None:
        return _segmented_plan(layout, found, cost, budget)
    found, layout = _minimal_segmented_layout(problem, search, alignment, planner)
    if found is not None and layout.peak() <= budget:
        return _segmented_plan(layout, found, cost, budget)
    best = unstreamed_minimal if found is None else min(unstreamed_minimal, layout, key=lambda lay: lay.peak())
    raise BudgetInfeasible(best.peak(), best.limiting_step(), budget)


def _fastest_layout_within(problem: Problem, search: SegmentSearch, budget: int, alignment: int, planner,
                           rounds: int = 4) -> tuple[Segmentation | None, _Layout | None]:
    """The fastest segmentation whose laid-out peak fits `budget`: its pieces' bound is lowered by the
    planner's overshoot (fragmentation) for a few rounds.  (None, None) when none is found."""
    target = budget
    for _ in range(rounds):
        found = search.fastest_within(target)
        if found is None:
            break
        layout = _segmented_layout(problem, found, alignment, planner)
        if layout.peak() <= budget:
            return found, layout
        target -= layout.peak() - budget
    return None, None


LADDER_STEPS = 8   # bounds tried between the smallest largest piece and the per-block minimum


def _minimal_segmented_layout(problem: Problem, search: SegmentSearch, alignment: int, planner,
                              ceiling: int | None = None) -> tuple[Segmentation | None, _Layout | None]:
    """The smallest laid-out peak over segmentations.  The pieces' live bytes bound the peak from below,
    but greedy placement may fragment, and which segmentation packs best is not the one with the
    smallest largest piece alone: tried are that one, and the fastest segmentation within each of a
    ladder of bounds from it up to `ceiling` (default: the per-block minimum); whichever the planner
    packs smallest (ties: faster)."""
    minimal = search.minimal()
    if minimal.bound == float("inf"):
        return None, None
    tried = [(minimal, _segmented_layout(problem, minimal, alignment, planner))]
    top = max(minimal.bound, tried[0][1].peak() if ceiling is None else ceiling)
    for k in range(LADDER_STEPS):
        fitting = search.fastest_within(minimal.bound + (top - minimal.bound) * k // LADDER_STEPS)
        if fitting is not None and all(fitting != found for found, _ in tried):
            tried.append((fitting, _segmented_layout(problem, fitting, alignment, planner)))
    return min(tried, key=lambda pair: (pair[1].peak(), pair[0].seconds))


def streamed_minimal(problem: Problem, alignment: int = 64, planner="greedy", cost_model: CostModel | None = None,
                     max_t: int = 5) -> Plan:
    """The memory-minimal plan over segmentations (the per-block minimal one when it is not larger)."""
    cost = cost_model or CostModel.default(problem.backend)
    candidates = _candidates_by_step(problem, alignment, cost, _space(max_t, None, None, None))
    unstreamed = _Layout(problem, {n: smallest(c).schedule for n, c in candidates.items()}, alignment, planner)
    if not problem.segments:
        return unstreamed.to_plan(cost, None)
    found, layout = _minimal_segmented_layout(problem, SegmentSearch(problem, candidates, alignment, cost),
                                              alignment, planner)
    if found is None or layout.peak() >= unstreamed.peak():
        return unstreamed.to_plan(cost, None)
    return _segmented_plan(layout, found, cost, None)


def _fit_budget(problem: Problem, candidates: dict[str, list[Candidate]], budget: int, alignment: int,
                planner, cost: CostModel, minimal: _Layout) -> Plan:
    index = {s.name: i for i, s in enumerate(problem.steps)}
    first_limit = {
        name: budget - (minimal.live_bytes(index[name]) - smallest(cands).scratch_bytes)
        for name, cands in candidates.items()
    }
    limit = dict(first_limit)
    max_rounds = sum(len(c) for c in candidates.values()) + 1
    for _ in range(max_rounds):
        chosen = _choose_within(candidates, limit)
        layout = _Layout(problem, {n: c.schedule for n, c in chosen.items()}, alignment, planner)
        if layout.peak() <= budget:
            return _relax(problem, candidates, chosen, first_limit, budget, alignment, planner,
                          layout).to_plan(cost, budget)
        if not _tighten(layout, chosen, candidates, limit, index, budget):
            break
    return minimal.to_plan(cost, budget)


def _choose_within(candidates: dict[str, list[Candidate]], limit: Mapping[str, int]) -> dict[str, Candidate]:
    return {name: fastest_within(cands, limit[name]) or smallest(cands) for name, cands in candidates.items()}


def _tighten(layout: _Layout, chosen: dict[str, Candidate], candidates, limit, index, budget: int) -> bool:
    """Shrink the scratch limit of one block: the largest-scratch block at an
    overshooting step, or, if those are all minimal (fragmentation caused
    elsewhere), the largest-scratch block anywhere.  False if none can shrink."""
    shrinkable = [n for n, c in chosen.items() if c.scratch_bytes > smallest(candidates[n]).scratch_bytes]
    if not shrinkable:
        return False
    excess = {n: layout.high_water(index[n]) - budget for n in shrinkable}
    offenders = [n for n in shrinkable if excess[n] > 0] or shrinkable
    victim = max(offenders, key=lambda n: (chosen[n].scratch_bytes, -index[n]))
    limit[victim] = chosen[victim].scratch_bytes - max(1, excess[victim])
    return True


def _relax(problem, candidates, chosen: dict[str, Candidate], first_limit, budget: int, alignment: int,
           planner, layout: _Layout) -> _Layout:
    """Give tightened blocks back their first choice, one at a time, where the layout still fits."""
    best = _choose_within(candidates, first_limit)
    for name in sorted(chosen, key=lambda n: chosen[n].seconds - best[n].seconds, reverse=True):
        if best[name].seconds >= chosen[name].seconds:
            continue
        trial = dict(chosen, **{name: best[name]})
        trial_layout = _Layout(problem, {n: c.schedule for n, c in trial.items()}, alignment, planner)
        if trial_layout.peak() <= budget:
            chosen, layout = trial, trial_layout
    return layout


def memory_minimal(problem: Problem, alignment: int = 64, planner="greedy", cost_model: CostModel | None = None,
                   max_t: int = 5, allowed_t: Iterable[int] | None = None,
                   band_choices: Iterable[int] | None = None,
                   fixed: Mapping[str, BlockSchedule] | None = None) -> Plan:
    """Every block at its smallest-scratch candidate (ties: fastest)."""
    cost = cost_model or CostModel.default(problem.backend)
    candidates = _candidates_by_step(problem, alignment, cost, _space(max_t, allowed_t, band_choices, fixed))
    layout = _Layout(problem, {n: smallest(c).schedule for n, c in candidates.items()}, alignment, planner)
    return layout.to_plan(cost, None)


def minimum_peak(problem: Problem, alignment: int = 64, planner="greedy", max_t: int = 5,
                 allowed_t: Iterable[int] | None = None, band_choices: Iterable[int] | None = None,
                 fixed: Mapping[str, BlockSchedule] | None = None) -> tuple[int, str]:
    """(smallest reachable planned peak, the step that sets it): over segmentations too when the
    problem offers segments (the step is then possibly a segment's name)."""
    cost = CostModel.default(problem.backend)
    candidates = _candidates_by_step(problem, alignment, cost, _space(max_t, allowed_t, band_choices, fixed))
    layout = _Layout(problem, {n: smallest(c).schedule for n, c in candidates.items()}, alignment, planner)
    best = (layout.peak(), layout.limiting_step())
    if problem.segments:
        found, streamed = _minimal_segmented_layout(problem, SegmentSearch(problem, candidates, alignment, cost, fixed),
                                                    alignment, planner)
        if found is not None:
            best = min(best, (streamed.peak(), streamed.limiting_step()), key=lambda pair: pair[0])
    return best



def plan_differences(problem: Problem, plan: Plan) -> list[str]:
    """What differs between what `plan` was made for and `problem`: backend, threads, activation
    dtype, then (where the plan records sizes) every arena buffer's and scratch buffer's bytes.
    Empty when the plan is the problem's."""
    differences = [f"{what} {planned!r} in the plan, {here!r} here"
                   for what, planned, here in (("backend", plan.backend, problem.backend),
                                               ("threads", plan.threads, problem.threads),
                                               ("activation dtype", plan.activation_dtype,
                                                problem.activation_dtype))
                   if planned != here]
    if differences:
        return differences
    differences = _segment_differences(problem, plan)
    if differences or not plan.records_sizes:
        return differences
    problem = _as_planned(problem, plan)
    if plan.buffer_sizes != problem.buffers:
        differences += _size_differences("buffer", plan.buffer_sizes, problem.buffers)
    for step in problem.steps:
        step_plan = plan.step(step.name)
        needed = problem.step_scratch(step, step_plan.schedule if step.is_block else None)
        if step_plan.scratch_sizes != needed:
            differences += _size_differences(f"step {step.name!r} scratch", step_plan.scratch_sizes, needed)
    return differences


def _segment_differences(problem: Problem, plan: Plan) -> list[str]:
    """Each segment of the plan must be one this problem offers, over the same steps, with the arena and
    rings its layout gives for the plan's band and chunking."""
    found = []
    offered = {o.name: o for o in problem.segments}
    for segment in plan.segments:
        option = offered.get(segment.name)
        if option is None:
            found.append(f"segment {segment.name!r} of the plan is not a segment this model offers")
            continue
        if tuple(option.steps) != tuple(segment.steps):
            found.append(f"segment {segment.name!r}: steps {list(segment.steps)} in the plan, "
                         f"{list(option.steps)} here")
            continue
        try:
            layout = option.layout(segment.band_rows, segment.chunking)
        except (ValueError, KeyError) as exc:
            found.append(f"segment {segment.name!r}: band {segment.band_rows} ({segment.chunking}) does not fit "
                         f"here: {exc}")
            continue
        if layout.arena_bytes != segment.bytes:
            found.append(f"segment {segment.name!r}: arena {segment.bytes} bytes in the plan, "
                         f"{layout.arena_bytes} here")
        planned = [(r.name, r.rows, r.bytes, r.offset - segment.offset) for r in segment.rings]
        if planned != [(r.name, r.rows, r.bytes, r.offset) for r in layout.rings]:
            found.append(f"segment {segment.name!r}: its rings differ from this model's")
    return found


def _as_planned(problem: Problem, plan: Plan) -> Problem:
    """`problem` as the plan runs it: each of the plan's segments one step, its inner buffers gone."""
    if not plan.segments:
        return problem
    return problem.with_segments({s.name: s.bytes for s in plan.segments})


def _size_differences(what: str, planned: Mapping[str, int], here: Mapping[str, int]) -> list[str]:
    return [f"{what} {name!r}: {planned.get(name, 'none')} bytes in the plan, {here.get(name, 'none')} here"
            for name in sorted(set(planned) | set(here)) if planned.get(name) != here.get(name)]


def verify_plan(problem: Problem, plan: Plan) -> None:
    """Check a plan (e.g. one loaded from JSON) against a problem: every buffer
    and scratch placed, aligned, inside the arena, no two sharing bytes at a
    common step.  Raises PlanOverlapError or ValueError."""
    if not isinstance(plan.alignment, int) or plan.alignment < 1 or plan.alignment & (plan.alignment - 1):
        raise ValueError(f"plan alignment must be a positive power of two, got {plan.alignment!r}")
    problem = _as_planned(problem, plan)
    for segment in plan.segments:
        for ring in segment.rings:
            if not segment.offset <= ring.offset <= ring.offset + ring.bytes <= segment.offset + segment.bytes:
                raise ValueError(f"segment {segment.name!r}: ring {ring.name!r} lies outside the segment's arena")
    for i, step in enumerate(problem.steps):
        step_plan = plan.step(step.name)
        regions = [(plan.offsets[n], problem.buffers[n], n) for n in problem.alive_at(i)]
        scratch = problem.step_scratch(step, step_plan.schedule if step.is_block else None)
        if set(scratch) != set(step_plan.scratch_offsets):
            raise ValueError(f"step {step.name!r}: plan scratch {sorted(step_plan.scratch_offsets)} "
                             f"!= needed {sorted(scratch)}")
        regions += [(step_plan.scratch_offsets[n], size, f"{step.name}:{n}") for n, size in scratch.items()]
        _check_regions(regions, plan.alignment, plan.peak_bytes, step.name)


def _check_regions(regions, alignment: int, peak: int, step_name: str) -> None:
    spans = sorted((off, off + align_up(size, alignment), name) for off, size, name in regions if size)
    for start, end, name in spans:
        if start % alignment or start < 0 or end > peak:
            raise ValueError(f"{name!r} at [{start}, {end}) is misaligned or outside the {peak}-byte arena")
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise PlanOverlapError(f"at step {step_name!r}: {n0!r} [{s0}, {e0}) overlaps {n1!r} [{s1}, {e1})",
                                   n0, n1)
