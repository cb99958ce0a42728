"""Table 3 of the MobileNetV2 paper (Sandler et al. 2018), reproduced, beside edgerun's true peaks.

Table 3 gives, per spatial resolution, "the max number of channels / memory (in Kb) that needs to
be materialized", with 16-bit activations. It counts the largest SINGLE tensor at each resolution,
not the peak of a schedule (a block's input and output are alive together).

The rule (`table3_rows`), worked out from the paper's cells and stated on the layer-by-layer graph:

1. Channel-mixing layers are Conv with fewer groups than input channels (full or grouped, any
   kernel), Gemm and MatMul. Per-channel layers are BatchNormalization, activations, Dropout and
   Identity, depthwise Conv (groups == channels), pooling (MaxPool, AveragePool, GlobalAveragePool,
   GlobalMaxPool), and the Reshape/Transpose of a channel shuffle (they keep batch, H and W and only
   permute channels).
2. The split of Section 5.1: a channel-mixing layer B whose input is materialized starts a chain.
   The chain follows B's output through per-channel layers as long as each tensor has exactly one
   consumer (and is not a graph output). It ends (a) at the next channel-mixing layer A, which
   consumes the chain a channel slice at a time and accumulates its output, or (b) at the first
   tensor that branches, is a graph output, or feeds any other layer (Add, Concat, Flatten, ...).
   The tensors strictly inside the chain (B's output up to A's input in case a; B's output up to,
   but not including, the stop tensor in case b) exist one slice at a time: NOT materialized.
   A layer that ended a chain as A does not start one. Every other tensor is materialized.
3. Counted: materialized 4-D float activations with batch 1; the graph input (the caller's image,
   224x224, not a row of the paper) is not. Per H x W: the largest tensor (max channels) and its
   bytes at 2 bytes per value.
4. Kb is 1000 bytes: MobileNetV1's 112x112 cell is 64*112*112*2 = 1,605,632 bytes = "1600"
   (in KiB it would be 1568). The paper truncates to a few significant digits (62,720 bytes is
   "62", 627,200 bytes is "600"), so a memory cell matches when the paper's number equals
   bytes/1000 truncated to 1, 2 or 3 significant digits; channels must match exactly.

What the rule gives: for MobileNetV2 the stem conv is B and the first block's projection is A, so
the 32-channel stem output is never whole (the paper's "trick for the first layer"); every
expansion is B and every projection A, so only the bottleneck tensors count (112x112: 16 channels,
401,408 bytes); the last 1x1 conv to 1280 is B and the global average pool ends its chain, so the
1280x7x7 tensor is not counted either (the paper's 7x7 cell is 320). For MobileNetV1 the rule
counts the pointwise outputs, the largest tensors at every resolution, as the paper does. For
ShuffleNet the stem (B) runs into the max-pool whose output branches, so 112x112 holds nothing;
the units' bottleneck tensors are inside chains and the unit outputs count.

Findings (`edgerun table3` prints them cell by cell): the MobileNetV1 column matches but for the
7x7 memory (199 for 100.4, a misprint); MobileNetV2 matches at 112x112, 1x1 and the max, its 7x7
channels match (32 printed for 31.4 Kb), and its 56/28/14 cells pair the channels of each stride-2
row of Table 2 with that row's input size; the ShuffleNet column is reproduced cell for cell at
56x56 and below, max included, by ShuffleNet 2x with g=2, not g=3 as the caption says, and its
112x112 cell (32 channels) matches no layer and is left out of its own max row.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np

import scheduler
from edgerun import zoo
from edgerun.errors import MemoryBudgetError
from edgerun.executor import CompiledModel
from edgerun.ir import Graph, Node
from edgerun.loader import load_model
from edgerun.passes import optimize
from edgerun.progress import progress
from edgerun.session import InferenceSession
from edgerun.shape_inference import infer_shapes

PAPER_ACTIVATION_BYTES = 2
KB = 1000

# The paper's Table 3: {model: {(H, W): (max channels, Kb)}} and the "max" row in Kb.
PAPER_CELLS = {
    "MobileNetV1": {(112, 112): (64, 1600), (56, 56): (128, 800), (28, 28): (256, 400), (14, 14): (512, 200),
                    (7, 7): (1024, 199), (1, 1): (1024, 2)},
    "MobileNetV2": {(112, 112): (16, 400), (56, 56): (32, 200), (28, 28): (64, 100), (14, 14): (160, 62),
                    (7, 7): (320, 32), (1, 1): (1280, 2)},
    "ShuffleNet": {(112, 112): (32, 800), (56, 56): (48, 300), (28, 28): (400, 600), (14, 14): (800, 310),
                   (7, 7): (1600, 156), (1, 1): (1600, 3)},
}
PAPER_MAX_KB = {"MobileNetV1": 1600, "MobileNetV2": 400, "ShuffleNet": 600}
PAPER_SIZES = ((112, 112), (56, 56), (28, 28), (14, 14), (7, 7), (1, 1))

# Why a cell does not match (the rule above is applied to the graphs edgerun builds).
MISMATCH_NOTES = {
    ("MobileNetV1", (7, 7)): "1024x7x7x2 B = 100,352 B = 100K; the paper's 199 is twice that (misprint; "
                             "the channel count matches)",
    ("MobileNetV2", (56, 56)): "the paper pairs the c of Table 2's stride-2 row (6,32,3,2) with that row's "
                               "input size 56x56 (32x56x56x2 = 200,704 B); that tensor is 28x28, the one at "
                               "56x56 is the 24-channel bottleneck",
    ("MobileNetV2", (28, 28)): "same pairing: row (6,64,4,2) reads 28x28 but writes 64 channels at 14x14; "
                               "at 28x28 the bottleneck has 32 channels",
    ("MobileNetV2", (14, 14)): "same pairing: row (6,160,3,2) reads 14x14 but writes 160 channels at 7x7; "
                               "at 14x14 the largest bottleneck has 96 channels (the paper's 112x112 and "
                               "7x7 cells do not pair this way: 112x112 would then be 24)",
    ("MobileNetV2", (7, 7)): "320x7x7x2 B = 31,360 B = 31.4K; the paper says 32 (the channels match)",
    ("ShuffleNet g=2", (112, 112)): "as for g=3: the stem's output is never whole (first-layer trick)",
    ("ShuffleNet", (112, 112)): "the paper's note applies the first-layer trick to ShuffleNet, and its own max "
                                "row (600K) leaves this 800K cell out; the stem here is 24*2=48 channels "
                                "wide, the paper's 32 matches no layer",
    ("ShuffleNet", (28, 28)): "the paper's 400/800/1600 are the 2x widths of g=2 (200/400/800 in the "
                              "ShuffleNet paper); g=3 at 2x is 480/960/1920. The g=2 column shows the "
                              "paper's cells reproduced",
    ("ShuffleNet", (14, 14)): "g=2 widths in the paper (see 28x28); g=3 gives 960",
    ("ShuffleNet", (7, 7)): "g=2 widths in the paper (see 28x28); g=3 gives 1920",
    ("ShuffleNet", (1, 1)): "g=2 widths in the paper (see 28x28); g=3 gives 1920 (the Kb rounds alike)",
    ("ShuffleNet", "max"): "follows from the g=3 widths at 28x28",
}

_PER_CHANNEL_OPS = {"BatchNormalization", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu",
                    "PRelu", "Tanh", "Elu", "Selu", "Dropout", "Identity", "MaxPool", "AveragePool",
                    "GlobalAveragePool", "GlobalMaxPool"}
_MIXING_OPS = {"Gemm", "MatMul"}


@dataclass(frozen=True)
class Table3Row:
    height: int
    width: int
    channels: int
    bytes: int          # the largest counted tensor at this resolution, 2 bytes per value
    tensor: str         # its name

    @property
    def kb(self) -> float:
        return self.bytes / KB


# ---------------------------------------------------------------- classifying layers
def _shape(graph: Graph, name: str):
    info = graph.value_info.get(name)
    return None if info is None else info.shape


def _is_depthwise(graph: Graph, node: Node) -> bool:
    shape = _shape(graph, node.inputs[0])
    return node.op_type == "Conv" and shape is not None and node.attrs.get("group", 1) == shape[1] > 1


def is_channel_mixing(graph: Graph, node: Node) -> bool:
    return node.op_type in _MIXING_OPS or (node.op_type == "Conv" and not _is_depthwise(graph, node))


def _keeps_batch_and_space(graph: Graph, node: Node) -> bool:
    before, after = _shape(graph, node.inputs[0]), _shape(graph, node.outputs[0])
    if before is None or after is None or len(before) < 4 or len(after) < 4:
        return False
    if before[0] != after[0] or tuple(before[-2:]) != tuple(after[-2:]):
        return False
    perm = node.attrs.get("perm")
    return node.op_type == "Reshape" or (perm is not None and perm[0] == 0
                                         and list(perm[-2:]) == [len(perm) - 2, len(perm) - 1])


def is_per_channel(graph: Graph, node: Node) -> bool:
    if node.op_type in _PER_CHANNEL_OPS or _is_depthwise(graph, node):
        return True
    return node.op_type in ("Reshape", "Transpose") and _keeps_batch_and_space(graph, node)


# ---------------------------------------------------------------- the split chains
def _activation_inputs(graph: Graph, node: Node) -> list[str]:
    """Inputs that are not weights or other known constants."""
    return [i for i in node.inputs if i and i not in graph.initializers
            and graph.value_info.get(i) is not None and graph.value_info[i].value is None]


def _chain_from(graph: Graph, start: Node, consumers, outputs) -> tuple[list[str], Node | None]:
    """(tensors inside the chain that `start` begins, the accumulating layer A that ends it or None)."""
    inside = []
    tensor = start.outputs[0]
    while tensor not in outputs and len(consumers.get(tensor, [])) == 1:
        user = consumers[tensor][0]
        if _activation_inputs(graph, user) != [tensor]:
            break
        if is_channel_mixing(graph, user):
            return inside + [tensor], user
        if not is_per_channel(graph, user):
            break
        inside.append(tensor)
        tensor = user.outputs[0]
    return inside, None


def unmaterialized_tensors(graph: Graph) -> set[str]:
    """Tensors the split computes one channel slice at a time (rule 2 of the module docstring)."""
    consumers = graph.consumers()
    outputs = set(graph.output_names())
    inside: set[str] = set()
    accumulators: set[int] = set()
    for node in graph.nodes:
        if id(node) in accumulators or not is_channel_mixing(graph, node):
            continue
        if any(i in inside for i in _activation_inputs(graph, node)):
            continue
        tensors, end = _chain_from(graph, node, consumers, outputs)
        inside.update(tensors)
        if end is not None:
            accumulators.add(id(end))
    return inside


def _counted_tensors(graph: Graph):
    """(name, shape) of the materialized 4-D float activations with batch 1."""
    hidden = unmaterialized_tensors(graph)
    inputs = {v.name for v in graph.inputs}
    for node in graph.nodes:
        for name in node.outputs:
            info = graph.value_info.get(name)
            if (not name or name in hidden or name in inputs or info is None or info.value is not None
                    or info.shape is None or len(info.shape) != 4
                    or not np.issubdtype(np.dtype(info.dtype), np.floating)):
                continue
            if info.shape[0] != 1:
                raise ValueError(f"Table 3 counts one image: tensor {name!r} has batch {info.shape[0]}")
            yield name, tuple(int(d) for d in info.shape)


def table3_rows(graph: Graph) -> list[Table3Row]:
    """Per H x W (largest first): the largest tensor that must be materialized, at 16 bits.

    `graph`: the unoptimised layer-by-layer graph with concrete shapes and batch 1
    (edgerun.loader.load_model then edgerun.shape_inference.infer_shapes)."""
    best: dict[tuple[int, int], Table3Row] = {}
    for name, (_, channels, height, width) in _counted_tensors(graph):
        row = Table3Row(height, width, channels, channels * height * width * PAPER_ACTIVATION_BYTES, name)
        current = best.get((height, width))
        if current is None or row.channels > current.channels:
            best[(height, width)] = row
    return sorted(best.values(), key=lambda r: (-r.height * r.width, -r.height))


# ---------------------------------------------------------------- comparing with the paper
def truncated(value: float, digits: int) -> float:
    """`value` cut (not rounded) to `digits` significant digits: truncated(627.2, 1) == 600."""
    if value <= 0:
        return 0.0
    scale = 10 ** (math.floor(math.log10(value)) - digits + 1)
    return math.floor(value / scale + 1e-9) * scale


def kb_matches(paper_kb: float, nbytes: int) -> bool:
    """The paper's Kb equals bytes/1000 truncated to 1, 2 or 3 significant digits."""
    return any(math.isclose(truncated(nbytes / KB, d), paper_kb) for d in (1, 2, 3))


