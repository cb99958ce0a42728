"""schedule() on a hand-built MobileNetV2-like problem and on random small chains."""

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import (
    BlockGeometry,
    BlockSchedule,
    BudgetInfeasible,
    CostModel,
    Plan,
    PlanOverlapError,
    Problem,
    Step,
    align_up,
    memory_minimal,
    minimum_peak,
    schedule,
    verify_plan,
)
from scheduler.search import band_choices_for, t_choices

from edgerun.kernels import block_scratch, native, numpy_block
from mobilenet_blocks import EXPAND_S2, NO_EXPAND, RESIDUAL

# the kernels' contracts, by the backend label the problems carry (importing the modules also
# registers their default cost coefficients under those labels)
CONTRACTS = {"numpy": numpy_block.block_contract, "native": native.block_contract}

X0, X1, X2 = 32 * 112 * 112 * 4, 16 * 112 * 112 * 4, 24 * 56 * 56 * 4  # 1605632, 802816, 301056


def mobilenet_head(backend="native"):
    """Stem output, MobileNetV2's first three blocks at 224, a pooling head."""
    return Problem(
        buffers={"input": 3 * 224 * 224 * 4, "x0": X0, "x1": X1, "x2": X2, "x3": X2, "out": 24 * 4},
        steps=[
            Step("stem", "conv", ["input"], ["x0"], macs=112 * 112 * 32 * 27),
            Step("block1", "block", ["x0"], ["x1"], block=NO_EXPAND, contract=CONTRACTS[backend]),
            Step("block2", "block", ["x1"], ["x2"], block=EXPAND_S2, contract=CONTRACTS[backend]),
            Step("block3", "block", ["x2"], ["x3"], block=RESIDUAL, contract=CONTRACTS[backend]),
            Step("head", "pool", ["x3"], ["out"], macs=24 * 56 * 56),
        ],
        outputs=["out"],
        backend=backend,
    )


def overlaps_by_pairs(problem, plan):
    """Independent oracle: every pair of regions alive at a step, compared directly."""
    clashes = []
    for i, step in enumerate(problem.steps):
        sp = plan.step(step.name)
        regions = [
            (plan.offsets[n], align_up(size, plan.alignment), n)
            for n, size in problem.buffers.items()
            if problem.lifetime(n)[0] <= i <= problem.lifetime(n)[1]
        ]
        sched = BlockSchedule(sp.t, sp.band_rows) if step.block else None
        sizes = dict(step.scratch or {})
        if step.block:
            sizes.update(block_scratch(step.block, sched, problem.backend))
        regions += [(sp.scratch_offsets[n], align_up(s, plan.alignment), n) for n, s in sizes.items()]
        for a in range(len(regions)):
            for b in range(a + 1, len(regions)):
                (oa, sa, na), (ob, sb, nb) = regions[a], regions[b]
                if sa and sb and oa < ob + sb and ob < oa + sa:
                    clashes.append((step.name, na, nb))
        assert all(off + size <= plan.peak_bytes for off, size, _ in regions)
    return clashes


def assert_sound(problem, plan, budget=None):
    assert overlaps_by_pairs(problem, plan) == []
    verify_plan(problem, plan)
    if budget is not None:
        assert plan.peak_bytes <= budget


def test_choice_sets():
    assert t_choices(16, 5) == [1, 2, 3, 4]  # t=5 makes chunks of 4, like t=4
    assert t_choices(32, 5, [32, 64]) == [1, 2, 3, 4, 5, 32]
    assert band_choices_for(56) == [1, 2, 4, 8, 16, 32, 56]
    assert band_choices_for(7, [3, 100]) == [3, 7]


def test_minimum_peak_by_hand():
    # Each block at its smallest scratch: t=5, one-row bands.
    #  block1: x0 + x1 + depthwise 7ch*1row*112*4 = 1605632 + 802816 + 3136 = 2411584
    #  block2: x1 + x2 + expanded 20*3*112*4 + depthwise 20*56*4 = 1135232
    #  block3: x2 + x3 + 19520 + 6528 (aligned)               = 628160
    #  stem:   input + x0                                      = 2207744
    assert minimum_peak(mobilenet_head()) == (2_411_584, "block1")
    # numpy also needs dw_tmp (3136) and proj_tmp 16*1*112*4 at block1
    assert minimum_peak(mobilenet_head("numpy")) == (2_408_448 + 3136 * 2 + 7168, "block1")
    plan = memory_minimal(mobilenet_head())
    assert plan.peak_bytes == 2_411_584
    assert plan.step("block1").t == 5 and plan.step("block1").band_rows == 1
    assert_sound(mobilenet_head(), plan)


