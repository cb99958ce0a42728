"""The memory a bundle session keeps (issue 14, "the whole memory bill"): one copy of the weights.

A bundle stores the weight layouts the native kernels read (edgerun/kernels/layouts.py: transposed block
weights, packed 1x1 and conv panels keyed by ISA variant and packing); a session reads them in place from
the read-only mapping, so the numpy buffers it allocates are its arena and a few small arrays (numpy's
tracemalloc domain counts them exactly), and the only mapped pages are the ones its kernels read
(/proc/self/smaps). Logits are bit-identical with and without the stored layouts, and a bundle compiled on
another ISA variant (EDGERUN_ISA) repacks and gives the bits that variant gives.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun import InferenceSession, kernels
from edgerun.bundle import load
from edgerun.bundle_format import read_bundle
from edgerun.compiler import compile_bundle
from edgerun.errors import BundleError
from edgerun.kernels import isa, layouts, native
from edgerun.zoo.mobilenet_v2 import mobilenet_v2
from test_bundle import read_parts, rewrite_header

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not kernels.native_available(), reason="the C extension is not built")
ON_LINUX = sys.platform.startswith("linux")
MOBILENET = ("input", (1, 3, 96, 96), 300_000)
CONV_NET = ("x", (1, 3, 20, 20), None)
# numpy buffers a session keeps besides the arena: zero biases, band tables (bytes; MobileNetV2 0.35: 5,944)
SMALL_ARRAYS = 16 * 1024
# pages the kernel maps around a faulting one (fault_around_bytes, 64 KiB by default) plus one page
FAULT_AROUND = 64 * 1024 + 4096


def conv_net():
    """Dense 3x3 conv (packed conv panels), 1x1 conv (packed pointwise panels), pool, Gemm with transB=0
    (a transposed weight)."""
    rng = np.random.default_rng(3)
    weights = {"W1": rng.standard_normal((64, 3, 3, 3)).astype(np.float32) * 0.3,
               "B1": rng.standard_normal(64).astype(np.float32),
               "W2": rng.standard_normal((256, 64, 1, 1)).astype(np.float32) * 0.1,
               "Wf": rng.standard_normal((256, 10)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2"], ["c2"]),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "Wf"], ["y"])]
    graph = helper.make_graph(nodes, "conv_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, CONV_NET[1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                              [numpy_helper.from_array(a, n) for n, a in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


MODELS = {"mobilenet_v2_0.35_96": (lambda: mobilenet_v2(0.35, 96, batch=1), MOBILENET),
          "conv_net": (conv_net, CONV_NET)}


@pytest.fixture(scope="module", params=sorted(MODELS))
def compiled(request, tmp_path_factory):
    build, (name, shape, budget) = MODELS[request.param]
    model = build()
    path = tmp_path_factory.mktemp("layouts") / f"{request.param}.erb"
    compile_bundle(model.SerializeToString(), path, memory_budget=budget, input_shapes={name: shape}, threads=1)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    return model, path, {name: x}, budget


def stripped_copy(path: Path, folder: Path) -> Path:
    """The same bundle without header.kernel_layouts: every layout is made at load, as before."""
    copy = folder / "stripped.erb"
    copy.write_bytes(path.read_bytes())
    rewrite_header(copy, lambda header: header.pop("kernel_layouts"))
    return copy


def layout_bytes(path: Path) -> int:
    header = read_parts(path)[1]
    return sum(header["tensors"][index]["nbytes"] for index in header["kernel_layouts"].values())


def superseded_bytes(path: Path) -> int:
    """Bytes of the weights placed after every stored layout, at the end of the section: each one an
    initializer that a stored layout is made of (the ones the kernels read through a layout only)."""
    header = read_parts(path)[1]
    tensors = header["tensors"]
    end_of_layouts = max(tensors[i]["offset"] + tensors[i]["nbytes"] for i in header["kernel_layouts"].values())
    tail = [entry for entry in tensors if entry["offset"] >= end_of_layouts]
    made_from = {layouts.weight_of(key) for key in header["kernel_layouts"]}
    assert all(entry["name"] in made_from for entry in tail)
    return sum(entry["nbytes"] for entry in tail)


def numpy_bytes_kept(make):
    """(result of make(), bytes of numpy buffers allocated by make() and still alive)."""
    tracemalloc.start()
    try:
        result = make()
        traces = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]).traces
    finally:
        tracemalloc.stop()
    return result, sum(trace.size for trace in traces)


def mapping_rss(address: int) -> int:
    """Resident bytes of the mapping that holds `address` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            field = line.split()
            if not field[0].endswith(":"):
                low, high = (int(v, 16) for v in field[0].split("-"))
                inside = low <= address < high
            elif inside and field[0] == "Rss:":
                return int(field[1]) * 1024
    raise AssertionError(f"no mapping holds address {address:#x}")