def cell_matches(paper: tuple[int, int] | None, row: Table3Row | None) -> bool:
    if paper is None or row is None:
        return paper is None and row is None
    channels, kb = paper
    return row.channels == channels and kb_matches(kb, row.bytes)


# ---------------------------------------------------------------- building the models
@dataclass(frozen=True)
class PaperModel:
    title: str          # column title
    paper_column: str   # the paper's column it is compared with
    label: str
    builder: object     # () -> onnx.ModelProto
    true_peaks: bool = True


def paper_models() -> list[PaperModel]:
    """The three networks of Table 3 at 224x224, plus ShuffleNet 2x with g=2 (see MISMATCH_NOTES)."""
    return [
        PaperModel("MobileNetV1", "MobileNetV1", "MobileNetV1 1.0/224", lambda: zoo.mobilenet_v1(1.0, 224)),
        PaperModel("MobileNetV2", "MobileNetV2", "MobileNetV2 1.0/224", lambda: zoo.mobilenet_v2(1.0, 224)),
        PaperModel("ShuffleNet g=3", "ShuffleNet", "ShuffleNet v1 2x g=3",
                   lambda: zoo.shufflenet_v1(groups=3, width=2.0)),
        PaperModel("ShuffleNet g=2", "ShuffleNet", "ShuffleNet v1 2x g=2",
                   lambda: zoo.shufflenet_v1(groups=2, width=2.0), true_peaks=False),
    ]


