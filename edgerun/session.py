"""InferenceSession: an ONNX model, loaded and optimised, run with a planned activation arena.

The front end (loader, shape inference, graph passes) runs here, once per input shape; what a
session shares with a bundle session (introspection, checked feeds, run, thread safety) is
edgerun.session_base.Session.
"""
from __future__ import annotations

import numpy as np

from edgerun import kernels
from edgerun.errors import InvalidOptionError, MemoryBudgetError
from edgerun.executor import CompiledModel
from edgerun.loader import load_model
from edgerun.options import checked_activation_dtype, checked_max_t, checked_planner
from edgerun.passes import optimize
from edgerun.session_base import (ONNX_TYPE_NAMES, NodeArg, RunStats, Session,  # noqa: F401 (re-exported)
                                  checked_backend, checked_feeds, checked_output_names,
                                  checked_threads, node_arg, run_measured)
from edgerun.shape_inference import infer_shapes
from edgerun.units import parse_bytes
from scheduler.cost import load_calibrated


class InferenceSession(Session):
    """Run an ONNX model with a planned activation arena.

    model: path, bytes or onnx.ModelProto. memory_budget: bytes (int) or a string such as "1.2MB";
    None picks the fastest schedule. threads: worker threads of the native kernels; by default the CPUs
    this process may use (edgerun.cpus.usable_cpus), and fewer when a budget does not fit the plan for
    that many (the session says so in `notices`). schedule: {block name: t or (t, band_rows)} forces a
    block's split (t above 5 allowed here). optimize_graph=False runs the graph as loaded; disabled_passes
    names passes to skip (see edgerun.passes). cost_model: a scheduler.CostModel; by default the one
    `edgerun calibrate` stored for this backend, else the scheduler's built-in coefficients.
    activation_dtype: "float32" (default) or "float16": the arena stores every float activation in float16
    (half the bytes; kernels compute in float32, inputs and outputs stay float32; no streaming segments).
    See edgerun.kernels.f16.
    Thread-safe: see edgerun.session_base.
    """

    def __init__(self, model, sess_options=None, providers=None, *, memory_budget=None, threads=None,
                 kernels_backend=None, planner: str = "greedy", schedule: dict | None = None,
                 optimize_graph: bool = True, disabled_passes=None, max_t: int = 5, cost_model=None,
                 activation_dtype: str = "float32"):
        super().__init__()
        self._graph = load_model(model)
        self.memory_budget = parse_bytes(memory_budget)
        self.threads_given = threads is not None
        self.threads = checked_threads(threads)
        self.backend = kernels.backend() if kernels_backend is None else checked_backend(kernels_backend)
        self.planner = checked_planner(planner)
        self.max_t = checked_max_t(max_t)
        self.activation_dtype = checked_activation_dtype(activation_dtype)
        self.optimize_graph = optimize_graph
        self.disabled_passes = disabled_passes
        self.cost_model = cost_model if cost_model is not None else load_calibrated(self.backend)
        self._fixed = _schedule_overrides(schedule)
        self._compiled: dict[tuple, CompiledModel] = {}
        static = self._static_input_shapes()
        if static is not None:
            self._last = self._compiled_for(static)

    def prepare(self, input_shapes: dict[str, tuple]):
        """Compile (or fetch) the plan for these input shapes."""
        key = (tuple((n, tuple(s)) for n, s in sorted(input_shapes.items())), ())
        with self._lock:
            self._last = self._compiled_for(key)
            return self._last.plan

    def _compiled_for_feeds(self, feeds: dict) -> CompiledModel:
        return self._compiled_for(_compile_key(feeds))

    # ---- compilation per input shape
    def _static_input_shapes(self):
        """Input shapes known before any run; a symbolic batch dimension is taken as 1 so that the plan
        (and a budget that cannot be met) is known at construction. Other symbolic dims wait for run()."""
        shapes = {}
        for v in self._graph.inputs:
            if v.shape is None:
                return None
            dims = tuple(1 if axis == 0 and not isinstance(d, int) else d for axis, d in enumerate(v.shape))
            if not all(isinstance(d, int) and d > 0 for d in dims):
                return None
            if len(dims) <= 1:
                return None  # a small 1-D input may carry shapes: plan once its values are known
            shapes[v.name] = dims
        return tuple(sorted(shapes.items())), ()

    def _compiled_for(self, key: tuple) -> CompiledModel:
        if key not in self._compiled:
            if len(self._compiled) >= _MAX_CACHED_PLANS:
                del self._compiled[next(iter(self._compiled))]
            self._compiled[key] = self._compile(key)
        return self._compiled[key]

    def _compile(self, key: tuple) -> CompiledModel:
        shapes, values = key
        input_values = {name: np.array(data, dtype=dtype).reshape(shape) for name, dtype, shape, data in values}
        graph = infer_shapes(self._graph, dict(shapes), input_values)
        if self.optimize_graph:
            graph = optimize(graph, disabled=self.disabled_passes)
        if self.threads_given or self.threads == 1 or self.memory_budget is None:
            return self._compiled_model(graph, self.threads)
        # fewer threads with whole tensors run faster than streaming (segments) with all of them
        try:
            return self._compiled_model(graph, self.threads, segments=False)
        except MemoryBudgetError:
            pass
        try:
            return self._fewer_threads(graph, segments=False)
        except MemoryBudgetError:
            pass
        try:
            return self._compiled_model(graph, self.threads)
        except MemoryBudgetError:
            return self._fewer_threads(graph)

    def _compiled_model(self, graph, threads: int, segments: bool = True) -> CompiledModel:
        return CompiledModel(graph, budget=self.memory_budget, backend=self.backend, planner=self.planner,
                             fixed=self._fixed, max_t=self.max_t, threads=threads, cost_model=self.cost_model,
                             segments=segments, activation_dtype=self.activation_dtype)

    def _fewer_threads(self, graph, segments: bool = True) -> CompiledModel:
        """The plan for the most threads below the default that fits the budget, tried from the most down
        (the smallest reachable peak is not monotonic in the threads: each thread's block scratch grows the
        peak, but blocks also switch between whole bands per thread and shared steps). One thread is tried
        first: when even it does not fit, its budget error is raised at once."""
        single = self._compiled_model(graph, 1, segments)
        for threads in range(self.threads - 1, 1, -1):
            try:
                return self._noted(self._compiled_model(graph, threads, segments))
            except MemoryBudgetError:
                continue
        return self._noted(single)

    def _noted(self, compiled: CompiledModel) -> CompiledModel:
        threads = compiled.threads
        self.notices.append(f"the plan for {self.threads} threads (the CPUs this process may use) does not fit "
                            f"the budget of {self.memory_budget:,} bytes; planned for {threads} "
                            f"thread{'s' if threads != 1 else ''}, the most that fit")
        return compiled


