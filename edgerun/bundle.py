"""Run a compiled bundle: `edgerun.load(path)` returns a BundleSession.

The file is read and checked by edgerun.bundle_format; here the graph is checked against the
operators (every node known, wired, and its stored shapes what shape inference gives) and the
stored plan against the graph, then it runs through the executor like any session
(edgerun.session_base.Session). Loading a bundle imports neither onnx, nor onnxruntime, nor
edgerun.loader, nor the graph passes.
"""
from __future__ import annotations

import importlib
import warnings

import numpy as np

from edgerun import kernels, ops
from edgerun.bundle_format import (FORMAT_MAJOR, FORMAT_MINOR, MAGIC, PREFIX, MAX_TENSOR_BYTES,  # noqa: F401
                                   RawBundle, graph_from_header, header_field, int_field, is_bundle, kernel_layouts,
                                   read_bundle, require)
from edgerun.errors import BundleError, EdgerunError, PlanMismatchError, ResourceLimitError
from edgerun.executor import CompiledModel
from edgerun.kernels import layouts, native
from edgerun.ir import Graph
from edgerun.session_base import Session, checked_backend, checked_threads
from edgerun.shape_inference import infer_shapes
from scheduler.plan import Plan
from scheduler.planner import PLANNERS

DEFAULT_MAX_ARENA_BYTES = 4 * 1024**3


def _check_graph_wiring(graph: Graph) -> None:
    """Every value a node reads exists before it runs, every output has a static shape, names are unique."""
    names = [n.name for n in graph.nodes]
    require(len(set(names)) == len(names), "graph node names are not unique")
    known = {v.name for v in graph.inputs} | set(graph.initializers) | {""}
    known |= {n for n, info in graph.value_info.items() if info.value is not None}
    for node in graph.nodes:
        ops.lookup(node, graph.opset)   # UnsupportedOperatorError names the node
        missing = [i for i in node.inputs if i not in known]
        require(not missing, f"{node.describe()} reads {missing}, which nothing before it produces")
        for name in (o for o in node.outputs if o):
            info = graph.value_info.get(name)
            require(info is not None and info.is_static, f"{node.describe()}: output {name!r} has no static shape")
            known.add(name)
    for value in graph.inputs + graph.outputs:
        info = graph.value_info.get(value.name)
        require(info is not None and info.shape == value.shape and info.dtype == value.dtype,
                f"graph input/output {value.name!r} does not match its value_info")
        require(value.name in known, f"graph output {value.name!r} is never produced")


def _check_shapes_by_inference(graph: Graph) -> None:
    """Run the operators' shape functions again (they validate every attribute) and require the stored
    shapes and dtypes of every value to be what they infer."""
    try:
        inferred = infer_shapes(graph, {v.name: v.shape for v in graph.inputs}).value_info
    except (BundleError, ResourceLimitError):
        raise
    except EdgerunError as exc:
        raise BundleError(f"malformed bundle: the graph fails shape inference: {exc}") from None
    except (ArithmeticError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            MemoryError) as exc:
        raise BundleError(f"malformed bundle: the graph fails shape inference: {exc!r}") from None
    for name, info in inferred.items():
        stored = graph.value_info.get(name)
        require(stored is not None and stored.dtype == info.dtype and _same_shape(stored.shape, info.shape),
                f"value {name!r}: stored {_describe(stored)} but the graph infers {_describe(info)}")


def _same_shape(a, b) -> bool:
    return a is not None and b is not None and tuple(a) == tuple(b)


def _describe(info) -> str:
    return "nothing" if info is None else f"{np.dtype(info.dtype).name}{list(info.shape or [])}"


# ---- the plan