def layer_graph(model, batch: int = 1) -> Graph:
    """The unoptimised graph with concrete shapes (batch 1, the model's own image size)."""
    graph = load_model(model)
    shapes = {v.name: (batch,) + tuple(v.shape[1:]) for v in graph.inputs}
    return infer_shapes(graph, shapes)


# ---------------------------------------------------------------- true planned peaks
BLOCK_FUSION_PASSES = ("fuse_blocks", "fuse_stem")
SPLIT_T_CHOICES = (2, 3, 4, 5)


@dataclass(frozen=True)
class PeakRow:
    schedule: str        # what was planned
    fp32_bytes: int
    fp16_bytes: int
    detail: str = ""


@dataclass
class _HalfPrecisionStep(scheduler.Step):
    """The same step with every scratch buffer at 2 bytes per value instead of 4."""

    def scratch_for(self, sched, threads=1):
        return {name: _halved(size, name) for name, size in super().scratch_for(sched, threads).items()}


def _halved(size: int, name: str) -> int:
    if size % 4:
        raise ValueError(f"buffer {name!r} of {size} bytes is not float32: cannot restate it at 16 bits")
    return size // 2


def half_precision_problem(problem: scheduler.Problem, dtypes: dict) -> scheduler.Problem:
    """`problem` with every float32 activation and scratch buffer at 16 bits (other dtypes unchanged)."""
    buffers = {name: _halved(size, name) if np.dtype(dtypes[name]) == np.float32 else size
               for name, size in problem.buffers.items()}
    steps = [_HalfPrecisionStep(s.name, s.kind, list(s.reads), list(s.writes), s.macs, s.scratch, s.block, s.contract)
             for s in problem.steps]
    return scheduler.Problem(buffers=buffers, steps=steps, outputs=list(problem.outputs), backend=problem.backend,
                             threads=problem.threads)


