"""What every edgerun session shares: onnxruntime-style introspection, checked feeds, and run().

`InferenceSession` (edgerun.session, from an ONNX model) and `BundleSession` (edgerun.bundle, from
a compiled bundle) both derive from `Session`; they differ only in how they obtain the executor's
CompiledModel for a feed. This module imports neither onnx nor the graph passes.

Thread safety: a session may be shared by threads. Its run() calls are serialised by one lock per
session, so a session holds exactly one activation arena (its planned peak) however many threads
call it; threads that want to run in parallel open one session each (K sessions: K arenas, and K
copies of any packed weights).
"""
from __future__ import annotations

import threading
import tracemalloc
from dataclasses import dataclass

import numpy as np

from edgerun import kernels, limits
from edgerun.cpus import usable_cpus
from edgerun.errors import InvalidInputError, InvalidOptionError

# numpy dtype -> the onnxruntime-style type name of NodeArg.type (edgerun.models reads it back)
ONNX_TYPE_NAMES = {np.dtype(np.float32): "tensor(float)", np.dtype(np.float16): "tensor(float16)",
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


class Session:
    """The shared half of InferenceSession and BundleSession.

    A subclass sets `_graph` (whose inputs and outputs the caller sees), `backend`, `threads`, and
    `_last` (the CompiledModel of the latest input shape, None until one is known), and may override
    `_compiled_for_feeds`.
    """

    def __init__(self):
        self._graph = None
        self._last = None
        self._lock = threading.Lock()
        self.last_run: RunStats | None = None
        self.notices: list[str] = []      # what the session decided on its own (e.g. fewer threads)

    # ---- onnxruntime-style introspection
    def get_inputs(self) -> list[NodeArg]:
        return [node_arg(v) for v in self._graph.inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [node_arg(v) for v in self._graph.outputs]

    def get_providers(self) -> list[str]:
        return [f"edgerun-{self.backend}"]

    @property
    def plan(self):
        """The plan of the most recently compiled input shape."""
        if self._last is None:
            raise InvalidInputError("the model has dynamic input dimensions: run it once (or call "
                                    "prepare(input_shapes)) before asking for its plan")
        return self._last.plan

    @property
    def compiled(self):
        """The executor's compiled model (graph, problem, plan, arena) of the latest input shape."""
        return self._last

    @property
    def graph(self):
        """The graph that runs (optimised, with concrete shapes) for the latest input shape."""
        return None if self._last is None else self._last.graph

    @property
    def planned_threads(self) -> int:
        """The native threads the latest plan was made for (the session's `threads` unless a budget
        made it use fewer; see `notices`)."""
        return self.threads if self._last is None else self._last.threads

    # ---- running
    def run(self, output_names, input_feed: dict, run_options=None, *, profile: bool = False) -> list[np.ndarray]:
        """Outputs by name (None: all). profile=True also records `last_run` (RunStats).
        Safe to call from several threads: the calls take turns on the session's one arena."""
        feeds = checked_feeds(self._graph.inputs, input_feed)
        names = checked_output_names(self._graph.output_names(), output_names)
        with self._lock:
            compiled = self._compiled_for_feeds(feeds)   # refuses activations larger than memory
            self._last = compiled
            feeds = contiguous_feeds(feeds)
            if not profile:
                outputs, _ = compiled.run(feeds, names)
                return outputs
            outputs, self.last_run = run_measured(compiled, feeds, names)
            return outputs

    def _compiled_for_feeds(self, feeds: dict):
        return self._last


def node_arg(value) -> NodeArg:
    shape = list(value.shape) if value.shape is not None else None
    return NodeArg(value.name, shape, ONNX_TYPE_NAMES.get(np.dtype(value.dtype), str(value.dtype)))


def run_measured(compiled, feeds, names):
    """Outputs and RunStats: measured peak = arena + tracemalloc peak above the baseline during the run."""
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        outputs, steps = compiled.run(feeds, names, profile=True, trace_base=base)
        # the executor resets the peak at every step, so the run's peak is the largest step's
        escaped = max([s.run_bytes for s in steps] + [compiled.profiled_peak_bytes])
    finally:
        if started_here:
            tracemalloc.stop()
    arena = compiled.plan.peak_bytes
    return outputs, RunStats(arena, arena + escaped, escaped, steps)


# ---- checking what the caller gives
def checked_feeds(inputs, input_feed) -> dict[str, np.ndarray]:
    """The caller's feeds, checked against the model's inputs (names, rank, shape, dtype, size) as given:
    nothing is copied yet (see contiguous_feeds)."""
    if not isinstance(input_feed, dict):
        raise InvalidInputError(f"input_feed must be a dict of input name -> array, not {type(input_feed).__name__}")
    expected = {v.name: v for v in inputs}
    unknown = sorted(set(input_feed) - set(expected), key=str)
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


def _as_array(expected, value) -> np.ndarray:
    """The feed as an ndarray without copying it (np.asarray of a list builds one, of its own size)."""
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (TypeError, ValueError, OverflowError, MemoryError) as exc:
        raise InvalidInputError(f"input {expected.name!r}: cannot be read as an array ({exc})") from None


def _checked_array(expected, value) -> np.ndarray:
    """Shape, dtype and size are checked on the caller's array as given (a broadcast or strided view
    included), so nothing is copied before it is known to be acceptable."""
    array = _as_array(expected, value)
    want = np.dtype(expected.dtype)
    if array.dtype != want:
        raise InvalidInputError(f"input {expected.name!r}: expected dtype {want.name}, got {array.dtype.name}")
    if expected.shape is not None:
        if array.ndim != len(expected.shape):
            raise InvalidInputError(f"input {expected.name!r}: expected rank {len(expected.shape)} "
                                    f"(shape {list(expected.shape)}), got rank {array.ndim} (shape {list(array.shape)})")
        for axis, (want_dim, got) in enumerate(zip(expected.shape, array.shape)):
            if isinstance(want_dim, int) and want_dim > 0 and want_dim != got:
                raise InvalidInputError(f"input {expected.name!r}: dimension {axis} must be {want_dim}, got {got} "
                                        f"(expected shape {list(expected.shape)}, got {list(array.shape)})")
    if array.size == 0:
        raise InvalidInputError(f"input {expected.name!r} is empty (shape {list(array.shape)})")
    if not array.flags.c_contiguous:
        _check_copy_size(expected.name, array)
    return array


def contiguous_feeds(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The checked feeds as C-contiguous arrays (strided or broadcast ones copied, once their size is known
    to fit in memory and the plan for their shapes exists)."""
    return {name: np.ascontiguousarray(array) for name, array in feeds.items()}


def _check_copy_size(name: str, array: np.ndarray) -> None:
    """A strided or broadcast feed is copied into one contiguous array: refuse a copy larger than memory."""
    nbytes = int(array.size) * array.dtype.itemsize
    ceiling = limits.max_bytes()
    if nbytes > ceiling:
        raise InvalidInputError(f"input {name!r} of shape {list(array.shape)} is not contiguous (a broadcast or "
                                f"strided view); its contiguous copy would take {nbytes:,} bytes, above edgerun's "
                                f"memory ceiling of {ceiling:,} bytes (edgerun.limits)")


def checked_threads(threads) -> int:
    if threads is None:
        return usable_cpus()
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
