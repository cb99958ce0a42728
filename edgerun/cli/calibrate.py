"""`edgerun calibrate`: fit the scheduler's cost model to this machine.

Times real MobileNetV2 1.0/224 blocks (five geometries, from 112x112 down to 7x7) through
edgerun.kernels.run_block at several (t, band_rows) schedules, plus the other (non-block) steps
of MobileNetV2, MobileNetV1 1.0/224 and the convolution families (ResNet18-like dense and strided convs with
fused residuals, RegNetX-400MF-like grouped 3x3s, ShuffleNet v1's grouped 1x1s: edgerun.cli.conv_models,
the zoo) through profiled session runs, and fits scheduler.CostModel by non-negative least squares
(scheduler.cost.calibrate); every step kind with enough samples gets its own seconds per MAC (s_kinds).
The same blocks run as one-block streamed segments give s_row (seconds per row kernel call of a segment). The fit is saved as JSON (CostModel.save) to the default path of
`scheduler.cost.calibration_path(backend)` or to --out.

Default path: $EDGERUN_COST_MODEL_DIR/cost-<backend>.json if that variable is set, else
$XDG_CACHE_HOME/edgerun/cost-<backend>.json (XDG_CACHE_HOME defaults to ~/.cache).
`scheduler.cost.load_calibrated(backend)` reads it back (None when there is none); the session
passes it to the scheduler. This module is the measuring tool only: the runtime never imports it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import scheduler
from edgerun import kernels, zoo
from edgerun.cli.bench import cpu_model, numpy_blas
from edgerun.cli.conv_models import regnetx_400mf_like, resnet18_like
from edgerun import segments_graph
from edgerun.executor import block_geometry, segment_chunks, segment_runner_class
from edgerun.kernels import Activation, BlockWeights
from edgerun.models import batch_one_shapes
from edgerun.progress import progress
from edgerun.session import InferenceSession
from scheduler import BlockGeometry, BlockSchedule, CostModel
from scheduler.cost import block_features, calibration_path, nonnegative_least_squares

default_path = calibration_path   # where the fit is written (and read back by scheduler.cost.load_calibrated)

# Which of MobileNetV2's 17 blocks to time (0-based order): 16@112->24@56 s2, 24@56 residual,
# 32@28 residual, 64@14 residual, 160@7 residual.
CALIBRATION_BLOCKS = (1, 2, 4, 7, 14)
T_CHOICES = (1, 2, 5)
DEFAULT_REPEATS = 11
WEIGHT_SEED = 0


# ---------------------------------------------------------------- what is timed
def mobilenet_v2_session(backend: str):
    return InferenceSession(zoo.mobilenet_v2(1.0, 224, batch=1), kernels_backend=backend, threads=1)


def mobilenet_v1_session(backend: str):
    """MobileNetV1 has no block: its 28 layers give the non-block steps' samples (MobileNetV2 has 4)."""
    return InferenceSession(zoo.mobilenet_v1(1.0, 224, batch=1), kernels_backend=backend, threads=1)


def block_geometries(graph) -> list[BlockGeometry]:
    """Geometries of the optimised graph's InvertedResidual nodes, in graph order."""
    return [block_geometry(n, graph) for n in graph.nodes if n.op_type == "InvertedResidual"]