def _compiled(graph: Graph, backend: str, disabled=()):
    return CompiledModel(optimize(graph, disabled=disabled), budget=None, backend=backend)


def _fp16_peak(problem16: scheduler.Problem, plan: scheduler.Plan) -> int:
    """The same block schedules re-laid out with 16-bit buffers (alignment as in the fp32 plan)."""
    return scheduler.schedule(problem16, alignment=plan.alignment, fixed=plan.schedules()).peak_bytes


def _whole_bands(problem: scheduler.Problem, t: int) -> dict:
    return {s.name: scheduler.BlockSchedule(min(t, s.block.hidden_channels), s.block.out_height)
            for s in problem.block_steps()}


def true_peaks(model, backend: str = "native") -> list[PeakRow]:
    """Planned arena peaks (fp32 and 16-bit) of four schedules of `model` at batch 1.

    16-bit: the same block schedules with every float32 activation and scratch buffer at 2 bytes
    per value, laid out again by the same planner (not the fp32 peak halved: 64-byte alignment
    and a different packing can move it)."""
    graph = layer_graph(model)
    layered = _compiled(graph, backend, disabled=BLOCK_FUSION_PASSES)
    fused = _compiled(graph, backend)
    problem = fused.problem
    blocks = len(problem.block_steps())
    if blocks == 0:
        return [_peak_row("layer by layer", layered, scheduler.schedule(layered.problem),
                          "no inverted-residual block: the split does not apply, every schedule is this one"),
                _streamed_row(fused)]
    rows = [_peak_row("layer by layer (block fusion off)", layered, scheduler.schedule(layered.problem))]
    rows.append(_peak_row(f"fused blocks ({blocks}), t=1, whole", fused,
                          scheduler.schedule(problem, fixed=_whole_bands(problem, 1))))
    by_t = [(t, scheduler.schedule(problem, fixed=_whole_bands(problem, t))) for t in SPLIT_T_CHOICES]
    best_t, best = min(by_t, key=lambda item: (item[1].peak_bytes, item[0]))
    rows.append(_peak_row(f"split, best t in 2..5 (t={best_t}), whole", fused, best,
                          "t=2..5: " + ", ".join(f"{p.peak_bytes:,}" for _, p in by_t)))
    rows.append(_peak_row("split + row bands (memory-minimal)", fused, scheduler.memory_minimal(problem)))
    rows.append(_streamed_row(fused))
    return rows


