"""Row geometry of a segment: a chain of row-local steps run depth-first, band by band.

A segment is a chain of steps; step i reads the output of step i-1 (step 0 reads the
segment input) through a vertical window (kernel, stride, dilation, pad_top) and may also
read, row for row, the output of an earlier step (a residual skip).  To produce one band of
rows of the driving tensor (the last step's output, or the input of a final row reducer such
as GlobalAveragePool), each step computes only the rows its consumers need next.  Every
tensor inside the segment lives in a ring buffer of rows: row r sits in slot r mod R.

Everything here is pure integer arithmetic on one image (no numpy, no ONNX).

Schedule rules (see docs/segments.md):
- iteration b drives rows [b*B, min((b+1)*B, H)) of the driving tensor, steps run in
  order 0..n-1, and step i computes the rows [hi_i(b-1), hi_i(b)) of its output, where
  hi_i(b) is one past the last row any consumer of tensor i reads during iterations <= b
  (as late as possible).  Rows no consumer ever reads after the last needed one ("dead
  tail" rows, e.g. the last row under a stride-2 kernel of 1) are never computed.
- when step i writes its band, the ring must hold, in distinct slots, the band and every
  older row some consumer still reads in this or a later iteration.  Hence

      ring_rows_i = max over iterations b with a non-empty band of
                    max(hi_i(b) - lo_i(b), hi_i(b) - oldest_needed_i(b))

  where oldest_needed_i(b) is the smallest row of tensor i read by any consumer at
  iteration b or later.  That is the least R for which `check_rings` passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SchedulerError

SEGMENT_INPUT = -1


class SegmentError(SchedulerError):
    """A segment's geometry is inconsistent, or a ring buffer would lose a row still needed."""


@dataclass(frozen=True)
class RowStep:
    """Vertical geometry of one step.  `channels` and `width` describe its OUTPUT.

    kernel/stride/dilation/pad_top: the vertical window over the input rows (1/1/1/0 for a
    row-aligned step such as an activation or an Add).  `skip`: index of an earlier step
    (or SEGMENT_INPUT) whose output this step also reads row for row.  `reduce`: the step
    folds every input row into one output row as it arrives (GlobalAveragePool); only the
    last step may reduce, and then out_height is 1.
    """

    name: str
    in_height: int
    out_height: int
    channels: int
    width: int
    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    pad_top: int = 0
    skip: int | None = None
    reduce: bool = False
    itemsize: int = 4

    @property
    def effective_kernel(self) -> int:
        return (self.kernel - 1) * self.dilation + 1

    @property
    def row_bytes(self) -> int:
        return self.channels * self.width * self.itemsize

    def rows_read(self, out_row: int) -> list[int]:
        """Input rows (padding excluded) that output row `out_row` reads through its window."""
        if self.reduce:
            return [out_row]
        start = out_row * self.stride - self.pad_top
        return [r for r in range(start, start + self.effective_kernel, self.dilation)
                if 0 <= r < self.in_height]


@dataclass(frozen=True)
class RingBuffer:
    tensor: int          # index of the step that produces it
    name: str
    rows: int            # ring rows R: row r lives in slot r % R
    height: int          # the tensor's full height
    rows_computed: int   # rows ever computed (height minus a dead tail)
    row_bytes: int

    @property
    def bytes(self) -> int:
        return self.rows * self.row_bytes

    @property
    def whole_bytes(self) -> int:
        return self.height * self.row_bytes

    def slot(self, row: int) -> int:
        return row % self.rows


@dataclass(frozen=True)
class SegmentSchedule:
    band_rows: int
    bands: tuple[tuple[tuple[int, int], ...], ...]   # bands[b][i] = rows [lo, hi) step i computes
    rings: tuple[RingBuffer, ...]                     # one per tensor inside the segment

    @property
    def iterations(self) -> int:
        return len(self.bands)

    @property
    def ring_bytes(self) -> int:
        return sum(ring.bytes for ring in self.rings)

    def ring_rows(self) -> dict[int, int]:
        return {ring.tensor: ring.rows for ring in self.rings}


# ---------------------------------------------------------------- validation
def validate_segment(steps: list[RowStep] | tuple[RowStep, ...], input_height: int) -> None:
    """Raise SegmentError naming the step whose geometry does not chain."""
    if not steps:
        raise SegmentError("a segment needs at least one step")
    height = input_height
    for index, step in enumerate(steps):
        _validate_step(step, index, height, steps, input_height, last=index == len(steps) - 1)
        height = step.out_height