def test_no_budget_takes_the_fastest_schedule():
    problem = mobilenet_head()
    plan = schedule(problem)
    cost = CostModel.default("native")
    for name, geom in (("block1", NO_EXPAND), ("block2", EXPAND_S2), ("block3", RESIDUAL)):
        step = plan.step(name)
        assert (step.t, step.band_rows) == (1, geom.out_height)
        assert step.estimated_seconds == pytest.approx(cost.s_pw * (geom.expansion_macs() + geom.projection_macs())
                                                       + cost.s_dw * geom.depthwise_macs() + cost.s_call)
    assert plan.step("stem").estimated_seconds == pytest.approx(112 * 112 * 32 * 27 * cost.s_other + cost.s_call)
    assert plan.estimated_seconds == pytest.approx(sum(s.estimated_seconds for s in plan.steps))
    # block2 unsplit: x1 + x2 + expanded 96*112*112*4 + depthwise 96*56*56*4
    assert plan.step("block2").bytes == X1 + X2 + 4_816_896 + 1_204_224 == plan.peak_bytes
    assert_sound(problem, plan)


def brute_force_fastest_seconds(problem, budget, cost):
    """A lower bound on any plan's seconds within budget: each block alone at its
    fastest candidate whose live bytes fit."""
    total = 0.0
    for i, step in enumerate(problem.steps):
        if not step.block:
            total += cost.step_seconds(step.macs)
            continue
        live = sum(align_up(problem.buffers[n], 64) for n in problem.alive_at(i))
        geom = step.block
        best = None
        for t in range(1, 6):
            for rows in band_choices_for(geom.out_height):
                sched = BlockSchedule(t, rows)
                scratch = sum(align_up(b, 64) for b in block_scratch(geom, sched, problem.backend).values())
                if live + scratch <= budget:
                    s = cost.block_seconds(geom, sched)
                    best = s if best is None else min(best, s)
        total += best
    return total


@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_budgets_force_splits_and_always_fit(backend):
    problem = mobilenet_head(backend)
    cost = CostModel.default(backend)
    fastest = schedule(problem)
    minimum, _ = minimum_peak(problem)
    slow = memory_minimal(problem).estimated_seconds
    for k in range(8):
        budget = minimum + (fastest.peak_bytes - minimum) * k // 8
        plan = schedule(problem, budget=budget)
        assert_sound(problem, plan, budget)
        assert brute_force_fastest_seconds(problem, budget, cost) - 1e-12 <= plan.estimated_seconds <= slow + 1e-12
        unsplit = [(1, step.block.out_height) for step in problem.block_steps()]
        chosen = [(plan.step(step.name).t, plan.step(step.name).band_rows) for step in problem.block_steps()]
        assert chosen != unsplit, "a budget below the unsplit peak must split some block"


def test_budget_2_5_mb_by_hand():
    # block1 may use 2_500_000 - x0 - x1 = 91552 bytes of scratch: 448 bytes per
    # channel-row, so chunk*rows <= 204; fewest chunk*band calls: t=3 (11 ch), 16-row bands = 21 calls
    plan = schedule(mobilenet_head(), budget=2_500_000)
    assert (plan.step("block1").t, plan.step("block1").band_rows) == (3, 16)
    assert plan.step("block1").bytes == X0 + X1 + 11 * 16 * 112 * 4
    assert_sound(mobilenet_head(), plan, 2_500_000)


def test_impossible_budget_names_minimum_and_step():
    with pytest.raises(BudgetInfeasible) as info:
        schedule(mobilenet_head(), budget=2_000_000)
    err = info.value
    assert (err.minimum_bytes, err.limiting_step, err.budget) == (2_411_584, "block1", 2_000_000)
    assert "2000000" in str(err) and "2411584" in str(err) and "block1" in str(err)


