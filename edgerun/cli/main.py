"""The `edgerun` command line: run, profile, plan, and the table3/bench/compile/calibrate tools.

Exit codes: 0 success, 1 internal error, 2 bad usage or input, 3 the model does not fit the budget.
Errors are one line on stderr; EDGERUN_DEBUG=1 shows the traceback.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import os
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np

import edgerun
from edgerun import profiler
from edgerun.bundle import is_bundle, load
from edgerun.cli.inputs import (default_feeds, explicit_preprocessing, positive_float, preprocessing_from_args,
                                run_feeds, three_floats)
from edgerun.cli.outputs import (json_safe, output_lines, read_labels, summarise_output,
                                 top_k)  # noqa: F401 (top_k is edgerun.cli API)
from edgerun.cli.plot import plot_memory, require_matplotlib, table3_reference
from edgerun.errors import EdgerunError, MemoryBudgetError
from edgerun.kernels.f16 import ACTIVATION_DTYPES
from edgerun.models import DEFAULT_MODEL, UsageError, batch_one_shapes, resolve_model, zoo_names
from edgerun.progress import progress
from edgerun.session import InferenceSession
from edgerun.units import format_bytes, parse_bytes
from edgerun.zoo.images import PRESETS

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_BUDGET = 0, 1, 2, 3

# subcommand -> (module, function, what it does); written by other modules, imported on use.
EXTERNAL_COMMANDS = {
    "table3": ("edgerun.cli.table3", "main", "reproduce Table 3 of the MobileNetV2 paper beside the true peaks"),
    "bench": ("edgerun.cli.bench", "main", "time edgerun against onnxruntime on the same input"),
    "compile": ("edgerun.cli.compile", "compile_main", "compile a model and its plan into a bundle"),
    "calibrate": ("edgerun.cli.calibrate", "main", "fit the scheduler's cost model on this machine"),
    "quantize": ("edgerun.cli.quantize", "main", "write an int8 QDQ model with onnxruntime's quantizer"),
}
MAX_NAME_WIDTH = 48


# ================================================================ sessions
def open_session(args, compile_now: bool = True):
    """(session, display name, budget) for args.model with --budget / --threads / --kernels. With compile_now,
    a model whose batch dimension is symbolic is compiled for batch 1 (otherwise the first run compiles it).
    A bundle's plan was fixed when it was compiled: --budget is then only checked against it, and a note
    says that it was not used to plan."""
    budget = parse_bytes(args.budget, option="--budget")
    if args.model and Path(args.model).is_file() and is_bundle(args.model):
        return _open_bundle(args, budget)
    model, label = resolve_model(args.model)
    sess = InferenceSession(model, memory_budget=budget, threads=getattr(args, "threads", None),
                            kernels_backend=getattr(args, "kernels", None),
                            activation_dtype=getattr(args, "activation_dtype", None))
    if compile_now and sess.compiled is None:
        sess.prepare(batch_one_shapes(sess))
    return sess, label, budget


def _open_bundle(args, budget):
    sess = load(args.model, threads=getattr(args, "threads", None), kernels_backend=getattr(args, "kernels", None))
    wanted = getattr(args, "activation_dtype", None)
    if wanted is not None and wanted != activation_dtype(sess):
        raise UsageError(f"--activation-dtype {wanted}: the bundle {args.model!r} was compiled for "
                         f"{activation_dtype(sess)} activations; compile it again with --activation-dtype {wanted}")
    if budget is not None:
        if sess.plan.peak_bytes > budget:
            raise UsageError(f"--budget {args.budget}: the bundle {args.model!r} was compiled for an arena of "
                             f"{sess.plan.peak_bytes:,} bytes; compile it again with this budget")
        print(f"edgerun: note: --budget {args.budget} is not used to plan: the bundle's plan was fixed when it was "
              f"compiled (arena {sess.plan.peak_bytes:,} B, within {budget:,} B); `edgerun compile --budget` "
              f"plans for another budget", file=sys.stderr)
    return sess, Path(args.model).name, sess.memory_budget


def kernels_text(sess) -> str:
    """The kernels and native threads the session's plan is for, e.g. "native, 2 threads"."""
    threads = sess.planned_threads
    return f"{sess.backend}, {threads} thread{'s' if threads != 1 else ''}"


def activation_dtype(sess) -> str:
    """The dtype the session's plan stores activations in ("float32", "float16" or "int8")."""
    return sess.plan.activation_dtype