@dataclass
class MeasuredHalfRun:
    """The 16-bit plan run for real (activation_dtype="float16"): its smallest peak (streamed where that is
    smaller) as the budget, the arena it planned and the peak measured while it ran (arena + tracemalloc)."""
    minimum_bytes: int
    planned_bytes: int
    measured_bytes: int
    limiting_step: str


def measured_half_run(model, backend: str = "native") -> MeasuredHalfRun:
    """Plan `model` (batch 1) with float16 activation storage at its smallest peak and run it once on seeded
    random input, measuring the peak. Float16 plans run the numpy block and segment kernels on either backend
    (edgerun.kernels.f16), so their scratch is the numpy kernels'."""
    probe = InferenceSession(model, kernels_backend=backend, threads=1, activation_dtype="float16")
    try:
        CompiledModel(probe.graph, budget=1, backend=backend, threads=1, activation_dtype="float16")
        raise AssertionError("a one-byte budget cannot fit")
    except MemoryBudgetError as exc:
        minimum, step = exc.minimum_bytes, exc.limiting_step
    sess = InferenceSession(model, kernels_backend=backend, threads=1, activation_dtype="float16",
                            memory_budget=minimum)
    arg = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in arg.shape]
    sess.run(None, {arg.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}, profile=True)
    return MeasuredHalfRun(minimum, sess.last_run.planned_peak_bytes, sess.last_run.measured_peak_bytes, step)