def _validate_step(step: RowStep, index: int, height: int, steps, input_height: int, last: bool) -> None:
    where = f"segment step {index} ({step.name!r})"
    for field in ("in_height", "out_height", "channels", "width", "kernel", "stride", "dilation",
                  "itemsize"):
        if getattr(step, field) < 1:
            raise SegmentError(f"{where}: {field} must be >= 1, got {getattr(step, field)}")
    if step.in_height != height:
        raise SegmentError(f"{where}: in_height {step.in_height} but its input has {height} rows")
    if step.reduce:
        if not last:
            raise SegmentError(f"{where}: a reducing step must end the segment")
        if step.out_height != 1 or step.skip is not None:
            raise SegmentError(f"{where}: a reducing step has out_height 1 and no skip")
        return
    if not 0 <= step.pad_top < step.effective_kernel:
        raise SegmentError(f"{where}: pad_top {step.pad_top} must be in [0, {step.effective_kernel})")
    last_start = (step.out_height - 1) * step.stride - step.pad_top
    if last_start > step.in_height - 1:
        raise SegmentError(f"{where}: output row {step.out_height - 1} starts below the input "
                           f"({step.in_height} rows): out_height too large")
    # rows below the last window (a short bottom) are allowed: a dead tail, never computed
    if step.skip is not None:
        if not SEGMENT_INPUT <= step.skip < index:
            raise SegmentError(f"{where}: skip {step.skip} must name an earlier step or -1")
        skip_height = input_height if step.skip == SEGMENT_INPUT else steps[step.skip].out_height
        if skip_height != step.out_height:
            raise SegmentError(f"{where}: skip tensor has {skip_height} rows, output has "
                               f"{step.out_height}")


# ---------------------------------------------------------------- the schedule
def driving_height(steps) -> int:
    last = steps[-1]
    return last.in_height if last.reduce else last.out_height


def _driven_rows(step: RowStep) -> int:
    """Rows the step emits into the schedule (a reducer emits one per input row)."""
    return step.in_height if step.reduce else step.out_height


def _consumers(steps) -> dict[int, list[tuple[int, str]]]:
    """tensor index -> [(consumer step, 'window' | 'skip')]."""
    users: dict[int, list[tuple[int, str]]] = {i: [] for i in range(SEGMENT_INPUT, len(steps))}
    for index, step in enumerate(steps):
        users[index - 1].append((index, "window"))
        if step.skip is not None:
            users[step.skip].append((index, "skip"))
    return users


def _reads(step: RowStep, kind: str, out_row: int) -> list[int]:
    return [out_row] if kind == "skip" else step.rows_read(out_row)


def _prefix_needed(step: RowStep, kind: str) -> list[int]:
    """need[o] = one past the last input row read by output rows [0, o)."""
    need = [0]
    for out_row in range(_driven_rows(step)):
        rows = _reads(step, kind, out_row)
        need.append(max([need[-1]] + [r + 1 for r in rows]))
    return need


def _suffix_first_read(step: RowStep, kind: str) -> list[int]:
    """first[o] = smallest input row read by output rows [o, end); a large sentinel past the end."""
    count = _driven_rows(step)
    sentinel = 1 << 62
    first = [sentinel] * (count + 1)
    for out_row in range(count - 1, -1, -1):
        rows = _reads(step, kind, out_row)
        first[out_row] = min([first[out_row + 1]] + rows)
    return first


