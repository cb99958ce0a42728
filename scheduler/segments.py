"""Row geometry of a segment: a chain of row-local steps run depth-first, band by band.

A segment is a chain of steps; step i reads the output of step i-1 (step 0 reads the
segment input) through a vertical window (kernel, stride, dilation, pad_top) and may also
read, row for row, the output of an earlier step (a residual skip).  To produce one band of
rows of the driving tensor (the last step's output, or the input of a final row reducer such
as GlobalAveragePool), each step computes only the rows its consumers need next.  Every
tensor inside the segment lives in a ring buffer of rows: row r sits in slot r mod R.

Everything here is pure integer arithmetic on one image (no arrays, no ONNX).

Schedule rules (see docs/segments.md):
- iteration b asks the last step for the rows [0, min((b+1)*B, H)) of the driving tensor.
  A step asked for rows up to h computes the missing ones in calls of at most `cap` rows
  (its steady rate: B times the strides of the steps below it); before each call it asks
  its producer for exactly the rows its windows read, and its skip tensor for the rows it
  adds (depth first, as late as possible, every row once, in increasing order).  Rows no
  consumer reads after the last needed one (a "dead tail", e.g. the last row under a
  stride-2 kernel of 1) are never computed.
- when a call of step i writes rows [lo, hi), its ring must hold, in distinct slots, those
  rows and every older row a consumer still reads (from that consumer's next output row
  on).  Hence, over the calls of step i,

      ring_rows_i = max(hi - lo, hi - oldest_needed)

  where oldest_needed is the smallest row of tensor i that any consumer c reads for its
  output rows >= done_c (rows c has not computed yet).  That is the least R for which
  `check_rings` passes.
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
class Call:
    """One kernel call: at driving iteration `iteration`, step `step` computes rows [lo, hi)."""

    iteration: int
    step: int
    lo: int
    hi: int


@dataclass(frozen=True)
class SegmentSchedule:
    band_rows: int
    calls: tuple[Call, ...]             # in execution order
    rings: tuple[RingBuffer, ...]       # one per tensor inside the segment (steps 0..n-2)

    @property
    def iterations(self) -> int:
        return self.calls[-1].iteration + 1 if self.calls else 0

    @property
    def ring_bytes(self) -> int:
        return sum(ring.bytes for ring in self.rings)

    def ring_rows(self) -> dict[int, int]:
        return {ring.tensor: ring.rows for ring in self.rings}

    def rows_of(self, step: int) -> list[tuple[int, int]]:
        """The [lo, hi) row ranges step `step` computes, call by call."""
        return [(c.lo, c.hi) for c in self.calls if c.step == step]


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


def _suffix_first_read(step: RowStep, kind: str, count: int) -> list[int]:
    """first[o] = smallest input row read by output rows [o, count); a sentinel from count on
    (rows the step never computes read nothing)."""
    sentinel = 1 << 62
    first = [sentinel] * (count + 1)
    for out_row in range(count - 1, -1, -1):
        rows = _reads(step, kind, out_row)
        first[out_row] = min([first[out_row + 1]] + rows)
    return first


def steady_chunks(steps, band_rows: int) -> list[int]:
    """Default rows per call of each step: its steady rate per driving band (band_rows times
    the strides below it), so that the warm-up is cut into calls no larger than the rest."""
    users = _consumers(steps)
    caps = [0] * len(steps)
    caps[-1] = band_rows
    for index in range(len(steps) - 2, -1, -1):
        caps[index] = max(caps[c] * (steps[c].stride if kind == "window" and not steps[c].reduce else 1)
                          for c, kind in users[index])
    return caps


def row_schedule(steps, input_height: int, band_rows: int, chunks=None) -> tuple[Call, ...]:
    """The calls of a streamed run, in execution order.

    Iteration b asks the last step for its rows up to min((b+1)*band_rows, H); a step asked
    for rows up to h computes them in chunks of at most its cap, each chunk first asking its
    producers for exactly the rows its windows (and skip) read: depth first, as late as
    possible, each row once.  `chunks[i]` caps the rows of one call of step i (default
    `steady_chunks`; smaller chunks mean smaller rings and more calls).
    """
    steps = tuple(steps)
    validate_segment(steps, input_height)
    if band_rows < 1:
        raise SegmentError(f"band_rows must be >= 1, got {band_rows}")
    height = driving_height(steps)
    needs = [_prefix_needed(step, "window") for step in steps]
    caps = list(steady_chunks(steps, band_rows) if chunks is None else chunks)
    if len(caps) != len(steps) or min(caps) < 1:
        raise SegmentError(f"chunks must give every step a positive row count, got {caps}")
    done = [0] * len(steps)
    calls: list[Call] = []

    def produce(index: int, upto: int, iteration: int) -> None:
        step = steps[index]
        while done[index] < upto:
            lo = done[index]
            hi = min(lo + caps[index], upto)
            if index > 0:
                produce(index - 1, needs[index][hi], iteration)
            if step.skip is not None and step.skip != SEGMENT_INPUT:
                produce(step.skip, hi, iteration)
            calls.append(Call(iteration, index, lo, hi))
            done[index] = hi

    for iteration in range(-(-height // band_rows)):
        produce(len(steps) - 1, min((iteration + 1) * band_rows, height), iteration)
    return tuple(calls)


def _replay(steps, calls):
    """Yield (call, done) in order, `done[i]` being the rows step i finished before the call."""
    done = [0] * len(steps)
    for call in calls:
        yield call, done
        done[call.step] = call.hi


def plan_segment(steps, input_height: int, band_rows: int, chunks=None) -> SegmentSchedule:
    """The row schedule and every inner tensor's ring buffer (minimal rows)."""
    steps = tuple(steps)
    calls = row_schedule(steps, input_height, band_rows, chunks)
    users = _consumers(steps)
    final = [0] * len(steps)
    for call in calls:
        final[call.step] = call.hi
    firsts = {t: [(c, _suffix_first_read(steps[c], kind, final[c])) for c, kind in users[t]]
              for t in range(len(steps) - 1)}
    rows = [0] * len(steps)
    computed = [0] * len(steps)
    for call, done in _replay(steps, calls):
        if call.step == len(steps) - 1 or call.hi == call.lo:
            continue
        # rows of this tensor any consumer still reads: those of its outputs from done[c] on
        oldest = min(first[done[c]] for c, first in firsts[call.step])
        rows[call.step] = max(rows[call.step], call.hi - call.lo, call.hi - oldest)
        computed[call.step] = call.hi
    rings = tuple(RingBuffer(t, steps[t].name, rows[t], steps[t].out_height, computed[t],
                             steps[t].row_bytes) for t in range(len(steps) - 1))
    return SegmentSchedule(band_rows, calls, rings)