_MAX_CACHED_PLANS = 16
_MAX_SHAPE_TENSOR_ELEMENTS = 64


def _compile_key(feeds: dict[str, np.ndarray]) -> tuple:
    """Plans are cached per input shapes, and per value of small 1-D inputs (they may be shapes, axes,
    scales or sizes that decide the shapes of the graph)."""
    shapes = tuple(sorted((n, a.shape) for n, a in feeds.items()))
    values = tuple(sorted((n, a.dtype.str, a.shape, tuple(a.ravel().tolist())) for n, a in feeds.items()
                          if a.ndim <= 1 and a.size <= _MAX_SHAPE_TENSOR_ELEMENTS))
    return shapes, values


def _schedule_overrides(schedule) -> dict[str, tuple[int, int | None]]:
    """{block name: t or (t, band_rows)} -> {name: (t, band_rows or None for whole blocks)}."""
    if not schedule:
        return {}
    if not isinstance(schedule, dict):
        raise InvalidOptionError(f"schedule must be a dict of block name -> t or (t, band_rows), not {schedule!r}")
    fixed = {}
    for name, value in schedule.items():
        t, band = (value, None) if isinstance(value, int) else tuple(value)
        if not isinstance(t, int) or isinstance(t, bool) or t < 1:
            raise InvalidOptionError(f"schedule[{name!r}]: t must be a positive integer, got {t!r}")
        if band is not None and (not isinstance(band, int) or isinstance(band, bool) or band < 1):
            raise InvalidOptionError(f"schedule[{name!r}]: band_rows must be a positive integer, got {band!r}")
        fixed[name] = (t, band)
    return fixed
