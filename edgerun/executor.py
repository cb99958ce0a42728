"""Turn an optimised, shape-inferred graph into a scheduled plan and run it inside one arena.

The executor is the only place that knows both the graph and the scheduler: it describes every
node as a scheduler Step (buffers read and written, scratch, block geometry), asks the scheduler
for a plan, binds every activation and scratch buffer to a view of one preallocated arena, and
runs the steps in order.
"""
from __future__ import annotations

import importlib
import time
import tracemalloc
from dataclasses import dataclass, field

import numpy as np

import scheduler
from edgerun import kernels, ops
from edgerun.errors import EdgerunError, InvalidModelError, InvalidOptionError, MemoryBudgetError
from edgerun.ir import Graph, Node
from edgerun.kernels.native_steps import native_variant
from edgerun.kernels.numpy_steps import step_kernel
from scheduler.blocks import BlockGeometry, BlockSchedule, block_scratch

ARENA_ALIGNMENT = 64


@dataclass
class ExecStep:
    node: Node
    kind: str                      # "block", "kernel" or "reference"
    kernel: object = None
    geometry: BlockGeometry | None = None
    weights: object = None
    schedule: BlockSchedule | None = None
    scratch: dict = field(default_factory=dict)
    bound: tuple = ()              # blocks: (x, out, one checked call per image), see _block_calls


@dataclass
class StepProfile:
    name: str
    kind: str
    seconds: float
    extra_bytes: int               # allocated outside the arena during the step (tracemalloc peak)
    run_bytes: int                 # the same peak, counted from the start of run()


def block_geometry(node: Node, graph: Graph) -> BlockGeometry:
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
        out_channels=wp_shape[0], residual=bool(a.get("residual", 0)),
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


def _import_kernel_modules(backend: str) -> None:
    """Import the kernels now: a first run() that imported them would count the modules' memory."""
    names = ["edgerun.kernels.numpy_block"] if backend == "numpy" else ["edgerun.kernels.native",
                                                                        "edgerun.kernels._native"]
    for name in names:
        importlib.import_module(name)