def _peak_dtype_text(sess) -> str:
    return f"{activation_dtype(sess)} activations"


def print_notices(sess) -> None:
    """What the session decided on its own (e.g. fewer threads to fit the budget), on stderr."""
    for notice in sess.notices:
        print(f"edgerun: note: {notice}", file=sys.stderr)


def graph_name(sess) -> str:
    graph = getattr(sess, "graph", None)
    return getattr(graph, "name", "") or ""


# ================================================================ text
def _budget_text(budget: int | None) -> str:
    return "none (fastest schedule)" if budget is None else f"{budget:,} B ({format_bytes(budget)})"


def _bytes_text(n: int) -> str:
    return f"{n:,} B ({format_bytes(n)})"


# ================================================================ run
def command_run(args) -> int:
    labels = read_labels(args.labels) if args.labels else None
    settings = preprocessing_from_args(args)
    sess, label, budget = open_session(args, compile_now=not args.input)
    runs = run_feeds(sess, args.input or [], settings, explicit_preprocessing(args))
    per_run = [sess.run(None, feeds.arrays, profile=True) for feeds in runs]
    outputs = [np.concatenate(arrays, axis=0) if len(runs) > 1 else arrays[0] for arrays in zip(*per_run)]
    sources = [source for feeds in runs for source in feeds.sources]
    summaries = [summarise_output(arg.name, array, args.top, labels)
                 for arg, array in zip(sess.get_outputs(), outputs)]
    notices = list(sess.notices) + _labels_notice(labels, summaries)
    stats = sess.last_run
    images = any(feeds.from_images for feeds in runs)
    report = {"model": label, "inputs": sources, "preprocess": settings.as_dict() if images else None,
              "outputs": summaries, "planned_peak_bytes": stats.planned_peak_bytes,
              "measured_peak_bytes": profiler.measured_peak_bytes(stats), "budget_bytes": budget,
              "kernels": sess.backend, "threads": sess.planned_threads, "runs": len(runs), "notices": notices,
              "activation_dtype": activation_dtype(sess)}
    if args.json:
        print(json.dumps(json_safe(report), indent=2, allow_nan=False))
    else:
        _print_run(report, kernels_text(sess))
    for notice in notices:
        print(f"edgerun: note: {notice}", file=sys.stderr)
    return EXIT_OK


def _labels_notice(labels, summaries) -> list[str]:
    if labels is None or any(s["top_k"] is not None for s in summaries):
        return []
    shapes = {s["name"]: s["shape"] for s in summaries}
    return [f"--labels holds {len(labels)} labels, but no output has {len(labels)} classes ({shapes}): "
            f"no top-k shown"]


def _print_run(report: dict, kernels: str) -> None:
    sources = report["inputs"]
    print(f"model: {report['model']}")
    print(f"input: {sources[0]}" if len(sources) == 1 else f"input: {len(sources)} items: {', '.join(sources)}")
    for summary in report["outputs"]:
        print("\n".join(output_lines(summary, sources)))
    print(f"planned peak:  {_bytes_text(report['planned_peak_bytes'])}, {report['activation_dtype']} activations")
    print(f"measured peak: {_bytes_text(report['measured_peak_bytes'])}")
    print(f"budget:        {_budget_text(report['budget_bytes'])}")
    print(f"kernels:       {kernels}")


# ================================================================ profile
PROFILE_COLUMNS = ["index", "name", "op", "inputs", "outputs", "t", "band_rows", "planned_bytes",
                   "measured_bytes", "escaped_bytes", "seconds", "estimated_seconds", "macs", "params"]


def _shape_text(shapes) -> str:
    return " ".join("x".join(str(d) for d in s) if s is not None else "?" for s in shapes)


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PROFILE_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(dict(row, inputs=_shape_text(row["inputs"]), outputs=_shape_text(row["outputs"])))
    return buffer.getvalue()


def _split_text(row) -> tuple[str, str]:
    return (str(row["t"]), str(row["band_rows"])) if row["is_block"] else ("-", "-")


def _name_width(rows: list[dict]) -> int:
    return min(max([len("step")] + [len(r["name"]) for r in rows]), MAX_NAME_WIDTH)


