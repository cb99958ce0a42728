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
- an incremental step (a fused block run by scatter) reads, for output row o, only the rows
  no earlier output row read (its partial sums are its state), through a composite window
  when it has an inner (expansion) window; a step may read another source than the previous
  step, a skip, and a broadcast tensor read whole (a mid-chain reducer's one row).

`minimal_streamed_peak` and `minimal_segmentation` give the least bytes of a chain streamed
as one segment, and cut into segments, for the scheduler's search.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    inner: tuple[int, int, int, int] | None = None
    incremental: bool = False
    state_bytes: int = 0
    scratch_bytes: int = 0
    upsample: int = 1
    resize: str = ""
    source: int | None = None
    broadcast: int | None = None
    in_place: bool = False

    # inner = (height, kernel, stride, pad_top): a composite step (a fused inverted-residual
    #   block): its own window (kernel/stride/dilation/pad_top) reads rows of an inner tensor of
    #   `height` rows (the expansion), each inner row reading the input through this window.
    # incremental: the step keeps partial sums of its pending output rows (state_bytes, alive for
    #   the whole segment), so output row o reads only the inner/input rows no earlier output row
    #   read: its input ring need not hold a whole window (line buffers by scatter, no row twice).
    # scratch_bytes: transient work of one call (shared with other steps' scratch).
    # source: the tensor the window reads (default the previous step's output; a negative
    #   index names a segment input): branches such as a shortcut pool beside a conv branch.
    # broadcast: a tensor read whole before the first row (squeeze-excitation's scale vector).
    # upsample / resize: output row o reads input rows around o / upsample ("nearest": row
    #   o // f; "linear": the two rows of half-pixel bilinear interpolation).
    # in_place: a row-aligned elementwise step (an activation, an Add) that may write its row over
    #   the input row it reads: when it is its input's only reader, the two tensors share one ring.

    @property
    def effective_kernel(self) -> int:
        return (self.kernel - 1) * self.dilation + 1

    @property
    def window_height(self) -> int:
        """Rows of the tensor the step's own window runs over (the inner tensor, if any)."""
        return self.inner[0] if self.inner else self.in_height

    @property
    def total_stride(self) -> int:
        """Input rows per output row in steady state."""
        return self.stride * (self.inner[2] if self.inner else 1)

    def _window(self, out_row: int) -> list[int]:
        start = out_row * self.stride - self.pad_top
        return [r for r in range(start, start + self.effective_kernel, self.dilation)
                if 0 <= r < self.window_height]

    def window_rows(self, out_row: int) -> list[int]:
        """Rows of the window tensor (the inner one, if any) output row `out_row` reads now:
        its whole window, or for an incremental step only rows no earlier output row read."""
        rows = self._window(out_row)
        if self.incremental:
            before = out_row - 1
            while before >= 0 and not self._window(before):
                before -= 1
            seen = self._window(before)[-1] if before >= 0 else -1
            rows = [r for r in rows if r > seen]
        return rows

    def _inner_rows(self, inner_row: int) -> list[int]:
        _, kernel, stride, pad = self.inner
        start = inner_row * stride - pad
        return [r for r in range(start, start + kernel) if 0 <= r < self.in_height]

    def _resized_rows(self, out_row: int) -> list[int]:
        factor = self.upsample
        if self.resize == "nearest":
            return [out_row // factor]
        # half-pixel bilinear: source y = (o + 0.5) / f - 0.5, clamped to the input
        low = (2 * out_row + 1 - factor) // (2 * factor)
        return sorted({min(max(low, 0), self.in_height - 1), min(max(low + 1, 0), self.in_height - 1)})

    @property
    def row_bytes(self) -> int:
        return self.channels * self.width * self.itemsize

    def rows_read(self, out_row: int) -> list[int]:
        """Input rows (padding excluded) that output row `out_row` reads through its window."""
        if self.reduce:
            return [out_row]
        if self.resize:
            return self._resized_rows(out_row)
        rows = self.window_rows(out_row)
        if self.inner:
            rows = sorted({r for inner in rows for r in self._inner_rows(inner)})
        return rows


@dataclass(frozen=True)
class RingBuffer:
    tensor: int          # index of the step that produces it
    name: str            # the ring's buffer: tensors computed in place share their consumer's name
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
        """Bytes of the distinct ring buffers (tensors computed in place share one)."""
        return sum({ring.name: ring.bytes for ring in self.rings}.values())

    def ring_rows(self) -> dict[int, int]:
        return {ring.tensor: ring.rows for ring in self.rings}

    def rows_of(self, step: int) -> list[tuple[int, int]]:
        """The [lo, hi) row ranges step `step` computes, call by call."""
        return [(c.lo, c.hi) for c in self.calls if c.step == step]


# ---------------------------------------------------------------- validation
def input_heights(input_height) -> dict[int, int]:
    """The segment's whole inputs: an int is the one input (SEGMENT_INPUT); a dict maps
    negative tensor indices (-1, -2, ...) to the heights of several whole inputs."""
    if isinstance(input_height, dict):
        heights = dict(input_height)
    else:
        heights = {SEGMENT_INPUT: input_height}
    for key, height in heights.items():
        if not isinstance(key, int) or key >= 0 or not isinstance(height, int) or height < 1:
            raise SegmentError(f"segment inputs must map negative indices to heights >= 1, got "
                               f"{key!r}: {height!r}")
    return heights


def source_of(steps, index: int) -> int:
    """The tensor step `index`'s window reads: its `source`, by default the previous step."""
    source = steps[index].source
    return index - 1 if source is None else source


def validate_segment(steps: list[RowStep] | tuple[RowStep, ...], input_height) -> None:
    """Raise SegmentError naming the step whose geometry does not chain."""
    if not steps:
        raise SegmentError("a segment needs at least one step")
    heights = input_heights(input_height)
    for index, step in enumerate(steps):
        _validate_step(step, index, steps, heights, last=index == len(steps) - 1)
        heights[index] = step.out_height
    _validate_readers(steps)


def _validate_reference(where: str, what: str, tensor, index: int, heights) -> int:
    if not isinstance(tensor, int) or tensor >= index or tensor not in heights:
        raise SegmentError(f"{where}: {what} {tensor!r} must name an earlier step or a segment input "
                           f"({sorted(heights)})")
    return heights[tensor]


def _validate_step(step: RowStep, index: int, steps, heights, last: bool) -> None:
    where = f"segment step {index} ({step.name!r})"
    for field in ("in_height", "out_height", "channels", "width", "kernel", "stride", "dilation",
                  "itemsize"):
        if getattr(step, field) < 1:
            raise SegmentError(f"{where}: {field} must be >= 1, got {getattr(step, field)}")
    height = _validate_reference(where, "source", source_of(steps, index), index, heights)
    if step.in_height != height:
        raise SegmentError(f"{where}: in_height {step.in_height} but its input has {height} rows")
    if step.broadcast is not None:
        _validate_reference(where, "broadcast", step.broadcast, index, heights)
    if step.reduce:
        if step.out_height != 1 or step.skip is not None:
            raise SegmentError(f"{where}: a reducing step has out_height 1 and no skip")
        return
    if step.state_bytes < 0 or step.scratch_bytes < 0:
        raise SegmentError(f"{where}: state_bytes and scratch_bytes must be >= 0")
    if step.resize or step.upsample != 1:
        _validate_resize(step, where)
    else:
        _validate_windows(step, where)
    # rows below the last window (a short bottom) are allowed: a dead tail, never computed
    if step.skip is not None:
        skip_height = _validate_reference(where, "skip", step.skip, index, heights)
        if skip_height != step.out_height:
            raise SegmentError(f"{where}: skip tensor has {skip_height} rows, output has "
                               f"{step.out_height}")


def _validate_readers(steps) -> None:
    """A reducer's output is read whole (broadcast) or ends the segment; every other tensor
    but the last is read by a later step of the segment."""
    users = _consumers(steps)
    for index, step in enumerate(steps[:-1]):
        where = f"segment step {index} ({step.name!r})"
        if step.reduce and any(kind != "broadcast" for _, kind in users[index]):
            raise SegmentError(f"{where}: a reducing step must end the segment or be read whole "
                               f"(broadcast)")
        if not users[index]:
            raise SegmentError(f"{where}: its output is read by no later step of the segment")


def _validate_resize(step: RowStep, where: str) -> None:
    if step.resize not in ("nearest", "linear"):
        raise SegmentError(f"{where}: resize must be 'nearest' or 'linear', got {step.resize!r}")
    if step.upsample < 1 or step.out_height != step.in_height * step.upsample:
        raise SegmentError(f"{where}: a resize by row factor {step.upsample} makes "
                           f"{step.in_height * step.upsample} rows, not {step.out_height}")
    if step.inner or step.incremental or step.kernel != 1 or step.stride != 1:
        raise SegmentError(f"{where}: a resize step has no window of its own")


def _validate_windows(step: RowStep, where: str) -> None:
    if step.inner is not None:
        if len(step.inner) != 4:
            raise SegmentError(f"{where}: inner must be (height, kernel, stride, pad_top)")
        height, kernel, stride, pad = step.inner
        if min(height, kernel, stride) < 1 or not 0 <= pad < kernel:
            raise SegmentError(f"{where}: inner window {step.inner} needs height, kernel, stride "
                               f">= 1 and pad_top in [0, kernel)")
        if (height - 1) * stride - pad > step.in_height - 1:
            raise SegmentError(f"{where}: inner row {height - 1} starts below the input "
                               f"({step.in_height} rows): inner height too large")
    if not 0 <= step.pad_top < step.effective_kernel:
        raise SegmentError(f"{where}: pad_top {step.pad_top} must be in [0, {step.effective_kernel})")
    last_start = (step.out_height - 1) * step.stride - step.pad_top
    if last_start > step.window_height - 1:
        raise SegmentError(f"{where}: output row {step.out_height - 1} starts below the input "
                           f"({step.window_height} rows): out_height too large")


# ---------------------------------------------------------------- the schedule
def driving_height(steps) -> int:
    last = steps[-1]
    return last.in_height if last.reduce else last.out_height


def _driven_rows(step: RowStep) -> int:
    """Rows the step emits into the schedule (a reducer emits one per input row)."""
    return step.in_height if step.reduce else step.out_height


def _consumers(steps) -> dict[int, list[tuple[int, str]]]:
    """tensor index -> [(consumer step, 'window' | 'skip' | 'broadcast')] (inputs included)."""
    users: dict[int, list[tuple[int, str]]] = {i: [] for i in range(len(steps))}
    for index, step in enumerate(steps):
        users.setdefault(source_of(steps, index), []).append((index, "window"))
        if step.skip is not None:
            users.setdefault(step.skip, []).append((index, "skip"))
        if step.broadcast is not None:
            users.setdefault(step.broadcast, []).append((index, "broadcast"))
    return users


def _tensor_height(steps, tensor: int, heights=None) -> int:
    if tensor >= 0:
        return steps[tensor].out_height
    return (heights or {}).get(tensor, 1)


def _reads(step: RowStep, kind: str, out_row: int, height: int = 1) -> list[int]:
    if kind == "skip":
        return [out_row]
    if kind == "broadcast":
        return list(range(height))
    return step.rows_read(out_row)


def _prefix_needed(step: RowStep, kind: str, height: int = 1) -> list[int]:
    """need[o] = one past the last input row read by output rows [0, o)."""
    need = [0]
    for out_row in range(_driven_rows(step)):
        rows = _reads(step, kind, out_row, height)
        need.append(max([need[-1]] + [r + 1 for r in rows]))
    return need


def _suffix_first_read(step: RowStep, kind: str, count: int, height: int = 1) -> list[int]:
    """first[o] = smallest input row read by output rows [o, count); a sentinel from count on
    (rows the step never computes read nothing)."""
    sentinel = 1 << 62
    first = [sentinel] * (count + 1)
    for out_row in range(count - 1, -1, -1):
        rows = _reads(step, kind, out_row, height)
        first[out_row] = min([first[out_row + 1]] + rows)
    return first


def _rate(step: RowStep) -> int:
    return 1 if step.reduce or step.resize else step.total_stride


def steady_chunks(steps, band_rows: int) -> list[int]:
    """Default rows per call of each step: its steady rate per driving band (band_rows times
    the strides below it), so that the warm-up is cut into calls no larger than the rest."""
    users = _consumers(steps)
    caps = [0] * len(steps)
    caps[-1] = band_rows
    for index in range(len(steps) - 2, -1, -1):
        caps[index] = max(-(-caps[c] * _rate(steps[c]) // steps[c].upsample)
                          if kind == "window" else caps[c] for c, kind in users[index])
    return caps


def _available(steps, done, tensor: int) -> int:
    """Rows of tensor `tensor` computed so far (a reducer's one row once all its input is in)."""
    step = steps[tensor]
    if step.reduce:
        return 1 if done[tensor] >= step.in_height else 0
    return done[tensor]


def row_schedule(steps, input_height, band_rows: int, chunks=None) -> tuple[Call, ...]:
    """The calls of a streamed run, in execution order.

    Iteration b asks the last step for its rows up to min((b+1)*band_rows, H); a step asked
    for rows up to h computes them in chunks of at most its cap, each chunk first asking its
    producers for exactly the rows its windows (and skip) read, and before its first chunk for
    every row of its broadcast tensor: depth first, as late as possible, each row once.
    `chunks[i]` caps the rows of one call of step i (default `steady_chunks`; smaller chunks
    mean smaller rings and more calls).
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

    def produce(tensor: int, upto: int, iteration: int) -> None:
        """Make rows [0, upto) of tensor `tensor` available."""
        if tensor < 0 or upto <= 0:
            return
        if steps[tensor].reduce:
            upto = steps[tensor].in_height
        drive(tensor, upto, iteration)

    def drive(index: int, upto: int, iteration: int) -> None:
        step = steps[index]
        while done[index] < upto:
            lo = done[index]
            hi = min(lo + caps[index], upto)
            produce(source_of(steps, index), needs[index][hi], iteration)
            if step.skip is not None:
                produce(step.skip, hi, iteration)
            if step.broadcast is not None:
                produce(step.broadcast, _tensor_height(steps, step.broadcast), iteration)
            calls.append(Call(iteration, index, lo, hi))
            done[index] = hi

    for iteration in range(-(-height // band_rows)):
        drive(len(steps) - 1, min((iteration + 1) * band_rows, height), iteration)
    return tuple(calls)


def _replay(steps, calls):
    """Yield (call, done) in order, `done[i]` being the rows step i finished before the call."""
    done = [0] * len(steps)
    for call in calls:
        yield call, done
        done[call.step] = call.hi


def plan_segment(steps, input_height, band_rows: int, chunks=None) -> SegmentSchedule:
    """The row schedule and every inner tensor's ring buffer (minimal rows)."""
    steps = tuple(steps)
    calls = row_schedule(steps, input_height, band_rows, chunks)
    users = _consumers(steps)
    final = [0] * len(steps)
    for call in calls:
        final[call.step] = call.hi
    inner = range(len(steps) - 1)
    firsts = {t: [(c, _suffix_first_read(steps[c], kind, final[c], steps[t].out_height))
                  for c, kind in users[t]] for t in inner}
    rows = [0] * len(steps)
    computed = [0] * len(steps)
    for call, done in _replay(steps, calls):
        if call.step == len(steps) - 1 or call.hi == call.lo:
            continue
        if steps[call.step].reduce:     # its one row, complete after its last input row
            rows[call.step] = computed[call.step] = 1
            continue
        # rows of this tensor any consumer still reads: those of its outputs from done[c] on
        oldest = min(first[done[c]] for c, first in firsts[call.step])
        rows[call.step] = max(rows[call.step], call.hi - call.lo, call.hi - oldest)
        computed[call.step] = call.hi
    homes = in_place_homes(steps, users)
    for tensor, home in homes.items():
        rows[home] = max(rows[home], rows[tensor])
    rings = tuple(RingBuffer(t, steps[homes.get(t, t)].name, rows[homes.get(t, t)], steps[t].out_height,
                             computed[t], steps[t].row_bytes) for t in inner)
    return SegmentSchedule(band_rows, calls, rings)


def in_place_homes(steps, users=None) -> dict[int, int]:
    """Inner tensor -> the inner tensor whose ring it shares: an in-place step's input, when that
    step is its only reader, lives in the step's own ring (following chains such as conv -> Add ->
    activation to the last one).  Safe because the producer writes row r into slot r % R just
    before the in-place step overwrites it with its own row r, with no reader of the step's
    tensor in between: the slot holds the same row of the step's tensor it would hold anyway."""
    users = _consumers(steps) if users is None else users
    last = len(steps) - 1
    home = {}
    for index in range(1, last):
        step, producer = steps[index], index - 1
        if step.in_place and source_of(steps, index) == producer and users.get(producer) == [(index, "window")] \
                and not steps[producer].reduce and steps[producer].row_bytes == step.row_bytes \
                and steps[producer].out_height == step.out_height:
            home[producer] = index
    for tensor in list(home):
        while home[tensor] in home:
            home[tensor] = home[home[tensor]]
    return home


# ---------------------------------------------------------------- the checker
def check_rings(steps, input_height, calls, ring_rows: dict[int, int]) -> None:
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
            _check_read(steps, slots, done, source_of(steps, call.step), step.rows_read(out_row),
                        call, step.name)
            if step.skip is not None:
                _check_read(steps, slots, done, step.skip, [out_row], call, step.name)
            if step.broadcast is not None and step.broadcast >= 0:
                _check_read(steps, slots, done, step.broadcast,
                            list(range(steps[step.broadcast].out_height)), call, step.name)
        if call.step in slots:
            ring = slots[call.step]
            written = range(lo, hi)
            if step.reduce:
                written = range(1) if hi == step.in_height else range(0)
            elif hi - lo > len(ring):
                raise SegmentError(f"call {call}: step {step.name!r} writes {hi - lo} rows into "
                                   f"a ring of {len(ring)}")
            if len(written) and not ring:
                raise SegmentError(f"call {call}: step {step.name!r} writes into a ring of 0 rows")
            for row in written:
                ring[row % len(ring)] = row
        done[call.step] = hi
    if done[-1] != driving_height(steps):
        raise SegmentError(f"step {steps[-1].name!r} computed {done[-1]} of "
                           f"{driving_height(steps)} rows")


def _check_read(steps, slots, done, tensor: int, rows: list[int], call, reader: str) -> None:
    if tensor < 0:
        return
    name = steps[tensor].name
    for row in rows:
        if row >= _available(steps, done, tensor):
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
    if isinstance(input_bytes, dict):
        sizes = {k: v if include_input else 0 for k, v in input_bytes.items()}
    else:
        sizes = {SEGMENT_INPUT: input_bytes if include_input else 0}
    for index, step in enumerate(steps):
        sizes[index] = step.row_bytes * step.out_height
    users.update({t: users.get(t, []) for t in sizes})
    last_use = {t: max([t] + [c for c, _ in users[t]]) for t in users}
    best, where = 0, steps[0].name
    for index, step in enumerate(steps):
        live = sum(sizes[t] for t in sizes if t <= index <= last_use[t])
        if live > best:
            best, where = live, step.name
    return best, where


def _input_bytes(input_bytes, include_input: bool) -> int:
    if not include_input:
        return 0
    return sum(input_bytes.values()) if isinstance(input_bytes, dict) else input_bytes


def streamed_peak(steps, input_bytes, schedule: SegmentSchedule, include_input: bool = True) -> int:
    """Bytes of a streamed run: segment input(s) and output whole, every inner tensor a ring,
    every step's state (partial sums kept across calls) and the largest call scratch.
    `input_bytes`: an int, or a dict of the bytes of several whole inputs."""
    last = steps[-1]
    output = last.row_bytes * last.out_height
    state = sum(step.state_bytes for step in steps)
    scratch = max(step.scratch_bytes for step in steps)
    return _input_bytes(input_bytes, include_input) + schedule.ring_bytes + output + state + scratch


@dataclass(frozen=True)
class StreamedMinimum:
    """The smallest streamed peak of one chain over band heights and chunk policies."""

    bytes: int
    band_rows: int
    chunks: tuple[int, ...]
    schedule: SegmentSchedule
    input_bytes: int          # 0 when the caller's input is apart
    output_bytes: int
    state_bytes: int
    scratch_bytes: int
    other_bytes: int = 0      # whole tensors alive across the segment (minimal_segmentation)

    @property
    def ring_bytes(self) -> int:
        return self.schedule.ring_bytes


def one_row_chunks(steps, band_rows: int) -> tuple[int, ...]:
    """Every step but the last computes one row per call (the smallest rings)."""
    return (1,) * (len(steps) - 1) + (band_rows,)


def minimal_streamed_peak(steps, input_height, input_bytes, include_input: bool = True,
                          bands=(1, 2, 4)) -> StreamedMinimum:
    """The least `streamed_peak` of the chain over `bands` (rows of the driving tensor per
    iteration) with one-row calls or steady chunks; ties go to fewer calls.  For seg-plan's
    search: rings + states + the largest scratch + input(s) (unless apart) + output."""
    steps = tuple(steps)
    validate_segment(steps, input_height)
    height = driving_height(steps)
    best = None
    for band in sorted({min(max(b, 1), height) for b in bands}):
        for chunks in dict.fromkeys((one_row_chunks(steps, band), tuple(steady_chunks(steps, band)))):
            schedule = plan_segment(steps, input_height, band, chunks)
            peak = streamed_peak(steps, input_bytes, schedule, include_input)
            key = (peak, len(schedule.calls))
            if best is None or key < best[0]:
                best = (key, band, chunks, schedule)
    (peak, _), band, chunks, schedule = best
    last = steps[-1]
    return StreamedMinimum(peak, band, chunks, schedule, _input_bytes(input_bytes, include_input),
                           last.row_bytes * last.out_height, sum(s.state_bytes for s in steps),
                           max(s.scratch_bytes for s in steps))


def _references(step: RowStep, index: int) -> list[int]:
    refs = [index - 1 if step.source is None else step.source]
    return refs + [t for t in (step.skip, step.broadcast) if t is not None]


def sub_chain(steps, lo: int, hi: int) -> tuple[tuple[RowStep, ...], dict[int, int]]:
    """Steps [lo, hi) as a segment of their own: (steps re-indexed, {segment input index
    (-1, -2, ...): tensor of the whole chain}).  Tensors the steps read from before `lo` become
    the segment's whole inputs, -1 being the first one met."""
    externals: dict[int, int] = {}

    def local(tensor: int) -> int:
        if tensor >= lo:
            return tensor - lo
        if tensor not in externals.values():
            externals[-1 - len(externals)] = tensor
        return next(k for k, v in externals.items() if v == tensor)

    chain = []
    for index in range(lo, hi):
        step = steps[index]
        chain.append(replace(step, source=local(index - 1 if step.source is None else step.source),
                             skip=None if step.skip is None else local(step.skip),
                             broadcast=None if step.broadcast is None else local(step.broadcast)))
    return tuple(chain), externals


@dataclass(frozen=True)
class Segmentation:
    """The cuts of a chain into segments minimising the largest segment peak."""

    peak: int
    segments: tuple[tuple[int, int, StreamedMinimum], ...]   # (first step, end step, minimum)

    @property
    def setter(self) -> tuple[int, int, StreamedMinimum]:
        return max(self.segments, key=lambda s: s[2].bytes)


def minimal_segmentation(steps, input_height: int, input_bytes: int, include_input: bool = False,
                         bands=(1,), max_steps: int | None = None) -> Segmentation:
    """Cut the chain into consecutive segments (each streamed alone; the tensors it reads from
    earlier segments, the tensors alive across it and its last step's output whole) so that the
    largest segment peak is least: dynamic programming over the cut points.  A cut is refused
    where a tensor other than a segment's last output is read by a later segment.  The chain's
    own input counts only with `include_input` (the caller's input apart by default).
    `max_steps` bounds a segment's length."""
    steps = tuple(steps)
    validate_segment(steps, input_height)
    n = len(steps)
    heights = {SEGMENT_INPUT: input_height}
    sizes = {SEGMENT_INPUT: input_bytes if include_input else 0}
    for index, step in enumerate(steps):
        heights[index] = step.out_height
        sizes[index] = step.row_bytes * step.out_height
    last_reader = {t: t for t in sizes}
    for index, step in enumerate(steps):
        for tensor in _references(step, index):
            last_reader[tensor] = max(last_reader[tensor], index)
    best: list[tuple[int, tuple] | None] = [None] * (n + 1)
    best[0] = (0, ())
    for hi in range(1, n + 1):
        for lo in range(hi - 1, -1, -1):
            if max_steps is not None and hi - lo > max_steps:
                break
            if best[lo] is None or any(last_reader[t] >= hi for t in range(lo, hi - 1)):
                continue
            chain, externals = sub_chain(steps, lo, hi)
            read = set(externals.values())
            across = sum(sizes[t] for t in sizes if t < lo and t not in read and last_reader[t] >= hi)
            minimum = minimal_streamed_peak(chain, {k: heights[t] for k, t in externals.items()},
                                            {k: sizes[t] for k, t in externals.items()}, True, bands)
            minimum = replace(minimum, bytes=minimum.bytes + across, other_bytes=across)
            candidate = (max(best[lo][0], minimum.bytes), best[lo][1] + ((lo, hi, minimum),))
            if best[hi] is None or candidate[0] < best[hi][0]:
                best[hi] = candidate
    if best[n] is None:
        raise SegmentError("no segmentation of the chain exists")
    return Segmentation(best[n][0], best[n][1])


# ---------------------------------------------------------------- fused inverted-residual blocks
def _conv_size(size: int, kernel: int, stride: int, begin: int, end: int) -> int:
    return (size + begin + end - kernel) // stride + 1


def scatter_state_rows(hidden_height: int, out_height: int, kernel: int, stride: int, pad_top: int) -> int:
    """Accumulator rows a scatter depthwise needs: each hidden row, as it is computed, is added
    into every pending output row whose window holds it (in increasing order); output row o is
    finished (activation, projection) right after its last hidden row, before a later output
    row takes its slot.  The rows alive at once form a contiguous range of outputs (slot o mod
    S): S is its largest size.  Stride 1, kernel 3: 2 rows; stride 2, kernel 3: 1 row."""
    step = RowStep("dw", hidden_height, out_height, 1, 1, kernel=kernel, stride=stride,
                   pad_top=pad_top, incremental=True)
    windows = [step._window(o) for o in range(out_height)]
    readers: dict[int, list[int]] = {}
    for o, rows in enumerate(windows):
        for r in rows:
            readers.setdefault(r, []).append(o)
    most = 1
    for o in range(out_height):
        low = o
        for h in step.window_rows(o):
            for reader in readers[h]:
                if h == windows[reader][0]:
                    most = max(most, reader - low + 1)
                if reader == o and h == windows[o][-1]:
                    low = o + 1
    return most


@dataclass(frozen=True)
class BlockGeometry:
    """Sizes of a fused inverted-residual block run row by row by scatter (the segment Block)."""

    in_shape: tuple[int, int, int]
    hidden_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    expand: tuple[int, int, tuple[int, int, int, int]] | None   # (kernel, stride, pads) or None
    dw: tuple[int, int, tuple[int, int, int, int]]              # (kernel, stride, pads)
    chunks: int
    state_rows: int

    @property
    def chunk_channels(self) -> int:
        return -(-self.hidden_shape[0] // self.chunks)

    @property
    def direct_expansion(self) -> bool:
        """A 1x1 stride-1 unpadded expansion reads an input row as it is (no tap copies)."""
        return self.expand is not None and self.expand[0] == 1 and self.expand[1] == 1 \
            and not any(self.expand[2])

    def scratch_items(self) -> dict[str, int]:
        """Per-call work of the scatter row kernel (its contract), in items."""
        cin, _, win = self.in_shape
        hidden, _, wh = self.hidden_shape
        cout, _, wo = self.out_shape
        ec = self.chunk_channels
        items = {"product": ec * wo}
        if self.expand is not None:
            items["hidden"] = ec * wh
            if not self.direct_expansion:   # tap by tap: one tap's input columns, its products
                items["tap"] = cin * wh
                items["product"] = ec * max(wo, wh)
        if self.chunks > 1:
            items["projection"] = cout * wo
        return items

    def state_items(self) -> int:
        return self.state_rows * self.hidden_shape[0] * self.out_shape[2]


def block_geometry(in_shape, hidden: int, out_channels: int, expand=None, dw=(3, 1, (1, 1, 1, 1)),
                   chunks: int = 1) -> BlockGeometry:
    """expand: None (the hidden tensor is the input) or (kernel, stride, pads); dw: (kernel,
    stride, pads) of the depthwise; pads are (top, left, bottom, right).  `chunks` (t): the
    hidden channels are computed in that many slices, so only one slice of a hidden row exists."""
    cin, h, w = (int(d) for d in in_shape)
    if expand is None:
        if hidden != cin:
            raise SegmentError(f"a block without expansion has {cin} hidden channels, not {hidden}")
        hh, wh = h, w
    else:
        ke, se, pe = expand
        hh, wh = _conv_size(h, ke, se, pe[0], pe[2]), _conv_size(w, ke, se, pe[1], pe[3])
        expand = (int(ke), int(se), tuple(int(p) for p in pe))
    kd, sd, pd = dw
    ho, wo = _conv_size(hh, kd, sd, pd[0], pd[2]), _conv_size(wh, kd, sd, pd[1], pd[3])
    if min(hh, wh, ho, wo) < 1 or not 1 <= chunks <= hidden:
        raise SegmentError(f"block on input {tuple(in_shape)}: empty hidden/output or chunks "
                           f"{chunks} outside 1..{hidden}")
    rows = scatter_state_rows(hh, ho, kd, sd, pd[0])
    return BlockGeometry((cin, h, w), (hidden, hh, wh), (out_channels, ho, wo), expand,
                         (int(kd), int(sd), tuple(int(p) for p in pd)), chunks, rows)


def block_row_step(name: str, geometry: BlockGeometry, skip: int | None = None,
                   itemsize: int = 4) -> RowStep:
    """The RowStep of a fused block: its window is the depthwise over the hidden rows, each
    hidden row reading the input through the expansion window (the composite window), and it
    is incremental (scatter), so its input ring holds only the rows of hidden rows still to
    compute.  `skip`: its own input's index for a residual block (the Add reads input row o)."""
    (_, h, _), (_, hh, _), (cout, ho, wo) = geometry.in_shape, geometry.hidden_shape, geometry.out_shape
    kd, sd, pd = geometry.dw
    inner = None
    if geometry.expand is not None and (hh != h or geometry.expand[0] != 1 or geometry.expand[1] != 1
                                        or geometry.expand[2][0] != 0):
        ke, se, pe = geometry.expand
        inner = (hh, ke, se, pe[0])
    return RowStep(name, h, ho, cout, wo, kernel=kd, stride=sd, pad_top=pd[0], skip=skip,
                   itemsize=itemsize, inner=inner, incremental=True,
                   state_bytes=geometry.state_items() * itemsize,
                   scratch_bytes=sum(geometry.scratch_items().values()) * itemsize)