def _plan_from_header(header: dict, max_arena_bytes: int, threads: int):
    try:  # bundles written before plans recorded backend and threads: the header's backend, the caller's threads
        plan = Plan.from_dict(header_field(header, "plan", dict, "header"), backend=header.get("backend"),
                              threads=threads)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"malformed bundle: header.plan cannot be read: {exc!r}") from None
    arena = int_field(header, "arena_bytes", "header", maximum=MAX_TENSOR_BYTES)
    require(plan.peak_bytes == arena, f"plan peak {plan.peak_bytes} differs from arena_bytes {arena}")
    if arena > max_arena_bytes:
        raise BundleError(f"bundle asks for an activation arena of {arena} bytes, above the limit of "
                          f"{max_arena_bytes} bytes (raise max_arena_bytes to allow it)")
    budget = header.get("memory_budget")
    require(budget is None or (isinstance(budget, int) and not isinstance(budget, bool) and budget > 0),
            f"header.memory_budget: expected null or a positive int, got {budget!r}")
    require(budget is None or arena <= budget, f"arena of {arena} bytes exceeds the recorded budget of {budget}")
    offsets = list(plan.offsets.values()) + [o for s in plan.steps for o in s.scratch_offsets.values()]
    require(all(0 <= o <= arena for o in offsets), "a plan offset lies outside the arena")
    require(all(s.t >= 1 and s.band_rows >= 0 for s in plan.steps), "a plan step has t < 1 or band_rows < 0")
    return plan


def _planned_threads(header: dict) -> int | None:
    """The threads the stored plan was made for (what a session that states none runs with), or None for a
    plan that does not say (older bundles: then the CPUs this process may use)."""
    plan = header.get("plan")
    threads = plan.get("threads") if isinstance(plan, dict) else None
    return threads if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1 else None


# =====================================================================================
# Running
# =====================================================================================

def checked_graph(header: dict, tensors: list[np.ndarray]) -> Graph:
    """The bundle's graph, decoded and checked against the operators and shape inference."""
    graph = graph_from_header(header.get("graph"), tensors)
    _check_graph_wiring(graph)
    _check_shapes_by_inference(graph)
    return graph


def _stored_activation_dtype(plan) -> str:
    """How the bundle's plan stores float activations ("int8" plans store their floats as float32)."""
    require(plan.activation_dtype in ("float32", "float16", "int8"),
            f"header.plan.activation_dtype: unknown dtype {plan.activation_dtype!r}")
    return "float16" if plan.activation_dtype == "float16" else "float32"


