"""Turn an optimised, shape-inferred graph into a scheduled plan and run it inside one arena.

The executor is the only place that knows both the graph and the scheduler: it describes every
node as a scheduler Step (buffers read and written, scratch, block geometry), asks the scheduler
for a plan, binds every activation and scratch buffer to a view of one preallocated arena, and
runs the steps in order.
"""
from __future__ import annotations

import dataclasses
import importlib
import time
import tracemalloc
import warnings
from collections import ChainMap
from dataclasses import dataclass, field

import numpy as np

import scheduler
from edgerun import concat_alias, kernels, limits, ops, segments_graph
from edgerun.errors import EdgerunError, InvalidModelError, InvalidOptionError, MemoryBudgetError, PlanMismatchError
from edgerun.ir import Graph, Node
from edgerun.kernels import f16
from edgerun.kernels.numpy_segment import SegmentRunner
from scheduler.alias import merge_buffers
from scheduler.blocks import BlockGeometry, BlockSchedule

ARENA_ALIGNMENT = 64
ACTIVATION_DTYPE = "float32"  # what the plan records by default: the float activations' dtype


@dataclass
class ExecStep:
    node: Node
    kind: str                      # "block", "kernel", "reference" or "segment"
    kernel: object = None
    geometry: BlockGeometry | None = None
    weights: object = None
    schedule: BlockSchedule | None = None
    contract: scheduler.KernelContract | None = None  # blocks: the kernel's contract for the plan's schedule
    scratch: dict = field(default_factory=dict)
    bound: tuple = ()              # blocks: (x, out, one checked call per image), see _block_calls
    segment: object = None         # segments: the segments_graph.Candidate it runs (`kernel`: its runner)


@dataclass
class StepProfile:
    name: str
    kind: str
    seconds: float
    extra_bytes: int               # allocated outside the arena during the step (tracemalloc peak)
    run_bytes: int                 # the same peak, counted from the start of run()


def block_geometry(node: Node, graph: Graph, itemsize: int = 4) -> BlockGeometry:
    a = node.attrs
    x_shape = graph.value_info[node.inputs[0]].shape
    wd_shape = graph.value_info[node.inputs[3]].shape
    wp_shape = graph.value_info[node.inputs[5]].shape
    has_expand = bool(node.input(1))
    return BlockGeometry(
        in_channels=x_shape[1], in_height=x_shape[2], in_width=x_shape[3],
        hidden_channels=wd_shape[0],
        expand_kernel=a.get("expand_kernel", 1) if has_expand else 0,
        expand_stride=a.get("expand_stride", 1) if has_expand else 1,
        expand_pads=tuple(a.get("expand_pads", [0, 0, 0, 0])) if has_expand else (0, 0, 0, 0),
        dw_kernel=a["dw_kernel"], dw_stride=a["dw_stride"], dw_pads=tuple(a["dw_pads"]),
        out_channels=wp_shape[0], residual=bool(a.get("residual", 0)), itemsize=itemsize,
    )


def _nbytes(info) -> int:
    return int(np.prod(info.shape, dtype=np.int64)) * np.dtype(info.dtype).itemsize


def node_macs(node: Node, graph: Graph) -> int:
    """Multiply-adds of a step, as the op's definition counts them (edgerun.ops.OpDef.macs)."""
    vi = graph.value_info
    if vi[node.outputs[0]].shape is None:
        return 0
    shapes = [[vi[name].shape if name in vi else None for name in names] for names in (node.inputs, node.outputs)]
    return ops.lookup(node, graph.opset).macs(node, *shapes)


def segment_runner_class(backend: str):
    """The class that runs segments on `backend`: edgerun.kernels.native_segment.NativeSegmentRunner for
    "native" when that module exists, else the numpy SegmentRunner (same interface)."""
    if backend == "native":
        try:
            return importlib.import_module("edgerun.kernels.native_segment").NativeSegmentRunner
        except ModuleNotFoundError as exc:
            if exc.name != "edgerun.kernels.native_segment":
                raise
    return SegmentRunner


