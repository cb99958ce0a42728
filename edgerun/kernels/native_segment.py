"""Run a segment depth-first on the native row kernels (edgerun/kernels/native/segment.c).

`NativeSegmentRunner` has the interface and the semantics of `numpy_segment.SegmentRunner`
and reuses its planning as is: it builds a `SegmentRunner` for the same ops (the row schedule,
every ring and every row scratch laid out in the same arena) and runs the same calls in C.
The C kernels read their input rows through row pointers (a ring slot, a row of the whole
input, or nothing for a padding row) and write their rows straight into the consumer's ring
slot or the whole output, so nothing is copied between steps beyond the rings.

Native steps: Conv (1x1 as a GEMM on the input row in place; depthwise with any multiplier,
kernel, stride, dilation; any other conv as one output row's im2col in the step's arena scratch
plus a GEMM per group), Pool (max / average), Activation (fused into the step before it when
that step's output has no other reader: the step writes its activated rows into the
activation's ring), Add, a final GlobalAveragePool and the fused inverted-residual Block (by
scatter as numpy_segment's, in the same state and scratch: each slice of hidden channels of each
new hidden row expanded once, added into the depthwise accumulators, each output row projected
slice by slice as soon as its window is complete). Every other step (a member kind this
module does not know, a kernel wider than the C row tables) runs on its numpy row kernel, on
the same arena, between the native calls. Threads split every native call by output channels;
the results have the same bits for any thread count.
"""

from __future__ import annotations

import numpy as np

from edgerun.errors import EdgerunError, InvalidInputError
from edgerun.kernels import numpy_segment as nps
from edgerun.kernels.activations import KINDS
from scheduler.segments import SEGMENT_INPUT

ITEMSIZE = 4
MAX_KERNEL = 64              # ER_SEG_MAX_KERNEL: kernel extents the C row tables hold

# enum er_seg_kind (kernels.h)
POINTWISE, DEPTHWISE, IM2COL, MAXPOOL, AVGPOOL, ACTIVATION, ADD, GAP, BLOCK = range(1, 10)
# places of a tensor (the binding's tensors table)
ABSENT, INPUT, OUTPUT, RING = range(4)
# the binding's steps table: one int64 row per step, in this order
SEG_FIELDS = ("kind", "src", "skip", "dst", "out_channels", "out_height", "out_width", "kh", "kw",
              "sh", "sw", "dh", "dw", "pad_top", "pad_left", "group", "include_pad", "weights",
              "bias", "aux", "scratch", "scratch_floats", "act_kind", "act_params",
              # a fused block (er_seg_block): sizes, expansion window, weights, activations, state
              "hidden", "chunk", "state_rows", "hidden_height", "hidden_width", "ek", "es", "epad_top",
              "epad_left", "we", "be", "wd", "bd", "expand_act_kind", "expand_act_params", "dw_act_kind",
              "dw_act_params", "state", "state_floats")


def _module():
    try:
        from edgerun.kernels import _native
    except ImportError as exc:
        raise EdgerunError(f"the native kernels are not built ({exc})") from exc
    return _native


def _tensor(step: int) -> int:
    """Row of the tensors table of step `step`'s output (SEGMENT_INPUT: the segment input)."""
    return step + 1


