"""The block kernels' contracts (edgerun.kernels.<backend>.block_contract): scratch sizes and thread
splits on hand-worked MobileNetV2 cases, as the scheduler receives them."""

import pytest

from edgerun.kernels import block_contract, block_scratch
from scheduler import BlockGeometry, BlockSchedule

from mobilenet_blocks import EXPAND_S2, NO_EXPAND, RESIDUAL, STEM_FUSED


def busy(geom, sched, backend, threads):
    """Threads the backend's block kernel keeps busy (what the cost model divides by)."""
    return block_contract(geom, sched, backend, threads).split.busy


def test_scratch_expand_stride2_t6_band4():
    # c = 96/6 = 16; hidden rows of a 4-row band: min(112, 3*2+3) = 9
    sched = BlockSchedule(6, 4)
    assert block_scratch(EXPAND_S2, sched, "numpy") == {
        "expanded": 16 * 9 * 112 * 4,  # 64512
        "depthwise": 16 * 4 * 56 * 4,  # 14336
        "dw_tmp": 14336,
        "proj_tmp": 24 * 4 * 56 * 4,  # 21504
    }
    assert block_scratch(EXPAND_S2, sched, "native") == {"expanded": 64512, "depthwise": 14336}


def test_scratch_unsplit_block_holds_the_whole_hidden_tensor():
    sched = BlockSchedule(1, 56)
    scratch = block_scratch(RESIDUAL, sched, "native")
    assert scratch == {"expanded": 144 * 56 * 56 * 4, "depthwise": 144 * 56 * 56 * 4}


def test_scratch_no_expansion_and_stem_im2col():
    assert block_scratch(NO_EXPAND, BlockSchedule(2, 112), "numpy") == {
        "depthwise": 16 * 112 * 112 * 4,
        "dw_tmp": 16 * 112 * 112 * 4,
        "proj_tmp": 16 * 112 * 112 * 4,
    }
    # c = 8, hidden rows of an 8-row band: 7 + 3 = 10
    assert block_scratch(STEM_FUSED, BlockSchedule(4, 8), "numpy") == {
        "expanded": 8 * 10 * 112 * 4,  # 35840
        "depthwise": 8 * 8 * 112 * 4,  # 28672
        "dw_tmp": 28672,
        "proj_tmp": 16 * 8 * 112 * 4,  # 57344
        "im2col": 3 * 9 * 10 * 112 * 4,  # 120960
    }


def test_scratch_with_two_threads_holds_one_slice_per_thread():
    # t=6, 4-row bands: 14 bands of the 56 output rows, so two threads take whole bands, each in
    # its own slice of one thread's size: expanded 16 * 9 * 112 * 4 = 64512, depthwise 16 * 4 * 56 * 4 = 14336
    sched = BlockSchedule(6, 4)
    assert block_scratch(EXPAND_S2, sched, "native", threads=2) == {
        "expanded": 2 * 64512,  # 129024
        "depthwise": 2 * 14336,  # 28672
    }
    # no expansion: c = 16, 8-row bands of 112 rows (14 bands); three threads, three slices
    assert block_scratch(NO_EXPAND, BlockSchedule(2, 8), "native", threads=3) == {"depthwise": 3 * 16 * 8 * 112 * 4}
    # one band (unbanded), or fewer bands than threads: the threads share each step, one slice
    assert block_scratch(EXPAND_S2, BlockSchedule(6, 56), "native", threads=2) == {
        "expanded": 16 * 112 * 112 * 4, "depthwise": 16 * 56 * 56 * 4}
    assert block_scratch(EXPAND_S2, BlockSchedule(6, 28), "native", threads=3) == \
        block_scratch(EXPAND_S2, BlockSchedule(6, 28), "native")
    # the numpy kernel ignores threads
    assert block_scratch(EXPAND_S2, sched, "numpy", threads=2) == block_scratch(EXPAND_S2, sched, "numpy")


def test_threads_the_native_kernel_keeps_busy():
    # 14 bands of 4 rows: whole bands per thread
    assert busy(EXPAND_S2, BlockSchedule(6, 4), "native", 2) == 2
    # one band of 56 x 56 pixels: split by rows, not counted on
    assert busy(EXPAND_S2, BlockSchedule(6, 56), "native", 2) == 1
    # MobileNetV2's 7x7 block 160 -> 960 -> 160, unbanded: 49 pixels split by channels
    late = BlockGeometry(160, 7, 7, 960, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 160, True)
    assert busy(late, BlockSchedule(1, 7), "native", 2) == 2
    assert busy(late, BlockSchedule(960, 7), "native", 3) == 1  # one hidden channel a chunk
    assert busy(late, BlockSchedule(1, 7), "numpy", 2) == 1
    assert busy(late, BlockSchedule(1, 7), "native", 1) == 1