class BundleSession(Session):
    """A compiled bundle ready to run: onnxruntime-style run / get_inputs / get_outputs (edgerun.session_base)."""

    def __init__(self, raw: RawBundle, *, threads=None, kernels_backend=None,
                 max_arena_bytes: int = DEFAULT_MAX_ARENA_BYTES, replan: bool = False):
        super().__init__()
        header = raw.header
        self.file_bytes = raw.file_bytes
        self.weights = raw.weights
        self._graph = checked_graph(header, raw.tensors)
        self._layouts = kernel_layouts(header, raw.tensors)   # the kernels read these in place
        self.planned_backend = header_field(header, "backend", str, "header")
        require(self.planned_backend in kernels.BACKENDS, f"header.backend: unknown backend {self.planned_backend!r}")
        self.memory_budget = header.get("memory_budget")
        self.threads = checked_threads(threads if threads is not None else _planned_threads(header))
        self.backend = kernels.backend() if kernels_backend is None else checked_backend(kernels_backend)
        self.replan = bool(replan)
        stored_plan = _plan_from_header(header, max_arena_bytes, self.threads)
        self.activation_dtype = _stored_activation_dtype(stored_plan)
        self.replanned = self.backend != self.planned_backend
        self._note_other_isa(header)
        if self.replanned:
            self._last = self._replanned(header, max_arena_bytes)
        else:
            self._last = self._with_stored_plan(stored_plan)
            self.replanned = bool(self._last.notices)  # threads differed and replan=True
            self.notices.extend(self._last.notices)

    @property
    def arena_bytes(self) -> int:
        return self._last.plan.peak_bytes

    @property
    def weights_bytes(self) -> int:
        return int(self.weights.size)

    def _note_other_isa(self, header: dict) -> None:
        """A bundle compiled on another ISA variant (header.kernel_isa: native.packing_key there) runs here
        too: its packed weights are packed again for this variant, and its plan is made again for the same
        budget where this variant's scratch differs (the GEMM tiles size the edge and cols scratch)."""
        planned = header.get("kernel_isa")
        require(planned is None or isinstance(planned, str), f"header.kernel_isa: expected null or a string, "
                                                             f"got {type(planned).__name__}")
        if planned is None or self.backend != "native" or self.planned_backend != "native":
            return
        here = native.packing_key()
        if planned != here:
            self.replan = True
            self.notices.append(f"bundle was compiled for the {planned} kernels, {here} run here: its packed "
                                f"weights are packed again, and the plan is made again for the same budget if "
                                f"this variant's scratch differs")

    def _with_stored_plan(self, plan):
        try:
            with layouts.stored_layouts(self._layouts):
                compiled = CompiledModel(self._graph, budget=self.memory_budget, backend=self.backend,
                                         threads=self.threads, plan=plan, replan=self.replan,
                                         activation_dtype=self.activation_dtype)
        except (PlanMismatchError, ResourceLimitError):
            raise
        except EdgerunError as exc:
            raise BundleError(f"bundle graph cannot be prepared: {exc}") from None
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
            raise BundleError(f"malformed bundle: the graph and plan are inconsistent: {exc!r}") from None
        return compiled

    def _replanned(self, header: dict, max_arena_bytes: int):
        """The plan's scratch sizes belong to the planning backend: plan again, same budget."""
        planner = header.get("planner", "greedy")
        max_t = header.get("max_t", 5)
        require(isinstance(planner, str) and planner in PLANNERS, f"header.planner: unknown planner {planner!r}")
        require(isinstance(max_t, int) and not isinstance(max_t, bool) and 1 <= max_t <= 1024,
                f"header.max_t: expected an int in 1..1024, got {max_t!r}")
        notice = (f"bundle was planned for the {self.planned_backend} kernels but the {self.backend} kernels "
                  f"run here: re-planning the arena with the same budget")
        self.notices.append(notice)
        warnings.warn(notice, RuntimeWarning, stacklevel=4)
        budget = self.memory_budget if self.memory_budget is not None else max_arena_bytes
        try:
            with layouts.stored_layouts(self._layouts):
                return CompiledModel(self._graph, budget=budget, backend=self.backend, planner=planner, max_t=max_t,
                                     threads=self.threads, activation_dtype=self.activation_dtype)
        except EdgerunError:
            raise
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
            raise BundleError(f"malformed bundle: the graph cannot be planned: {exc!r}") from None


def load(path, *, threads=None, kernels_backend=None, verify_weights: bool = True,
         max_arena_bytes: int = DEFAULT_MAX_ARENA_BYTES, replan: bool = False) -> BundleSession:
    """Open a bundle written by compile_bundle; weights stay memory-mapped read-only.

    kernels_backend: None picks the runtime's default; if it is not the backend the bundle was planned
    for, the arena is re-planned with the bundle's budget (RuntimeWarning, `session.replanned`).
    threads: None runs with the threads the plan was made for; other threads than the plan's raise
    PlanMismatchError, or with replan=True plan again for the same budget (RuntimeWarning;
    `session.compiled.notices` says why).
    verify_weights=False skips hashing the weights section (faster start, corruption there undetected).
    """
    raw = read_bundle(path, verify_weights=verify_weights)
    return BundleSession(raw, threads=threads, kernels_backend=kernels_backend, max_arena_bytes=max_arena_bytes,
                         replan=replan)


def __getattr__(name):
    # `from edgerun.bundle import compile_bundle` as before the split: resolved on use, so that loading a
    # bundle never imports the ONNX front end that compiling needs.
    if name in ("compile_bundle", "BundleInfo"):
        return getattr(importlib.import_module("edgerun.compiler"), name)
    raise AttributeError(f"module 'edgerun.bundle' has no attribute {name!r}")