def format_measured_half(runs: dict[str, MeasuredHalfRun]) -> list[str]:
    lines = ["Measured 16-bit runs (activation_dtype='float16': every activation and block scratch buffer stored in "
             "float16, arithmetic in float32; its smallest peak as the budget, batch 1)",
             f"{'model':<22} {'planned bytes':>14} {'measured bytes':>15} {'measured Kb':>12}  limiting step"]
    lines.append("-" * len(lines[-1]))
    for label, run in runs.items():
        lines.append(f"{label:<22} {run.planned_bytes:>14,} {run.measured_bytes:>15,} "
                     f"{run.measured_bytes / KB:>12.1f}  {run.limiting_step}")
    lines.append("the paper's 16-bit cells count one tensor; these are whole runs' peaks, measured")
    return lines


def _streamed_row(compiled) -> PeakRow:
    """The memory-minimal plan over segmentations (runs of steps streamed row by row through ring buffers)
    beside the per-block one; its 16-bit figure re-lays out the same segments with every ring and row
    scratch at 2 bytes per value."""
    plan = scheduler.streamed_minimal(compiled.problem)
    planned = compiled.problem.with_segments({s.name: s.bytes for s in plan.segments})
    detail = "; ".join(f"{s.name}: {len(s.steps)} steps, band {s.band_rows}, rings {s.ring_bytes:,} B"
                       for s in plan.segments) or "no segment goes below the per-block minimum"
    return _peak_row("streamed (segments, memory-minimal)", compiled, plan, detail, problem=planned)


def _peak_row(label: str, compiled, plan: scheduler.Plan, detail: str = "", problem=None) -> PeakRow:
    problem = problem or compiled.problem
    dtypes = {name: compiled.graph.value_info[name].dtype for name in problem.buffers}
    problem16 = half_precision_problem(problem, dtypes)
    fullest = max(plan.steps, key=lambda step: step.bytes)
    where = f"fullest step (fp32): {fullest.name} ({fullest.kind}), {fullest.bytes:,} bytes live"
    return PeakRow(label, plan.peak_bytes, _fp16_peak(problem16, plan), "; ".join(filter(None, [detail, where])))


def format_peaks(peaks: dict[str, list[PeakRow]], backend: str) -> list[str]:
    lines = [f"True planned peak (arena bytes, batch 1, {backend} kernel scratch; the caller's input and "
             "the weights are apart)",
             f"{'model':<22} {'schedule':<40} {'fp32 bytes':>12} {'16-bit bytes':>13} {'16-bit Kb':>10}"]
    lines.append("-" * len(lines[-1]))
    for label, rows in peaks.items():
        for row in rows:
            lines.append(f"{label:<22} {row.schedule:<40} {row.fp32_bytes:>12,} {row.fp16_bytes:>13,} "
                         f"{row.fp16_bytes / KB:>10.1f}")
            if row.detail:
                lines.append(f"{'':<22}   {row.detail}")
    lines.append("16-bit: the same schedules with every activation and scratch buffer at 2 bytes per value, "
                 "re-laid out by the same planner")
    return lines