def _profile_table(rows: list[dict]) -> str:
    w = _name_width(rows)
    header = (f"{'#':>3} {'step':<{w}} {'op':<17} {'in':<13} {'out':<13} {'t':>2} {'band':>4} "
              f"{'planned B':>11} {'measured B':>11} {'ms':>8} {'MAdds':>11} {'params':>9}")
    lines = [header, "-" * len(header)]
    for row in rows:
        t, band = _split_text(row)
        lines.append(f"{row['index']:>3} {row['name'][:w]:<{w}} {row['op'][:17]:<17} "
                     f"{_shape_text(row['inputs'][:1])[:13]:<13} {_shape_text(row['outputs'][:1])[:13]:<13} "
                     f"{t:>2} {band:>4} {row['planned_bytes']:>11,} {row['measured_bytes']:>11,} "
                     f"{row['seconds'] * 1e3:>8.3f} {row['macs']:>11,} {row['params']:>9,}")
    lines.append("-" * len(header))
    return "\n".join(lines)


def _totals_lines(totals: dict, budget, kernels: str, runs: int, dtype: str) -> list[str]:
    return [
        f"planned peak:   {_bytes_text(totals['planned_peak_bytes'])}  "
        f"(largest step {totals['max_step_planned_bytes']:,} B), {dtype} activations",
        f"measured peak:  {_bytes_text(totals['measured_peak_bytes'])}  (escaped {totals['escaped_bytes']:,} B)",
        f"weights:        {_bytes_text(totals['weights_bytes'])}, {totals['params']:,} parameters",
        f"multiply-adds:  {totals['macs']:,}",
        f"time:           {totals['seconds'] * 1e3:.3f} ms (median of {runs} run(s) per step, summed; "
        f"estimated {totals['estimated_seconds'] * 1e3:.3f} ms)",
        f"process RSS:    {_bytes_text(totals['process_rss_bytes'])}",
        f"budget:         {_budget_text(budget)}",
        f"kernels:        {kernels}",
    ]


def command_profile(args) -> int:
    if args.runs < 1:
        raise UsageError(f"--runs must be at least 1, got {args.runs}")
    if args.plot:
        require_matplotlib()
    sess, label, budget = open_session(args)
    feeds, source = default_feeds(sess)
    report = profiler.profile_report(sess, feeds, args.runs,
                                     iterate=lambda r: progress(r, label="profiling runs"))
    header = {"model": label, "input": source, "budget_bytes": budget, "kernels": sess.backend,
              "threads": sess.planned_threads, "runs": args.runs, "activation_dtype": activation_dtype(sess)}
    _print_profile(args.format, header, report, kernels_text(sess))
    print_notices(sess)
    if args.plot:
        _write_plot(args.plot, sess, label, budget, report)
    return EXIT_OK


def _print_profile(fmt: str, header: dict, report: dict, kernels: str) -> None:
    if fmt == "json":
        print(json.dumps(dict(header, **report), indent=2))
    elif fmt == "csv":
        sys.stdout.write(_csv_text(report["rows"]))
        print(_totals_summary(report["totals"]), file=sys.stderr)
    else:
        print(f"model: {header['model']}   input: {header['input']}")
        print(_profile_table(report["rows"]))
        print("\n".join(_totals_lines(report["totals"], header["budget_bytes"], kernels, header["runs"],
                                     header["activation_dtype"])))


def _totals_summary(totals: dict) -> str:
    return (f"edgerun: planned peak {totals['planned_peak_bytes']:,} B, measured peak "
            f"{totals['measured_peak_bytes']:,} B, weights {totals['weights_bytes']:,} B, "
            f"process RSS {totals['process_rss_bytes']:,} B")


def _write_plot(path: str, sess, label: str, budget, report: dict) -> None:
    input_shape = next(iter(batch_one_shapes(sess).values()), None)
    reference = table3_reference(graph_name(sess), input_shape)
    plot_memory(report, path, title=f"{label}: activation memory per step", budget=budget,
                reference=reference)
    note = f"; reference line: {reference['label']} (paper counts 16-bit values, edgerun float32)" \
        if reference else ""
    print(f"plot written to {path}{note}", file=sys.stderr)


# ================================================================ plan
def _plan_table(report: dict) -> str:
    w = _name_width(report["rows"])
    header = f"{'#':>3} {'step':<{w}} {'op':<18} {'t':>2} {'band':>4} {'live bytes':>12} {'est ms':>9}"
    lines = [header, "-" * len(header)]
    for row in report["rows"]:
        t, band = _split_text(row)
        lines.append(f"{row['index']:>3} {row['name'][:w]:<{w}} {row['op'][:18]:<18} {t:>2} {band:>4} "
                     f"{row['planned_bytes']:>12,} {row['estimated_seconds'] * 1e3:>9.3f}")
    lines.append("-" * len(header))
    return "\n".join(lines)


