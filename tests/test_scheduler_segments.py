"""Row schedules and ring buffers of segments (scheduler/segments.py).

Notation in the worked cases: "step s row o reads rows a..b" lists the input rows the
window of output row o covers (padding rows dropped); hi(b) is one past the last row a
step has computed after iteration b; at the moment a producer writes its band [lo, hi),
"oldest" is the smallest row of its tensor any consumer reads in this or a later
iteration; the ring needs max(hi - lo, hi - oldest) rows, maximised over iterations.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import itertools

from scheduler.segments import (
    Call,
    RowStep,
    SegmentError,
    block_geometry,
    block_row_step,
    check_rings,
    minimal_segmentation,
    minimal_streamed_peak,
    one_row_chunks,
    op_by_op_peak,
    plan_segment,
    row_schedule,
    scatter_state_rows,
    streamed_peak,
    sub_chain,
)


def pointwise(name, height, channels=4, width=8):
    return RowStep(name, height, height, channels, width)


def window(name, in_height, out_height, kernel, stride=1, dilation=1, pad_top=0, channels=4, width=8):
    return RowStep(name, in_height, out_height, channels, width, kernel=kernel, stride=stride,
                   dilation=dilation, pad_top=pad_top)


def assert_minimal(steps, input_height, schedule):
    rows = schedule.ring_rows()
    check_rings(steps, input_height, schedule.calls, rows)
    for tensor, count in rows.items():
        smaller = dict(rows)
        smaller[tensor] = count - 1
        with pytest.raises(SegmentError):
            check_rings(steps, input_height, schedule.calls, smaller)


# ---------------------------------------------------------------- hand-worked cases
def test_two_3x3_convs_band_1():
    """c1, c2: 3x3 stride 1 pad 1 on 8 rows; c2 row o reads c1 rows o-1..o+1; calls of 1 row.
    it 0: c2 row 0 reads c1 0..1: c1 [0,1) (ring holds 1 row), c1 [1,2) (2), then c2 [0,1).
    it b (1..6): c2 row b reads b-1..b+1: c1 computes row b+1; c2 (done b) still reads
    b-1, b, b+1: hi b+2 - oldest b-1 = 3.  it 7: c2 row 7 reads 6..7, all there.
    Ring = 3 = kernel; row r in slot r % 3."""
    steps = [window("c1", 8, 8, 3, pad_top=1), window("c2", 8, 8, 3, pad_top=1)]
    schedule = plan_segment(steps, 8, 1)
    assert schedule.calls[:5] == (Call(0, 0, 0, 1), Call(0, 0, 1, 2), Call(0, 1, 0, 1),
                                  Call(1, 0, 2, 3), Call(1, 1, 1, 2))
    assert schedule.rows_of(0) == [(r, r + 1) for r in range(8)]
    assert schedule.rows_of(1) == [(r, r + 1) for r in range(8)]
    assert schedule.calls[-1] == Call(7, 1, 7, 8) and schedule.iterations == 8
    (ring,) = schedule.rings
    assert (ring.name, ring.rows, ring.rows_computed) == ("c1", 3, 8)
    assert ring.bytes == 3 * 4 * 8 * 4 and ring.whole_bytes == 8 * 4 * 8 * 4
    assert [ring.slot(r) for r in range(8)] == [0, 1, 2, 0, 1, 2, 0, 1]
    assert_minimal(steps, 8, schedule)


def test_two_3x3_convs_band_2():
    """Band 2 (calls of up to 2 rows): it 0: c2 rows 0,1 read c1 0..2 -> c1 [0,2), [2,3); c2 [0,2).
    it 1: c2 rows 2,3 read 1..4 -> c1 [3,5): c2 done 2 reads from row 1, hi 5: 4 rows.
    it 2: c1 [5,7), oldest 3: 4.  it 3: c1 [7,8), oldest 5: 3.  Ring = 4 = band + kernel - 1."""
    steps = [window("c1", 8, 8, 3, pad_top=1), window("c2", 8, 8, 3, pad_top=1)]
    schedule = plan_segment(steps, 8, 2)
    assert schedule.rows_of(0) == [(0, 2), (2, 3), (3, 5), (5, 7), (7, 8)]
    assert schedule.rows_of(1) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert schedule.ring_rows() == {0: 4}
    assert_minimal(steps, 8, schedule)


@pytest.mark.parametrize("band, ring", [(1, 3), (2, 5)])
def test_3x3_stride_2(band, ring):
    """p (1x1, 8 rows) -> d (3x3 stride 2 pad 1, 8 -> 4 rows); d row o reads 2o-1..2o+1;
    p's calls take up to 2 * band rows (one band of d needs that many new rows).
    Band 1: it 0: row 0 reads 0..1 -> p [0,2).  it 1: row 1 reads 1..3 -> p [2,4), oldest 1: 3.
    it 2: rows 3..5 -> p [4,6), oldest 3: 3.  it 3: p [6,8), oldest 5: 3.  Ring 3.
    Band 2: it 0: rows 0,1 read 0..3 -> p [0,4): 4.  it 1: rows 2,3 read 3..7 -> p [4,8),
    oldest 3, hi 8: 5.  Ring 5 = (band - 1) * stride + kernel."""
    steps = [pointwise("p", 8), window("d", 8, 4, 3, stride=2, pad_top=1)]
    schedule = plan_segment(steps, 8, band)
    expected = [(0, 2), (2, 4), (4, 6), (6, 8)] if band == 1 else [(0, 4), (4, 8)]
    assert schedule.rows_of(0) == expected
    assert schedule.ring_rows() == {0: ring}
    assert_minimal(steps, 8, schedule)


@pytest.mark.parametrize("band, ring", [(1, 5), (3, 5)])
def test_5x5(band, ring):
    """p (1x1, 6 rows) -> c (5x5 pad 2, 6 -> 6); c row o reads o-2..o+2.
    Band 1: it 0: row 0 reads 0..2 -> p [0,1), [1,2), [2,3) (ring 1, 2, 3).  it 1 -> p [3,4),
    oldest 0 (row 1 reads 0..3): 4.  it 2 -> [4,5), oldest 0: 5.  it 3 -> [5,6), oldest 1: 5.
    it 4, 5: nothing new.  Ring 5.
    Band 3: it 0: rows 0..2 read 0..4 -> p [0,3), [3,5): 5.  it 1: rows 3..5 read 1..5 ->
    p [5,6), oldest 1: 5.  Ring 5 (< height 6)."""
    steps = [pointwise("p", 6), window("c", 6, 6, 5, pad_top=2)]
    schedule = plan_segment(steps, 6, band)
    expected = [(r, r + 1) for r in range(6)] if band == 1 else [(0, 3), (3, 5), (5, 6)]
    assert schedule.rows_of(0) == expected
    assert schedule.ring_rows() == {0: ring}
    assert_minimal(steps, 6, schedule)


def test_dilated_3x3():
    """p (1x1, 7 rows) -> c (3x3 dilation 2 pad 2, 7 -> 7); c row o reads o-2, o, o+2.
    it 0: row 0 reads 0, 2 -> p [0,1), [1,2), [2,3): 3.  it 1: row 1 reads 1, 3 -> p [3,4);
    row 1 does not read row 0 but row 2 (later) does: oldest 0, hi 4: 4.  it 2 -> [4,5),
    oldest 0: 5.  it 3 -> [5,6), oldest 1: 5.  it 4 -> [6,7), oldest 2: 5.
    Ring 5 = effective kernel."""
    steps = [pointwise("p", 7), window("c", 7, 7, 3, dilation=2, pad_top=2)]
    schedule = plan_segment(steps, 7, 1)
    assert [(c.iteration, c.lo) for c in schedule.calls if c.step == 0] == \
        [(0, 0), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]
    assert schedule.ring_rows() == {0: 5}
    assert_minimal(steps, 7, schedule)


def residual(convs, height=6):
    steps = [pointwise("x", height)]
    steps += [window(f"c{i}", height, height, 3, pad_top=1) for i in range(1, convs + 1)]
    steps.append(RowStep("add", height, height, 4, 8, skip=0))
    return steps


def test_residual_skip_over_two_3x3():
    """x (1x1) -> c1, c2 (3x3 pad 1) -> add(c2, x), 6 rows, band 1, calls of 1 row.
    it 0: add row 0 needs c2 row 0, which reads c1 0..1; c1 row 0 reads x 0..1, row 1 x 0..2:
    x [0,1) [1,2), c1 [0,1), x [2,3), c1 [1,2), c2 [0,1), add [0,1).
    it b >= 1: x row b+2, c1 row b+1, c2 row b, add row b (x and c1 stop at row 5).
    Ring x: when x writes row b+2, add (done b) still needs row b and c1 (done b+1) reads
    b..b+2: 3 rows.  The skip costs nothing extra here: c1's window already holds row b.
    Ring c1: 3 (c2's window).  Ring c2: 1 (add reads the row it just got)."""
    steps = residual(2)
    schedule = plan_segment(steps, 6, 1)
    assert [(c.step, c.lo) for c in schedule.calls if c.iteration == 0] == \
        [(0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (2, 0), (3, 0)]
    assert [(c.step, c.lo) for c in schedule.calls if c.iteration == 1] == \
        [(0, 3), (1, 2), (2, 1), (3, 1)]
    assert schedule.rows_of(3) == [(b, b + 1) for b in range(6)]
    assert schedule.ring_rows() == {0: 3, 1: 3, 2: 1}
    assert_minimal(steps, 6, schedule)


def test_residual_skip_over_three_3x3_keeps_the_lag():
    """Three convs: x computes up to row b+3 while add reads row b: ring x = 4 rows
    (b..b+3).  Without the skip, x's only consumer c1 (done k) reads from row k-1 while x
    writes row k+2: 3 rows, which the same chain ending in a pointwise step shows."""
    steps = residual(3, height=8)
    schedule = plan_segment(steps, 8, 1)
    assert schedule.ring_rows() == {0: 4, 1: 3, 2: 3, 3: 1}
    assert_minimal(steps, 8, schedule)
    no_skip = steps[:-1] + [pointwise("relu", 8)]
    assert plan_segment(no_skip, 8, 1).ring_rows() == {0: 3, 1: 3, 2: 3, 3: 1}


def test_global_average_pool_accumulates_rows():
    """p (1x1) -> c (3x3 pad 1, 4 rows) -> GAP: each iteration feeds `band` rows of c into the
    sum, so c's ring is just the band.  Band 1: p's ring is c's window, 3.  Band 2: it 0: gap
    [0,2) -> c [0,2) reads p 0..2 -> p [0,2), [2,3): 3; it 1: c [2,4) reads 1..3 -> p [3,4),
    oldest 1: 3."""
    steps = [pointwise("p", 4), window("c", 4, 4, 3, pad_top=1),
             RowStep("gap", 4, 1, 4, 1, reduce=True)]
    assert plan_segment(steps, 4, 1).ring_rows() == {0: 3, 1: 1}
    schedule = plan_segment(steps, 4, 2)
    assert schedule.ring_rows() == {0: 3, 1: 2}
    assert schedule.rows_of(2) == [(0, 2), (2, 4)]
    assert schedule.rows_of(0) == [(0, 2), (2, 3), (3, 4)]
    assert_minimal(steps, 4, schedule)


def test_one_row_chunks_shrink_the_warm_up_and_the_rings():
    """p (1x1, 8 rows) -> d (3x3 stride 2 pad 1, 8 -> 4), band 2.  Steady chunks (p: 4 rows a
    call) give ring 5 (test_3x3_stride_2).  One-row calls for d and p: it 0: d row 0 reads
    p 0..1: p [0,1) [1,2), d [0,1); d row 1 reads 1..3: p [2,3) (d, done 1, reads rows 1 and
    up, so oldest 1, hi 3: 2 rows), p [3,4) (oldest 1: 3), d [1,2); it 1 alike.  Ring 3 = the
    kernel, and d's band of 2 rows takes two calls."""
    steps = [pointwise("p", 8), window("d", 8, 4, 3, stride=2, pad_top=1)]
    schedule = plan_segment(steps, 8, 2, chunks=[1, 1])
    assert schedule.calls[:6] == (Call(0, 0, 0, 1), Call(0, 0, 1, 2), Call(0, 1, 0, 1),
                                  Call(0, 0, 2, 3), Call(0, 0, 3, 4), Call(0, 1, 1, 2))
    assert schedule.ring_rows() == {0: 3}
    assert_minimal(steps, 8, schedule)
    with pytest.raises(SegmentError, match="chunks"):
        plan_segment(steps, 8, 2, chunks=[1, 0])


def test_dead_tail_rows_are_not_computed():
    """p (1x1, 4 rows) -> d (1x1 stride 2, 4 -> 2): d reads rows 0 and 2.  it 0: p [0,1).
    it 1: p [1,3): two rows written by one call (row 1 unread but inside it): ring 2.
    Row 3 is read by nobody and never computed."""
    steps = [pointwise("p", 4), window("d", 4, 2, 1, stride=2)]
    schedule = plan_segment(steps, 4, 1)
    assert schedule.rows_of(0) == [(0, 1), (1, 3)]
    (ring,) = schedule.rings
    assert (ring.rows, ring.rows_computed, ring.height) == (2, 3, 4)
    assert_minimal(steps, 4, schedule)


def test_peaks_of_a_chain():
    """Rows of 4 ch x 8 px x 4 B = 128 B; every tensor 8 rows = 1024 B.  Op by op: at step p
    the input and p are alive (2048 B), at step c p and c (2048 B; the input's last reader was
    p), so the first step to reach the peak, p, names it; without the input, c sets 2048.
    Streamed, band 1: input 1024 + p's ring of 3 rows (384) + output 1024."""
    steps = [pointwise("p", 8), window("c", 8, 8, 3, pad_top=1)]
    assert op_by_op_peak(steps, 1024) == (2048, "p")
    assert op_by_op_peak(steps, 1024, include_input=False) == (2048, "c")
    assert streamed_peak(steps, 1024, plan_segment(steps, 8, 1)) == 1024 + 384 + 1024
    skip = [pointwise("p", 8), window("c", 8, 8, 3, pad_top=1), RowStep("add", 8, 8, 4, 8, skip=-1)]
    assert op_by_op_peak(skip, 1024) == (3072, "c")   # input, p and c: the input lives until the add


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("steps, message", [
    ([window("c", 8, 8, 3, pad_top=3)], "pad_top"),
    ([window("c", 7, 8, 3, pad_top=1)], "in_height"),
    ([window("c", 8, 10, 3, pad_top=1)], "out_height too large"),
    ([RowStep("g", 8, 1, 4, 1, reduce=True), pointwise("p", 1)], "must end"),
    ([pointwise("p", 8), RowStep("a", 8, 8, 4, 8, skip=1)], "skip"),
    ([window("d", 8, 4, 1, stride=2), RowStep("a", 4, 4, 4, 8, skip=-1)], "skip tensor has 8 rows"),
])
def test_inconsistent_geometry_is_refused(steps, message):
    with pytest.raises(SegmentError, match=message):
        plan_segment(steps, 8, 1)


def test_band_rows_must_be_positive():
    with pytest.raises(SegmentError, match="band_rows"):
        row_schedule([pointwise("p", 8)], 8, 0)


# ---------------------------------------------------------------- properties
@st.composite
def chains(draw):
    height = draw(st.integers(1, 40))
    input_height = height
    steps = []
    for index in range(draw(st.integers(1, 5))):
        if steps and draw(st.integers(0, 4)) == 0:
            same = [j for j in range(-1, len(steps))
                    if (input_height if j == -1 else steps[j].out_height) == height]
            if same:
                steps.append(RowStep(f"add{index}", height, height, 2, 3, skip=draw(st.sampled_from(same))))
                continue
        kernel, stride, dilation = draw(st.integers(1, 7)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
        effective = (kernel - 1) * dilation + 1
        top, bottom = draw(st.integers(0, effective - 1)), draw(st.integers(0, effective - 1))
        out = (height + top + bottom - effective) // stride + 1
        if out < 1 or (out - 1) * stride - top > height - 1:
            continue
        steps.append(RowStep(f"s{index}", height, out, draw(st.integers(1, 3)), draw(st.integers(1, 5)),
                             kernel=kernel, stride=stride, dilation=dilation, pad_top=top))
        height = out
    if not steps or draw(st.booleans()) and draw(st.booleans()):
        steps.append(RowStep("gap", height, 1, 2, 1, reduce=True))
    band = draw(st.integers(1, max(1, steps[-1].in_height if steps[-1].reduce else steps[-1].out_height)))
    chunks = draw(st.none() | st.lists(st.integers(1, 6), min_size=len(steps), max_size=len(steps)))
    return steps, input_height, band, chunks


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains())
def test_random_chains_have_minimal_correct_rings(chain):
    steps, input_height, band, chunks = chain
    schedule = plan_segment(steps, input_height, band, chunks)
    # every row read finds its row, every row is computed once and in order, the driving
    # tensor is computed whole (check_rings raises otherwise) ...
    check_rings(steps, input_height, schedule.calls, schedule.ring_rows())
    for ring in schedule.rings:
        # ... rings never exceed the tensor, computed rows stop at most at its height ...
        assert 0 <= ring.rows <= ring.rows_computed <= ring.height
        computed = schedule.rows_of(ring.tensor)
        assert (computed[-1][1] if computed else 0) == ring.rows_computed
        if ring.rows == 0:   # a tensor no window reads (all taps in the padding) is never computed
            assert ring.rows_computed == 0
            continue
        # ... and every ring is minimal: one row less loses a row still needed.
        smaller = dict(schedule.ring_rows())
        smaller[ring.tensor] -= 1
        with pytest.raises(SegmentError):
            check_rings(steps, input_height, schedule.calls, smaller)
    driving = steps[-1].in_height if steps[-1].reduce else steps[-1].out_height
    assert schedule.rows_of(len(steps) - 1)[-1][1] == driving
    assert all(hi - lo <= band for lo, hi in schedule.rows_of(len(steps) - 1))
    if chunks is not None:
        assert all(c.hi - c.lo <= chunks[c.step] for c in schedule.calls)
    # every step's calls tile [0, rows computed) in increasing order, each row once
    for index in range(len(steps)):
        ranges = schedule.rows_of(index)
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(ranges, ranges[1:]))
        assert not ranges or ranges[0][0] == 0


# ---------------------------------------------------------------- the MobileNetV2 report
def _report_tool():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "segment_report.py"
    spec = importlib.util.spec_from_file_location("segment_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mobilenet_v2_head_never_holds_a_112x112_tensor_whole(capsys):
    """Stem + blocks 1-4 as one segment.  Op by op, block 2's depthwise holds its 96x112x112
    input (4,816,896 B) and 96x56x56 output (1,204,224 B): 6,021,120 B.  Streamed with one-row
    calls, the 96x112x112 tensor is a ring of 3 rows (its stride-2 3x3 consumer's window):
    3 x 96 x 112 x 4 = 129,024 B, and the 16x112x112 one a ring of 1 row (7,168 B)."""
    tool = _report_tool()
    input_shape, steps = tool.mobilenet_v2_head(224, 4)
    assert op_by_op_peak(steps, 602_112) == (6_021_120, "b2 dw 3x3 s2 (96)")
    schedule = plan_segment(steps, 224, 1, [1] * (len(steps) - 1) + [1])
    rings = {ring.name: ring for ring in schedule.rings}
    assert (rings["b2 1x1 -> 96"].rows, rings["b2 1x1 -> 96"].bytes) == (3, 129_024)
    assert (rings["b1 1x1 -> 16"].rows, rings["b1 1x1 -> 16"].bytes) == (1, 7_168)
    check_rings(steps, 224, schedule.calls, schedule.ring_rows())
    for ring in schedule.rings:
        assert ring.bytes < ring.whole_bytes / 10
    assert tool.main(["--bands", "1", "2"]) == 0
    assert "op-by-op liveness peak: 6,021,120 B" in capsys.readouterr().out


# ---------------------------------------------------------------- incremental, composite, new members
def test_incremental_stride_2_window_reads_only_new_rows():
    """p (1x1, 8 rows) -> c: 3x3 stride 2 pad 1, incremental (partial sums kept by c).
    c row o reads only rows no earlier row read: 0..1, then 2..3, 4..5, 6..7.  One-row calls:
    p writes row 2o+1 while c (done o) still needs row 2o: ring 2 (the gathering 3x3 stride 2
    keeps row 2o-1 too: 3)."""
    gather = [pointwise("p", 8), window("c", 8, 4, 3, stride=2, pad_top=1)]
    scatter = [pointwise("p", 8), RowStep("c", 8, 4, 4, 8, kernel=3, stride=2, pad_top=1, incremental=True)]
    assert [scatter[1].rows_read(o) for o in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    for steps, rows in ((gather, 3), (scatter, 2)):
        schedule = plan_segment(steps, 8, 1, [1, 1])
        assert schedule.ring_rows() == {0: rows}
        assert_minimal(steps, 8, schedule)


def test_composite_block_window_by_hand():
    """A block on a 16-row input: expansion 3x3 stride 2 pad 1 (inner 8 rows), depthwise 3x3
    stride 1 pad 1, incremental.  Row 0 needs hidden rows 0 and 1 (input rows 0..3), row o
    (1..6) hidden row o+1 only (input rows 2o+1..2o+3), row 7 nothing new.  Fed by a 1x1 p
    with one-row calls, p's ring is 4 rows, set by the first call (rows 0..3 all unread), then
    3 in steady state."""
    block = RowStep("b", 16, 8, 4, 8, kernel=3, stride=1, pad_top=1, inner=(8, 3, 2, 1), incremental=True)
    assert [block.rows_read(o) for o in (0, 1, 2, 6, 7)] == \
        [[0, 1, 2, 3], [3, 4, 5], [5, 6, 7], [13, 14, 15], []]
    steps = [pointwise("p", 16), block]
    schedule = plan_segment(steps, 16, 1, [1, 1])
    assert schedule.ring_rows() == {0: 4}
    assert_minimal(steps, 16, schedule)
    assert block.total_stride == 2 and plan_segment(steps, 16, 1).rows_of(0)[:2] == [(0, 2), (2, 4)]


def test_scatter_state_rows_and_block_geometry_by_hand():
    """Accumulator rows: 3x3 stride 1 -> 2 (rows o, o+1 pending when o+2 opens on o's slot);
    3x3 stride 2 -> 1; 5x5 stride 1 -> 4; 5x5 stride 2 -> 2.  MobileNetV2 block 3 (24 -> 144,
    56x56, t = 9): state 2 x 144 x 56 x 4 = 64,512 B; scratch (items) product 16 x 56 +
    hidden slice 16 x 56 + projection 24 x 56 = 3,136 (12,544 B)."""
    assert [scatter_state_rows(56, 56, 3, 1, 1), scatter_state_rows(112, 56, 3, 2, 1),
            scatter_state_rows(14, 14, 5, 1, 2), scatter_state_rows(14, 7, 5, 2, 2)] == [2, 1, 4, 2]
    g = block_geometry((24, 56, 56), 144, 24, (1, 1, (0, 0, 0, 0)), (3, 1, (1, 1, 1, 1)), chunks=9)
    step = block_row_step("b3", g, skip=-1)
    assert (g.state_rows, step.state_bytes, step.scratch_bytes) == (2, 64_512, 12_544)
    assert step.inner is None and step.incremental and step.skip == -1
    # the stem fused in as expansion: composite window over the 224-row input
    g1 = block_geometry((3, 224, 224), 32, 16, (3, 2, (1, 1, 1, 1)), (3, 1, (1, 1, 1, 1)))
    assert block_row_step("b1", g1).inner == (112, 3, 2, 1)
    with pytest.raises(SegmentError, match="without expansion"):
        block_geometry((24, 56, 56), 144, 24, None)


def test_resize_rows_by_hand():
    """p (1x1, 4 rows) -> r: upsampling by 2.  Nearest: row o reads o // 2, so p's ring is one
    row.  Half-pixel linear: row o reads rows floor((o + 0.5) / 2 - 0.5) and the next, clamped:
    0 -> {0}, 1, 2 -> {0, 1}, 3, 4 -> {1, 2}, 5, 6 -> {2, 3}, 7 -> {3}; p's ring holds 2."""
    nearest = RowStep("r", 4, 8, 4, 16, upsample=2, resize="nearest")
    linear = RowStep("r", 4, 8, 4, 16, upsample=2, resize="linear")
    assert [nearest.rows_read(o) for o in range(8)] == [[0], [0], [1], [1], [2], [2], [3], [3]]
    assert [linear.rows_read(o) for o in range(8)] == \
        [[0], [0, 1], [0, 1], [1, 2], [1, 2], [2, 3], [2, 3], [3]]
    for step, rows in ((nearest, 1), (linear, 2)):
        steps = [pointwise("p", 4), step]
        schedule = plan_segment(steps, 4, 1, [1, 1])
        assert schedule.ring_rows() == {0: rows} and schedule.rows_of(0) == [(r, r + 1) for r in range(4)]
        assert_minimal(steps, 4, schedule)
    assert plan_segment([pointwise("p", 4), nearest], 4, 4).rows_of(0) == [(0, 2), (2, 4)]


def test_branch_and_concat_by_hand():
    """ShuffleNet's stride-2 unit on an 8-row input x: a (1x1), d (3x3 stride 2 pad 1 on a),
    s (3x3 stride 2 pad 1 average pool on x itself: source -1), concat (d, skip s), one-row
    calls.  d row o reads a rows 2o-1..2o+1: a's ring 3.  s is computed right before the
    concat reads it: ring 1.  d's ring 1 (read at once by the concat)."""
    steps = [pointwise("a", 8), window("d", 8, 4, 3, stride=2, pad_top=1),
             RowStep("s", 8, 4, 4, 8, kernel=3, stride=2, pad_top=1, source=-1),
             RowStep("cat", 4, 4, 8, 8, source=1, skip=2)]
    schedule = plan_segment(steps, 8, 1, [1, 1, 1, 1])
    assert schedule.ring_rows() == {0: 3, 1: 1, 2: 1}
    assert schedule.calls[:6] == (Call(0, 0, 0, 1), Call(0, 0, 1, 2), Call(0, 1, 0, 1),
                                  Call(0, 2, 0, 1), Call(0, 3, 0, 1), Call(1, 0, 2, 3))
    assert_minimal(steps, 8, schedule)
    # op by op: at d, x (read again by s), a and d are alive: 1024 + 1024 + 512
    assert op_by_op_peak(steps, 1024) == (2560, "d")


def test_squeeze_excitation_broadcast_holds_its_input_whole():
    """x = p (1x1, 6 rows); se reduces p to one row (the scale vector); m = p * se row for
    row, reading se whole (broadcast).  m's row 0 waits for se, so p is a ring of all 6 rows
    (the SE input exists whole, as it must) and se a ring of 1 row."""
    steps = [pointwise("p", 6), RowStep("se", 6, 1, 4, 1, reduce=True),
             RowStep("m", 6, 6, 4, 8, source=0, broadcast=1)]
    schedule = plan_segment(steps, 6, 1, [1, 1, 1])
    assert schedule.ring_rows() == {0: 6, 1: 1}
    assert [c.step for c in schedule.calls[:8]] == [0, 1, 0, 1, 0, 1, 0, 1]
    assert schedule.calls[12] == Call(0, 2, 0, 1)
    assert_minimal(steps, 6, schedule)


@pytest.mark.parametrize("steps, message", [
    ([pointwise("p", 8), RowStep("g", 8, 1, 4, 1, reduce=True), RowStep("q", 1, 1, 4, 1)], "must end"),
    ([pointwise("p", 8), RowStep("q", 8, 8, 4, 8, source=-1)], "read by no later step"),
    ([RowStep("r", 8, 12, 4, 8, upsample=2, resize="nearest")], "row factor 2"),
    ([RowStep("r", 8, 16, 4, 8, upsample=2, resize="cubic")], "nearest"),
    ([RowStep("b", 8, 4, 4, 8, kernel=3, inner=(4, 3, 2, 3))], "inner window"),
    ([RowStep("b", 8, 4, 4, 8, kernel=3, pad_top=1, inner=(6, 3, 2, 1))], "inner height too large"),
    ([pointwise("p", 8), RowStep("m", 8, 8, 4, 8, broadcast=3)], "broadcast"),
    ([pointwise("p", 8), RowStep("m", 8, 8, 4, 8, source=1)], "source"),
])
def test_new_geometry_is_refused(steps, message):
    with pytest.raises(SegmentError, match=message):
        plan_segment(steps, 8, 1)


# ---------------------------------------------------------------- minimal peaks and segmentations
def test_minimal_streamed_peak_prefers_one_row_calls_and_counts_state_and_scratch():
    """p (1x1) -> c (3x3 pad 1), 8 rows of 128 B, c with 100 B of state and 60 B of scratch,
    p 40 B of scratch.  One-row calls: ring 3 rows (384 B); steady chunks at band 2: p's calls
    of 2 rows make the ring 4 rows.  Minimum: input 1024 + 384 + output 1024 + 100 + 60."""
    steps = [RowStep("p", 8, 8, 4, 8, scratch_bytes=40),
             RowStep("c", 8, 8, 4, 8, kernel=3, pad_top=1, state_bytes=100, scratch_bytes=60)]
    best = minimal_streamed_peak(steps, 8, 1024, bands=(1, 2))
    assert (best.bytes, best.band_rows, best.chunks) == (1024 + 384 + 1024 + 160, 1, (1, 1))
    assert (best.ring_bytes, best.state_bytes, best.scratch_bytes) == (384, 100, 60)
    assert minimal_streamed_peak(steps, 8, 1024, include_input=False).bytes == 384 + 1024 + 160
    assert one_row_chunks(steps, 3) == (1, 3)


def test_minimal_segmentation_by_hand():
    """A wide 3x3 conv (64 ch x 8 px x 4 B = 2,048 B a row, 8 rows) between two narrow 1x1s
    (128 B a row).  As one segment: rings of a (3 rows: 384) and w (1 row: 2,048) + output
    1,024 = 3,456 B (input apart).  Cut after w: w whole (16,384) is far worse.  The DP keeps
    the single segment."""
    steps = [pointwise("a", 8), window("w", 8, 8, 3, pad_top=1, channels=64), pointwise("b", 8)]
    seg = minimal_segmentation(steps, 8, 1024)
    assert seg.peak == 384 + 2048 + 1024 and [(lo, hi) for lo, hi, _ in seg.segments] == [(0, 3)]
    # with a step that needs its input whole (a reducer read whole by a later step), the best
    # plan cuts around it and names the segment that sets the peak
    chain, externals = sub_chain(steps, 1, 3)
    assert externals == {-1: 0} and chain[0].source == -1 and chain[1].source == 0


@st.composite
def general_chains(draw):
    """Chains with branches (any earlier source of the right height), incremental windows,
    composite windows, resizes, skips and broadcast reducers."""
    input_height = draw(st.integers(1, 24))
    heights = {-1: input_height}
    steps = []
    for index in range(draw(st.integers(1, 6))):
        source = draw(st.sampled_from(sorted(t for t, h in heights.items() if h is not None)))
        height = heights[source]
        kind = draw(st.sampled_from(["window", "window", "resize", "skip", "se"]))
        step = None
        if kind == "resize":
            factor = draw(st.integers(1, 3))
            step = RowStep(f"r{index}", height, height * factor, 2, 3, upsample=factor,
                           resize=draw(st.sampled_from(["nearest", "linear"])), source=source)
        elif kind == "skip":
            same = [t for t in heights if heights[t] == height and t != source]
            if same:
                step = RowStep(f"add{index}", height, height, 2, 3, source=source,
                               skip=draw(st.sampled_from(same)))
        elif kind == "se" and height > 1 and index < 5:
            steps.append(RowStep(f"se{index}", height, 1, 2, 1, reduce=True, source=source))
            heights[len(steps) - 1] = None
            step = RowStep(f"m{index}", height, height, 2, 3, source=source, broadcast=len(steps) - 1)
        else:
            inner = None
            window_height = height
            if draw(st.booleans()):
                ke, se = draw(st.integers(1, 3)), draw(st.integers(1, 2))
                pe = draw(st.integers(0, ke - 1))
                window_height = (height + 2 * pe - ke) // se + 1
                if window_height < 1 or (window_height - 1) * se - pe > height - 1:
                    continue
                inner = (window_height, ke, se, pe)
            kernel, stride, dilation = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
            effective = (kernel - 1) * dilation + 1
            top, bottom = draw(st.integers(0, effective - 1)), draw(st.integers(0, effective - 1))
            out = (window_height + top + bottom - effective) // stride + 1
            if out < 1 or (out - 1) * stride - top > window_height - 1:
                continue
            step = RowStep(f"w{index}", height, out, 2, 3, kernel=kernel, stride=stride,
                           dilation=dilation if inner is None else 1, pad_top=top, inner=inner,
                           incremental=draw(st.booleans()), source=source)
            if inner is not None and dilation != 1:
                step = None
        if step is None:
            if kind == "se" and steps and steps[-1].reduce and heights.get(len(steps) - 1, 0) is None:
                steps.pop()
                del heights[len(steps)]
            continue
        steps.append(step)
        heights[len(steps) - 1] = step.out_height
    heights = {t: h for t, h in heights.items() if h is not None}
    try:
        plan_segment(steps, input_height, 1) if steps else None
    except SegmentError as error:
        assert "read by no later step" in str(error) or "must end" in str(error)
        steps = []
    from hypothesis import assume
    assume(steps)
    last = steps[-1]
    band = draw(st.integers(1, max(1, last.in_height if last.reduce else last.out_height)))
    chunks = draw(st.none() | st.lists(st.integers(1, 4), min_size=len(steps), max_size=len(steps)))
    return steps, input_height, band, chunks


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.filter_too_much])
@given(general_chains())
def test_random_general_chains_have_minimal_correct_rings(chain):
    steps, input_height, band, chunks = chain
    schedule = plan_segment(steps, input_height, band, chunks)
    check_rings(steps, input_height, schedule.calls, schedule.ring_rows())
    for ring in schedule.rings:
        assert 0 <= ring.rows <= max(ring.rows_computed, 1)
        if ring.rows == 0:
            continue
        smaller = dict(schedule.ring_rows())
        smaller[ring.tensor] -= 1
        with pytest.raises(SegmentError):
            check_rings(steps, input_height, schedule.calls, smaller)
    for index in range(len(steps)):
        ranges = schedule.rows_of(index)
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(ranges, ranges[1:]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.filter_too_much])
@given(general_chains())
def test_minimal_segmentation_equals_brute_force(chain):
    """The DP's peak equals the best over every set of cut points, each segment's peak being
    its minimal streamed peak plus the whole tensors alive across it (checked independently:
    a cut is allowed when no tensor but a segment's last output is read after it)."""
    steps, input_height, _, _ = chain
    n = len(steps)
    sizes = {-1: 0, **{i: s.row_bytes * s.out_height for i, s in enumerate(steps)}}
    readers = {t: [i for i, s in enumerate(steps)
                   if t in ((i - 1 if s.source is None else s.source), s.skip, s.broadcast)]
               for t in sizes}
    heights = {-1: input_height, **{i: s.out_height for i, s in enumerate(steps)}}
    best = None
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        peak = 0
        for lo, hi in zip(bounds, bounds[1:]):
            if any(r >= hi for t in range(lo, hi - 1) for r in readers[t]):
                peak = None
                break
            part, ext = sub_chain(steps, lo, hi)
            read = set(ext.values())
            across = sum(sizes[t] for t in sizes if t < lo and t not in read
                         and any(r >= hi for r in readers[t]))
            m = minimal_streamed_peak(part, {k: heights[t] for k, t in ext.items()},
                                      {k: sizes[t] for k, t in ext.items()}, True, (1,))
            peak = max(peak, m.bytes + across)
        if peak is not None and (best is None or peak < best):
            best = peak
    assert minimal_segmentation(steps, input_height, 999).peak == best