# ---------------------------------------------------------------- the checker
def check_rings(steps, input_height: int, calls, ring_rows: dict[int, int]) -> None:
    """Replay the calls with the given ring sizes; raise SegmentError at the first fault.

    Faults: a row computed twice or out of order, a call writing more rows than its ring has
    (two rows of one write would share a slot), a read of a row never computed, a read that
    finds its slot holding another row (overwritten while still needed), a driving tensor
    left unfinished.
    """
    steps = tuple(steps)
    validate_segment(steps, input_height)
    slots = {t: [None] * ring_rows[t] for t in range(len(steps) - 1)}
    done = [0] * len(steps)
    for call in calls:
        step = steps[call.step]
        lo, hi = call.lo, call.hi
        if lo != done[call.step] or hi <= lo:
            raise SegmentError(f"call {call}: step {step.name!r} computes rows [{lo}, {hi}) "
                               f"after rows [0, {done[call.step]})")
        for out_row in range(lo, hi):
            _check_read(steps, slots, done, call.step - 1, step.rows_read(out_row), call, step.name)
            if step.skip is not None:
                _check_read(steps, slots, done, step.skip, [out_row], call, step.name)
        if call.step in slots:
            ring = slots[call.step]
            if hi - lo > len(ring):
                raise SegmentError(f"call {call}: step {step.name!r} writes {hi - lo} rows into "
                                   f"a ring of {len(ring)}")
            for row in range(lo, hi):
                ring[row % len(ring)] = row
        done[call.step] = hi
    if done[-1] != driving_height(steps):
        raise SegmentError(f"step {steps[-1].name!r} computed {done[-1]} of "
                           f"{driving_height(steps)} rows")


def _check_read(steps, slots, done, tensor: int, rows: list[int], call, reader: str) -> None:
    if tensor == SEGMENT_INPUT:
        return
    name = steps[tensor].name
    for row in rows:
        if row >= done[tensor]:
            raise SegmentError(f"call {call}: {reader!r} reads row {row} of {name!r} before it "
                               f"is computed")
        ring = slots[tensor]
        if not ring or ring[row % len(ring)] != row:
            raise SegmentError(f"call {call}: {reader!r} reads row {row} of {name!r}, but its "
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
        live = sum(sizes[t] for t in sizes if t <= index <= last_use[t])
        if live > best:
            best, where = live, step.name
    return best, where


def streamed_peak(steps, input_bytes: int, schedule: SegmentSchedule, include_input: bool = True) -> int:
    """Bytes of a streamed run: segment input and output whole, every inner tensor a ring."""
    last = steps[-1]
    output = last.row_bytes * last.out_height
    return (input_bytes if include_input else 0) + schedule.ring_bytes + output
