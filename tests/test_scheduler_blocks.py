"""Block geometry and split ranges on hand-worked MobileNetV2 cases (the kernels' scratch sizes are in
test_kernel_contracts.py)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import (
    BlockGeometry,
    BlockSchedule,
    band_ranges,
    block_calls,
    block_macs,
    chunk_ranges,
    hidden_rows_for,
    input_rows_for,
)

from mobilenet_blocks import EXPAND_S2, NO_EXPAND, RESIDUAL, STEM_FUSED


def test_geometry_shapes():
    assert (EXPAND_S2.hidden_height, EXPAND_S2.hidden_width) == (112, 112)
    assert (EXPAND_S2.out_height, EXPAND_S2.out_width) == (56, 56)
    assert (STEM_FUSED.hidden_height, STEM_FUSED.hidden_width) == (112, 112)
    assert (STEM_FUSED.out_height, STEM_FUSED.out_width) == (112, 112)
    assert (NO_EXPAND.hidden_height, NO_EXPAND.out_height) == (112, 112)
    tf_same = BlockGeometry(16, 112, 112, 96, 1, 1, (0, 0, 0, 0), 3, 2, (0, 0, 1, 1), 24, False)
    assert (tf_same.out_height, tf_same.out_width) == (56, 56)
    odd = BlockGeometry(8, 15, 9, 8, 0, 1, (0, 0, 0, 0), 5, 2, (2, 1, 2, 1), 8, False)
    assert (odd.out_height, odd.out_width) == (8, 4)  # (15+4-5)//2+1, (9+2-5)//2+1


def test_geometry_macs_match_paper_formula():
    # h*w*k*t*k' terms: 112*112*16*96 + 56*56*96*9 + 56*56*96*24
    assert EXPAND_S2.macs() == 19_267_584 + 2_709_504 + 7_225_344
    # stride 1 residual: h*w*k*t*(k + 9 + k') with h=w=56, k=k'=24, t=6
    assert RESIDUAL.macs() == 56 * 56 * 24 * 6 * (24 + 9 + 24)
    assert NO_EXPAND.macs() == 112 * 112 * 32 * (9 + 16)
    assert STEM_FUSED.macs() == 112 * 112 * 32 * 3 * 9 + 112 * 112 * 32 * (9 + 16)


def test_geometry_rejects_inconsistent_blocks():
    with pytest.raises(ValueError):
        BlockGeometry(16, 8, 8, 32, 0, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 16, False)
    with pytest.raises(ValueError):  # residual across a stride
        BlockGeometry(16, 8, 8, 96, 1, 1, (0, 0, 0, 0), 3, 2, (1, 1, 1, 1), 16, True)
    with pytest.raises(ValueError):
        BlockGeometry(16, 8, 8, 96, 1, 1, (0, 0, 0), 3, 1, (1, 1, 1, 1), 16, False)
    with pytest.raises(ValueError):  # a pad as wide as the kernel makes all-padding rows
        BlockGeometry(16, 8, 8, 96, 1, 1, (1, 0, 0, 0), 3, 1, (1, 1, 1, 1), 16, False)


def test_chunk_ranges():
    assert chunk_ranges(96, 6) == [(0, 16), (16, 32), (32, 48), (48, 64), (64, 80), (80, 96)]
    assert chunk_ranges(10, 4) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert chunk_ranges(9, 4) == [(0, 3), (3, 6), (6, 9)]  # ceil chunks: only 3 run
    assert chunk_ranges(5, 1) == [(0, 5)]
    assert chunk_ranges(5, 5) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    for bad in (0, 6):
        with pytest.raises(ValueError):
            chunk_ranges(5, bad)


def test_band_ranges():
    assert band_ranges(56, 56) == [(0, 56)]
    assert band_ranges(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert band_ranges(4, 1) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    for bad in (0, 8):
        with pytest.raises(ValueError):
            band_ranges(7, bad)


def test_rows_for_stem_fused_bands():
    # band [8, 16): hidden rows 8-1 .. 15-1+2 = [7, 17); input rows 7*2-1 .. 16*2-1+2 = [13, 34)
    assert hidden_rows_for(STEM_FUSED, 8, 16) == (7, 17)
    assert input_rows_for(STEM_FUSED, 7, 17) == (13, 34)
    assert hidden_rows_for(STEM_FUSED, 0, 8) == (0, 9)
    assert input_rows_for(STEM_FUSED, 0, 9) == (0, 18)
    assert hidden_rows_for(STEM_FUSED, 104, 112) == (103, 112)
    assert input_rows_for(STEM_FUSED, 103, 112) == (205, 224)


def test_rows_for_stride2_depthwise_and_no_expansion():
    assert hidden_rows_for(EXPAND_S2, 4, 8) == (7, 16)  # 4*2-1 .. 7*2-1+2
    assert input_rows_for(EXPAND_S2, 7, 16) == (7, 16)  # 1x1 expansion: same rows
    assert input_rows_for(NO_EXPAND, 5, 11) == (5, 11)


def test_block_macs_counts_recomputed_halo_rows():
    # 14 bands of 4 rows; band 0 needs hidden rows [0, 8), the other 13 need 9 rows each.
    expand_rows = 8 + 13 * 9
    expected = expand_rows * 112 * 96 * 16 + 2_709_504 + 7_225_344
    assert block_macs(EXPAND_S2, BlockSchedule(6, 4)) == expected == 31_438_848
    assert block_macs(EXPAND_S2, BlockSchedule(3, 56)) == EXPAND_S2.macs()
    # no expansion: banding recomputes nothing
    assert block_macs(NO_EXPAND, BlockSchedule(1, 1)) == NO_EXPAND.macs()
    assert block_calls(EXPAND_S2, BlockSchedule(6, 4)) == 6 * 14
    assert block_calls(RESIDUAL, BlockSchedule(5, 56)) == 5  # chunks of 29: 29*4 + 28


def test_schedule_validation():
    with pytest.raises(ValueError):
        BlockSchedule(0, 4)
    with pytest.raises(ValueError):
        BlockSchedule(2, 0)


def touched_hidden_rows(kernel, stride, pad_top, height, o0, o1):
    rows = {o * stride - pad_top + k for o in range(o0, o1) for k in range(kernel)}
    rows = [r for r in rows if 0 <= r < height]
    return (min(rows), max(rows) + 1)


geometries = st.builds(
    lambda cin, h, ke, se, pe, kd, sd, pd: BlockGeometry(
        cin, h, h, 4, ke, se, (min(pe, ke - 1),) * 4, kd, sd, (min(pd, kd - 1), 0, min(pd, kd - 1), 0), 4, False
    ),
    st.just(4), st.integers(12, 30), st.sampled_from([1, 3]), st.integers(1, 2),
    st.integers(0, 1), st.sampled_from([1, 3, 5]), st.integers(1, 2), st.integers(0, 2),
)


@settings(max_examples=80, deadline=None)
@given(geometries, st.integers(1, 8))
def test_rows_for_match_brute_force(geom, band_rows):
    band_rows = min(band_rows, geom.out_height)
    total_expand_rows = 0
    for o0, o1 in band_ranges(geom.out_height, band_rows):
        h0, h1 = hidden_rows_for(geom, o0, o1)
        expected = touched_hidden_rows(geom.dw_kernel, geom.dw_stride, geom.dw_pads[0], geom.hidden_height, o0, o1)
        assert (h0, h1) == expected
        assert h1 - h0 <= min(geom.hidden_height, (band_rows - 1) * geom.dw_stride + geom.dw_kernel)
        assert input_rows_for(geom, h0, h1) == touched_hidden_rows(
            geom.expand_kernel, geom.expand_stride, geom.expand_pads[0], geom.in_height, h0, h1
        )
        total_expand_rows += h1 - h0
    sched = BlockSchedule(1, band_rows)
    per_row = geom.hidden_width * 4 * 4 * geom.expand_kernel ** 2
    assert block_macs(geom, sched) == total_expand_rows * per_row + geom.depthwise_macs() + geom.projection_macs()
