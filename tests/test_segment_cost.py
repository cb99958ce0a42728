"""What the cost model charges a streamed segment (scheduler.cost.segment_seconds): its steps run whole,
s_call per scheduled call and s_row per row kernel call as the runner counts them (a fused block once per
slice of its hidden channels); `edgerun calibrate`'s fit of s_row."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgerun.cli.calibrate import row_coefficient
from edgerun.kernels.numpy_segment import Activation, Block, Conv, SegmentRunner
from scheduler.cost import CostModel, register_default


def test_segment_seconds_charge_calls_and_row_calls_apart():
    model = CostModel("native", s_pw=1e-10, s_dw=2e-10, s_call=3e-6, s_other=4e-10, s_row=5e-7)
    assert model.segment_seconds(0.01, row_calls=200, calls=10) == pytest.approx(0.01 + 10 * 3e-6 + 200 * 5e-7)


def test_s_row_round_trips_and_an_older_file_falls_back_to_the_backends_default(tmp_path):
    register_default("test-rows", s_pw=1.0, s_dw=2.0, s_call=3.0, s_other=4.0, s_row=0.5)
    model = CostModel("test-rows", 1e-10, 2e-10, 3e-6, 4e-10, s_row=7e-7)
    model.save(tmp_path / "cost.json")
    assert CostModel.load(tmp_path / "cost.json") == model
    data = json.loads((tmp_path / "cost.json").read_text())
    del data["s_row"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = CostModel.load(tmp_path / "old.json")
    assert old.s_row is None and old.row_seconds == 0.5
    assert CostModel.default("test-rows").row_seconds == 0.5
    register_default("test-rows-2", s_pw=1.0, s_dw=2.0, s_call=3.0, s_other=4.0)
    assert CostModel.default("test-rows-2").row_seconds == 3.0       # s_row defaults to s_call


def test_row_coefficient_recovers_a_known_s_row():
    s_call, s_row = 2e-6, 1.5e-6
    samples = [(rows, calls, rows * s_row + calls * s_call) for rows, calls in
               [(672, 56), (672, 1), (1008, 56), (1008, 1), (840, 7)]]
    assert row_coefficient(samples, s_call) == pytest.approx(s_row, rel=1e-9)


def test_row_calls_count_every_row_of_every_step_and_a_blocks_slices():
    """Conv (5 rows) + activation (5 rows) + a block of 12 hidden channels in 3 slices of 4 (stride 2:
    3 output rows): 5 + 5 + 3 * 3 row kernel calls, whatever the band."""
    rng = np.random.default_rng(0)
    block = Block(rng.standard_normal((12, 4, 1, 1)).astype(np.float32), None,
                  rng.standard_normal((12, 1, 3, 3)).astype(np.float32), None,
                  rng.standard_normal((4, 12, 1, 1)).astype(np.float32), None, dw_stride=2, dw_pads=(1, 1, 1, 1),
                  chunks=3)
    ops = [Conv(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), None, pads=(1, 1, 1, 1)),
           Activation("relu"), block]
    for band in (1, 2, 3):
        runner = SegmentRunner(ops, (2, 5, 6), band)
        assert runner.row_calls == 5 + 5 + 3 * 3
