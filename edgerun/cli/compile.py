"""`edgerun compile MODEL --budget SIZE -o OUT`: write a bundle (see edgerun.compiler)."""
from __future__ import annotations

import argparse
import sys

from edgerun.compiler import compile_bundle
from edgerun.kernels.f16 import ACTIVATION_DTYPES
from edgerun.errors import EdgerunError, InvalidOptionError, MemoryBudgetError
from edgerun.models import resolve_model
from edgerun.units import format_bytes, parse_bytes

EXIT_USAGE, EXIT_BUDGET = 2, 3   # as edgerun.cli.main: bad usage or input / does not fit the budget


def compile_main(argv=None) -> int:
    parser = _compile_parser()
    args = parser.parse_args(argv)
    try:
        budget = parse_bytes(args.budget, option="--budget")
        shapes = dict(_parse_input_shape(text) for text in args.input_shape)
        model = _resolve_model(args.model)
        options = {} if args.kernels is None else {"kernels_backend": args.kernels}
        if args.threads is not None:
            options["threads"] = args.threads
        if args.activation_dtype is not None:
            options["activation_dtype"] = args.activation_dtype
        info = compile_bundle(model, args.output, memory_budget=budget, input_shapes=shapes,
                              planner=args.planner, c_program=args.c_runtime or args.c_target is not None,
                              c_target=args.c_target, **options)
    except EdgerunError as exc:
        print(f"edgerun compile: error: {exc}", file=sys.stderr)
        return EXIT_BUDGET if isinstance(exc, MemoryBudgetError) else EXIT_USAGE
    budget = "none (fastest plan)" if info.memory_budget is None else f"{info.memory_budget:,} bytes"
    print(f"wrote {info.path}")
    print(f"  bundle size   {info.file_bytes:>12,} bytes ({format_bytes(info.file_bytes)})")
    print(f"  weights       {info.weights_bytes:>12,} bytes ({format_bytes(info.weights_bytes)})")
    print(f"  arena         {info.arena_bytes:>12,} bytes ({format_bytes(info.arena_bytes)})")
    print(f"  budget        {budget}")
    print(f"  planned for   {info.backend} kernels, {info.threads} thread(s), {info.plan.activation_dtype} activations")
    for notice in info.notices:
        print(f"edgerun: note: {notice}", file=sys.stderr)
    return 0


def _compile_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgerun compile",
        description="Compile a model ahead of time into a bundle that edgerun.load() runs without onnx.")
    parser.add_argument("model", help="path to an .onnx file, or a zoo name such as mobilenet_v2 "
                                      "(options as mobilenet_v2:width=0.35,resolution=96)")
    parser.add_argument("--budget", default=None, help="activation memory budget, e.g. 1.2MB or 600KiB "
                                                      "(default: the fastest plan)")
    parser.add_argument("-o", "--output", required=True, help="bundle file to write")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                        help="static shape of a dynamic input, e.g. input=1x3x224x224 (repeatable)")
    parser.add_argument("--kernels", choices=("numpy", "native"), default=None,
                        help="kernel backend to plan for (default: the one that runs here)")
    parser.add_argument("--threads", type=_positive_threads, default=None, metavar="N",
                        help="native threads to plan for (default: the CPUs this process may use; fewer when "
                             "the budget does not fit that many)")
    parser.add_argument("--planner", choices=("greedy", "noreuse"), default="greedy")
    parser.add_argument("--activation-dtype", choices=ACTIVATION_DTYPES, default=None,
                        help="dtype the arena stores activations in (float32; float16 halves the bytes)")
    parser.add_argument("--c-runtime", action="store_true",
                        help="also write the program the C runtime runs (include/edgerun.h, docs/c-api.md); "
                             "adds the weight layouts its kernels read to the file")
    parser.add_argument("--c-target", default=None, metavar="TARGET",
                        help="the C runtime's build the program is for (implies --c-runtime): host (default), "
                             "aarch64, armv7, x86-avx512, x86-avx2, x86-sse2 (their GEMM tiles differ)")
    return parser


def _positive_threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--threads must be a positive integer, got {text!r}")
    return value


def _parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 1:
        raise InvalidOptionError(f"--input-shape {text!r}: expected NAME=DIMS such as input=1x3x224x224")
    return name, shape


def _resolve_model(spec: str):
    """A file path, or a zoo model `name[:key=value,...]` (built for batch 1)."""
    model, _display_name = resolve_model(spec)
    return model