# ---------------------------------------------------------------- printing
def _cell_text(cell) -> str:
    return "-" if cell is None else f"{cell[0]}/{cell[1]:g}"


def _row_text(row: Table3Row | None) -> str:
    return "-" if row is None else f"{row.channels}/{row.kb:.1f}"


def format_table(columns: list[tuple[str, str, list[Table3Row]]]) -> list[str]:
    """`columns`: (title, the paper's column, rows). The paper's cells beside edgerun's, a match mark
    per cell, then a note for every cell that does not match."""
    header = f"{'size':<8}" + "".join(f" | {'paper':>9} {title:>16} {'':<4}" for title, _, _ in columns)
    lines = [header, "-" * len(header)]
    notes: list[str] = []
    sizes = list(PAPER_SIZES) + sorted({(r.height, r.width) for _, _, rows in columns for r in rows}
                                       - set(PAPER_SIZES), reverse=True)
    for size in sizes:
        text = f"{size[0]}x{size[1]}".ljust(8)
        for title, paper_column, rows in columns:
            paper = PAPER_CELLS.get(paper_column, {}).get(size)
            row = next((r for r in rows if (r.height, r.width) == size), None)
            mark = _mark(title, paper_column, size, cell_matches(paper, row), notes)
            text += f" | {_cell_text(paper):>9} {_row_text(row):>16} {mark:<4}"
        lines.append(text)
    text = "max".ljust(8)
    for title, paper_column, rows in columns:
        biggest = max(rows, key=lambda r: r.bytes, default=None)
        paper = PAPER_MAX_KB.get(paper_column)
        ok = biggest is not None and paper is not None and kb_matches(paper, biggest.bytes)
        mark = _mark(title, paper_column, "max", ok, notes)
        text += f" | {str(paper) + 'K':>9} {(f'{biggest.kb:.1f}K' if biggest else '-'):>16} {mark:<4}"
    lines.append(text)
    lines.append("cells: max channels / Kb at 16-bit (1 Kb = 1000 bytes); ok = channels equal and the paper's "
                 "Kb is ours truncated to 1-3 significant digits")
    return lines + notes


def _mark(title: str, paper_column: str, size, ok: bool, notes: list[str]) -> str:
    if ok:
        return "ok"
    label = f"{size[0]}x{size[1]}" if isinstance(size, tuple) else size
    note = MISMATCH_NOTES.get((title, size)) or MISMATCH_NOTES.get((paper_column, size), "no explanation recorded")
    notes.append(f"  [{len(notes) + 1}] {title} {label}: {note}")
    return f"[{len(notes)}]"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="edgerun table3", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("native", "numpy"), default="native",
                        help="whose block scratch the true peaks include (default native: expanded and "
                             "depthwise slices only; numpy adds temporaries)")
    parser.add_argument("--no-peaks", action="store_true", help="print the Table 3 comparison only")
    parser.add_argument("--no-runs", action="store_true",
                        help="skip running the 16-bit plans (the measured 16-bit peaks)")
    args = parser.parse_args(argv)

    models = paper_models()
    columns, peaks, runs = [], {}, {}
    for entry in progress(models, total=len(models), label="models"):
        model = entry.builder()
        columns.append((entry.title, entry.paper_column, table3_rows(layer_graph(model))))
        if entry.true_peaks and not args.no_peaks:
            peaks[entry.label] = true_peaks(model, args.backend)
            if not args.no_runs:
                runs[entry.label] = measured_half_run(model, args.backend)
    print("Table 3 of the MobileNetV2 paper: max channels / memory (Kb) that must be materialized, "
          "16-bit activations, 224x224 input")
    print("\n".join(format_table(columns)))
    if peaks:
        print()
        print("\n".join(format_peaks(peaks, args.backend)))
    if runs:
        print()
        print("\n".join(format_measured_half(runs)))
    return 0
