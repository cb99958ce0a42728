"""Per-kind step coefficients of the cost model (scheduler.cost.CostModel.s_kinds), fit by `edgerun calibrate`
for the kernel families it measures (dense / grouped convolutions apart from pooling and the rest)."""
import pytest

import scheduler
from scheduler.cost import load_calibrated


def test_a_step_costs_its_kinds_coefficient_else_s_other():
    model = scheduler.CostModel("native", s_pw=1e-10, s_dw=2e-10, s_call=3e-6, s_other=4e-10,
                                s_kinds=(("FusedConv", 5e-11),))
    assert model.step_seconds(1000, "FusedConv") == pytest.approx(1000 * 5e-11 + 3e-6)
    assert model.step_seconds(1000, "MaxPool") == pytest.approx(1000 * 4e-10 + 3e-6)
    assert model.step_seconds(1000) == pytest.approx(1000 * 4e-10 + 3e-6)


def test_kind_coefficients_are_recovered_and_round_trip(tmp_path, monkeypatch):
    from edgerun.cli.calibrate import kind_coefficients, step_errors
    s_call = 2e-6
    samples = [("FusedConv", macs, macs * 3e-11 + s_call) for macs in (10**6, 4 * 10**6, 9 * 10**6)]
    samples += [("MaxPool", macs, macs * 8e-10 + s_call) for macs in (10**4, 5 * 10**4, 10**5)]
    samples += [("Gemm", 10**6, 1e-3)]   # too few samples: stays on s_other
    kinds = kind_coefficients(samples, s_call)
    assert [k for k, _ in kinds] == ["FusedConv", "MaxPool"]
    assert dict(kinds)["FusedConv"] == pytest.approx(3e-11, rel=1e-6)
    assert dict(kinds)["MaxPool"] == pytest.approx(8e-10, rel=1e-6)
    model = scheduler.CostModel("native", s_pw=1e-10, s_dw=2e-10, s_call=s_call, s_other=1e-9, s_kinds=kinds)
    errors = step_errors(model, samples)
    assert errors["FusedConv"] == pytest.approx(0.0, abs=1e-9) and errors["MaxPool"] == pytest.approx(0.0, abs=1e-9)
    monkeypatch.setenv("EDGERUN_COST_MODEL_DIR", str(tmp_path))
    model.save(tmp_path / "cost-native.json")
    assert load_calibrated("native") == model
    # a negative per-kind coefficient makes the file unusable, as a negative s_other does
    scheduler.CostModel("native", 1e-10, 2e-10, s_call, 1e-9, (("FusedConv", -1.0),)).save(
        tmp_path / "cost-native.json")
    assert load_calibrated("native") is None
