"""Threads of the native fused block: the persistent pool, whole bands per thread (each thread in
its own scratch slice), the split of each (band, chunk) step into row parts, and results with the
same bits whatever the thread count."""
import multiprocessing
import os
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgerun.errors import EdgerunError
from edgerun.kernels import block_scratch, native
from scheduler import BY_ROWS, ThreadSplit
from scheduler.blocks import BlockGeometry, BlockSchedule
from test_kernels_block import (BlockCase, assert_close, block_cases, make_scratch, random_weights,
                                reference_block, reference_conv, run_case)


def _module():
    from edgerun.kernels import _native
    return _native


# MobileNetV2-like: 56x56 stride 1 residual, 28x28 stride 2, 7x7; the fused stem (im2col expansion), no expansion,
# a direct expansion (taps too wide for the stack)
LARGE_BLOCKS = [
    BlockGeometry(24, 56, 56, 144, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 24, True),
    BlockGeometry(32, 28, 28, 192, 1, 1, (0, 0, 0, 0), 3, 2, (0, 0, 1, 1), 64, False),
    BlockGeometry(160, 7, 7, 960, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 160, True),
    BlockGeometry(3, 64, 64, 32, 3, 2, (0, 0, 1, 1), 3, 1, (1, 1, 1, 1), 16, False),
    BlockGeometry(32, 40, 40, 32, 0, 1, (0, 0, 0, 0), 5, 1, (2, 2, 2, 2), 16, False),
    BlockGeometry(8, 20, 120, 24, 3, 1, (1, 0, 1, 2), 3, 1, (1, 1, 1, 1), 8, False),
]
LARGE_BLOCK_IDS = ["56x56-residual", "28x28-stride2", "7x7", "stem-im2col", "no-expansion", "direct-expansion"]


def _shared_contract(geom, sched, threads):
    """The native contract with `threads` threads sharing one scratch slice and splitting each
    (band, chunk) step (by channels or rows, as each band says), whatever the band count: the split
    the contract itself chooses only for fewer bands than threads."""
    one = native.block_contract(geom, sched, 1)
    return one if threads == 1 else replace(one, split=ThreadSplit(BY_ROWS, threads, 1))


def _run(case, threads):
    """The block with threads sharing each step (one thread's scratch)."""
    g = case.geom
    out = np.full((g.out_channels, g.out_height, g.out_width), np.nan, np.float32)
    scratch = make_scratch(g, case.sched, "native")
    native.block_call(case.x, out, case.weights, g, _shared_contract(g, case.sched, threads), scratch)()
    return out