def schedules_for(geom: BlockGeometry) -> list[BlockSchedule]:
    """t in T_CHOICES (at most the hidden channels) times whole, quarter and single-row bands."""
    rows = sorted({geom.out_height, max(1, geom.out_height // 4), 1}, reverse=True)
    ts = sorted({min(t, geom.hidden_channels) for t in T_CHOICES})
    return [BlockSchedule(t, r) for t in ts for r in rows]


def random_block_weights(geom: BlockGeometry, rng):
    relu6 = Activation("clip", (0.0, 6.0))
    hidden = geom.hidden_channels
    we = be = None
    if geom.has_expansion:
        k = geom.expand_kernel
        we = rng.normal(0, 0.1, (hidden, geom.in_channels, k, k)).astype(np.float32)
        be = rng.normal(0, 0.1, hidden).astype(np.float32)
    wd = rng.normal(0, 0.1, (hidden, 1, geom.dw_kernel, geom.dw_kernel)).astype(np.float32)
    wp = rng.normal(0, 0.1, (geom.out_channels, hidden, 1, 1)).astype(np.float32)
    return BlockWeights.from_arrays(we, be, wd, rng.normal(0, 0.1, hidden).astype(np.float32), wp,
                                    rng.normal(0, 0.1, geom.out_channels).astype(np.float32), relu6, relu6)


class BlockTimer:
    """measure_fn for scheduler.cost.calibrate: median seconds of one block run under a schedule."""

    def __init__(self, backend: str, repeats: int = DEFAULT_REPEATS):
        self.backend = backend
        self.repeats = repeats
        self.rng = np.random.default_rng(WEIGHT_SEED)
        self._weights: dict[BlockGeometry, object] = {}
        self.measured: list[tuple[BlockGeometry, BlockSchedule, float]] = []

    def __call__(self, geom: BlockGeometry, sched: BlockSchedule) -> float:
        weights = self._weights.setdefault(geom, random_block_weights(geom, self.rng))
        x = self.rng.standard_normal((geom.in_channels, geom.in_height, geom.in_width)).astype(np.float32)
        out = np.empty((geom.out_channels, geom.out_height, geom.out_width), np.float32)
        scratch = {name: np.empty(size // 4, np.float32)
                   for name, size in kernels.block_scratch(geom, sched, self.backend).items()}
        kernels.run_block(x, out, weights, geom, sched, scratch, backend=self.backend)   # warm-up
        times = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            kernels.run_block(x, out, weights, geom, sched, scratch, backend=self.backend)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        self.measured.append((geom, sched, seconds))
        return seconds


def conv_family_sessions(backend: str) -> list:
    """Networks of dense, strided and grouped convolutions (their FusedConv steps run the banded conv
    kernel, some with a fused residual), and ShuffleNet's grouped 1x1s: the samples of those families."""
    return [InferenceSession(model, kernels_backend=backend, threads=1)
            for model in (resnet18_like(), regnetx_400mf_like(), zoo.shufflenet_v1(batch=1))]


def other_step_samples(sess, repeats: int) -> list[tuple[str, int, float]]:
    """(step kind, macs, median seconds) of every non-block step, from profiled runs of the session."""
    feeds = {name: np.random.default_rng(WEIGHT_SEED).standard_normal(shape).astype(np.float32)
             for name, shape in batch_one_shapes(sess).items()}
    problem = sess.compiled.problem
    macs = {s.name: s.macs for s in problem.steps if not s.is_block}
    kinds = {s.name: s.kind for s in problem.steps if not s.is_block}
    seconds: dict[str, list[float]] = {name: [] for name in macs}
    sess.run(None, feeds)
    for _ in range(repeats):
        sess.run(None, feeds, profile=True)
        for step in sess.last_run.steps:
            if step.name in seconds:
                seconds[step.name].append(step.seconds)
    return [(kinds[name], macs[name], statistics.median(times)) for name, times in seconds.items() if times]


def segment_samples(sess, backend: str, block_seconds: dict, repeats: int) -> list[tuple[int, int, float]]:
    """(row kernel calls, schedule calls, seconds beyond the block run whole) of the calibration blocks
    streamed as one-block segments (segments_graph's Block member, the plans' slices), at one-row calls
    (band 1) and whole-height steady calls: what s_row is fit to. `block_seconds` maps a geometry to its
    fastest measured block schedule's seconds."""
    graph, constants = sess.graph, sess.compiled.constants
    nodes = [n for n in graph.nodes if n.op_type == "InvertedResidual"]
    rng = np.random.default_rng(WEIGHT_SEED)
    samples = []
    for index in CALIBRATION_BLOCKS:
        node = nodes[index]
        ops, _ = segments_graph.unfold_block(node, constants)
        in_shape = tuple(graph.value_info[node.inputs[0]].shape[1:])
        x = rng.standard_normal(in_shape).astype(np.float32)
        geom = block_geometry(node, graph)
        for band, chunking in ((1, "rows"), (geom.out_height, "steady")):
            runner = segment_runner_class(backend)(ops, in_shape, band, chunks=segment_chunks(chunking, len(ops), band))
            out = np.empty(runner.out_shape, np.float32)
            runner.run(x, out)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                runner.run(x, out)
                times.append(time.perf_counter() - start)
            samples.append((runner.row_calls, len(runner.schedule.calls),
                            statistics.median(times) - block_seconds[geom]))
    return samples


def row_coefficient(samples, s_call: float) -> float:
    """s_row: non-negative least squares of the RELATIVE errors of row_calls * s_row + calls * s_call against
    the seconds streaming added."""
    rows = [(row_calls, extra - calls * s_call) for row_calls, calls, extra in samples]
    scale = [max(abs(target), 1e-6) for _, target in rows]
    (s_row,) = nonnegative_least_squares([[r / w] for (r, _), w in zip(rows, scale)],
                                         [t / w for (_, t), w in zip(rows, scale)])
    return s_row


MIN_KIND_SAMPLES = 3


def kind_coefficients(samples, s_call: float) -> tuple[tuple[str, float], ...]:
    """Seconds per MAC of every step kind with at least MIN_KIND_SAMPLES samples with MACs: non-negative
    least squares of the RELATIVE errors of macs * s + s_call on its own samples (a 50 us step counts as
    much as a 5 ms one, as in fit_relative): CostModel.s_kinds."""
    fitted = []
    for kind in sorted({kind for kind, _, _ in samples}):
        rows = [(macs, seconds) for k, macs, seconds in samples if k == kind and macs > 0 and seconds > 0]
        if len(rows) >= MIN_KIND_SAMPLES:
            (per_mac,) = nonnegative_least_squares([[macs / seconds] for macs, seconds in rows],
                                                   [1.0 - s_call / seconds for _, seconds in rows])
            fitted.append((kind, per_mac))
    return tuple(fitted)


def step_errors(model: CostModel, samples) -> dict[str, float]:
    """Median relative error of the model's step estimates, per step kind."""
    errors: dict[str, list[float]] = {}
    for kind, macs, seconds in samples:
        errors.setdefault(kind, []).append(abs(model.step_seconds(macs, kind) - seconds) / seconds)
    return {kind: statistics.median(values) for kind, values in sorted(errors.items())}


# ---------------------------------------------------------------- fitting and reporting
def relative_errors(model: CostModel, measured) -> list[float]:
    return [abs(model.block_seconds(g, s) - seconds) / seconds for g, s, seconds in measured]


def median_relative_error(model: CostModel, measured) -> float:
    return statistics.median(relative_errors(model, measured))


def fit_relative(measured, backend: str, s_other: float) -> CostModel:
    """s_pw, s_dw, s_call minimising the squared RELATIVE errors (each case's row divided by its
    measured seconds), so a 1 ms block counts as much as a 10 ms one; non-negative."""
    rows = [[f / seconds for f in block_features(g, s)] for g, s, seconds in measured]
    s_pw, s_dw, s_call = nonnegative_least_squares(rows, [1.0] * len(rows))
    return CostModel(backend=backend, s_pw=s_pw, s_dw=s_dw, s_call=s_call, s_other=s_other)


def fit(cases, seconds: dict, backend: str, others) -> tuple[CostModel, dict[str, CostModel]]:
    """Both fits (scheduler.cost.calibrate's absolute least squares, and the relative one); the
    one with the smaller median relative error over the cases is kept."""
    measured = [(g, s, seconds[(g, s)]) for g, s in cases]
    absolute = scheduler.calibrate(lambda g, s: seconds[(g, s)], cases, backend=backend,
                                   other_samples=[(macs, secs) for _, macs, secs in others])
    fits = {"absolute": absolute, "relative": fit_relative(measured, backend, absolute.s_other)}
    best = min(fits.values(), key=lambda m: median_relative_error(m, measured))
    best = replace(best, s_kinds=kind_coefficients(others, best.s_call))
    return best, fits


def describe_fit(model: CostModel, default: CostModel, measured) -> list[str]:
    header = f"{'block (Cin@HxW -> Cout, stride)':<34} {'t':>2} {'band':>4} {'measured ms':>11} {'fit ms':>8} {'default ms':>10}"
    lines = [header, "-" * len(header)]
    for geom, sched, seconds in measured:
        block = (f"{geom.in_channels}@{geom.in_height}x{geom.in_width} -> {geom.out_channels}, "
                 f"s{geom.dw_stride}")
        lines.append(f"{block:<34} {sched.t:>2} {sched.band_rows:>4} {seconds * 1e3:>11.3f} "
                     f"{model.block_seconds(geom, sched) * 1e3:>8.3f} {default.block_seconds(geom, sched) * 1e3:>10.3f}")
    lines.append(f"median relative error: fit {median_relative_error(model, measured):.1%}, "
                 f"default model {median_relative_error(default, measured):.1%}")
    lines.append(f"coefficients: s_pw {model.s_pw:.3e} s/MAC, s_dw {model.s_dw:.3e} s/MAC, "
                 f"s_call {model.s_call:.3e} s, s_other {model.s_other:.3e} s/MAC")
    return lines


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="edgerun calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("numpy", "native"), default=None,
                        help="kernels to time (default: the backend edgerun runs, native when it loads)")
    parser.add_argument("--out", type=Path, default=None, help="where to save the fit (default: see below)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed runs per case (median)")
    parser.epilog = f"default path: {default_path('<backend>')}"
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    backend = args.backend or kernels.backend()
    sess = mobilenet_v2_session(backend)
    geometries = block_geometries(sess.graph)
    cases = [(geometries[i], s) for i in CALIBRATION_BLOCKS for s in schedules_for(geometries[i])]
    timer = BlockTimer(backend, args.repeats)
    seconds = {case: timer(*case) for case in progress(cases, total=len(cases), label="block schedules")}
    others = other_step_samples(sess, args.repeats) + other_step_samples(mobilenet_v1_session(backend), args.repeats)
    for conv_sess in progress(conv_family_sessions(backend), total=3, label="conv families"):
        others += other_step_samples(conv_sess, args.repeats)
    model, fits = fit(cases, seconds, backend, others)
    fastest = {}
    for (geom, _), secs in seconds.items():
        fastest[geom] = min(secs, fastest.get(geom, secs))
    streamed = segment_samples(sess, backend, fastest, args.repeats)
    model = replace(model, s_row=row_coefficient(streamed, model.s_call))
    path = args.out or default_path(backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    print(f"calibrated the {backend} cost model on {len(cases)} MobileNetV2 block schedules and "
          f"{len(others)} other steps of MobileNetV2, V1, ResNet18-like, RegNetX-400MF-like and ShuffleNet v1 "
          f"(load average {os.getloadavg()[0]:.2f})")
    print(f"machine: {cpu_model()}; numpy BLAS: {numpy_blas()} (calibrate with the BLAS threads you run with)")
    print("\n".join(describe_fit(model, CostModel.default(backend), timer.measured)))
    print("fits: " + ", ".join(f"{name} least squares {median_relative_error(m, timer.measured):.1%}"
                               for name, m in fits.items()) + " median relative error; kept the smaller")
    flat = replace(model, s_kinds=())
    print("other steps, median relative error by kind (s_kinds fit / one s_other for all): " + ", ".join(
        f"{kind} {fitted:.0%} / {plain:.0%}" for (kind, fitted), plain in
        zip(step_errors(model, others).items(), step_errors(flat, others).values())))
    print("s_kinds: " + ", ".join(f"{kind} {per_mac:.3e} s/MAC" for kind, per_mac in model.s_kinds))
    print(f"s_row {model.s_row:.3e} s per row kernel call of a streamed segment, from {len(streamed)} one-block "
          "segments (row calls, streaming's extra ms measured / fit): " + ", ".join(
              f"{rows} {extra * 1e3:.2f}/{(rows * model.s_row + calls * model.s_call) * 1e3:.2f}"
              for rows, calls, extra in streamed))
    print(f"saved to {path}")
    return 0
