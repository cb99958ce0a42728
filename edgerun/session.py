"""onnxruntime-style InferenceSession on top of the planned-arena executor."""
from __future__ import annotations

import os
import tracemalloc
from dataclasses import dataclass

import numpy as np

from edgerun import kernels
from edgerun.calibrate import load_calibrated
from edgerun.errors import InvalidInputError, InvalidOptionError
from edgerun.executor import CompiledModel
from edgerun.options import checked_max_t, checked_planner
from edgerun.passes import optimize
from edgerun.shape_inference import infer_shapes
from edgerun.units import parse_bytes

_ONNX_TYPE_NAMES = {np.dtype(np.float32): "tensor(float)", np.dtype(np.float16): "tensor(float16)",
                    np.dtype(np.float64): "tensor(double)", np.dtype(np.int64): "tensor(int64)",
                    np.dtype(np.int32): "tensor(int32)", np.dtype(np.int8): "tensor(int8)",
                    np.dtype(np.uint8): "tensor(uint8)", np.dtype(np.bool_): "tensor(bool)"}


@dataclass(frozen=True)
class NodeArg:
    name: str
    shape: list
    type: str


@dataclass
class RunStats:
    planned_peak_bytes: int
    measured_peak_bytes: int          # arena + tracemalloc peak above it during run()
    escaped_bytes: int                # the part of the measured peak outside the arena
    steps: list                       # executor.StepProfile per step (profiled runs only)