class _Params:
    """The float32 parameters of every native step, appended one after another."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.size = 0

    def add(self, values) -> int:
        values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        offset = self.size
        self.parts.append(values)
        self.size += values.size
        return offset

    def array(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(1, np.float32)


class NativeSegmentRunner:
    """A segment bound to an input shape (C, H, W) and a band height, run by the C row kernels.

    Arguments as `numpy_segment.SegmentRunner` (same schedule, rings, arena and layout), plus
    `threads` (1..MAX_THREADS of the native pool). `native_steps` lists the steps that run in C,
    `fused` the Activation steps folded into the step before them.
    """

    def __init__(self, ops, in_shape, band_rows: int, alignment: int = 64, chunks=None,
                 arena: np.ndarray | None = None, threads: int = 1) -> None:
        self._native = _module()
        if not isinstance(threads, int) or not 1 <= threads <= self._native.MAX_THREADS:
            raise InvalidInputError(f"segment threads must be an integer in 1..{self._native.MAX_THREADS}, "
                                    f"got {threads!r}")
        self.threads = threads
        self.ops = list(ops)
        self.plan = nps.SegmentRunner(self.ops, in_shape, band_rows, alignment, chunks, arena)
        self.in_shape, self.out_shape = self.plan.in_shape, self.plan.out_shape
        self.steps, self.schedule, self.planner = self.plan.steps, self.plan.schedule, self.plan.planner
        self.arena, self.arena_bytes = self.plan.arena, self.plan.arena_bytes
        self._gap = isinstance(self.plan.kernels[-1], nps._GlobalAverageRows)
        kinds = [self._native_kind(index) for index in range(len(self.ops))]
        self.fused = self._fusions(kinds)
        self.native_steps = [index for index, kind in enumerate(kinds) if kind and index not in self.fused]
        self._tables(kinds)
        self.program = self._program(kinds)
        for table in [self.tensors, self.step_table, self.params] + [c for native, c in self.program if native]:
            memoryview(table).release()   # numpy keeps each array's buffer description from its first export

    # ------------------------------------------------------------ binding the steps
    def _native_kind(self, index: int) -> int | None:
        kernel = self.plan.kernels[index]
        kind = type(kernel)
        if kernel.source is not None:   # a branch (From) reads another tensor than the C tables' src
            return None
        if kind is nps._ConvRows:
            if max(kernel.kernel) > MAX_KERNEL:
                return None
            cin = self.plan.steps[index - 1].channels if index else self.in_shape[0]
            if kernel.group == cin:
                return DEPTHWISE
            if kernel.kernel == (1, 1) and kernel.strides[1] == 1 and kernel.pads[1] == kernel.pads[3] == 0:
                return POINTWISE
            return IM2COL
        if kind is nps._PoolRows:
            return None if max(kernel.kernel) > MAX_KERNEL else (MAXPOOL if kernel.kind == "max" else AVGPOOL)
        if kind is nps._ActivationRows:
            return ACTIVATION
        if kind is nps._AddRows:
            return ADD
        if kind is nps._GlobalAverageRows:
            return GAP
        if kind is nps._BlockRows:
            g = kernel.geometry
            return BLOCK if max(g.dw[0], g.expand[0] if g.expand else 1) <= MAX_KERNEL else None
        return None

    def _fusions(self, kinds) -> set[int]:
        """Activation steps whose producer (a native conv, pool or Add) writes the activated rows
        into the activation's own ring instead: only when nothing else reads the producer's
        output (no skip names it, and every later step is of a kind whose inputs are known)."""
        fused = set()
        known_after = [all(kinds[j] for j in range(i + 1, len(kinds))) for i in range(len(kinds))]
        skips = {k.skip for k in self.plan.kernels if k.skip is not None}
        for i in range(len(kinds) - 1):
            if kinds[i] in (POINTWISE, DEPTHWISE, IM2COL, MAXPOOL, AVGPOOL, ADD) and \
                    kinds[i + 1] == ACTIVATION and i not in skips and known_after[i]:
                fused.add(i + 1)
        return fused

    def _tables(self, kinds) -> None:
        plan, n = self.plan, len(self.ops)
        base = plan.arena.__array_interface__["data"][0]

        def arena_offset(view: np.ndarray) -> int:
            return (view.__array_interface__["data"][0] - base) // ITEMSIZE

        tensors = np.zeros((n + 1, 6), np.int64)
        tensors[_tensor(SEGMENT_INPUT)] = (INPUT, 0, 0) + self.in_shape
        for ring in self.schedule.rings:
            source = plan.sources[ring.tensor]
            rows, c, w = source.ring.shape
            tensors[_tensor(ring.tensor)] = (RING, arena_offset(source.ring), rows, c, self.steps[ring.tensor].out_height, w)
        tensors[_tensor(n - 1)] = (OUTPUT, 0, 0) + self.out_shape
        params = _Params()
        table = np.full((n, len(SEG_FIELDS)), -1, np.int64)
        table[:, 0] = 0   # kind 0: the step does not run in C (numpy, or fused into its producer)
        for index, kind in enumerate(kinds):
            if kind and index not in self.fused:
                table[index] = self._step_row(index, kind, kinds, params, arena_offset)
        self.tensors, self.step_table, self.params = tensors, table, params.array()

    def _step_row(self, index, kind, kinds, params: _Params, arena_offset) -> list[int]:
        kernel, step = self.plan.kernels[index], self.steps[index]
        row = dict.fromkeys(SEG_FIELDS, -1)
        row.update(kind=kind, src=_tensor(index - 1), dst=_tensor(index), out_channels=step.channels,
                   out_height=step.out_height, out_width=step.width, kh=1, kw=1, sh=1, sw=1, dh=1, dw=1,
                   pad_top=0, pad_left=0, group=1, include_pad=0, act_kind=0)
        if kind == GAP:
            row.update(out_height=1, out_width=1)
        if kind == BLOCK:
            row.update(self._block_fields(index, params, arena_offset))
        if kind == ADD or (kind == BLOCK and kernel.skip is not None):
            row["skip"] = _tensor(kernel.skip)
        if kind in (POINTWISE, DEPTHWISE, IM2COL, MAXPOOL, AVGPOOL):
            row.update(kh=kernel.kernel[0], kw=kernel.kernel[1], sh=kernel.strides[0], sw=kernel.strides[1],
                       dh=kernel.dilations[0], dw=kernel.dilations[1], pad_top=kernel.pads[0],
                       pad_left=kernel.pads[1])
        if kind in (POINTWISE, DEPTHWISE, IM2COL):
            row["group"] = kernel.group
            weights = kernel.w3 if kind == DEPTHWISE else kernel.w3.transpose(0, 2, 1)   # (G, taps, Mg)
            row["weights"] = params.add(weights)
            row["bias"] = params.add(kernel.bias)
        if kind == IM2COL:
            scratch = self.plan.scratch[index]
            row.update(scratch=arena_offset(scratch), scratch_floats=scratch.size)
        if kind == AVGPOOL:
            row.update(aux=params.add(kernel.inverse_columns), include_pad=int(kernel.include_pad))
        activation = self.ops[index] if kind == ACTIVATION else \
            self.ops[index + 1] if index + 1 in self.fused else None
        if activation is not None:
            padded = tuple(float(p) for p in activation.params) + (0.0, 0.0)
            row.update(act_kind=KINDS[activation.kind].code, act_params=params.add(padded[:2]))
        if index + 1 in self.fused:
            row["dst"] = _tensor(index + 1)
        return [row[name] for name in SEG_FIELDS]

    def _block_fields(self, index, params: _Params, arena_offset) -> dict:
        """The step row of a fused block: the depthwise window in the step's own fields, the
        projection as its weights, bias and act; expansion, depthwise and state in the block fields."""
        kernel = self.plan.kernels[index]
        g = kernel.geometry
        kd, sd, pd = g.dw
        row = dict(kh=kd, kw=kd, sh=sd, sw=sd, pad_top=pd[0], pad_left=pd[1],
                   weights=params.add(kernel.wp2.T), bias=params.add(kernel.bp),
                   hidden=g.hidden_shape[0], chunk=g.chunk_channels, state_rows=g.state_rows,
                   hidden_height=g.hidden_shape[1], hidden_width=g.hidden_shape[2], ek=0, es=1,
                   epad_top=0, epad_left=0, expand_act_kind=0, wd=params.add(kernel.wd), bd=params.add(kernel.bd),
                   state=arena_offset(kernel.state), state_floats=kernel.state.size)
        row.update(self._activation_fields(kernel.project_act, params))
        row.update({"dw_" + k: v for k, v in self._activation_fields(kernel.dw_act, params).items()})
        if g.expand is not None:
            ke, se, pe = g.expand
            we = kernel.we2.T if g.direct_expansion else kernel.we2   # (Cin, E) k-major, or (E, Cin, k, k)
            row.update(ek=ke, es=se, epad_top=pe[0], epad_left=pe[1], we=params.add(we),
                       be=params.add(kernel.be))
            row.update({"expand_" + k: v for k, v in self._activation_fields(kernel.expand_act, params).items()})
            scratch = self.plan.scratch[index]
            row.update(scratch=arena_offset(scratch), scratch_floats=scratch.size)
        return row

    @staticmethod
    def _activation_fields(activation, params: _Params) -> dict:
        """act_kind / act_params of a (kind, params) pair of numpy_segment._activation_kind."""
        kind, values = activation
        padded = tuple(values) + (0.0, 0.0)
        return dict(act_kind=kind.code, act_params=params.add(padded[:2]))

    def _program(self, kinds) -> list[tuple[bool, object]]:
        """The schedule's calls as runs: (True, int32 (n, 3) calls for C) or (False, [(step, lo, hi)])
        for the numpy row kernels; the calls of fused activations are dropped."""
        program: list[tuple[bool, list]] = []
        for call in self.schedule.calls:
            if call.step in self.fused:
                continue
            native = bool(kinds[call.step])
            if not program or program[-1][0] != native:
                program.append((native, []))
            program[-1][1].append((call.step, call.lo, call.hi))
        return [(native, np.array(calls, np.int32).reshape(-1, 3) if native else calls)
                for native, calls in program]

    @property
    def row_calls(self) -> int:
        """Row kernel calls of one run (numpy_segment.SegmentRunner.row_calls: the same schedule; a
        fused block runs each output row slice by slice here too)."""
        return self.plan.row_calls
    @property
    def numpy_members(self) -> list[str]:
        """The kinds of the steps that run on their numpy row kernels (no native member kind)."""
        return sorted({type(op).__name__ for index, op in enumerate(self.ops)
                       if index not in self.native_steps and index not in self.fused})

    def c_arguments(self, node=None, constants=None, in_shapes=None, out_shapes=None) -> dict | None:
        """What run() hands segment_run, for the C runtime's program (edgerun/c_program.py; the arguments of
        StepKernel.c_arguments are not needed): {"tensors", "steps", "calls" (all of them, in order), "params",
        "gap_scale" (the float32 factor of a final global average pool, else None)}; None when part of the
        segment runs on the numpy row kernels."""
        if not all(native for native, _ in self.program):
            return None
        last = self.plan.kernels[-1]
        scale = float(np.float32(1.0 / (last.in_height * last.in_width))) if self._gap else None
        return {"tensors": self.tensors, "steps": self.step_table, "params": self.params, "gap_scale": scale,
                "calls": np.concatenate([calls for _, calls in self.program]).reshape(-1, 3)}

    # ------------------------------------------------------------ running
    def run(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        self.plan._check_io(x, out)
        plan = self.plan
        if self._gap:
            out.fill(0.0)
        for native, calls in self.program:
            if native:
                self._native.segment_run(self.arena, x, out, self.params, self.tensors, self.step_table,
                                         calls, self.threads)
            else:
                self._run_numpy(calls, x, out)
        if self._gap:
            last = plan.kernels[-1]
            np.multiply(out, np.float32(1.0 / (last.in_height * last.in_width)), out=out)
        return out

    def _run_numpy(self, calls, x: np.ndarray, out: np.ndarray) -> None:
        source = self.plan.sources[SEGMENT_INPUT]
        source.array = x
        old = np.setbufsize(nps.UFUNC_BUFFER_ITEMS)
        try:
            for step, lo, hi in calls:
                self.plan._run_rows(step, lo, hi, out)
        finally:
            np.setbufsize(old)
            source.array = None