# ---------------------------------------------------------------- one copy of the weights
def test_the_kernels_keep_no_copy_of_the_weights(compiled, tmp_path):
    _, path, _, _ = compiled
    stored = layout_bytes(path)
    assert stored > SMALL_ARRAYS
    session, kept = numpy_bytes_kept(lambda: load(path))
    arena = session.arena_bytes + 64   # the arena is allocated 64 bytes larger, to align it
    assert arena <= kept < arena + SMALL_ARRAYS
    # the oracle: without the stored layouts the session makes them, a copy of those bytes
    repacked, kept_repacked = numpy_bytes_kept(lambda: load(stripped_copy(path, tmp_path)))
    assert kept_repacked >= repacked.arena_bytes + 64 + stored


def test_block_weights_are_read_in_place_from_the_mapping(compiled):
    path = compiled[1]
    session = load(path)
    blocks = [step for step in session.compiled.steps if step.kind == "block"]
    assert len(blocks) == (17 if path.stem.startswith("mobilenet") else 0)
    for step in blocks:
        for array in (step.weights.we_t, step.weights.wp_t, step.weights.wd_taps, step.weights.wd):
            if array is not None:
                assert np.shares_memory(array, session.weights) and not array.flags.writeable


@pytest.mark.skipif(not ON_LINUX, reason="reads /proc/self/smaps")
def test_hashing_the_weights_leaves_none_of_their_pages_mapped(compiled):
    raw = read_bundle(compiled[1])
    assert raw.weights.size > 0
    assert mapping_rss(raw.weights.ctypes.data) == 0


@pytest.mark.skipif(not ON_LINUX, reason="reads /proc/self/smaps")
def test_a_session_maps_only_the_weight_pages_its_kernels_read(compiled):
    _, path, feeds, _ = compiled
    session = load(path)
    session.run(None, feeds)
    resident = mapping_rss(session.weights.ctypes.data)
    superseded = superseded_bytes(path)
    assert superseded >= layout_bytes(path) // 2   # most layouts (not the depthwise taps) replace their weight
    read = session.weights_bytes - superseded
    assert layout_bytes(path) <= resident <= read + FAULT_AROUND


# ---------------------------------------------------------------- same bits
def test_logits_are_bit_identical_with_and_without_stored_layouts(compiled, tmp_path):
    model, path, feeds, budget = compiled
    expected = InferenceSession(model, memory_budget=budget, threads=1, kernels_backend="native").run(None, feeds)[0]
    in_place = load(path).run(None, feeds)[0]
    repacked = load(stripped_copy(path, tmp_path)).run(None, feeds)[0]
    np.testing.assert_array_equal(in_place, expected)
    np.testing.assert_array_equal(repacked, expected)


def test_packed_layouts_of_another_packing_are_made_again(compiled, tmp_path):
    """A stored layout under another ISA variant's key is not read: the kernels pack for this one."""
    _, path, feeds, _ = compiled
    other = tmp_path / "other.erb"
    other.write_bytes(path.read_bytes())

    def as_if_another_variant(header):
        header["kernel_layouts"] = {key.replace(native.packing_key(), "avx512-0000000000000000"): index
                                    for key, index in header["kernel_layouts"].items()}
        header["kernel_isa"] = "avx512-0000000000000000"

    rewrite_header(other, as_if_another_variant)
    assert any("@" in key for key in read_parts(other)[1]["kernel_layouts"])
    expected = load(path).run(None, feeds)[0]
    session, kept = numpy_bytes_kept(lambda: load(other))
    assert any("packed again" in notice for notice in session.notices)
    np.testing.assert_array_equal(session.run(None, feeds)[0], expected)
    header = read_parts(other)[1]
    packed = sum(header["tensors"][index]["nbytes"] for key, index in header["kernel_layouts"].items() if "@" in key)
    assert kept >= session.arena_bytes + packed