def test_native_contract_states_its_split_and_slices():
    from dataclasses import FrozenInstanceError

    from edgerun.kernels import native
    from scheduler import BY_CHANNELS, BY_ROWS, SINGLE, WHOLE_BANDS

    one = native.block_contract(EXPAND_S2, BlockSchedule(6, 4), 1)
    assert (one.split.kind, one.split.threads, one.split.busy) == (SINGLE, 1, 1)
    assert [(b.name, b.slices, b.slice_bytes) for b in one.scratch] == [("expanded", 1, 64512), ("depthwise", 1, 14336)]
    bands = native.block_contract(EXPAND_S2, BlockSchedule(6, 4), 3)  # 14 bands >= 3 threads
    assert (bands.split.kind, bands.split.busy) == (WHOLE_BANDS, 3)
    assert [(b.slices, b.slice_bytes, b.nbytes) for b in bands.scratch] == [(3, 64512, 3 * 64512), (3, 14336, 3 * 14336)]
    # two bands of 28 x 56 pixels, three threads: one shared slice split by rows (1568 pixels > 256)
    rows = native.block_contract(EXPAND_S2, BlockSchedule(6, 28), 3)
    assert (rows.split.kind, rows.split.busy, rows.buffer("depthwise").slices) == (BY_ROWS, 1, 1)
    late = BlockGeometry(160, 7, 7, 960, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 160, True)
    channels = native.block_contract(late, BlockSchedule(4, 7), 2)  # one 49-pixel band
    assert (channels.split.kind, channels.split.busy) == (BY_CHANNELS, 2)
    assert channels.schedule == BlockSchedule(4, 7) and channels.threads == 2
    with pytest.raises(FrozenInstanceError):
        channels.split = one.split
    with pytest.raises(Exception, match="threads must be in 1..128"):
        native.block_contract(late, BlockSchedule(4, 7), 0)


def test_numpy_contract_is_one_thread_whatever_it_is_asked():
    from edgerun.kernels import numpy_block
    from scheduler import SINGLE

    contract = numpy_block.block_contract(STEM_FUSED, BlockSchedule(4, 8), 4)
    assert (contract.split.kind, contract.split.threads, contract.split.busy) == (SINGLE, 4, 1)
    assert all(b.slices == 1 for b in contract.scratch)
    assert list(contract.scratch_bytes()) == ["expanded", "depthwise", "dw_tmp", "proj_tmp", "im2col"]


def test_scratch_checks_read_the_contract():
    import numpy as np

    from edgerun.kernels import holds_scratch

    contract = block_contract(RESIDUAL, BlockSchedule(2, 4), "native", 2)  # 14 bands: two slices each
    sizes = contract.scratch_bytes()
    full = {name: np.empty(n // 4, np.float32) for name, n in sizes.items()}
    assert holds_scratch(full, contract)
    one_slice = {name: view[: view.size // 2] for name, view in full.items()}
    assert not holds_scratch(one_slice, contract)
    assert holds_scratch(one_slice, block_contract(RESIDUAL, BlockSchedule(2, 4), "native", 1))
    assert not holds_scratch(None, contract)


def test_search_offers_thread_balanced_bands_only_to_kernels_that_take_whole_bands():
    from edgerun.kernels import native, numpy_block
    from scheduler import Problem, Step
    from scheduler.search import band_threads

    def problem(contract, threads):
        buffers = {"x": 16 * 112 * 112 * 4, "y": 24 * 56 * 56 * 4}
        return Problem(buffers, [Step("b", "block", ["x"], ["y"], block=EXPAND_S2, contract=contract)], ["y"],
                       threads=threads)

    assert band_threads(problem(native.block_contract, 3).steps[0], problem(native.block_contract, 3)) == 3
    assert band_threads(problem(numpy_block.block_contract, 3).steps[0], problem(numpy_block.block_contract, 3)) == 1
    assert band_threads(problem(native.block_contract, 1).steps[0], problem(native.block_contract, 1)) == 1
