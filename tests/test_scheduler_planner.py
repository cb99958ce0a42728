"""Memory planners on hand-worked lifetime tables and random ones."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import GreedyBySizePlanner, NoReusePlanner, PlanOverlapError
from scheduler.planner import MemoryPlanner, align_up


def plan(planner, table):
    indices = [planner.add_buffer(size, first, last) for size, first, last in table]
    return [planner.offset(i) for i in indices]


# (size, first_step, last_step); worked by hand below each table.
CHAIN = [(1000, 0, 1), (500, 1, 2), (2000, 2, 3), (64, 0, 3), (700, 3, 4)]
# aligned: 1024, 512, 2048, 64, 704. Largest first:
#   #2 (2048, 2..3) -> 0;  #0 (1024, 0..1) -> 0 (no common step with #2)
#   #4 (704, 3..4)  -> 2048 (above #2);  #1 (512, 1..2) -> above #0 and #2 -> 2048
#   #3 (64, 0..3)   -> above #0, #2, #1 [2048,2560), #4 [2048,2752) -> 2752
# live per step: 1088, 1600, 2624, 2816, 704 -> lower bound 2816 = peak.

GAP = [(512, 0, 0), (256, 1, 2), (128, 0, 2), (64, 2, 2)]
# #0 -> 0; #1 (256, 1..2) -> 0; #2 (128, 0..2) -> above #0 -> 512;
# #3 (64, step 2) sees #1 [0,256) and #2 [512,640): fits the hole at 256.
# peak 640; live per step: 640, 384, 448.


def test_greedy_chain_offsets_and_peak():
    planner = GreedyBySizePlanner(alignment=64)
    assert plan(planner, CHAIN) == [0, 2048, 0, 2752, 2048]
    assert planner.peak() == 2816
    assert planner.lower_bound() == 2816
    planner.check()


def test_greedy_fills_first_gap_that_fits():
    planner = GreedyBySizePlanner(alignment=64)
    assert plan(planner, GAP) == [0, 0, 512, 256]
    assert planner.peak() == 640
    assert planner.lower_bound() == 640


def test_greedy_equal_sizes_place_earlier_first():
    planner = GreedyBySizePlanner(alignment=16)
    # all 32 bytes; lifetimes pairwise intersect except #0 and #2
    assert plan(planner, [(32, 0, 1), (32, 1, 2), (32, 2, 3)]) == [0, 32, 0]
    assert planner.peak() == 64


def test_noreuse_stacks_in_insertion_order():
    planner = NoReusePlanner(alignment=64)
    assert plan(planner, CHAIN) == [0, 1024, 1536, 3584, 3648]
    assert planner.peak() == 1024 + 512 + 2048 + 64 + 704
    planner.check()


def test_sizes_round_up_to_alignment():
    planner = GreedyBySizePlanner(alignment=128)
    planner.add_buffer(1, 0, 0)
    planner.add_buffer(129, 0, 0)
    assert planner.aligned_size(0) == 128 and planner.aligned_size(1) == 256
    assert planner.offset(1) == 0 and planner.offset(0) == 256
    assert planner.peak() == 384


def test_zero_size_buffers_take_no_space():
    planner = GreedyBySizePlanner()
    planner.add_buffer(0, 0, 5)
    planner.add_buffer(64, 0, 5)
    assert planner.peak() == 64
    planner.check()


def test_adding_after_query_replans():
    planner = GreedyBySizePlanner()
    planner.add_buffer(64, 0, 1)
    assert planner.peak() == 64
    planner.add_buffer(128, 1, 2)
    assert planner.offset(1) == 0 and planner.offset(0) == 128
    assert planner.peak() == 192


class _EverythingAtZero(MemoryPlanner):
    name = "broken"

    def _place(self, buffers):
        return [0] * len(buffers)


def test_check_names_the_two_overlapping_buffers():
    planner = _EverythingAtZero(alignment=64)
    planner.add_buffer(64, 0, 1, name="a")
    planner.add_buffer(64, 2, 3, name="b")  # no common step with a: may share
    planner.add_buffer(64, 1, 2, name="c")
    with pytest.raises(PlanOverlapError) as info:
        planner.check()
    assert {info.value.first, info.value.second} in ({"a", "c"}, {"b", "c"})
    assert "overlap" in str(info.value)


def test_check_accepts_sharing_without_common_step():
    planner = _EverythingAtZero(alignment=64)
    planner.add_buffer(64, 0, 1, name="a")
    planner.add_buffer(64, 2, 3, name="b")
    planner.check()


def test_bad_arguments():
    with pytest.raises(ValueError):
        GreedyBySizePlanner(alignment=0)
    planner = GreedyBySizePlanner()
    with pytest.raises(ValueError):
        planner.add_buffer(-1, 0, 0)
    with pytest.raises(ValueError):
        planner.add_buffer(8, 3, 2)


def brute_force_overlaps(planner, table, alignment):
    """Every byte of every step: who holds it. Returns the first clash found."""
    steps = max(last for _, _, last in table) + 1
    for step in range(steps):
        owner = {}
        for i, (size, first, last) in enumerate(table):
            if not first <= step <= last:
                continue
            start = planner.offset(i)
            for byte in range(start, start + align_up(size, alignment), 8):
                if byte in owner:
                    return (owner[byte], i, step)
                owner[byte] = i
    return None


def brute_force_lower_bound(table, alignment):
    steps = max(last for _, _, last in table) + 1
    return max(
        sum(align_up(size, alignment) for size, first, last in table if first <= s <= last)
        for s in range(steps)
    )


lifetime = st.tuples(st.integers(0, 600), st.integers(0, 12), st.integers(0, 6)).map(
    lambda x: (x[0], x[1], x[1] + x[2])
)
tables = st.lists(lifetime, min_size=1, max_size=14)


@settings(max_examples=120, deadline=None)
@given(tables, st.sampled_from([8, 64]))
def test_random_tables_greedy_never_overlaps(table, alignment):
    planner = GreedyBySizePlanner(alignment=alignment)
    plan(planner, table)
    planner.check()
    assert brute_force_overlaps(planner, table, alignment) is None
    assert all(planner.offset(i) % alignment == 0 for i in range(len(table)))
    assert planner.lower_bound() == brute_force_lower_bound(table, alignment)
    assert planner.peak() >= planner.lower_bound()


@settings(max_examples=60, deadline=None)
@given(tables)
def test_random_tables_noreuse_peak_is_sum(table):
    planner = NoReusePlanner(alignment=64)
    plan(planner, table)
    planner.check()
    assert brute_force_overlaps(planner, table, 64) is None
    assert planner.peak() == sum(align_up(size, 64) for size, _, _ in table)
