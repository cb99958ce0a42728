"""The native fused block against the numpy oracle and the unsplit reference; bad arguments."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from edgerun.errors import EdgerunError
from edgerun.kernels import Activation, native, native_available
from scheduler.blocks import BlockGeometry, BlockSchedule
from test_kernels_block import (BlockCase, assert_close, block_cases, make_scratch, mobilenet_block_case,
                                random_weights, reference_block, reference_conv, run_case)


def test_native_extension_is_built():
    # The native path is the product: only an explicit numpy-only run may lack it.
    import os
    if os.environ.get("EDGERUN_KERNELS") == "numpy":
        pytest.skip("EDGERUN_KERNELS=numpy: numpy-only run requested")
    assert native_available(), "edgerun.kernels._native did not build (pip install -e . with gcc)"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_cases())
def test_native_block_matches_numpy_and_reference(case):
    expected = reference_block(case)
    native_out = run_case(case, "native")
    assert_close(native_out, expected)
    assert_close(native_out, run_case(case, "numpy"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_cases(max_channels=20, max_hidden=40, max_size=20))
def test_native_block_with_threads_matches_reference(case):
    assert_close(run_case(case, "native", threads=3), reference_block(case))


@pytest.mark.parametrize("t, band_rows", [(1, 56), (3, 7), (6, 1), (144, 56)])
def test_native_mobilenet_block_over_schedules(t, band_rows):
    case = mobilenet_block_case(t, band_rows)
    assert_close(run_case(case, "native"), reference_block(case))


def test_native_fused_stem_block():
    # MobileNetV2 stem 3x3/2 conv to 32 channels fused with the first (unexpanded-style) block
    geom = BlockGeometry(3, 32, 30, 32, 3, 2, (0, 0, 1, 1), 3, 1, (1, 1, 1, 1), 16, False)
    rng = np.random.default_rng(5)
    case = BlockCase(geom, BlockSchedule(4, 5), random_weights(geom, rng),
                     rng.standard_normal((3, 32, 30)).astype(np.float32))
    assert_close(run_case(case, "native"), reference_block(case))


@pytest.mark.parametrize("in_channels, width", [(3, 30), (8, 120)], ids=["im2col-on-stack", "direct-conv"])
def test_native_expansion_paths(in_channels, width):
    # the stack im2col holds 8192 floats: 8 channels * 9 taps * 120 columns do not fit
    geom = BlockGeometry(in_channels, 7, width, 6, 3, 1, (1, 0, 1, 2), 3, 1, (1, 1, 1, 1), 5, False)
    rng = np.random.default_rng(in_channels)
    case = BlockCase(geom, BlockSchedule(2, 3), random_weights(geom, rng),
                     rng.standard_normal((in_channels, 7, width)).astype(np.float32))
    assert_close(run_case(case, "native"), reference_block(case))
    assert_close(run_case(case, "native", threads=2), reference_block(case))


def _native_args(case, threads=1):
    scratch = make_scratch(case.geom, case.sched, "native", threads=threads)
    out = np.empty((case.geom.out_channels, case.geom.out_height, case.geom.out_width), np.float32)
    return out, scratch


def test_native_rejects_wrong_dtype_and_layout():
    case = mobilenet_block_case()
    out, scratch = _native_args(case)
    with pytest.raises(EdgerunError, match="float32"):
        native.run_block(case.x.astype(np.float64), out, case.weights, case.geom, case.sched, scratch)
    with pytest.raises(EdgerunError, match="contiguous"):
        native.run_block(np.asfortranarray(case.x), out, case.weights, case.geom, case.sched, scratch)
    with pytest.raises(EdgerunError, match="depthwise"):
        native.run_block(case.x, out, case.weights, case.geom, case.sched,
                         dict(scratch, depthwise=scratch["depthwise"][:-1]))
    with pytest.raises(EdgerunError, match="overlap"):
        native.run_block(case.x, out, case.weights, case.geom, case.sched,
                         dict(scratch, depthwise=out.reshape(-1)))


def test_extension_itself_checks_sizes_and_types():
    """The C entry point is also safe when called directly, past the Python checks."""
    from edgerun.kernels import _native
    case = mobilenet_block_case()
    out, scratch = _native_args(case)
    w = case.weights
    contract = native.block_contract(case.geom, case.sched)
    geometry = native._geometry_tuple(case.geom)
    bands = native._band_table(case.geom, contract)
    act = (2, 0.0, 6.0)

    def call(x=case.x, out=out, expanded=scratch["expanded"], depthwise=scratch["depthwise"], chunk=48,
             bands=bands, wd=w.wd, geometry=geometry, split=native._split_tuple(contract)):
        _native.run_block(x, out, w.we, w.we_t, w.be, wd, w.bd, w.wp_t, w.bp, expanded, depthwise,
                          geometry, chunk, bands, act, act, split)

    with pytest.raises(ValueError, match="expanded"):
        call(expanded=scratch["expanded"][:100])
    with pytest.raises(ValueError, match="wd"):
        call(wd=w.wd[:10])
    with pytest.raises(TypeError, match="float32"):
        call(x=case.x.astype(np.float64))
    with pytest.raises(TypeError, match="writable"):
        readonly = out.copy()
        readonly.flags.writeable = False
        call(out=readonly)
    with pytest.raises(ValueError, match="chunk"):
        call(chunk=0)
    with pytest.raises(ValueError, match="residual"):
        call(geometry=geometry[:10] + (32, True, geometry[12]))
    with pytest.raises(ValueError, match="overlaps"):
        call(depthwise=scratch["expanded"])
    call()
    assert_close(out, reference_block(case))


def test_extension_asserts_the_geometry_bands_and_split_python_derived():
    """block.c runs the bands and split it is given; it refuses (ValueError, no crash) any that are
    inconsistent with the geometry or do not fit the scratch."""
    from edgerun.kernels import _native
    case = mobilenet_block_case(t=3, band_rows=7)  # 56 output rows: 8 bands; chunk 48
    out, scratch = _native_args(case)
    w = case.weights
    contract = native.block_contract(case.geom, case.sched)
    geometry = native._geometry_tuple(case.geom)
    good = native._band_table(case.geom, contract)
    assert good.shape == (8, 5) and good[0].tolist()[:4] == [0, 7, 0, 8] and good[1].tolist()[:4] == [7, 14, 6, 15]
    split = native._split_tuple(contract)
    assert split == (0, 1, 1, 48 * 9 * 56, 48 * 7 * 56)

    def call(bands=good, geometry=geometry, split=split, chunk=48):
        _native.run_block(case.x, out, w.we, w.we_t, w.be, w.wd, w.bd, w.wp_t, w.bp, scratch["expanded"],
                          scratch["depthwise"], geometry, chunk, bands, (2, 0.0, 6.0), (2, 0.0, 6.0), split)

    with pytest.raises(ValueError, match="hidden height given is 55, the kernel derives 56"):
        call(geometry=geometry[:12] + ((55, 56, 56, 56),))
    with pytest.raises(ValueError, match="output width given is 57"):
        call(geometry=geometry[:12] + ((56, 56, 56, 57),))
    gap = good.copy()
    gap[3, 0] += 1  # band 3 starts a row after band 2 ends
    with pytest.raises(ValueError, match="contiguous"):
        call(bands=gap)
    with pytest.raises(ValueError, match="cover"):
        call(bands=good[:-1])
    short = good.copy()
    short[2, 3] -= 1  # band 2's depthwise reads one hidden row more than it is given
    with pytest.raises(ValueError, match="miss rows"):
        call(bands=short)
    wide = good.copy()
    wide[2, 2] -= 1  # an extra hidden row: in bounds, but the chunk no longer fits one slice
    with pytest.raises(ValueError, match="slice"):
        call(bands=wide)
    with pytest.raises(ValueError, match="int32"):
        call(bands=good.astype(np.int64))
    with pytest.raises(ValueError, match="chunk"):
        call(chunk=145)
    with pytest.raises(ValueError, match="one slice per thread"):
        call(split=(1, 2, 1) + split[3:])  # whole bands for two threads with one slice
    with pytest.raises(ValueError, match="one-thread split"):
        call(split=(0, 2) + split[2:])
    with pytest.raises(ValueError, match="expanded"):
        call(split=split[:2] + (2,) + split[3:])  # two slices claimed, the buffer holds one
    call()
    assert_close(out, reference_block(case))


def test_native_pointwise_conv_matches_matmul():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((19, 9, 7)).astype(np.float32)
    w = rng.standard_normal((13, 19)).astype(np.float32)
    b = rng.standard_normal(13).astype(np.float32)
    out = np.empty((13, 9, 7), np.float32)
    native.pointwise_conv(x, np.ascontiguousarray(w.T), b, out, Activation("clip", (0.0, 6.0)))
    expected = np.clip(np.einsum("oc,chw->ohw", w.astype(np.float64), x) + b[:, None, None], 0, 6)
    assert_close(out, expected)
    native.pointwise_conv(x, np.ascontiguousarray(w.T), None, out)
    assert_close(out, np.einsum("oc,chw->ohw", w.astype(np.float64), x))


@pytest.mark.parametrize("pixels", [1, 15, 16, 24, 31, 32, 47, 48, 49, 56, 63, 64, 65, 196])
@pytest.mark.parametrize("cout", [1, 7, 8, 13, 33, 160])
@pytest.mark.parametrize("activation", [Activation(), Activation("clip", (0.0, 6.0)), Activation("hardswish")])
def test_native_gemm_tiles_cover_every_width(pixels, cout, activation):
    """Every tile shape of the GEMM (2- and 3-vector tiles, remainder columns, partial row tiles)."""
    from edgerun.ops.activation import apply_activation
    rng = np.random.default_rng(pixels * 1000 + cout)
    cin = 37
    x = rng.standard_normal((cin, pixels)).astype(np.float32)
    w = rng.standard_normal((cout, cin)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    out = np.full((cout, pixels), np.nan, np.float32)
    native.pointwise_conv(x, np.ascontiguousarray(w.T), b, out, activation)
    expected = w.astype(np.float64) @ x + b[:, None]
    assert_close(out, apply_activation(expected, activation.kind, list(activation.params)))


@pytest.mark.parametrize("kernel, stride, pads", [(3, 1, (1, 1, 1, 1)), (3, 2, (0, 0, 1, 1)),
                                                  (5, 2, (2, 1, 2, 3)), (5, 1, (0, 0, 0, 0)),
                                                  (7, 3, (3, 2, 1, 0))])
@pytest.mark.parametrize("width", [12, 3100], ids=["narrow", "wider-than-stack-buffer"])
def test_native_depthwise_conv_matches_reference(kernel, stride, pads, width):
    rng = np.random.default_rng(kernel * 10 + stride)
    x = rng.standard_normal((6, 17 if width < 100 else 6, width)).astype(np.float32)
    w = rng.standard_normal((6, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    expected = reference_conv(x, w[:, None], b, stride, pads, groups_equal_channels=True)
    out = np.empty(expected.shape, np.float32)
    native.depthwise_conv(x, w, b, out, stride, pads, Activation("relu"))
    assert_close(out, np.maximum(expected, 0))


def test_native_global_average_pool():
    x = np.random.default_rng(8).standard_normal((5, 7, 7)).astype(np.float32)
    out = np.empty((5, 1, 1), np.float32)
    native.global_average_pool(x, out)
    np.testing.assert_allclose(out[:, 0, 0], x.astype(np.float64).mean(axis=(1, 2)), rtol=1e-6, atol=1e-7)
    with pytest.raises(EdgerunError, match="out"):
        native.global_average_pool(x, np.empty(4, np.float32))


@pytest.mark.parametrize("channels,size", [(1280, 7), (3, 56), (17, 1), (64, 5)])
def test_native_global_average_pool_with_threads_gives_the_same_bits(split_every_step, channels, size):
    x = np.random.default_rng(channels).standard_normal((channels, size, size)).astype(np.float32)
    outs = []
    for threads in (1, 2, 3):
        out = np.full(channels, np.nan, np.float32)
        native.global_average_pool(x, out, threads)
        outs.append(out)
    np.testing.assert_allclose(outs[0], x.astype(np.float64).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outs[1], outs[0])
    np.testing.assert_array_equal(outs[2], outs[0])


@pytest.mark.parametrize("threads", [1, 2])
def test_native_block_allocates_nothing_of_activation_size(threads):
    import tracemalloc
    case = mobilenet_block_case(t=3, band_rows=8)
    out, scratch = _native_args(case, threads)
    native.run_block(case.x, out, case.weights, case.geom, case.sched, scratch, threads=threads)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        native.run_block(case.x, out, case.weights, case.geom, case.sched, scratch, threads=threads)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < 4096, peak
    assert_close(out, reference_block(case))


def test_native_calls_from_two_python_threads_do_not_interfere():
    # the GIL is released while the kernel runs: concurrent calls with their own scratch must stay exact
    import threading
    cases = [mobilenet_block_case(t=3, band_rows=7), mobilenet_block_case(t=2, band_rows=5)]
    expected = [run_case(case, "native") for case in cases]
    failures = []

    def repeat(case, want):
        out, scratch = _native_args(case)
        for _ in range(20):
            native.run_block(case.x, out, case.weights, case.geom, case.sched, scratch)
            if not np.array_equal(out, want):
                failures.append(case.sched)

    workers = [threading.Thread(target=repeat, args=pair) for pair in zip(cases, expected)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []


def test_native_sources_call_each_other_without_a_circle():
    """Which C file calls a non-static er_ function defined in which other file: the graph has no cycle
    (the thread pool has its own file; block.c uses depthwise.c, never the other way round)."""
    import re
    from pathlib import Path

    from edgerun.kernels import native as native_module

    folder = Path(native_module.__file__).parent / "native"
    sources = {path.name: path.read_text() for path in folder.glob("*.c")}
    defined = {}
    for name, text in sources.items():
        for function in re.findall(r"^(?!static)[A-Za-z][\w \*]*?\b(er_\w+)\([^;]*?\)\s*\{", text, re.M):
            defined[function] = name
    assert {"er_team_begin", "er_block_run", "er_depthwise_rows", "er_share"} <= set(defined)
    assert defined["er_team_begin"] == defined["er_share"] == "threadpool.c"
    uses = {name: {defined[f] for f in re.findall(r"\b(er_\w+)\(", text) if defined.get(f, name) != name}
            for name, text in sources.items()}
    assert "depthwise.c" in uses["block.c"] and "threadpool.c" in uses["block.c"]

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,))) for n in uses[start])

    assert [name for name in sources if reaches(name, name)] == []
