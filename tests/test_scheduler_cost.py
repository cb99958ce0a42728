"""Cost model: the formula on a hand-worked block, JSON round trip, calibration."""

import pytest

from scheduler import BlockGeometry, BlockSchedule, CostModel, calibrate
from scheduler.cost import default_calibration_cases, nonnegative_least_squares

EXPAND_S2 = BlockGeometry(16, 112, 112, 96, 1, 1, (0, 0, 0, 0), 3, 2, (1, 1, 1, 1), 24, False)


def test_block_seconds_by_hand():
    model = CostModel("native", s_pw=1e-9, s_dw=2e-9, s_call=1e-5, s_other=3e-9)
    # 6 chunks x 14 bands; expansion recomputes 125 hidden rows instead of 112
    dense = 125 * 112 * 96 * 16 + 56 * 56 * 96 * 24
    depthwise = 56 * 56 * 96 * 9
    expected = dense * 1e-9 + depthwise * 2e-9 + 84 * 1e-5
    assert model.block_seconds(EXPAND_S2, BlockSchedule(6, 4)) == pytest.approx(expected, rel=1e-12)
    assert model.step_seconds(1000) == pytest.approx(1000 * 3e-9 + 1e-5)


def test_defaults_favour_fewer_calls_and_no_halo():
    import edgerun.kernels.native  # noqa: F401  the kernels register their default coefficients
    import edgerun.kernels.numpy_block  # noqa: F401
    for backend in ("numpy", "native", "unregistered"):
        model = CostModel.default(backend)
        assert model.backend == backend
        unsplit = model.block_seconds(EXPAND_S2, BlockSchedule(1, 56))
        assert unsplit < model.block_seconds(EXPAND_S2, BlockSchedule(2, 56))
        assert unsplit < model.block_seconds(EXPAND_S2, BlockSchedule(1, 8))


def test_registered_defaults_and_busy_threads():
    from scheduler.cost import GENERIC_COEFFICIENTS, register_default
    assert CostModel.default("never-registered") == CostModel("never-registered", **GENERIC_COEFFICIENTS)
    register_default("test-kernels", s_pw=1.0, s_dw=2.0, s_call=3.0, s_other=4.0)
    model = CostModel.default("test-kernels")
    assert (model.s_pw, model.s_dw, model.s_call, model.s_other) == (1.0, 2.0, 3.0, 4.0)
    # a block whose kernel keeps 3 threads busy takes a third of its one-thread time
    one = model.block_seconds(EXPAND_S2, BlockSchedule(6, 4))
    assert model.block_seconds(EXPAND_S2, BlockSchedule(6, 4), busy_threads=3) == pytest.approx(one / 3, rel=1e-12)


def test_save_load_round_trip(tmp_path):
    model = CostModel("native", s_pw=1.25e-10, s_dw=7e-10, s_call=3.5e-6, s_other=4e-10)
    path = tmp_path / "cost.json"
    model.save(path)
    assert CostModel.load(path) == model


def test_calibrate_recovers_known_coefficients():
    truth = CostModel("native", s_pw=2.5e-10, s_dw=9e-10, s_call=4e-6, s_other=6e-10)
    seen = []

    def measure(geom, sched):
        seen.append((geom, sched))
        return truth.block_seconds(geom, sched)

    others = [(m, m * truth.s_other + truth.s_call) for m in (10_000, 500_000, 2_000_000)]
    fitted = calibrate(measure, backend="native", other_samples=others)
    assert len(seen) == len(default_calibration_cases())
    for name in ("s_pw", "s_dw", "s_call", "s_other"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-6)
    assert CostModel.calibrate(measure, backend="native").s_dw == pytest.approx(9e-10, rel=1e-6)


def test_nonnegative_least_squares_clamps_negative_coefficients():
    # y = 2*x0 exactly; x1 anti-correlated noise would get a negative weight unconstrained
    rows = [[1.0, 1.0], [2.0, 0.0], [3.0, 1.0], [4.0, 0.0]]
    targets = [1.9, 4.0, 5.9, 8.0]
    assert nonnegative_least_squares(rows, [2.0, 4.0, 6.0, 8.0]) == pytest.approx([2.0, 0.0], abs=1e-9)
    x0, x1 = nonnegative_least_squares(rows, targets)
    assert x1 == 0.0
    # refit on x0 alone: sum(x*y)/sum(x*x)
    assert x0 == pytest.approx((1.9 + 8.0 + 17.7 + 32.0) / 30.0)


def test_collinear_cases_are_refused():
    with pytest.raises(ValueError):
        calibrate(lambda g, s: 1.0, cases=[(EXPAND_S2, BlockSchedule(1, 56))] * 3)