# ---------------------------------------------------------------- untrusted layouts
def test_a_stored_layout_of_the_wrong_shape_is_a_bundle_error(compiled, tmp_path):
    _, path, _, _ = compiled
    bad = tmp_path / "bad.erb"
    bad.write_bytes(path.read_bytes())

    def point_at_a_bias(header):   # a float32 tensor of another shape, inside the weights section
        bias = next(i for i, entry in enumerate(header["tensors"]) if len(entry["shape"]) == 1
                    and entry["dtype"] == "float32" and entry["name"] not in header["kernel_layouts"]
                    and not entry["name"].startswith("layout:"))
        key = sorted(header["kernel_layouts"])[0]
        header["kernel_layouts"][key] = bias

    rewrite_header(bad, point_at_a_bias)
    with pytest.raises(BundleError, match="kernel layout .* has shape"):
        load(bad)


@pytest.mark.parametrize("table, message", [([1, 2], "kernel_layouts: expected an object"),
                                            ({"T:W": 10_000}, "not an index into the tensor table"),
                                            ({"T:W": "0"}, "not an index into the tensor table")])
def test_a_malformed_layout_table_is_a_bundle_error(compiled, tmp_path, table, message):
    bad = tmp_path / "bad.erb"
    bad.write_bytes(compiled[1].read_bytes())
    rewrite_header(bad, lambda header: header.update(kernel_layouts=table))
    with pytest.raises(BundleError, match=message):
        load(bad)


def test_a_kernel_isa_that_is_not_a_string_is_a_bundle_error(compiled, tmp_path):
    bad = tmp_path / "bad.erb"
    bad.write_bytes(compiled[1].read_bytes())
    rewrite_header(bad, lambda header: header.update(kernel_isa=3))
    with pytest.raises(BundleError, match="kernel_isa"):
        load(bad)


# ---------------------------------------------------------------- another ISA variant (EDGERUN_ISA)
ISA_CHILD = r"""
import json, sys
import numpy as np
mode, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "compile":
    from edgerun.compiler import compile_bundle
    from edgerun.zoo.mobilenet_v2 import mobilenet_v2
    compile_bundle(mobilenet_v2(0.35, 96, batch=1).SerializeToString(), path, memory_budget=300_000,
                   input_shapes={"input": (1, 3, 96, 96)}, threads=1)
    print(json.dumps({}))
else:
    import warnings
    import edgerun
    from edgerun.kernels import native
    warnings.simplefilter("ignore", RuntimeWarning)
    session = edgerun.load(path)
    x = np.random.default_rng(1).standard_normal((1, 3, 96, 96)).astype(np.float32)
    np.save(out, session.run(None, {"input": x})[0])
    print(json.dumps({"isa": native.isa(), "notices": session.notices}))
"""


def _child(variant: str, *args) -> dict:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", EDGERUN_KERNELS="native")
    env[isa.ENV_VAR] = variant
    result = subprocess.run([sys.executable, "-c", ISA_CHILD, *map(str, args)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_bundle_compiled_on_another_isa_variant_repacks_and_gives_that_variants_bits(tmp_path):
    variants = isa.runnable_variants()
    if len(variants) < 2:
        pytest.skip(f"this CPU and build run one ISA variant only ({variants})")
    built_on, run_on = variants[-1], variants[0]   # e.g. sse2 -> avx512
    for variant in (built_on, run_on):
        _child(variant, "compile", tmp_path / f"{variant}.erb", "-")
    moved = _child(run_on, "load", tmp_path / f"{built_on}.erb", tmp_path / "moved.npy")
    native = _child(run_on, "load", tmp_path / f"{run_on}.erb", tmp_path / "native.npy")
    at_home = _child(built_on, "load", tmp_path / f"{built_on}.erb", tmp_path / "home.npy")
    assert moved["isa"] == native["isa"] == run_on and at_home["isa"] == built_on
    assert any("packed again" in notice for notice in moved["notices"])
    assert not native["notices"] and not at_home["notices"]
    np.testing.assert_array_equal(np.load(tmp_path / "moved.npy"), np.load(tmp_path / "native.npy"))
    home = np.load(tmp_path / "home.npy")
    np.testing.assert_allclose(np.load(tmp_path / "moved.npy"), home, rtol=0, atol=1e-5 * np.abs(home).max())