def segment_chunks(chunking: str, steps: int, band_rows: int):
    """Rows per call of each of a segment's steps: one-row calls ("rows") or the steady rates (None)."""
    if chunking == "rows":
        return [1] * (steps - 1) + [band_rows]
    if chunking == "steady":
        return None
    raise InvalidModelError(f"unknown segment chunking {chunking!r}; the plan may come from a newer edgerun")


def _import_kernel_modules(backend: str) -> None:
    """Import the kernels now: a first run() that imported them would count the modules' memory."""
    kernels.block_kernel(backend)
    if backend == "native":
        importlib.import_module("edgerun.kernels._native")


class CompiledModel:
    """A graph with concrete shapes, its plan, its arena and the bound steps.

    plan: a plan made elsewhere (e.g. stored in a bundle). It is verified against this model once: the
    backend, threads and activation dtype it was made for and every buffer's size must equal this
    model's. If they differ, replan=True plans again for the plan's budget (and says so in `notices`
    and with a warning); otherwise PlanMismatchError says what differs.
    segments: False plans without streaming (the per-block plans of before; `problem` still offers the
    segments, e.g. for scheduler.minimum_peak).
    activation_dtype: "float16" stores every float32 activation (and the blocks' scratch) in float16; the
    kernels compute in float32 (edgerun.kernels.f16). Fed inputs and returned outputs stay float32. Segments
    on float16 storage run the numpy segment runner (float16 rings and row scratch) on either backend."""

    def __init__(self, graph: Graph, *, budget: int | None, backend: str, planner: str = "greedy",
                 fixed: dict | None = None, max_t: int = 5, threads: int = 1, cost_model=None,
                 plan: scheduler.Plan | None = None, replan: bool = False, segments: bool = True,
                 activation_dtype: str = ACTIVATION_DTYPE):
        self.graph = graph
        self.backend = backend
        self.threads = threads
        self.activation_dtype = activation_dtype
        self.storage = {}              # activation name -> the dtype its arena view holds
        self.notices: list[str] = []
        self.constants = dict(graph.initializers)
        self.constants.update({n: i.value for n, i in graph.value_info.items()
                               if i.value is not None and n not in self.constants})
        self.activations = self._activation_buffers()
        _import_kernel_modules(backend)
        self.steps = [self._exec_step(n) for n in graph.nodes if not self._is_constant_node(n)]
        self.segment_candidates = {c.name: c for c in segments_graph.segment_candidates(
            graph, [s.node for s in self.steps], self.constants)}
        self.streams = segments
        self.problem = self._problem()
        # Concat inputs written in place: {input: (Concat output, byte offset)} (edgerun/concat_alias.py)
        self._plain_problem = self.problem
        self._found_aliases = concat_alias.concat_parts(graph, self.activations)   # offsets in stored bytes
        self._use_aliases(plan is None or not any(part in plan.offsets for part in self._found_aliases))
        if plan is not None and not self._plan_fits(plan, replan):
            budget = budget if budget is not None else plan.budget
            planner = plan.planner
            plan = None
        self.plan = plan if plan is not None else self._schedule(budget, planner, fixed or {}, max_t, cost_model)
        self.planned_problem = self.problem.with_segments({s.name: s.bytes for s in self.plan.segments}) \
            if self.plan.segments else self.problem     # the problem as the plan runs it: one step a segment
        self.steps = self._with_segments(self.steps)
        self.arena, self.views = self._bind_arena()
        self._bound_env = {**self.constants, **self.views}
        self._profile_records = np.zeros((len(self.steps), 3))   # seconds, escaped bytes, bytes since run start
        self.profiled_peak_bytes = 0    # tracemalloc peak of the last profiled run before its outputs are copied
        self._bind_block_calls()

    # ---- describing the graph to the scheduler
    def _is_constant_node(self, node: Node) -> bool:
        return all(o in self.constants or not o for o in node.outputs)

    @property
    def half(self) -> bool:
        return self.activation_dtype == "float16"

    @property
    def block_backend(self) -> str:
        """The backend of the blocks: float16 storage runs the numpy block (no native float16 block yet)."""
        return "numpy" if self.half else self.backend

    def _activation_buffers(self) -> dict[str, int]:
        buffers = {}
        for node in self.graph.nodes:
            for name in node.outputs:
                if name and name not in self.constants:
                    info = self.graph.value_info[name]
                    self.storage[name] = f16.storage_dtype(info.dtype, self.activation_dtype)
                    buffers[name] = int(np.prod(info.shape, dtype=np.int64)) * self.storage[name].itemsize
        return buffers

    def _stored_dtype(self, name: str):
        """What a step reads or writes for `name`: its arena dtype, or the graph's for a fed input."""
        return self.storage.get(name, self.graph.value_info[name].dtype if name in self.graph.value_info else None)

    def _exec_step(self, node: Node) -> ExecStep:
        vi = self.graph.value_info
        if node.op_type == "InvertedResidual" and node.domain == "edgerun":
            geom = block_geometry(node, self.graph, 2 if self.half else 4)
            weights = kernels.BlockWeights.from_node(node, self.constants)
            return ExecStep(node, "block", geometry=geom, weights=weights)
        in_dtypes = [vi[i].dtype if i else None for i in node.inputs]
        out_dtypes = [vi[o].dtype for o in node.outputs if o]
        kernel = ops.arena_kernel(node, in_dtypes, out_dtypes, self.backend, self.threads)
        if kernel is not None and self.half:
            kernel = self._half_kernel(node, kernel, in_dtypes, out_dtypes)
        if kernel is not None:
            kernel.prepare(node, self.constants)
        return ExecStep(node, "kernel" if kernel else "reference", kernel=kernel)

    def _half_kernel(self, node: Node, kernel, in_dtypes, out_dtypes):
        """The kernel of a step on float16 storage: a kernel that moves bytes of any dtype runs on it as it is;
        a float32 kernel runs through planned float32 staging of its float16 inputs and outputs."""
        stored_in = [self._stored_dtype(i) if i else None for i in node.inputs]
        stored_out = [self._stored_dtype(o) for o in node.outputs if o]
        if stored_in == in_dtypes and stored_out == out_dtypes:
            return kernel
        as_stored = ops.arena_kernel(node, stored_in, stored_out, self.backend, self.threads)
        if as_stored is not None and node.op_type in f16.MOVES_BYTES and node.domain in ("", "edgerun"):
            return as_stored
        vi = self.graph.value_info
        direct = f16.half_kernel(ops.definition(node.op_type, node.domain).step, node,
                                 [vi[i].shape if i in vi else None for i in node.inputs])
        if direct is not None:
            return direct
        return f16.StagedKernel(kernel, [s is not None and s != d for s, d in zip(stored_in, in_dtypes)],
                                [s != d for s, d in zip(stored_out, out_dtypes)])

    def _step_scratch(self, step: ExecStep) -> dict[str, int] | None:
        if step.kind != "kernel":
            return None
        vi = self.graph.value_info
        return step.kernel.scratch_bytes(step.node, [vi[i].shape if i else None for i in step.node.inputs],
                                         [vi[o].shape for o in step.node.outputs if o])

    def _problem(self) -> scheduler.Problem:
        contract = kernels.block_kernel(self.block_backend).block_contract
        sched_steps = []
        for step in self.steps:
            node = step.node
            sched_steps.append(scheduler.Step(
                name=node.name, kind=node.op_type,
                reads=[i for i in node.inputs if i in self.activations],
                writes=[o for o in node.outputs if o in self.activations],
                macs=node_macs(node, self.graph), scratch=self._step_scratch(step), block=step.geometry,
                contract=contract if step.kind == "block" else None))
        outputs = [o for o in self.graph.output_names() if o in self.activations]
        return scheduler.Problem(buffers=dict(self.activations), steps=sched_steps, outputs=outputs,
                                 backend=self.backend, threads=self.threads, activation_dtype=self._activation_dtype(),
                                 segments=[self._segment_option(c) for c in self.segment_candidates.values()])

    def _activation_dtype(self) -> str:
        """The label the plan records: "int8" when 8-bit integer tensors are among the activations (a quantised
        model, float only at its edges), else the float activations' dtype."""
        dtypes = {np.dtype(self.graph.value_info[name].dtype) for name in self.activations}
        return "int8" if dtypes & {np.dtype(np.int8), np.dtype(np.uint8)} else self.activation_dtype

    # ---- segments
    def _segment_option(self, candidate: segments_graph.Candidate) -> scheduler.SegmentOption:
        out_shape = self.graph.value_info[candidate.output].shape
        in_shape = self.graph.value_info[candidate.input].shape
        height = in_shape[2] if candidate.units[-1].reduces else out_shape[2]
        return scheduler.SegmentOption(candidate.name, candidate.steps, height,
                                       lambda band, chunking: self._segment_layout(candidate, band, chunking))

    def _segment_runner(self, candidate: segments_graph.Candidate, band_rows: int, chunking: str, arena=None):
        """The candidate's runner for one image; ValueError when it cannot run this graph's shapes."""
        ops_, _ = candidate.ops()
        in_shape = tuple(self.graph.value_info[candidate.input].shape[1:])
        out_shape = tuple(self.graph.value_info[candidate.output].shape[1:])
        try:
            chunks = segment_chunks(chunking, len(ops_), band_rows)
            if self.half:
                runner = SegmentRunner(ops_, in_shape, band_rows, alignment=ARENA_ALIGNMENT, chunks=chunks,
                                       arena=arena, itemsize=2)
            else:
                runner = segment_runner_class(self.backend)(ops_, in_shape, band_rows, alignment=ARENA_ALIGNMENT,
                                                            chunks=chunks, arena=arena)
        except (EdgerunError, scheduler.SchedulerError, ValueError, TypeError, IndexError, KeyError) as exc:
            raise ValueError(f"{candidate.name} cannot stream: {exc}") from None
        if tuple(runner.out_shape) != out_shape:
            raise ValueError(f"{candidate.name} streams {tuple(runner.out_shape)} rows where the graph has "
                             f"{out_shape}")
        return runner

    def _segment_layout(self, candidate, band_rows: int, chunking: str) -> scheduler.SegmentLayout:
        runner = self._segment_runner(candidate, band_rows, chunking)
        _, labels = candidate.ops()
        offsets = {runner.planner.buffer_name(k): runner.planner.offset(k) for k in range(len(runner.planner))}
        rings = tuple(scheduler.RingPlacement(labels[ring.tensor], ring.rows, ring.height, ring.bytes,
                                              offsets[f"ring:{ring.name}"]) for ring in runner.schedule.rings)
        return scheduler.SegmentLayout(runner.arena_bytes, rings, len(runner.schedule.calls), runner.row_calls)

    def _node(self, name: str) -> Node:
        return next(step.node for step in self.steps if step.node.name == name)

    def _with_segments(self, steps: list[ExecStep]) -> list[ExecStep]:
        """The executor's steps as the plan runs them: each segment's member steps replaced by one step."""
        if not self.plan.segments:
            return steps
        first = {}
        for segment in self.plan.segments:
            candidate = self.segment_candidates[segment.name]
            weights = [n for unit in candidate.units for n in self._node(unit.step).inputs if n in self.constants]
            node = Node("Segment", [candidate.input] + list(dict.fromkeys(weights)), [candidate.output], {},
                        segment.name, "edgerun")
            first[segment.steps[0]] = ExecStep(node, "segment", segment=candidate)
        members = {name for segment in self.plan.segments for name in segment.steps}
        return [first[s.node.name] if s.node.name in first else s for s in steps if s.node.name not in members
                or s.node.name in first]

    def _block_schedules(self, fixed: dict) -> dict[str, BlockSchedule]:
        """The caller's {block: (t, band_rows or None)} as scheduler BlockSchedules, checked against the graph."""
        blocks = {step.node.name: step.geometry for step in self.steps if step.kind == "block"}
        named = {_block_named(name, blocks): value for name, value in fixed.items()}
        if len(named) != len(fixed):
            raise InvalidOptionError(f"schedule names one block twice: {sorted(fixed)}")
        fixed = named
        schedules = {}
        for name, (t, band) in fixed.items():
            geom = blocks[name]
            if t > geom.hidden_channels:
                raise InvalidOptionError(f"schedule[{name!r}]: t={t} exceeds the block's {geom.hidden_channels} "
                                         f"expansion channels")
            schedules[name] = BlockSchedule(t, min(band or geom.out_height, geom.out_height))
        return schedules

    def _use_aliases(self, on: bool) -> None:
        """Plan the problem with the Concat inputs inside their outputs (on), or the plain one."""
        self.aliases = dict(self._found_aliases) if on else {}
        self.problem = (merge_buffers(self._plain_problem, {part: host for part, (host, _) in self.aliases.items()})
                        if self.aliases else self._plain_problem)

    def _schedule(self, budget, planner, fixed, max_t, cost_model) -> scheduler.Plan:
        """The plan of the problem with Concat inputs in place, unless the plain problem's peak is smaller
        (then no Concat input is in place): no planned peak grows."""
        if not self._found_aliases:
            return self._schedule_problem(budget, planner, fixed, max_t, cost_model)
        plans, errors = {}, []
        for on in (True, False):
            self._use_aliases(on)
            try:
                plans[on] = self._schedule_problem(budget, planner, fixed, max_t, cost_model)
            except MemoryBudgetError as exc:
                errors.append(exc)
        if not plans:
            raise min(errors, key=lambda exc: exc.minimum_bytes)
        on = True in plans and (False not in plans or plans[True].peak_bytes <= plans[False].peak_bytes)
        self._use_aliases(on)
        return plans[on]

    def _schedule_problem(self, budget, planner, fixed, max_t, cost_model) -> scheduler.Plan:
        fixed = self._block_schedules(fixed)
        cost_model = cost_model or scheduler.CostModel.default(self.backend)
        try:
            problem = self.problem if self.streams else dataclasses.replace(self.problem, segments=[])
            return scheduler.schedule(problem, budget=budget, alignment=ARENA_ALIGNMENT, planner=planner,
                                      fixed=fixed, max_t=max_t, cost_model=cost_model)
        except scheduler.BudgetInfeasible as exc:
            raise MemoryBudgetError(
                f"no schedule fits the memory budget of {budget} bytes: the smallest peak edgerun can reach for "
                f"this model and input shape is {exc.minimum_bytes} bytes, set by step {exc.limiting_step!r}",
                minimum_bytes=exc.minimum_bytes, limiting_step=exc.limiting_step) from None

    def _plan_fits(self, plan: scheduler.Plan, replan: bool) -> bool:
        """True when `plan` is this model's (checked once: what it was made for, every buffer's size, every
        placement); False when it is not but replan=True (a notice says why); else PlanMismatchError."""
        try:
            differences = scheduler.plan_differences(self.problem, plan)
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidModelError(f"the given plan does not fit this graph: {exc}") from None
        if differences:
            if not replan:
                raise PlanMismatchError(self._mismatch_message(plan, differences))
            self._notice(f"the plan was made for {_made_for(plan)} but this model runs {self._runs()} "
                         f"({'; '.join(differences[:3])}): re-planned for the same budget "
                         f"({_budget_text(plan.budget)})")
            return False
        try:
            scheduler.verify_plan(self.problem, plan)
        except (scheduler.SchedulerError, ValueError, KeyError, TypeError) as exc:
            if not plan.records_sizes and replan:
                self._notice(f"the plan (from an older format that does not record its buffer sizes) does not "
                             f"fit this model ({exc}): re-planned for the same budget")
                return False
            raise InvalidModelError(f"the given plan does not fit this graph: {exc}") from None
        return True

    def _mismatch_message(self, plan: scheduler.Plan, differences: list[str]) -> str:
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        return (f"the plan was made for {_made_for(plan)} but this model runs {self._runs()}: {shown}. "
                f"Run it as planned (kernels_backend={plan.backend!r}, threads={plan.threads}), or pass "
                f"replan=True to plan again for the same budget")

    def _runs(self) -> str:
        return f"the {self.backend} kernels on {self.threads} thread(s)"

    def _notice(self, text: str) -> None:
        self.notices.append(text)
        warnings.warn(text, RuntimeWarning, stacklevel=4)

    # ---- binding buffers to the arena
    def _bind_arena(self):
        limits.check_arena(self.plan.peak_bytes, self.activations)
        raw = np.empty(self.plan.peak_bytes + ARENA_ALIGNMENT, dtype=np.uint8)
        start = (-raw.ctypes.data) % ARENA_ALIGNMENT
        arena = raw[start:start + self.plan.peak_bytes]
        views = {}
        for name in self.activations:
            info = self.graph.value_info[name]
            if name in self.aliases and self.aliases[name][0] in self.plan.offsets:
                host, inside = self.aliases[name]
                offset = self.plan.offsets[host] + inside
            elif name in self.plan.offsets:
                offset = self.plan.offsets[name]
            else:
                continue        # an inner tensor of a segment: only its ring exists
            views[name] = arena[offset:offset + self.activations[name]].view(self.storage[name]).reshape(info.shape)
        for step in self.steps:
            step_plan = self.plan.step(step.node.name)
            sizes = self._scratch_sizes(step, step_plan)
            scratch_dtype = np.float16 if step.kind in ("block", "segment") and self.half else \
                getattr(step.kernel, "scratch_dtype", np.float32)
            step.scratch = {key: arena[step_plan.scratch_offsets[key]:step_plan.scratch_offsets[key] + size]
                            .view(scratch_dtype) for key, size in sizes.items()}
            if step.kind == "segment":
                self._bind_segment(step)
        self._raw = raw
        return arena, views

    def _bind_segment(self, step: ExecStep) -> None:
        segment = self.plan.segment(step.node.name)
        try:
            step.kernel = self._segment_runner(step.segment, segment.band_rows, segment.chunking,
                                               arena=step.scratch["segment"])
        except ValueError as exc:
            raise InvalidModelError(f"the plan's segment does not run here: {exc}") from None
        if step.kernel.arena_bytes != segment.bytes:
            raise InvalidModelError(f"{segment.name}: its runner needs {step.kernel.arena_bytes} arena bytes, "
                                    f"the plan gives {segment.bytes}")

    def _scratch_sizes(self, step: ExecStep, step_plan) -> dict[str, int]:
        if step.kind == "segment":
            return dict(step_plan.scratch_sizes or {"segment": self.plan.segment(step.node.name).bytes})
        if step.kind == "block":
            step.schedule = BlockSchedule(step_plan.t, step_plan.band_rows)
            sched_step = self.problem.steps[self.problem.step_index(step.node.name)]
            step.contract = self.problem.step_contract(sched_step, step.schedule)
            return step.contract.scratch_bytes()
        return self._step_scratch(step) or {}

    # ---- running
    def run(self, feeds: dict[str, np.ndarray], output_names: list[str], profile: bool = False,
            trace_base: int = 0):
        """Outputs (copied out of the arena) and, when profiling under tracemalloc, one StepProfile a step."""
        # the run reads constants and arena views from maps built at bind time: nothing per run grows with
        # the graph, and profiled runs record into an array made at bind time too (a profile object per
        # step would count hundreds of bytes a step against the measured peak)
        env = ChainMap(feeds, self._bound_env)
        if not profile:
            for step in self.steps:
                self._run_step(step, env)
            return [self._output_copy(env, name) for name in output_names], []
        records = self._profile_records
        for index, step in enumerate(self.steps):
            self._run_profiled(step, env, trace_base, records, index)
        # the returned outputs are reported apart (docs/architecture.md, "Memory"): the peak is read before
        # they are copied out of the arena
        self.profiled_peak_bytes = tracemalloc.get_traced_memory()[1] - trace_base
        outputs = [self._output_copy(env, name) for name in output_names]
        return outputs, [StepProfile(step.node.name, step.node.op_type, float(seconds), int(extra), int(total))
                         for step, (seconds, extra, total) in zip(self.steps, records.tolist())]

    def _output_copy(self, env, name: str) -> np.ndarray:
        """A returned output: a copy out of the arena, in the graph's dtype (float32 for float16 storage)."""
        return np.array(env[name], dtype=self.graph.value_info[name].dtype, copy=True)

    def _run_profiled(self, step: ExecStep, env, trace_base: int, records, index: int) -> None:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        self._run_step(step, env)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        records[index] = (seconds, peak - start, peak - trace_base)

    def _bind_block_calls(self) -> None:
        """Blocks between arena buffers get their checked calls now, not inside a (measured) run."""
        for step in self.steps:
            x, out = step.node.inputs[0], step.node.outputs[0]
            if step.kind == "block" and x in self.views and out in self.views:
                self._block_calls(step, self.views[x], self.views[out])

    def _block_calls(self, step: ExecStep, x, out) -> list:
        """One checked kernel call per image; kept while the input and output are the same arrays
        (arena views always are; a fed input may be a new array each run)."""
        if not step.bound or step.bound[0] is not x or step.bound[1] is not out:
            calls = [kernels.block_call(x[n], out[n], step.weights, step.geometry, step.schedule, step.scratch,
                                        backend=self.block_backend, threads=self.threads, contract=step.contract)
                     for n in range(x.shape[0])]
            step.bound = (x, out, calls)
        return step.bound[2]

    def _run_step(self, step: ExecStep, env) -> None:
        node = step.node
        args = [env[i] if i else None for i in node.inputs]
        outs = [env[o] for o in node.outputs if o]
        try:
            if step.kind == "block":
                for call in self._block_calls(step, args[0], outs[0]):
                    call()
            elif step.kind == "kernel":
                step.kernel.run(node, args, outs, step.scratch)
            elif step.kind == "segment":
                for x, out in zip(args[0], outs[0]):
                    step.kernel.run(np.ascontiguousarray(x), out)
            else:
                if self.half:   # the reference op computes on the graph's dtypes
                    args = [None if a is None else np.asarray(a, dtype=self.graph.value_info[n].dtype)
                            for n, a in zip(node.inputs, args)]
                results = ops.lookup(node, self.graph.opset).compute(node, args, self.graph.opset)
                for name, result in zip(node.outputs, results):
                    if name:
                        np.copyto(env[name], np.asarray(result).reshape(env[name].shape), casting="unsafe")
        except EdgerunError:
            raise
        except Exception as exc:
            raise InvalidModelError(f"{node.describe()} failed while running: {exc}") from None


def _made_for(plan: scheduler.Plan) -> str:
    return f"the {plan.backend} kernels on {plan.threads} thread(s)"


def _budget_text(budget: int | None) -> str:
    return "none: the fastest plan" if budget is None else f"{budget:,} bytes"


def _block_named(name: str, blocks: dict) -> str:
    """The block a schedule key means: its full node name as `edgerun plan` prints it, or a prefix of it that
    ends at a '.' or '/' and names one block only ("features.2" for "features.2.conv.1.0/Conv/InvertedResidual")."""
    if name in blocks:
        return name
    matches = [b for b in blocks if isinstance(name, str) and name and b.startswith((name + ".", name + "/"))]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise InvalidOptionError(f"schedule key {name!r} is ambiguous: it names the blocks {sorted(matches)}")
    raise InvalidOptionError(f"schedule names {[name]}, which are not inverted-residual blocks of this graph; "
                             f"its blocks are {sorted(blocks)} (or a prefix naming one of them, e.g. 'features.2')")