def _segments_text(segments: list[dict]) -> list[str]:
    """Each segment of the plan: its steps, band rows and every ring buffer's rows and bytes."""
    lines = []
    for segment in segments:
        rings = segment["rings"]
        lines.append(f"segment {segment['name']}: {len(segment['steps'])} steps streamed in bands of "
                     f"{segment['band_rows']} row(s) ({segment['chunking']} calls); arena {segment['bytes']:,} B "
                     f"at offset {segment['offset']:,}, {len(rings)} rings {sum(r['bytes'] for r in rings):,} B")
        lines += [f"    step {name}" for name in segment["steps"]]
        width = max((len(r["name"]) for r in rings), default=4)
        lines += [f"    ring {r['name']:<{width}} {r['rows']:>4} of {r['height']:>4} rows {r['bytes']:>10,} B"
                  for r in rings]
    return lines


def command_plan(args) -> int:
    sess, label, budget = open_session(args)
    report = profiler.plan_report(sess)
    print_notices(sess)
    segments = [segment.to_dict() for segment in sess.plan.segments]
    if args.json:
        print(json.dumps(dict({"model": label, "budget_bytes": budget, "kernels": sess.backend,
                               "threads": sess.planned_threads, "activation_dtype": activation_dtype(sess)},
                              **report, segments=segments), indent=2))
        return EXIT_OK
    print(f"model: {label}")
    print(_plan_table(report))
    for line in _segments_text(segments):
        print(line)
    print(f"planned peak: {_bytes_text(report['planned_peak_bytes'])}, {_peak_dtype_text(sess)}   "
          f"estimated {report['estimated_seconds'] * 1e3:.3f} ms")
    print(f"budget:       {_budget_text(budget)}")
    print(f"kernels:      {kernels_text(sess)}")
    return EXIT_OK


# ================================================================ other tools
def run_external(name: str, argv: list[str]) -> int:
    module_name, function_name, _ = EXTERNAL_COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"edgerun: the '{name}' command is not available in this installation ({module_name} is missing)",
              file=sys.stderr)
        return EXIT_USAGE
    function = getattr(module, function_name, None)
    if function is None:
        print(f"edgerun: the '{name}' command is not available ({module_name}.{function_name} is missing)",
              file=sys.stderr)
        return EXIT_USAGE
    result = function(argv)
    return EXIT_OK if result is None else int(result)


# ================================================================ argument parsing
def _positive_int(option: str):
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a positive integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} must be a positive integer, got {text!r}")
        return value
    return convert


def _add_budget(parser, help_text="activation memory budget, e.g. 1200000, 512KiB, 1.5MB (default: "
                                  "no limit, fastest schedule)"):
    parser.add_argument("--budget", metavar="SIZE", help=help_text)


def add_activation_dtype(parser) -> None:
    parser.add_argument("--activation-dtype", choices=list(ACTIVATION_DTYPES), default=None,
                        help="dtype the arena stores activations in (float32; float16 halves the bytes, kernels "
                             "compute in float32, inputs and outputs stay float32)")


def _add_preprocessing(parser) -> None:
    group = parser.add_argument_group(
        "image preprocessing", "a photo is resized (shorter side), center-cropped to the model's H x W, put in "
        "channel order, scaled to 0..MAX (--scale), then (x - mean) / std per channel; a preset sets all of these, the "
        "options below override it")
    group.add_argument("--preprocess", choices=sorted(PRESETS), default=None,
                       help="imagenet (torchvision: RGB, 0..1, ImageNet mean/std; the default), caffe (BVLC models: "
                            "BGR, 0..255, mean 104,117,123 subtracted), raw (RGB, 0..255)")
    group.add_argument("--resize", type=_positive_int("--resize"), metavar="PIXELS",
                       help="shorter side before the crop (default: 256/224 of the crop)")
    group.add_argument("--mean", type=three_floats("--mean"), metavar="A,B,C",
                       help="subtracted per channel, in the tensor's channel order, after scaling")
    group.add_argument("--std", type=three_floats("--std", nonzero=True), metavar="A,B,C",
                       help="divides per channel, in the tensor's channel order")
    group.add_argument("--channel-order", choices=["rgb", "bgr"], help="channel order of the tensor")
    group.add_argument("--scale", type=positive_float("--scale"), metavar="MAX",
                       help="pixel values are scaled to 0..MAX before mean and std (1 or 255)")