class InferenceSession:
    """Run an ONNX model with a planned activation arena.

    model: path, bytes or onnx.ModelProto. memory_budget: bytes (int) or a string such as "1.2MB";
    None picks the fastest schedule. threads: worker threads of the native kernels.
    schedule: {block name: t or (t, band_rows)} forces a block's split (t above 5 allowed here).
    optimize_graph=False runs the graph as loaded; disabled_passes names passes to skip (see edgerun.passes).
    cost_model: a scheduler.CostModel; by default the one `edgerun calibrate` stored for this backend,
    else the scheduler's built-in coefficients.
    """

    def __init__(self, model, sess_options=None, providers=None, *, memory_budget=None, threads=None,
                 kernels_backend=None, planner: str = "greedy", schedule: dict | None = None,
                 optimize_graph: bool = True, disabled_passes=None, max_t: int = 5, cost_model=None):
        from edgerun.loader import load_model  # imports onnx; compiled bundles run without it

        self._graph = load_model(model)
        self.memory_budget = parse_bytes(memory_budget)
        self.threads = checked_threads(threads)
        self.backend = kernels.backend() if kernels_backend is None else checked_backend(kernels_backend)
        self.planner = checked_planner(planner)
        self.max_t = checked_max_t(max_t)
        self.optimize_graph = optimize_graph
        self.disabled_passes = disabled_passes
        self.cost_model = cost_model if cost_model is not None else load_calibrated(self.backend)
        self._fixed = _schedule_overrides(schedule)
        self._compiled: dict[tuple, CompiledModel] = {}
        self._last: CompiledModel | None = None
        self.last_run: RunStats | None = None
        static = self._static_input_shapes()
        if static is not None:
            self._last = self._compile(static)

    # ---- onnxruntime-style introspection
    def get_inputs(self) -> list[NodeArg]:
        return [node_arg(v) for v in self._graph.inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [node_arg(v) for v in self._graph.outputs]

    def get_providers(self) -> list[str]:
        return [f"edgerun-{self.backend}"]

    @property
    def plan(self):
        """The plan of the most recently compiled input shape (compiled at construction when static)."""
        if self._last is None:
            raise InvalidInputError("the model has dynamic input dimensions: run it once (or call "
                                    "prepare(input_shapes)) before asking for its plan")
        return self._last.plan

    @property
    def compiled(self) -> CompiledModel | None:
        """The executor's compiled model (graph, problem, plan, arena) of the latest input shape."""
        return self._last

    @property
    def graph(self):
        """The optimised graph of the most recently compiled input shape."""
        return None if self._last is None else self._last.graph

    def prepare(self, input_shapes: dict[str, tuple]):
        """Compile (or fetch) the plan for these input shapes."""
        self._last = self._compiled_for((tuple((n, tuple(s)) for n, s in sorted(input_shapes.items())), ()))
        return self._last.plan

    # ---- running
    def run(self, output_names, input_feed: dict, run_options=None, *, profile: bool = False) -> list[np.ndarray]:
        feeds = self._checked_feeds(input_feed)
        names = self._checked_output_names(output_names)
        compiled = self._compiled_for(_compile_key(feeds))
        self._last = compiled
        if not profile:
            outputs, _ = compiled.run(feeds, names)
            return outputs
        outputs, self.last_run = run_measured(compiled, feeds, names)
        return outputs

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
        compiled = CompiledModel(graph, budget=self.memory_budget, backend=self.backend, planner=self.planner,
                                 fixed=self._fixed, max_t=self.max_t, threads=self.threads,
                                 cost_model=self.cost_model)
        return compiled

    # ---- input checking
    def _checked_feeds(self, input_feed) -> dict[str, np.ndarray]:
        return checked_feeds(self._graph.inputs, input_feed)

    def _checked_output_names(self, output_names) -> list[str]:
        return checked_output_names(self._graph.output_names(), output_names)


_MAX_CACHED_PLANS = 16
_MAX_SHAPE_TENSOR_ELEMENTS = 64


def _compile_key(feeds: dict[str, np.ndarray]) -> tuple:
    """Plans are cached per input shapes, and per value of small 1-D inputs (they may be shapes, axes,
    scales or sizes that decide the shapes of the graph)."""
    shapes = tuple(sorted((n, a.shape) for n, a in feeds.items()))
    values = tuple(sorted((n, a.dtype.str, a.shape, tuple(a.ravel().tolist())) for n, a in feeds.items()
                          if a.ndim <= 1 and a.size <= _MAX_SHAPE_TENSOR_ELEMENTS))
    return shapes, values


def node_arg(value) -> NodeArg:
    shape = list(value.shape) if value.shape is not None else None
    return NodeArg(value.name, shape, _ONNX_TYPE_NAMES.get(np.dtype(value.dtype), str(value.dtype)))


def run_measured(compiled: CompiledModel, feeds, names):
    """Outputs and RunStats: measured peak = arena + tracemalloc peak above the baseline during the run."""
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        outputs, steps = compiled.run(feeds, names, profile=True, trace_base=base)
        # the executor resets the peak at every step, so the run's peak is the largest step's
        escaped = max([s.run_bytes for s in steps] + [tracemalloc.get_traced_memory()[1] - base])
    finally:
        if started_here:
            tracemalloc.stop()
    arena = compiled.plan.peak_bytes
    return outputs, RunStats(arena, arena + escaped, escaped, steps)


def checked_feeds(inputs, input_feed) -> dict[str, np.ndarray]:
    """The caller's feeds, checked against the model's inputs (names, rank, shape, dtype)."""
    if not isinstance(input_feed, dict):
        raise InvalidInputError(f"input_feed must be a dict of input name -> array, not {type(input_feed).__name__}")
    expected = {v.name: v for v in inputs}
    unknown = sorted(set(input_feed) - set(expected))
    if unknown:
        raise InvalidInputError(f"unknown input name(s) {unknown}; the model's inputs are {sorted(expected)}")
    missing = sorted(set(expected) - set(input_feed))
    if missing:
        raise InvalidInputError(f"missing input(s) {missing}; the model's inputs are {sorted(expected)}")
    return {name: _checked_array(expected[name], value) for name, value in input_feed.items()}


def checked_output_names(all_names: list[str], output_names) -> list[str]:
    if output_names is None:
        return list(all_names)
    unknown = [n for n in output_names if n not in all_names]
    if unknown:
        raise InvalidInputError(f"unknown output name(s) {unknown}; the model's outputs are {all_names}")
    return list(output_names)


def _checked_array(expected, value) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != expected.dtype:
        raise InvalidInputError(f"input {expected.name!r}: expected dtype {np.dtype(expected.dtype).name}, "
                                f"got {array.dtype.name}")
    if expected.shape is not None:
        if array.ndim != len(expected.shape):
            raise InvalidInputError(f"input {expected.name!r}: expected rank {len(expected.shape)} "
                                    f"(shape {list(expected.shape)}), got rank {array.ndim} (shape {list(array.shape)})")
        for axis, (want, got) in enumerate(zip(expected.shape, array.shape)):
            if isinstance(want, int) and want > 0 and want != got:
                raise InvalidInputError(f"input {expected.name!r}: dimension {axis} must be {want}, got {got} "
                                        f"(expected shape {list(expected.shape)}, got {list(array.shape)})")
    if array.size == 0:
        raise InvalidInputError(f"input {expected.name!r} is empty (shape {list(array.shape)})")
    return np.ascontiguousarray(array)


def checked_threads(threads) -> int:
    if threads is None:
        return os.cpu_count() or 1
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise InvalidOptionError(f"threads must be a positive integer, got {threads!r}")
    return threads


def checked_backend(name) -> str:
    if name not in kernels.BACKENDS:
        raise InvalidOptionError(f"kernels_backend must be one of {kernels.BACKENDS}, got {name!r}")
    if name == "native" and not kernels.native_available():
        raise InvalidOptionError("kernels_backend='native' but the C extension is not built; reinstall "
                                 "edgerun with a C compiler available, or use kernels_backend='numpy'")
    return name


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
