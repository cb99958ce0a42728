"""A linear cost model for block schedules and other steps.

block seconds = (dense_macs * s_pw + depthwise_macs * s_dw + calls * s_call) / busy threads
  dense_macs: expansion (halo rows recomputed by overlapping bands included)
              plus projection; calls: chunks * bands inner iterations; busy threads:
              what the block kernel's contract says it keeps busy (ThreadSplit.busy).
other step seconds = macs * s_kind + s_call
  s_kind: the coefficient `edgerun calibrate` fit for the step's kind (an opaque label, e.g. the op the
          step runs, in s_kinds) where it fit one, else s_other.
segment seconds = unstreamed seconds + calls * s_call + row_calls * s_row
  a segment does its steps' work (their seconds run whole, blocks at their fastest schedule) plus what
  streaming adds: its schedule's calls, each costing what a block's inner iteration does (s_call), and
  its row kernel calls (row_calls, as the segment kernel counts them: every output row of every step, a
  fused block's once per slice of its hidden channels), each costing s_row: the one-row GEMMs that lose
  the batching of whole tensors, the projection added in slice by slice, the per-call set-up. s_row is
  fit by `edgerun calibrate` from streamed and whole runs of the same blocks. Streaming is therefore never
  cheaper than running the same steps whole, so the no-budget plan stays the unstreamed fastest one,
  and a budgeted plan picks the segmentation, band and chunking with the least streaming work that fits.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

from .blocks import BlockGeometry, BlockSchedule, block_calls, block_macs_split

# Coefficients for a label nobody registered (measured for unfused array kernels on a 2-core x86 box:
# BLAS float32 matmul ~2.5e-11 s/MAC, depthwise as 9 strided multiply-adds ~1.2e-9 s/MAC, ~25 calls
# per (chunk, band) iteration ~3e-5 s).
GENERIC_COEFFICIENTS = dict(s_pw=2.5e-11, s_dw=1.2e-9, s_call=3.0e-5, s_other=1.0e-10, s_row=3.0e-5)
# label -> coefficients, registered by the kernels that run the plans (register_default)
_DEFAULTS: dict[str, dict[str, float]] = {}


def register_default(label: str, s_pw: float, s_dw: float, s_call: float, s_other: float,
                     s_row: float | None = None) -> None:
    """Default coefficients of the kernels called `label` (CostModel.default(label) returns them);
    s_row defaults to s_call."""
    _DEFAULTS[label] = dict(s_pw=s_pw, s_dw=s_dw, s_call=s_call, s_other=s_other,
                            s_row=s_call if s_row is None else s_row)


@dataclass(frozen=True)
class CostModel:
    backend: str  # a label: whose kernels the coefficients describe
    s_pw: float
    s_dw: float
    s_call: float
    s_other: float
    # ((step kind, seconds per MAC), ...): kernel families calibrated apart (dense convolutions are 3-4x
    # faster per MAC than a depthwise or pooling step); kinds not listed cost s_other
    s_kinds: tuple[tuple[str, float], ...] = ()
    # seconds per row kernel call of a streamed segment (segment_seconds); None: the backend's default
    s_row: float | None = None

    @property
    def row_seconds(self) -> float:
        """s_row, or the registered default of the backend when the model has none (an older file)."""
        if self.s_row is not None:
            return self.s_row
        return _DEFAULTS.get(self.backend, GENERIC_COEFFICIENTS)["s_row"]

    @classmethod
    def default(cls, backend: str = "") -> "CostModel":
        """The coefficients registered for `backend`, else GENERIC_COEFFICIENTS."""
        coefficients = _DEFAULTS.get(backend, GENERIC_COEFFICIENTS)
        return cls(backend=backend, **coefficients)

    @classmethod
    def load(cls, path) -> "CostModel":
        data = json.loads(Path(path).read_text())
        kinds = data.get("s_kinds", {})
        if not isinstance(kinds, dict):
            raise ValueError(f"s_kinds must map step kinds to seconds per MAC, got {kinds!r}")
        return cls(
            backend=str(data["backend"]),
            **{k: float(data[k]) for k in ("s_pw", "s_dw", "s_call", "s_other")},
            s_kinds=tuple(sorted((str(kind), float(value)) for kind, value in kinds.items())),
            s_row=float(data["s_row"]) if data.get("s_row") is not None else None,
        )

    def save(self, path) -> None:
        data = dict(asdict(self), s_kinds=dict(self.s_kinds))
        Path(path).write_text(json.dumps(data, indent=2, sort_keys=True))

    def block_features(self, geom: BlockGeometry, sched: BlockSchedule) -> tuple[int, int, int]:
        return block_features(geom, sched)

    def block_seconds(self, geom: BlockGeometry, sched: BlockSchedule, busy_threads: int = 1) -> float:
        """One-thread seconds divided by the threads the block kernel keeps busy (its contract's
        ThreadSplit.busy)."""
        dense, depthwise, calls = block_features(geom, sched)
        seconds = dense * self.s_pw + depthwise * self.s_dw + calls * self.s_call
        return seconds / busy_threads

    def step_seconds(self, macs: int, kind: str = "") -> float:
        """A non-block step: its kind's calibrated seconds per MAC (s_kinds), else s_other."""
        return macs * dict(self.s_kinds).get(kind, self.s_other) + self.s_call

    def segment_seconds(self, unstreamed_seconds: float, row_calls: int, calls: int) -> float:
        """A streamed segment: its steps' seconds run whole plus s_call per scheduled call and s_row per
        row kernel call (the module docstring)."""
        return unstreamed_seconds + calls * self.s_call + row_calls * self.row_seconds

    @classmethod
    def calibrate(cls, measure_fn, cases=None, backend: str = "", other_samples=None) -> "CostModel":
        return calibrate(measure_fn, cases, backend, other_samples)