def _model_help() -> str:
    return f"an .onnx file or a zoo model ({', '.join(zoo_names())}); zoo options as name:width=0.35,resolution=96"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgerun", description="Memory-aware ONNX inference for edge devices.")
    parser.add_argument("--version", action="version", version=f"edgerun {edgerun.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser("run", help="classify a photo / run a model, with planned and measured peaks")
    run.add_argument("model", nargs="?", metavar="MODEL", help=_model_help() + f" (default: {DEFAULT_MODEL})")
    run.add_argument("--input", metavar="FILE", action="append",
                     help="an image (.jpg/.png, needs Pillow: pip install 'edgerun[image]') or .npy/.npz; repeat "
                          "for a batch, one file per batch row (default: the bundled sample photo)")
    _add_budget(run)
    run.add_argument("--top", type=_positive_int("--top"), default=5, metavar="K", help="classes to show (5)")
    run.add_argument("--labels", metavar="FILE", help="class names, one per line (line i names class i); top-k "
                                                      "is shown for outputs with that many classes "
                                                      "(default: ImageNet's 1000)")
    run.add_argument("--json", action="store_true", help="print one JSON document (docs/json-schemas.md)")
    run.add_argument("--threads", type=_positive_int("--threads"), metavar="N", help="native kernel threads")
    run.add_argument("--kernels", choices=["numpy", "native"], help="kernel backend (default: native if built)")
    add_activation_dtype(run)
    _add_preprocessing(run)
    run.set_defaults(handler=command_run)

    profile = commands.add_parser("profile", help="per-step memory and time profile")
    profile.add_argument("model", metavar="MODEL", help=_model_help())
    _add_budget(profile)
    profile.add_argument("--format", choices=["table", "json", "csv"], default="table")
    profile.add_argument("--runs", type=_positive_int("--runs"), default=1, metavar="N",
                         help="profiled runs; times are medians (1)")
    profile.add_argument("--plot", metavar="FILE.png", help="draw memory over execution steps (needs matplotlib)")
    profile.add_argument("--threads", type=_positive_int("--threads"), metavar="N", help="native kernel threads")
    profile.add_argument("--kernels", choices=["numpy", "native"], help="kernel backend")
    add_activation_dtype(profile)
    profile.set_defaults(handler=command_profile)

    plan = commands.add_parser("plan", help="the schedule for a budget: per-block t, bands, live bytes, peak")
    plan.add_argument("model", metavar="MODEL", help=_model_help())
    _add_budget(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--kernels", choices=["numpy", "native"], help="kernel backend the plan is for")
    plan.add_argument("--threads", type=_positive_int("--threads"), metavar="N",
                      help="native threads the plan is for (each banded block gets a scratch slice per thread)")
    add_activation_dtype(plan)
    plan.set_defaults(handler=command_plan)

    for name, (_, _, description) in EXTERNAL_COMMANDS.items():
        commands.add_parser(name, help=description, add_help=False)
    return parser


# ================================================================ entry point
def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"edgerun: warning: {message}", file=sys.stderr)


def _exit_code_for(error: EdgerunError) -> int:
    return EXIT_BUDGET if isinstance(error, MemoryBudgetError) else EXIT_USAGE


def _error_message(error: EdgerunError) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, MemoryBudgetError) and error.minimum_bytes:
        text += f" (minimum {format_bytes(error.minimum_bytes)}: try --budget {error.minimum_bytes})"
    return text


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in EXTERNAL_COMMANDS:
        return run_external(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "run":
        args.preprocess_given = args.preprocess is not None
        args.preprocess = args.preprocess or "imagenet"
    return args.handler(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("EDGERUN_DEBUG") == "1"
    previous = warnings.showwarning
    if not debug:
        warnings.showwarning = _show_warning
    try:
        return _dispatch(argv)
    except EdgerunError as error:
        if debug:
            traceback.print_exc()
        print(f"edgerun: error: {_error_message(error)}", file=sys.stderr)
        return _exit_code_for(error)
    except KeyboardInterrupt:
        print("edgerun: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as error:  # a bug: keep it to one line unless debugging
        if debug:
            traceback.print_exc()
        print(f"edgerun: internal error: {type(error).__name__}: {error} (set EDGERUN_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        warnings.showwarning = previous
