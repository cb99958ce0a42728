"""Compile a model ahead of time into a bundle that edgerun.load() runs without onnx.

`compile_bundle` runs the whole front end (loader, shape inference, passes, scheduler) through an
InferenceSession for fixed input shapes and writes the result with edgerun.bundle_format.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgerun import __version__
from edgerun.bundle_format import FLAG_C_PROGRAM, TensorTable, add_kernel_layouts, graph_header, write_bundle
from edgerun.c_program import add_c_program
from edgerun.errors import InvalidOptionError
from edgerun.kernels import layouts, native
from edgerun.session import InferenceSession


@dataclass(frozen=True)
class BundleInfo:
    """What compile_bundle wrote."""

    path: str
    file_bytes: int
    header_bytes: int
    weights_bytes: int
    arena_bytes: int
    memory_budget: int | None
    backend: str
    plan: object = field(repr=False)   # the scheduler.Plan stored in the bundle
    threads: int = 1                   # the native threads the plan was made for
    notices: list = field(default_factory=list)   # the session's notices (e.g. fewer threads to fit)


def compile_bundle(model, out_path, memory_budget=None, input_shapes=None, c_program: bool = False,
                   c_target: str | None = None, **session_options) -> BundleInfo:
    """Compile `model` (path, bytes or onnx.ModelProto) for fixed input shapes into a bundle file.

    input_shapes: {input name: shape} for inputs with dynamic dimensions (required for those).
    c_program: also write the program the C runtime runs (include/edgerun.h; edgerun/c_program.py), with
    the weight layouts its kernels read (they add to the file, not to what a Python session maps);
    c_target: the C runtime's build it is for ("aarch64", "armv7", ...: edgerun.c_program.TARGET_TILES;
    None: one built like this extension).
    session_options: passed to InferenceSession (kernels_backend, planner, schedule, max_t, ...).
    """
    if c_program and session_options.get("activation_dtype") == "float16":
        raise InvalidOptionError("c_program=True (the C runtime) runs float32 activations only; compile the "
                                 "float16 plan without it")
    with layouts.recording() as kernel_layouts:   # the weight layouts the kernels make: stored, used in place
        session = InferenceSession(model, memory_budget=memory_budget, **session_options)
        session.prepare(_static_input_shapes(session.get_inputs(), input_shapes))
    tensors = TensorTable()
    graph = graph_header(session.graph, tensors)
    superseded = kernel_layouts.superseded()
    header = {
        "format": "edgerun-bundle",
        "producer": _producer(),
        "graph": graph,
        "kernel_layouts": add_kernel_layouts(graph, tensors, kernel_layouts.layouts, superseded),
        "kernel_isa": native.packing_key() if session.backend == "native" else None,
        "plan": session.plan.to_dict(),
        "arena_bytes": session.plan.peak_bytes,
        "memory_budget": session.memory_budget,
        "backend": session.backend,
        "planner": session.plan.planner,
        "max_t": session.max_t,
    }
    if c_program:   # last: it ends the weights section
        python_unread = {graph["initializers"][name] for name in superseded if name in graph["initializers"]}
        header["c_program"] = add_c_program(session.compiled, tensors, c_target, python_unread)
    header["tensors"] = tensors.entries
    file_bytes, header_bytes = write_bundle(Path(out_path), header, tensors,
                                            flags=FLAG_C_PROGRAM if c_program else 0)
    return BundleInfo(str(out_path), file_bytes, header_bytes, tensors.section_bytes, session.plan.peak_bytes,
                      session.memory_budget, session.backend, session.plan, session.planned_threads,
                      list(session.notices))


def _producer() -> str:
    return f"edgerun {__version__}"


def _static_input_shapes(inputs, given) -> dict[str, tuple[int, ...]]:
    given = dict(given or {})
    names = [arg.name for arg in inputs]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise InvalidOptionError(f"input_shapes names unknown input(s) {unknown}; the model's inputs are {names}")
    shapes = {}
    for arg in inputs:
        if arg.name in given:
            shapes[arg.name] = _checked_given_shape(arg, given[arg.name])
        elif arg.shape is not None and all(_is_positive_int(d) for d in arg.shape):
            shapes[arg.name] = tuple(arg.shape)
        else:
            example = "x".join(str(d) if _is_positive_int(d) else "N" for d in (arg.shape or ["N"]))
            raise InvalidOptionError(
                f"input {arg.name!r} has dynamic shape {arg.shape}: a bundle needs static shapes; give it with "
                f"input_shapes={{{arg.name!r}: (...)}} or on the command line --input-shape {arg.name}={example}")
    return shapes


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _checked_given_shape(arg, shape) -> tuple[int, ...]:
    shape = tuple(shape)
    if not all(_is_positive_int(d) for d in shape):
        raise InvalidOptionError(f"input_shapes[{arg.name!r}] = {list(shape)}: dimensions must be positive integers")
    if arg.shape is not None:
        if len(shape) != len(arg.shape):
            raise InvalidOptionError(f"input_shapes[{arg.name!r}] = {list(shape)} has rank {len(shape)}, "
                                     f"the model's input has rank {len(arg.shape)} (shape {arg.shape})")
        for axis, (fixed, wanted) in enumerate(zip(arg.shape, shape)):
            if _is_positive_int(fixed) and fixed != wanted:
                raise InvalidOptionError(f"input_shapes[{arg.name!r}] = {list(shape)}: dimension {axis} is "
                                         f"fixed to {fixed} by the model")
    return shape