def _case(geom, sched, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((geom.in_channels, geom.in_height, geom.in_width)).astype(np.float32)
    return BlockCase(geom, sched, random_weights(geom, rng), x)


def _thread_scratch(geom, sched, threads):
    """block_scratch(..., threads) views into one NaN-filled arena (stale reads show up)."""
    sizes = block_scratch(geom, sched, "native", threads=threads)
    arena = np.full(sum(sizes.values()) // 4 + 1, np.nan, np.float32)
    views, offset = {}, 1
    for name, nbytes in sizes.items():
        views[name] = arena[offset: offset + nbytes // 4]
        offset += nbytes // 4
    return views


def _run_by_bands(case, threads):
    """The block with the scratch a plan for `threads` threads declares; also the scratch after."""
    g = case.geom
    out = np.full((g.out_channels, g.out_height, g.out_width), np.nan, np.float32)
    scratch = _thread_scratch(g, case.sched, threads)
    native.run_block(case.x, out, case.weights, g, case.sched, scratch, threads=threads)
    return out, scratch


@st.composite
def banded_cases(draw):
    """Generated blocks cut into several bands (2 to 5 or more)."""
    case = draw(block_cases(max_channels=12, max_hidden=24, max_size=16))
    assume(case.geom.out_height >= 2)
    bands = draw(st.integers(2, 5))
    case.sched = BlockSchedule(case.sched.t, max(1, -(-case.geom.out_height // bands)))
    return case


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(banded_cases())
def test_whole_bands_per_thread_give_the_same_bits(split_every_step, case):
    one, _ = _run_by_bands(case, 1)
    assert_close(one, reference_block(case))
    bands = -(-case.geom.out_height // case.sched.band_rows)
    for threads in (2, 3):
        out, scratch = _run_by_bands(case, threads)
        np.testing.assert_array_equal(out, one)
        if bands >= threads:  # each thread worked in its own slice: the last one was written too
            depthwise = scratch["depthwise"]
            assert depthwise.size == threads * block_scratch(case.geom, case.sched, "native")["depthwise"] // 4
            assert not np.isnan(depthwise[(threads - 1) * depthwise.size // threads:]).all()


@pytest.mark.parametrize("geom, sched", [
    (geom, BlockSchedule(t, rows))
    for geom, (t, rows) in zip(LARGE_BLOCKS, [(1, 28), (2, 5), (1, 4), (2, 8), (1, 10), (2, 4)])
], ids=LARGE_BLOCK_IDS)
def test_whole_bands_on_large_blocks_with_the_default_part_size(geom, sched):
    case = _case(geom, sched, geom.in_channels)
    one, _ = _run_by_bands(case, 1)
    assert_close(one, reference_block(case))
    for threads in (2, 3, 4):
        np.testing.assert_array_equal(_run_by_bands(case, threads)[0], one)
        np.testing.assert_array_equal(_run(case, threads), one)  # one thread's scratch: the row split


def test_too_small_band_scratch_is_refused_by_the_extension():
    from edgerun.kernels import _native
    geom = BlockGeometry(16, 24, 24, 48, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 16, True)
    case = _case(geom, BlockSchedule(2, 6), 4)
    w = case.weights
    out = np.empty((16, 24, 24), np.float32)
    scratch = _thread_scratch(geom, case.sched, 1)
    two = native.block_contract(geom, case.sched, 2)
    assert two.split.whole_bands and two.buffer("expanded").slices == 2
    with pytest.raises(ValueError, match="expanded"):
        _native.run_block(case.x, out, w.we, w.we_t, w.be, w.wd, w.bd, w.wp_t, w.bp, scratch["expanded"],
                          scratch["depthwise"], native._geometry_tuple(geom), 24, native._band_table(geom, two),
                          (2, 0.0, 6.0), (2, 0.0, 6.0), native._split_tuple(two))
    with pytest.raises(EdgerunError, match="expanded"):  # the Python check says it first
        native.run_block(case.x, out, w, geom, case.sched, scratch, threads=2)


def test_mobilenet_v2_with_two_threads_plans_and_measures_its_scratch():
    import tracemalloc
    from edgerun import InferenceSession, zoo
    model = zoo.mobilenet_v2(1.0, 224, batch=1)
    one = InferenceSession(model, kernels_backend="native", threads=1)
    two = InferenceSession(model, kernels_backend="native", threads=2)
    assert two.plan.peak_bytes >= one.plan.peak_bytes
    by_bands = [s for s in two.plan.steps if s.kind == "InvertedResidual" and s.band_rows
                and -(-two.compiled.problem.steps[two.compiled.problem.step_index(s.name)].block.out_height
                      // s.band_rows) >= 2]
    assert by_bands  # the fastest plan lets the two threads take whole bands
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    want = one.run(None, {"input": x})[0]
    two.run(None, {"input": x})
    assert not tracemalloc.is_tracing()
    got = two.run(None, {"input": x}, profile=True)[0]
    np.testing.assert_array_equal(got, want)
    stats = two.last_run
    assert stats.planned_peak_bytes == two.plan.peak_bytes
    assert stats.measured_peak_bytes - stats.planned_peak_bytes <= 64 * 1024


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(block_cases(max_channels=12, max_hidden=24, max_size=14))
def test_threads_give_the_same_bits_on_generated_blocks(split_every_step, case):
    one = _run(case, 1)
    assert_close(one, reference_block(case))
    assert_close(one, run_case(case, "numpy"))
    for threads in (2, 3):
        np.testing.assert_array_equal(_run(case, threads), one)


@pytest.mark.parametrize("geom, sched", [
    (geom, BlockSchedule(t, rows))
    for geom, (t, rows) in zip(LARGE_BLOCKS, [(4, 16), (1, 14), (2, 7), (2, 9), (1, 40), (2, 10)])
], ids=LARGE_BLOCK_IDS)
def test_threads_on_large_blocks_with_the_default_part_size(geom, sched):
    case = _case(geom, sched, geom.in_channels)
    one = _run(case, 1)
    assert_close(one, reference_block(case))
    for threads in (2, 3, 4):
        np.testing.assert_array_equal(_run(case, threads), one)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(block_cases(max_channels=6, max_hidden=10, max_size=40))
def test_row_and_channel_splits_give_the_same_bits_on_wider_blocks(split_every_step, case):
    # bands of more than 256 output pixels are split by rows, narrower ones by channels
    one = _run(case, 1)
    assert_close(one, reference_block(case))
    for threads in (2, 3):
        np.testing.assert_array_equal(_run(case, threads), one)


def test_calls_from_two_python_threads_with_native_threads(split_every_step):
    geoms = [BlockGeometry(16, 24, 24, 48, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 16, True),
             BlockGeometry(8, 30, 22, 40, 3, 2, (1, 1, 1, 1), 5, 1, (2, 2, 2, 2), 12, False)]
    cases = [_case(g, BlockSchedule(3, 5), i) for i, g in enumerate(geoms)]
    expected = [_run(c, 1) for c in cases]
    for case, want in zip(cases, expected):
        assert_close(want, reference_block(case))
    failures = []

    def repeat(case, want, threads):
        g = case.geom
        out = np.empty((g.out_channels, g.out_height, g.out_width), np.float32)
        scratch = make_scratch(g, case.sched, "native", threads=threads)
        for _ in range(60):
            out.fill(np.nan)
            native.run_block(case.x, out, case.weights, g, case.sched, scratch, threads=threads)
            if not np.array_equal(out, want):
                failures.append(threads)
                return

    workers = [threading.Thread(target=repeat, args=(c, w, t)) for c, w, t in zip(cases, expected, (2, 3))]
    for w in workers:
        w.start()
    repeat(cases[0], expected[0], 2)  # a third caller on the main thread
    for w in workers:
        w.join()
    assert failures == []


def _pool_tasks():
    """Linux task ids of the pool's workers (they name themselves edgerun-pool)."""
    tasks = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as handle:
                if handle.read().strip() == "edgerun-pool":
                    tasks.add(task)
        except OSError:  # the task ended meanwhile
            pass
    return tasks


def test_pool_threads_persist_across_calls():
    case = _case(BlockGeometry(16, 32, 32, 64, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 16, True),
                 BlockSchedule(2, 16), 3)
    want = _run(case, 1)
    np.testing.assert_array_equal(_run(case, 3), want)
    workers = _pool_tasks()
    assert _module().pool_threads() >= 3
    assert len(workers) == _module().pool_threads() - 1
    for _ in range(30):
        np.testing.assert_array_equal(_run(case, 3), want)
    assert _pool_tasks() == workers  # the same threads, none started per call


def _child_runs_block(queue):
    case = _case(BlockGeometry(16, 32, 32, 64, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 16, True),
                 BlockSchedule(2, 16), 3)
    queue.put((_run(case, 2), _run(case, 1)))


def test_forked_child_gets_a_fresh_pool():
    case = _case(BlockGeometry(16, 32, 32, 64, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 16, True),
                 BlockSchedule(2, 16), 3)
    want = _run(case, 2)  # the parent's pool exists before the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_runs_block, args=(queue,))
    child.start()
    two, one = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_array_equal(two, want)
    np.testing.assert_array_equal(one, want)


@pytest.mark.parametrize("value", [0, 1, 10**6])
def test_part_size_setting_round_trips(value):
    previous = _module().block_min_part_macs(value)
    try:
        assert _module().block_min_part_macs() == value
    finally:
        _module().block_min_part_macs(previous)
    assert _module().block_min_part_macs() == previous


@given(st.integers(1, 8))
@settings(max_examples=8, deadline=None)
def test_any_thread_count_matches_one_thread(threads):
    case = _case(BlockGeometry(24, 28, 28, 96, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 24, True),
                 BlockSchedule(2, 28), 11)
    np.testing.assert_array_equal(_run(case, threads), _run(case, 1))


def test_more_threads_than_the_pool_holds(split_every_step):
    # 80 output rows: 70 requested threads ask for more parts than the pool's 64 threads
    case = _case(BlockGeometry(4, 80, 12, 8, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 4, True),
                 BlockSchedule(2, 80), 5)
    np.testing.assert_array_equal(_run(case, 70), _run(case, 1))


def _cpu_ticks_per_thread():
    ticks = {}
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:  # the task ended meanwhile
            continue
        ticks[task] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def test_workers_beyond_the_thread_count_stay_asleep(split_every_step):
    import time
    big = _case(BlockGeometry(4, 80, 12, 8, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 4, True),
                BlockSchedule(2, 80), 5)
    _run(big, 16)  # the pool now holds at least 15 workers
    small = _case(BlockGeometry(16, 48, 48, 64, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 16, True),
                  BlockSchedule(4, 4), 3)
    want = _run(small, 1)
    _run(small, 2)
    time.sleep(0.2)  # workers 2.. go idle after their spin (well under a millisecond)
    before = _cpu_ticks_per_thread()
    for _ in range(100):  # thousands of phases, each one posted to the pool
        np.testing.assert_array_equal(_run(small, 2), want)
    after = _cpu_ticks_per_thread()
    workers = _pool_tasks()
    assert len(workers) >= 15
    busy = [task for task in workers if after.get(task, 0) > before.get(task, 0)]
    assert len(busy) <= 1  # worker 1; the 14 others were not woken per phase


def test_a_one_thread_plan_is_refused_or_replanned_with_two_threads():
    """A plan made for one thread (e.g. from a bundle) is not run on two in silence: PlanMismatchError says
    so; replan=True plans again for two threads (whole bands where the plan allows), with the same bits."""
    from edgerun import InferenceSession, zoo
    from edgerun.errors import PlanMismatchError
    from edgerun.executor import CompiledModel
    from scheduler import memory_minimal
    one = InferenceSession(zoo.mobilenet_v2(1.0, 96, batch=1), kernels_backend="native", threads=1)
    plan = memory_minimal(one.compiled.problem, alignment=64)  # banded blocks, one slice each
    assert plan.threads == 1 and plan.backend == "native"
    heights = {s.name: s.block.out_height for s in one.compiled.problem.block_steps()}
    assert any(-(-heights[s.name] // s.band_rows) >= 2 for s in plan.steps if s.name in heights)
    x = np.random.default_rng(1).standard_normal((1, 3, 96, 96)).astype(np.float32)
    want = one.run(None, {"input": x})[0]
    with pytest.raises(PlanMismatchError, match=r"threads 1 in the plan, 2 here.*threads=1.*replan=True"):
        CompiledModel(one.compiled.graph, budget=None, backend="native", threads=2, plan=plan)
    with pytest.warns(RuntimeWarning, match="re-planned"):
        compiled = CompiledModel(one.compiled.graph, budget=None, backend="native", threads=2, plan=plan, replan=True)
    assert compiled.plan.threads == 2 and len(compiled.notices) == 1 and "re-planned" in compiled.notices[0]
    np.testing.assert_array_equal(compiled.run({"input": x}, ["logits"])[0][0], want)
    same = CompiledModel(one.compiled.graph, budget=None, backend="native", threads=1, plan=plan)
    assert same.plan is plan and same.notices == []


# ---------------------------------------------------------------- the pool: N threads or an error
def test_a_second_caller_waits_for_the_pool_and_gets_its_threads():
    """While one caller's job holds the pool, another caller asking for 3 threads waits and then runs
    on a team of 3 (it used to run alone, in silence)."""
    from edgerun.kernels import _native
    case = _case(BlockGeometry(16, 32, 32, 64, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 16, True),
                 BlockSchedule(2, 8), 3)
    want = _run(case, 1)
    result = {}

    def second_caller():
        result["out"] = _run_by_bands(case, 3)[0]
        result["stats"] = _module().pool_stats()

    _native.pool_hold(2)
    try:
        before = _module().pool_stats()
        worker = threading.Thread(target=second_caller)
        worker.start()
        deadline = time.monotonic() + 30
        while _module().pool_stats()["waiting"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _module().pool_stats()["waiting"] == 1  # the second caller waits, it does not run alone
        assert "out" not in result
    finally:
        _native.pool_release()
    worker.join(timeout=60)
    stats = result["stats"]
    assert stats["waits"] == before["waits"] + 1 and stats["jobs"] == before["jobs"] + 1
    assert stats["last_threads"] == 3 and stats["waiting"] == 0
    np.testing.assert_array_equal(result["out"], want)


def test_a_nested_or_oversized_request_is_an_error_not_one_thread():
    from edgerun.kernels import _native
    case = _case(BlockGeometry(16, 32, 32, 64, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 16, True),
                 BlockSchedule(2, 8), 3)
    want = _run(case, 1)
    _native.pool_hold(2)
    try:  # this thread holds the pool: asking it for threads again would wait forever
        with pytest.raises(EdgerunError, match="already holds the kernel thread pool"):
            _run_by_bands(case, 2)
        np.testing.assert_array_equal(_run_by_bands(case, 1)[0], want)  # one thread needs no pool
    finally:
        _native.pool_release()
    with pytest.raises(RuntimeError, match="does not hold"):
        _native.pool_release()
    assert _native.MAX_THREADS == native.MAX_THREADS == 128
    with pytest.raises(EdgerunError, match="threads must be in 1..128"):
        _run_by_bands(case, 129)
    with pytest.raises(EdgerunError, match="threads must be in 1..128"):
        native.gemv(np.ones((4096, 512), np.float32), np.ones(512, np.float32), None, np.empty(4096, np.float32),
                    threads=129)
    np.testing.assert_array_equal(_run_by_bands(case, 2)[0], want)


# ---------------------------------------------------------------- plain steps: packed 1x1 and depthwise
@pytest.mark.parametrize("cin,cout,pixels", [(16, 40, 49), (320, 1280, 49), (24, 13, 33), (513, 100, 70)])
@pytest.mark.parametrize("threads", [2, 3, 8])
def test_packed_pointwise_threads_give_the_same_bits(split_every_step, cin, cout, pixels, threads):
    from edgerun.kernels import Activation
    rng = np.random.default_rng(cin + cout + pixels)
    x = rng.standard_normal((cin, pixels)).astype(np.float32)
    w = (rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    packed = native.pack_pointwise_weights(w)
    edge_floats = native.packed_pointwise_sizes(cout, pixels, cin)[1]
    outs = []
    for count in (1, threads):
        edge = np.full(edge_floats, np.nan, np.float32) if edge_floats else None
        out = np.full((cout, pixels), np.nan, np.float32)
        native.pointwise_conv_packed(x, packed, b, out, edge, Activation("hardswish"), threads=count)
        outs.append(out)
    np.testing.assert_array_equal(outs[1], outs[0])
    h = w.astype(np.float64) @ x + b[:, None]
    np.testing.assert_allclose(outs[0], h * np.clip(h + 3, 0, 6) / 6, rtol=1e-4, atol=1e-4 * np.sqrt(cin))


@pytest.mark.parametrize("channels,size,kernel,stride,pads", [
    (960, 7, 3, 1, (1, 1, 1, 1)), (37, 15, 5, 2, (2, 2, 2, 2)), (5, 9, 3, 2, (0, 0, 1, 1))])
@pytest.mark.parametrize("threads", [2, 3])
def test_depthwise_threads_give_the_same_bits(split_every_step, channels, size, kernel, stride, pads, threads):
    from edgerun.kernels import Activation
    rng = np.random.default_rng(channels + size)
    x = rng.standard_normal((channels, size, size)).astype(np.float32)
    w = rng.standard_normal((channels, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    out_size = (size + pads[0] + pads[2] - kernel) // stride + 1
    outs = []
    for count in (1, threads):
        out = np.full((channels, out_size, out_size), np.nan, np.float32)
        native.depthwise_conv(x, w, b, out, stride, pads, Activation("relu"), threads=count)
        outs.append(out)
    np.testing.assert_array_equal(outs[1], outs[0])
    want = reference_conv(x, w[:, None], b, stride, pads, groups_equal_channels=True)
    np.testing.assert_allclose(outs[0], np.maximum(want, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_plain_step_kernels_refuse_a_bad_thread_count(threads):
    from edgerun.errors import EdgerunError
    x = np.zeros((4, 3, 3), np.float32)
    with pytest.raises(EdgerunError, match="threads"):
        native.depthwise_conv(x, np.zeros((4, 3, 3), np.float32), np.zeros(4, np.float32), np.zeros_like(x), 1,
                              (1, 1, 1, 1), threads=threads)
    with pytest.raises(EdgerunError, match="threads"):
        native.pointwise_conv_packed(x.reshape(4, 9), native.pack_pointwise_weights(np.zeros((2, 4), np.float32)),
                                     None, np.zeros((2, 9), np.float32), np.zeros(4 * 32, np.float32),
                                     threads=threads)


@pytest.mark.parametrize("name", ["mobilenet_v1", "shufflenet_v1"])
def test_plain_step_models_give_the_same_bits_with_two_threads(split_every_step, name):
    """MobileNetV1 and ShuffleNet are all plain steps (no fused blocks): their 1x1 and depthwise convs
    share out channels between threads."""
    from edgerun import InferenceSession, zoo
    model = (zoo.mobilenet_v1(0.5, 96, batch=1) if name == "mobilenet_v1"
             else zoo.shufflenet_v1(groups=3, width=1.0, resolution=96, batch=1))
    x = np.random.default_rng(2).standard_normal((1, 3, 96, 96)).astype(np.float32)
    outs = [InferenceSession(model, kernels_backend="native", threads=count).run(None, {"input": x})[0]
            for count in (1, 2)]
    np.testing.assert_array_equal(outs[1], outs[0])