def test_budget_equal_to_minimum_fits():
    plan = schedule(mobilenet_head(), budget=2_411_584)
    assert plan.peak_bytes == 2_411_584
    assert_sound(mobilenet_head(), plan, 2_411_584)


def test_allowed_t_beyond_five_lowers_the_minimum():
    problem = mobilenet_head()
    # t=32 on block1: one channel per chunk, depthwise scratch 1*1*112*4 = 448
    assert minimum_peak(problem, allowed_t=[32]) == (X0 + X1 + 448, "block1")
    with pytest.raises(BudgetInfeasible):
        schedule(problem, budget=X0 + X1 + 448)
    plan = schedule(problem, budget=X0 + X1 + 448, allowed_t=[32])
    assert plan.step("block1").t == 32
    assert_sound(problem, plan, X0 + X1 + 448)


def test_fixed_schedules_are_obeyed():
    problem = mobilenet_head()
    plan = schedule(problem, fixed={"block2": BlockSchedule(8, 4)})
    step = plan.step("block2")
    assert (step.t, step.band_rows) == (8, 4)
    assert set(step.scratch_offsets) == {"expanded", "depthwise"}
    assert step.bytes == X1 + X2 + 12 * 9 * 112 * 4 + 12 * 4 * 56 * 4
    assert_sound(problem, plan)
    with pytest.raises(ValueError):
        schedule(problem, fixed={"block2": BlockSchedule(97, 4)})
    with pytest.raises(ValueError):
        schedule(problem, fixed={"stem": BlockSchedule(1, 4)})


def test_noreuse_planner_peak_is_everything_stacked():
    problem = mobilenet_head()
    plan = schedule(problem, planner="noreuse")
    scratch = sum(align_up(b, 64) for name in ("block1", "block2", "block3")
                  for b in block_scratch(problem.steps[problem.step_index(name)].block,
                                         plan.step(name).schedule, "native").values())
    assert plan.planner == "noreuse"
    assert plan.peak_bytes == sum(align_up(b, 64) for b in problem.buffers.values()) + scratch
    assert_sound(problem, plan)


def test_scheduled_plan_round_trips_and_verifies():
    problem = mobilenet_head("numpy")
    plan = schedule(problem, budget=2_600_000)
    loaded = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert loaded == plan
    verify_plan(problem, loaded)
    broken = replace(loaded, offsets=dict(loaded.offsets, x1=loaded.offsets["x0"]))
    with pytest.raises(PlanOverlapError):
        verify_plan(problem, broken)


def block_strategy():
    return st.builds(
        lambda cin, size, expand, stride: (cin, size, expand, stride),
        st.sampled_from([4, 8, 16]), st.sampled_from([6, 8, 12]), st.sampled_from([1, 3, 6]), st.sampled_from([1, 2]),
    )


def random_chain(specs, backend):
    buffers, steps = {"x0": 0}, []
    channels, size = specs[0][0], specs[0][1]
    buffers["x0"] = channels * size * size * 4
    for i, (cout, _, expand, stride) in enumerate(specs):
        hidden = channels * expand
        geom = BlockGeometry(channels, size, size, hidden, 0 if expand == 1 else 1, 1, (0, 0, 0, 0),
                             3, stride, (1, 1, 1, 1), cout, residual=(stride == 1 and cout == channels))
        buffers[f"x{i + 1}"] = cout * geom.out_height * geom.out_width * 4
        steps.append(Step(f"b{i}", "block", [f"x{i}"], [f"x{i + 1}"], block=geom, contract=CONTRACTS[backend]))
        channels, size = cout, geom.out_height
    return Problem(buffers, steps, [f"x{len(specs)}"], backend=backend)


@settings(max_examples=25, deadline=None)
@given(st.lists(block_strategy(), min_size=2, max_size=4), st.floats(0, 1), st.sampled_from(["numpy", "native"]))
def test_random_chains_never_exceed_the_budget(specs, fraction, backend):
    problem = random_chain(specs, backend)
    low, _ = minimum_peak(problem)
    high = schedule(problem).peak_bytes
    budget = low + int((high - low) * fraction)
    plan = schedule(problem, budget=budget)
    assert_sound(problem, plan, budget)
    with pytest.raises(BudgetInfeasible) as info:
        schedule(problem, budget=low - 1)
    assert info.value.minimum_bytes == low