def row_schedule(steps, input_height: int, band_rows: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """bands[b][i] = [lo, hi) output rows step i computes at iteration b (depth-first order)."""
    validate_segment(steps, input_height)
    height = driving_height(steps)
    if not 1 <= band_rows:
        raise SegmentError(f"band_rows must be >= 1, got {band_rows}")
    iterations = -(-height // band_rows)
    users = _consumers(steps)
    needs = {(c, kind): _prefix_needed(steps[c], kind) for t in users for c, kind in users[t]}
    last = len(steps) - 1
    his: list[list[int]] = [[0] * len(steps) for _ in range(iterations)]
    for b in range(iterations):
        his[b][last] = min((b + 1) * band_rows, height)
        for index in range(last - 1, -1, -1):
            his[b][index] = max(needs[(c, kind)][his[b][c]] for c, kind in users[index])
    bands = []
    for b in range(iterations):
        bands.append(tuple((his[b - 1][i] if b else 0, his[b][i]) for i in range(len(steps))))
    return tuple(bands)


def plan_segment(steps, input_height: int, band_rows: int) -> SegmentSchedule:
    """The row schedule and every inner tensor's ring buffer (minimal rows)."""
    steps = tuple(steps)
    bands = row_schedule(steps, input_height, band_rows)
    users = _consumers(steps)
    rings = []
    for tensor in range(len(steps) - 1):
        firsts = [(c, _suffix_first_read(steps[c], kind)) for c, kind in users[tensor]]
        rows = 0
        for band in bands:
            lo, hi = band[tensor]
            if hi == lo:
                continue
            oldest = min(first[band[c][0]] for c, first in firsts)
            rows = max(rows, hi - lo, hi - oldest)
        step = steps[tensor]
        rings.append(RingBuffer(tensor, step.name, rows, step.out_height, bands[-1][tensor][1],
                                step.row_bytes))
    return SegmentSchedule(band_rows, bands, tuple(rings))


# ---------------------------------------------------------------- the checker
def check_rings(steps, input_height: int, bands, ring_rows: dict[int, int]) -> None:
    """Simulate the schedule with the given ring sizes; raise SegmentError at the first fault.

    Faults: a row computed twice or out of order, a band wider than its ring (two rows of one
    write would share a slot), a read of a row never computed, or a read that finds its slot
    holding another row (overwritten while still needed).
    """
    steps = tuple(steps)
    validate_segment(steps, input_height)
    slots = {t: [None] * ring_rows[t] for t in range(len(steps) - 1)}
    done = [0] * len(steps)
    for b, band in enumerate(bands):
        for index, step in enumerate(steps):
            lo, hi = band[index]
            if lo != done[index] or hi < lo:
                raise SegmentError(f"iteration {b}: step {step.name!r} computes rows [{lo}, {hi}) "
                                   f"after rows [0, {done[index]})")
            for out_row in range(lo, hi):
                _check_read(steps, slots, done, index - 1, step.rows_read(out_row), b, step.name)
                if step.skip is not None:
                    _check_read(steps, slots, done, step.skip, [out_row], b, step.name)
            if index in slots and hi > lo:
                ring = slots[index]
                if hi - lo > len(ring):
                    raise SegmentError(f"iteration {b}: step {step.name!r} writes {hi - lo} rows "
                                       f"into a ring of {len(ring)}")
                for row in range(lo, hi):
                    ring[row % len(ring)] = row
            done[index] = hi
    for index, step in enumerate(steps):
        expected = _driven_rows(step) if index == len(steps) - 1 else done[index]
        if done[index] != expected:
            raise SegmentError(f"step {step.name!r} computed {done[index]} of {expected} rows")


def _check_read(steps, slots, done, tensor: int, rows: list[int], b: int, reader: str) -> None:
    if tensor == SEGMENT_INPUT:
        return
    name = steps[tensor].name
    for row in rows:
        if row >= done[tensor]:
            raise SegmentError(f"iteration {b}: {reader!r} reads row {row} of {name!r} before "
                               f"it is computed")
        ring = slots[tensor]
        if not ring or ring[row % len(ring)] != row:
            raise SegmentError(f"iteration {b}: {reader!r} reads row {row} of {name!r}, but its "
                               f"slot holds {ring[row % len(ring)] if ring else None}")


# ---------------------------------------------------------------- accounting
def op_by_op_peak(steps, input_bytes: int, include_input: bool = True) -> tuple[int, str]:
    """(bytes, step name): the largest sum of whole tensors alive at one step when the chain
    runs op by op (each tensor alive from its producer to its last consumer)."""
    steps = tuple(steps)
    users = _consumers(steps)
    sizes = {SEGMENT_INPUT: input_bytes if include_input else 0}
    for index, step in enumerate(steps):
        sizes[index] = step.row_bytes * step.out_height
    last_use = {t: max([t] + [c for c, _ in users[t]]) for t in users}
    best, where = 0, steps[0].name
    for index, step in enumerate(steps):
        live = sum(sizes[t] for t in sizes if t <= index <= last_use[t] or (t == SEGMENT_INPUT
                                                                            and index <= last_use[t]))
        if live > best:
            best, where = live, step.name
    return best, where


def streamed_peak(steps, input_bytes: int, schedule: SegmentSchedule, include_input: bool = True) -> int:
    """Bytes of a streamed run: segment input and output whole, every inner tensor a ring."""
    last = steps[-1]
    output = last.row_bytes * last.out_height
    return (input_bytes if include_input else 0) + schedule.ring_bytes + output