def block_features(geom: BlockGeometry, sched: BlockSchedule) -> tuple[int, int, int]:
    dense, depthwise = block_macs_split(geom, sched)
    return dense, depthwise, block_calls(geom, sched)


def default_calibration_cases() -> list[tuple[BlockGeometry, BlockSchedule]]:
    """Small blocks whose dense/depthwise/call counts are far from collinear."""

    def block(cin, size, hidden, cout, stride):
        return BlockGeometry(cin, size, size, hidden, 1, 1, (0, 0, 0, 0), 3, stride, (1, 1, 1, 1), cout,
                             residual=(stride == 1 and cin == cout))

    narrow = block(8, 28, 48, 8, 1)  # depthwise-heavy
    wide = block(64, 14, 128, 64, 1)  # matmul-heavy
    strided = block(16, 28, 96, 24, 2)
    return [
        (narrow, BlockSchedule(1, 28)),
        (narrow, BlockSchedule(4, 4)),
        (narrow, BlockSchedule(6, 1)),
        (wide, BlockSchedule(1, 14)),
        (wide, BlockSchedule(2, 7)),
        (wide, BlockSchedule(4, 2)),
        (strided, BlockSchedule(1, 14)),
        (strided, BlockSchedule(3, 2)),
    ]


def calibrate(
    measure_fn: Callable[[BlockGeometry, BlockSchedule], float],
    cases: Iterable[tuple[BlockGeometry, BlockSchedule]] | None = None,
    backend: str = "",
    other_samples: Iterable[tuple[int, float]] | None = None,
) -> CostModel:
    """Fit s_pw, s_dw, s_call (non-negative least squares) to measured seconds.

    `measure_fn(geom, sched)` runs one block under that schedule and returns
    seconds (the caller owns the kernels and the clock).  `other_samples`,
    optional (macs, seconds) pairs of non-block steps, fit s_other.
    """
    cases = list(cases) if cases is not None else default_calibration_cases()
    rows = [list(block_features(g, s)) for g, s in cases]
    seconds = [float(measure_fn(g, s)) for g, s in cases]
    s_pw, s_dw, s_call = nonnegative_least_squares(rows, seconds)
    model = replace(CostModel.default(backend), s_pw=s_pw, s_dw=s_dw, s_call=s_call)
    samples = list(other_samples or [])
    if samples:
        (s_other,) = nonnegative_least_squares(
            [[macs] for macs, _ in samples], [secs - s_call for _, secs in samples]
        )
        model = replace(model, s_other=s_other)
    return model


def nonnegative_least_squares(rows: list[list[float]], targets: list[float]) -> list[float]:
    """min ||A x - b|| subject to x >= 0, by refitting without the most negative
    coefficient until none is negative (fine for a handful of columns)."""
    n = len(rows[0])
    active = list(range(n))
    while active:
        solution = _least_squares([[r[j] for j in active] for r in rows], targets)
        worst = min(range(len(active)), key=lambda k: solution[k])
        if solution[worst] >= 0:
            result = [0.0] * n
            for k, j in enumerate(active):
                result[j] = solution[k]
            return result
        del active[worst]
    return [0.0] * n


def _least_squares(rows: list[list[float]], targets: list[float]) -> list[float]:
    """Normal equations on column-scaled features, solved by Gaussian elimination."""
    n = len(rows[0])
    scale = [max(abs(r[j]) for r in rows) or 1.0 for j in range(n)]
    a = [[r[j] / scale[j] for j in range(n)] for r in rows]
    gram = [[sum(row[i] * row[j] for row in a) for j in range(n)] for i in range(n)]
    rhs = [sum(row[i] * y for row, y in zip(a, targets)) for i in range(n)]
    solution = _solve(gram, rhs)
    return [x / s for x, s in zip(solution, scale)]


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    n = len(rhs)
    m = [row[:] + [b] for row, b in zip(matrix, rhs)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-12:
            raise ValueError("calibration cases do not determine the coefficients (collinear features)")
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col:
                factor = m[r][col] / m[col][col]
                m[r] = [x - factor * y for x, y in zip(m[r], m[col])]
    return [m[i][n] / m[i][i] for i in range(n)]


# ---------------------------------------------------------------- the calibrated model of this machine
def calibration_path(backend: str) -> Path:
    """Where `edgerun calibrate` stores the fit for `backend`: $EDGERUN_COST_MODEL_DIR/cost-<backend>.json
    if that variable is set, else $XDG_CACHE_HOME/edgerun/cost-<backend>.json (default ~/.cache)."""
    folder = os.environ.get("EDGERUN_COST_MODEL_DIR")
    if folder:
        return Path(folder) / f"cost-{backend}.json"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "edgerun" / f"cost-{backend}.json"


def load_calibrated(backend: str) -> CostModel | None:
    """The cost model `edgerun calibrate` saved for `backend`, or None when there is none (or it is
    for another backend, or has a negative or non-finite coefficient)."""
    path = calibration_path(backend)
    if not path.is_file():
        return None
    try:
        model = CostModel.load(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"ignoring the unreadable cost model {str(path)!r} ({exc}); run `edgerun calibrate` again",
                      RuntimeWarning, stacklevel=2)
        return None
    coefficients = (model.s_pw, model.s_dw, model.s_call, model.s_other, model.row_seconds) + \
        tuple(v for _, v in model.s_kinds)
    if model.backend != backend or not all(math.isfinite(c) and c >= 0 for c in coefficients):
        return None
    return model