class CompiledModel:
    """A graph with concrete shapes, its plan, its arena and the bound steps."""

    def __init__(self, graph: Graph, *, budget: int | None, backend: str, planner: str = "greedy",
                 fixed: dict | None = None, max_t: int = 5, threads: int = 1, cost_model=None,
                 plan: scheduler.Plan | None = None):
        self.graph = graph
        self.backend = backend
        self.threads = threads
        self.constants = dict(graph.initializers)
        self.constants.update({n: i.value for n, i in graph.value_info.items()
                               if i.value is not None and n not in self.constants})
        self.activations = self._activation_buffers()
        self.steps = [self._exec_step(n) for n in graph.nodes if not self._is_constant_node(n)]
        self.scratch_threads = threads  # whose block scratch the plan holds (see _verify)
        self.problem = self._problem(threads)
        if plan is not None:
            self._verify(plan)
        self.plan = plan if plan is not None else self._schedule(budget, planner, fixed or {}, max_t, cost_model)
        self.arena, self.views = self._bind_arena()
        _import_kernel_modules(backend)
        self._bind_block_calls()

    # ---- describing the graph to the scheduler
    def _is_constant_node(self, node: Node) -> bool:
        return all(o in self.constants or not o for o in node.outputs)

    def _activation_buffers(self) -> dict[str, int]:
        buffers = {}
        for node in self.graph.nodes:
            for name in node.outputs:
                if name and name not in self.constants:
                    buffers[name] = _nbytes(self.graph.value_info[name])
        return buffers

    def _exec_step(self, node: Node) -> ExecStep:
        vi = self.graph.value_info
        if node.op_type == "InvertedResidual" and node.domain == "edgerun":
            geom = block_geometry(node, self.graph)
            weights = kernels.BlockWeights.from_node(node, self.constants)
            return ExecStep(node, "block", geometry=geom, weights=weights)
        in_dtypes = [vi[i].dtype if i else None for i in node.inputs]
        out_dtypes = [vi[o].dtype for o in node.outputs if o]
        kernel = step_kernel(node, in_dtypes, out_dtypes)
        if kernel is not None and node.op_type == "FusedConv" and len(vi[node.inputs[0]].shape) != 4:
            kernel = None
        if kernel is not None and self.backend == "native":
            kernel = native_variant(node.op_type, kernel, self.threads)
        if kernel is not None:
            kernel.prepare(node, self.constants)
        return ExecStep(node, "kernel" if kernel else "reference", kernel=kernel)

    def _step_scratch(self, step: ExecStep) -> dict[str, int] | None:
        if step.kind != "kernel":
            return None
        vi = self.graph.value_info
        return step.kernel.scratch_bytes(step.node, [vi[i].shape if i else None for i in step.node.inputs],
                                         [vi[o].shape for o in step.node.outputs if o])

    def _problem(self, threads: int) -> scheduler.Problem:
        sched_steps = []
        for step in self.steps:
            node = step.node
            sched_steps.append(scheduler.Step(
                name=node.name, kind=node.op_type,
                reads=[i for i in node.inputs if i in self.activations],
                writes=[o for o in node.outputs if o in self.activations],
                macs=node_macs(node, self.graph), scratch=self._step_scratch(step), block=step.geometry))
        outputs = [o for o in self.graph.output_names() if o in self.activations]
        return scheduler.Problem(buffers=dict(self.activations), steps=sched_steps, outputs=outputs,
                                 backend=self.backend, threads=threads)

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

    def _schedule(self, budget, planner, fixed, max_t, cost_model) -> scheduler.Plan:
        fixed = self._block_schedules(fixed)
        try:
            return scheduler.schedule(self.problem, budget=budget, alignment=ARENA_ALIGNMENT, planner=planner,
                                      fixed=fixed, max_t=max_t, cost_model=cost_model)
        except scheduler.BudgetInfeasible as exc:
            raise MemoryBudgetError(
                f"no schedule fits the memory budget of {budget} bytes: the smallest peak edgerun can reach for "
                f"this model and input shape is {exc.minimum_bytes} bytes, set by step {exc.limiting_step!r}",
                minimum_bytes=exc.minimum_bytes, limiting_step=exc.limiting_step) from None

    def _verify(self, plan: scheduler.Plan) -> None:
        """A plan from outside (e.g. a bundle) must place every buffer and scratch inside the arena, apart.
        A plan made for one thread (one scratch slice per block) also serves more threads: the blocks then
        share each (band, chunk) step between the threads instead of taking whole bands."""
        try:
            scheduler.verify_plan(self.problem, plan)
            return
        except (scheduler.SchedulerError, ValueError, KeyError, TypeError) as exc:
            error = exc
        if self.threads > 1:
            single = self._problem(1)
            try:
                scheduler.verify_plan(single, plan)
            except (scheduler.SchedulerError, ValueError, KeyError, TypeError):
                pass
            else:
                self.problem, self.scratch_threads = single, 1
                return
        raise InvalidModelError(f"the given plan does not fit this graph: {error}") from None

    # ---- binding buffers to the arena
    def _bind_arena(self):
        raw = np.empty(self.plan.peak_bytes + ARENA_ALIGNMENT, dtype=np.uint8)
        start = (-raw.ctypes.data) % ARENA_ALIGNMENT
        arena = raw[start:start + self.plan.peak_bytes]
        views = {}
        for name in self.activations:
            info = self.graph.value_info[name]
            offset = self.plan.offsets[name]
            views[name] = arena[offset:offset + self.activations[name]].view(info.dtype).reshape(info.shape)
        for step in self.steps:
            step_plan = self.plan.step(step.node.name)
            sizes = self._scratch_sizes(step, step_plan)
            step.scratch = {key: arena[step_plan.scratch_offsets[key]:step_plan.scratch_offsets[key] + size]
                            .view(np.float32) for key, size in sizes.items()}
        self._raw = raw
        return arena, views

    def _scratch_sizes(self, step: ExecStep, step_plan) -> dict[str, int]:
        if step.kind == "block":
            step.schedule = BlockSchedule(step_plan.t, step_plan.band_rows)
            return block_scratch(step.geometry, step.schedule, self.backend, self.scratch_threads)
        return self._step_scratch(step) or {}

    # ---- running
    def run(self, feeds: dict[str, np.ndarray], output_names: list[str], profile: bool = False,
            trace_base: int = 0):
        """Outputs (copied out of the arena) and, when profiling under tracemalloc, one StepProfile a step."""
        env = dict(self.constants)
        env.update(self.views)
        env.update(feeds)
        profiles = []
        for step in self.steps:
            if profile:
                profiles.append(self._run_profiled(step, env, trace_base))
            else:
                self._run_step(step, env)
        return [np.array(env[name], copy=True) for name in output_names], profiles

    def _run_profiled(self, step: ExecStep, env, trace_base: int) -> StepProfile:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        self._run_step(step, env)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        return StepProfile(step.node.name, step.node.op_type, seconds, peak - start, peak - trace_base)

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
                                        backend=self.backend, threads=self.threads) for n in range(x.shape[0])]
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
            else:
                results = ops.lookup(node, self.graph.opset).compute(node, args, self.graph.opset)
                for name, result in zip(node.outputs, results):
                    if name:
                        np.copyto(env[name], np.asarray(result).reshape(env[name].shape), casting="unsafe")
        except EdgerunError:
            raise
        except Exception as exc:
            raise InvalidModelError(f"{node.describe()} failed while running: {exc}") from None


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
