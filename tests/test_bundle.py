"""Ahead-of-time bundles: parity with onnxruntime, no onnx at load time, mmap weights, corruption."""
from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_close_to_ort, run_ort
from edgerun.bundle import BundleSession, load
from edgerun.bundle_format import FORMAT_MAJOR, FORMAT_MINOR, MAGIC, PREFIX
from edgerun.cli.compile import compile_main
from edgerun.compiler import compile_bundle
from edgerun.errors import BundleError, InvalidInputError, InvalidOptionError

MOBILENET_SHAPE = (1, 3, 96, 96)
MOBILENET_BUDGET = 300_000
TINY_SHAPE = (2, 3, 16, 16)


# ---------------------------------------------------------------- models
def tiny_conv_net(seed=0) -> onnx.ModelProto:
    """Conv(stride 2) + Clip, global average pool, flatten, Gemm: dynamic batch."""
    rng = np.random.default_rng(seed)
    weights = {
        "W": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
        "B": rng.standard_normal(8).astype(np.float32),
        "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32),
        "Wf": rng.standard_normal((5, 8)).astype(np.float32),
        "Bf": rng.standard_normal(5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "Wf", "Bf"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(a, n) for n, a in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def mobilenet():
    from edgerun.zoo.mobilenet_v2 import mobilenet_v2
    return mobilenet_v2(width=0.35, resolution=96)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    model = tiny_conv_net()
    path = tmp_path_factory.mktemp("bundle") / "tiny.erb"
    info = compile_bundle(model.SerializeToString(), path, input_shapes={"x": TINY_SHAPE})
    return model, path, info


@pytest.fixture(scope="module")
def mobilenet_bundle(tmp_path_factory):
    model = mobilenet()
    path = tmp_path_factory.mktemp("bundle") / "mobilenet.erb"
    info = compile_bundle(model.SerializeToString(), path, memory_budget=MOBILENET_BUDGET,
                          input_shapes={"input": MOBILENET_SHAPE})
    return model, path, info


# ---------------------------------------------------------------- running in a fresh process
CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import edgerun
    session = edgerun.load(sys.argv[1])
    feeds = {session.get_inputs()[0].name: np.load(sys.argv[2])}
    (output,) = session.run(None, feeds)
    np.save(sys.argv[3], output)
    init = next(iter(session.graph.initializers.values()))
    base, mapped = init, False
    while base is not None:
        mapped = mapped or isinstance(base, np.memmap)
        base = getattr(base, "base", None)
    print(json.dumps({
        "onnx": "onnx" in sys.modules, "onnxruntime": "onnxruntime" in sys.modules,
        "loader": "edgerun.loader" in sys.modules, "plan": session.plan.to_dict(),
        "replanned": session.replanned, "weights_mapped": mapped,
        "weights_writeable": any(a.flags.writeable for a in session.graph.initializers.values()),
    }))
""")


def run_in_child(bundle_path, x, tmp_path):
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([sys.executable, "-c", CHILD, str(bundle_path), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), np.load(tmp_path / "y.npy")


@pytest.mark.parametrize("which", ["tiny", "mobilenet"])
def test_bundle_runs_in_a_fresh_process_without_onnx_and_matches_onnxruntime(which, request, tmp_path):
    model, path, info = request.getfixturevalue(f"{which}_bundle")
    shape = TINY_SHAPE if which == "tiny" else MOBILENET_SHAPE
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    report, y = run_in_child(path, x, tmp_path)
    assert report["onnx"] is False and report["onnxruntime"] is False and report["loader"] is False
    assert report["weights_mapped"] is True and report["weights_writeable"] is False
    assert report["replanned"] is False
    assert report["plan"] == info.plan.to_dict()
    assert_close_to_ort(y, run_ort(model, {model.graph.input[0].name: x})[0])


def test_mobilenet_bundle_respects_its_budget_and_splits_blocks(mobilenet_bundle):
    _, path, info = mobilenet_bundle
    session = load(path)
    assert session.plan == info.plan
    assert session.arena_bytes == info.arena_bytes <= MOBILENET_BUDGET
    blocks = [step for step in session.plan.steps if step.kind == "InvertedResidual"]
    assert len(blocks) == 17 and any(step.t > 1 for step in blocks)


def test_loaded_plan_equals_the_plan_of_an_inference_session(tiny_bundle):
    from edgerun.session import InferenceSession

    model, path, info = tiny_bundle
    reference = InferenceSession(model.SerializeToString())
    reference.prepare({"x": TINY_SHAPE})
    assert load(path).plan == reference.plan == info.plan


def test_weights_are_read_only_views_of_a_file_mapping(tiny_bundle):
    model, path, info = tiny_bundle
    session = load(path)
    assert isinstance(session.weights, np.memmap) and session.weights.filename == str(path.resolve())
    originals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, array in session.graph.initializers.items():
        assert not array.flags.writeable
        assert np.shares_memory(array, session.weights)
        assert array.ctypes.data % 64 == 0
        np.testing.assert_array_equal(array, originals[name])
    with pytest.raises(ValueError):
        session.graph.initializers["W"][0, 0, 0, 0] = 1.0


def test_bundle_sizes_are_reported(tiny_bundle):
    model, path, info = tiny_bundle
    weight_bytes = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer if t.name in ("W", "B", "Wf",
                                                                                                          "Bf"))
    header = read_parts(path)[1]
    stored = [header["tensors"][index] for index in header["kernel_layouts"].values()]
    layout_bytes = sum(entry["nbytes"] for entry in stored)   # the kernels' layouts of W and Wf, read in place
    assert layout_bytes > 0 and all(entry["dtype"] == "float32" for entry in stored)
    assert info.file_bytes == path.stat().st_size
    assert weight_bytes + layout_bytes <= info.weights_bytes < weight_bytes + layout_bytes + 64 * 8
    assert load(path).weights_bytes == info.weights_bytes


# ---------------------------------------------------------------- input checking
def test_wrong_input_shape_dtype_or_name_is_refused(tiny_bundle):
    session = load(tiny_bundle[1])
    good = np.zeros(TINY_SHAPE, np.float32)
    assert [a.shape for a in session.get_inputs()] == [list(TINY_SHAPE)]
    assert session.get_outputs()[0].shape == [TINY_SHAPE[0], 5]
    with pytest.raises(InvalidInputError, match="dimension 0 must be 2"):
        session.run(None, {"x": np.zeros((1, 3, 16, 16), np.float32)})
    with pytest.raises(InvalidInputError, match="dtype float32"):
        session.run(None, {"x": good.astype(np.float64)})
    with pytest.raises(InvalidInputError, match="missing input"):
        session.run(None, {})
    with pytest.raises(InvalidInputError, match="unknown input"):
        session.run(None, {"x": good, "y": good})
    with pytest.raises(InvalidInputError, match="unknown output"):
        session.run(["nope"], {"x": good})


def test_compiling_a_dynamic_model_without_shapes_names_the_input(tmp_path):
    with pytest.raises(InvalidOptionError, match="input 'x' has dynamic shape"):
        compile_bundle(tiny_conv_net().SerializeToString(), tmp_path / "t.erb")
    with pytest.raises(InvalidOptionError, match="unknown input"):
        compile_bundle(tiny_conv_net().SerializeToString(), tmp_path / "t.erb", input_shapes={"z": (1, 3, 16, 16)})
    with pytest.raises(InvalidOptionError, match="dimension 2 is fixed to 16"):
        compile_bundle(tiny_conv_net().SerializeToString(), tmp_path / "t.erb", input_shapes={"x": (1, 3, 8, 16)})
    assert not (tmp_path / "t.erb").exists()


# ---------------------------------------------------------------- backend change at load time
def test_a_bundle_planned_for_another_backend_is_replanned_with_a_warning(tiny_bundle, tmp_path):
    model, path, info = tiny_bundle
    other = "native" if info.backend == "numpy" else "numpy"
    copy = tmp_path / "other.erb"
    copy.write_bytes(path.read_bytes())
    rewrite_header(copy, lambda h: h.update(backend=other))
    with pytest.warns(RuntimeWarning, match="re-planning"):
        session = load(copy, kernels_backend=info.backend)
    assert session.replanned and session.backend == info.backend
    assert len(session.notices) == 1 and f"planned for the {other} kernels" in session.notices[0]
    x = np.random.default_rng(5).standard_normal(TINY_SHAPE).astype(np.float32)
    assert_close_to_ort(session.run(None, {"x": x})[0], run_ort(model, {"x": x})[0])


# ---------------------------------------------------------------- corruption
def read_parts(path):
    data = path.read_bytes()
    magic, major, minor, flags, length, digest = PREFIX.unpack(data[:PREFIX.size])
    header = json.loads(data[PREFIX.size:PREFIX.size + length])
    weights_offset = -(-(PREFIX.size + length) // 64) * 64
    return data, header, weights_offset, length


def rewrite_header(path, mutate):
    """Change the JSON header and write a consistent file (new checksum, weights re-aligned):
    what a hostile producer could do, so the structural checks must catch it, not the checksum."""
    data, header, weights_offset, _ = read_parts(path)
    weights = data[weights_offset:]
    mutate(header)
    text = json.dumps(header).encode()
    prefix = PREFIX.pack(MAGIC, FORMAT_MAJOR, 0, 0, len(text), hashlib.sha256(text).digest())
    padding = bytes(-(PREFIX.size + len(text)) % 64)
    path.write_bytes(prefix + text + padding + weights)


def flip_byte(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x5A]) + data[index + 1:]


def corrupt_copy(tiny_bundle, tmp_path, change):
    data, header, weights_offset, header_length = read_parts(tiny_bundle[1])
    path = tmp_path / "bad.erb"
    path.write_bytes(change(data, weights_offset, header_length))
    return path


BYTE_CORRUPTIONS = {
    "flipped header byte": (lambda d, w, h: flip_byte(d, PREFIX.size + h // 2), "header checksum mismatch"),
    "flipped weights byte": (lambda d, w, h: flip_byte(d, w + 10), "weights checksum mismatch"),
    "truncated in weights": (lambda d, w, h: d[:w + 100], "truncated"),
    "truncated in header": (lambda d, w, h: d[:PREFIX.size + 10], "header length .* beyond the end of the file"),
    "truncated in prefix": (lambda d, w, h: d[:20], "truncated"),
    "empty file": (lambda d, w, h: b"", "not an edgerun bundle"),
    "wrong magic": (lambda d, w, h: b"PK\x03\x04" + d[4:], "not an edgerun bundle.*magic"),
    "future major version": (lambda d, w, h: d[:8] + struct.pack("<H", FORMAT_MAJOR + 1) + d[10:],
                             f"version {FORMAT_MAJOR + 1}.{FORMAT_MINOR} is not supported"),
    "header length beyond file": (lambda d, w, h: d[:16] + struct.pack("<Q", len(d)) + d[24:],
                                  "header length .* beyond the end of the file"),
    "huge header length": (lambda d, w, h: d[:16] + struct.pack("<Q", 2**63) + d[24:], "header length"),
    "trailing bytes": (lambda d, w, h: d + b"\0" * 64, "unexpected bytes after the weights"),
}


@pytest.mark.parametrize("case", sorted(BYTE_CORRUPTIONS))
def test_corrupted_bytes_raise_bundle_error_naming_the_problem(case, tiny_bundle, tmp_path):
    change, message = BYTE_CORRUPTIONS[case]
    with pytest.raises(BundleError, match=message):
        load(corrupt_copy(tiny_bundle, tmp_path, change))


def test_a_newer_minor_version_of_the_same_major_still_loads(tiny_bundle, tmp_path):
    path = corrupt_copy(tiny_bundle, tmp_path, lambda d, w, h: d[:10] + struct.pack("<H", 7) + d[12:])
    assert load(path).plan == tiny_bundle[2].plan


def _entry(header, name):
    return next(e for e in header["tensors"] if e["name"] == name)


def _set_first_offset(header, value):
    header["plan"]["offsets"][next(iter(header["plan"]["offsets"]))] = value


HEADER_CORRUPTIONS = {
    "weight offset beyond the file": (lambda h: _entry(h, "W").update(offset=1 << 20),
                                      "'W'.*beyond the weights section"),
    "unaligned weight offset": (lambda h: _entry(h, "W").update(offset=8), "not 64-byte aligned"),
    "nbytes not matching the shape": (lambda h: _entry(h, "B").update(shape=[9]), "does not match shape"),
    "unknown dtype": (lambda h: _entry(h, "B").update(dtype="object"), "unknown dtype 'object'"),
    "negative dimension": (lambda h: _entry(h, "B").update(shape=[-8]), "bad dimension -8"),
    "weights length beyond the file": (lambda h: h["weights"].update(length=h["weights"]["length"] + 64),
                                       "truncated"),
    "tensor reference out of range": (lambda h: h["graph"]["initializers"].update(W=99),
                                      "not an index into the tensor table"),
    "huge arena": (lambda h: (h.update(arena_bytes=1 << 45), h["plan"].update(peak_bytes=1 << 45)),
                   "above the limit"),
    "arena differs from plan": (lambda h: h.update(arena_bytes=64), "differs from arena_bytes"),
    "negative plan offset": (lambda h: _set_first_offset(h, -64), "outside the arena"),
    "buffer beyond the arena": (lambda h: _set_first_offset(h, h["arena_bytes"] - 64),
                                "outside the .*-byte arena|cannot be read|inconsistent"),
    "overlapping buffers": (lambda h: h["plan"]["offsets"].update(p=h["plan"]["offsets"]["r"]), "overlaps"),
    "node reads an unknown value": (lambda h: h["graph"]["nodes"][-1]["inputs"].__setitem__(0, "ghost"),
                                    "reads \\['ghost'\\]"),
    "bad attribute type": (lambda h: h["graph"]["nodes"][0]["attrs"].update(group={"type": "blob", "value": 1}),
                           "attrs\\['group'\\]"),
    "plan missing": (lambda h: h.pop("plan"), "missing field 'plan'"),
    "plan step renamed": (lambda h: h["plan"]["steps"][0].update(name="other"), "plan steps do not match|no step named"),
    "not a bundle header": (lambda h: h.update(format="something-else"), "not an edgerun-bundle"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CORRUPTIONS))
def test_inconsistent_headers_with_valid_checksums_raise_bundle_error(case, tiny_bundle, tmp_path):
    mutate, message = HEADER_CORRUPTIONS[case]
    path = tmp_path / "bad.erb"
    path.write_bytes(tiny_bundle[1].read_bytes())
    rewrite_header(path, mutate)
    with pytest.raises(BundleError, match=message):
        load(path)


def test_header_that_is_not_json_raises_bundle_error(tiny_bundle, tmp_path):
    data, header, weights_offset, length = read_parts(tiny_bundle[1])
    text = b"{" * (length - 1) + b"x"
    prefix = PREFIX.pack(MAGIC, FORMAT_MAJOR, 0, 0, len(text), hashlib.sha256(text).digest())
    path = tmp_path / "bad.erb"
    path.write_bytes(prefix + text + data[PREFIX.size + length:])
    with pytest.raises(BundleError, match="not valid JSON"):
        load(path)


# ---------------------------------------------------------------- command line
def test_compile_main_writes_a_bundle_and_prints_its_sizes(tmp_path, capsys):
    source = tmp_path / "tiny.onnx"
    source.write_bytes(tiny_conv_net().SerializeToString())
    out = tmp_path / "tiny.erb"
    code = compile_main([str(source), "--budget", "64KB", "--input-shape", "x=2x3x16x16", "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    session = load(out)
    assert isinstance(session, BundleSession)
    assert f"{out.stat().st_size:,} bytes" in printed
    assert f"{session.arena_bytes:,} bytes" in printed and f"{session.weights_bytes:,} bytes" in printed
    assert session.memory_budget == 64_000


def test_compile_main_reports_bad_usage(tmp_path, capsys):
    source = tmp_path / "tiny.onnx"
    source.write_bytes(tiny_conv_net().SerializeToString())
    assert compile_main([str(source), "-o", str(tmp_path / "t.erb")]) == 2
    assert "--input-shape x=" in capsys.readouterr().err
    assert compile_main([str(source), "--input-shape", "x=2by3", "-o", str(tmp_path / "t.erb")]) == 2
    assert compile_main([str(source), "--input-shape", "x=2x3x16x16", "--budget", "100",
                         "-o", str(tmp_path / "t.erb")]) == 3


def test_compile_main_accepts_a_zoo_name(tmp_path, capsys):
    out = tmp_path / "mnv2.erb"
    assert compile_main(["mobilenet_v2:width=0.35,resolution=96", "-o", str(out)]) == 0
    assert [a.shape for a in load(out).get_inputs()] == [list(MOBILENET_SHAPE)]


# ---------------------------------------------------------------- fuzzing: never anything but an EdgerunError
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgerun.errors import EdgerunError  # noqa: E402


def leaf_paths(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaf_paths(item, path + (key,))
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from leaf_paths(item, path + (index,))
    else:
        yield path


def replace_at(header, path, new_value):
    target = header
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new_value


HOSTILE_VALUES = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70), st.sampled_from([0, 1, -1, 63, 64, 2**31, 2**63]),
    st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(), st.text(max_size=8),
    st.lists(st.integers(min_value=-3, max_value=100), max_size=4), st.just({}), st.just([]))


def available_backends():
    from edgerun import kernels
    return ["numpy", "native"] if kernels.native_available() else ["numpy"]


def load_and_run_or_refuse(path):
    """Loading (and running) a hostile bundle may fail, but only with an EdgerunError,
    with the stored plan or re-planned for another backend."""
    for backend in available_backends():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                session = load(path, kernels_backend=backend)
                session.run(None, {"x": np.ones(TINY_SHAPE, np.float32)})
        except EdgerunError:
            pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_header_field_changed_gives_only_edgerun_errors(data, tiny_bundle, tmp_path):
    _, header, _, _ = read_parts(tiny_bundle[1])
    path = data.draw(st.sampled_from(sorted(leaf_paths(header), key=repr)))
    value = data.draw(HOSTILE_VALUES)
    bad = tmp_path / "fuzz.erb"
    bad.write_bytes(tiny_bundle[1].read_bytes())
    rewrite_header(bad, lambda h: replace_at(h, path, value))
    load_and_run_or_refuse(bad)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=10_000), flip=st.integers(min_value=0, max_value=10_000))
def test_any_truncation_or_flipped_byte_raises_bundle_error(cut, flip, tiny_bundle, tmp_path):
    data = tiny_bundle[1].read_bytes()
    bad = tmp_path / "cut.erb"
    bad.write_bytes(data[:cut % len(data)])
    with pytest.raises(BundleError):
        load(bad)
    bad.write_bytes(flip_byte(data, flip % len(data)))
    if 10 <= flip % len(data) < 16 or 56 <= flip % len(data) < 64:
        load(bad)   # the minor version, flags and reserved bytes may change by design
    else:
        with pytest.raises(BundleError):
            load(bad)


# ---------------------------------------------------------------- options and files
def test_skipping_weight_verification_is_explicit(tiny_bundle, tmp_path):
    model, path, info = tiny_bundle
    data, _, weights_offset, _ = read_parts(path)
    entry = next(e for e in read_parts(path)[1]["tensors"] if e["name"] == "Bf")
    bad = tmp_path / "bad.erb"
    bad.write_bytes(flip_byte(data, weights_offset + entry["offset"] + 3))   # sign and exponent of Bf[0]
    with pytest.raises(BundleError, match="weights checksum"):
        load(bad)
    session = load(bad, verify_weights=False)
    x = np.ones(TINY_SHAPE, np.float32)
    assert not np.allclose(session.run(None, {"x": x})[0], run_ort(model, {"x": x})[0])


def test_a_bundle_compiled_for_numpy_kernels_keeps_its_plan_under_numpy(tmp_path):
    model = tiny_conv_net()
    path = tmp_path / "numpy.erb"
    info = compile_bundle(model.SerializeToString(), path, input_shapes={"x": TINY_SHAPE}, kernels_backend="numpy")
    session = load(path, kernels_backend="numpy")
    assert info.backend == "numpy" and not session.replanned and session.plan == info.plan
    x = np.random.default_rng(9).standard_normal(TINY_SHAPE).astype(np.float32)
    assert_close_to_ort(session.run(None, {"x": x})[0], run_ort(model, {"x": x})[0])


def test_missing_files_and_unwritable_outputs_are_clear_errors(tmp_path):
    import edgerun
    from edgerun import bundle

    assert edgerun.load is bundle.load
    with pytest.raises(BundleError, match="cannot read bundle"):
        load(tmp_path / "absent.erb")
    with pytest.raises(InvalidOptionError, match="cannot write the bundle"):
        compile_bundle(tiny_conv_net().SerializeToString(), tmp_path / "no" / "dir.erb",
                       input_shapes={"x": TINY_SHAPE})
    assert list(tmp_path.iterdir()) == []


def test_profiled_run_reports_the_arena_and_every_step(mobilenet_bundle):
    model, path, info = mobilenet_bundle
    session = load(path)
    x = np.random.default_rng(11).standard_normal(MOBILENET_SHAPE).astype(np.float32)
    (plain,) = session.run(None, {"input": x})
    (profiled,) = session.run(None, {"input": x}, profile=True)
    np.testing.assert_array_equal(plain, profiled)
    stats = session.last_run
    assert stats.planned_peak_bytes == info.arena_bytes
    assert stats.measured_peak_bytes == info.arena_bytes + stats.escaped_bytes
    assert [s.name for s in stats.steps] == [s.name for s in info.plan.steps]


def test_mobilenet_bundle_on_the_other_kernel_backend_is_replanned_within_its_budget(mobilenet_bundle):
    from edgerun import kernels

    model, path, info = mobilenet_bundle
    other = "numpy" if info.backend == "native" else "native"
    if other == "native" and not kernels.native_available():
        with pytest.raises(InvalidOptionError, match="cannot be imported"):
            load(path, kernels_backend="native")
        return
    with pytest.warns(RuntimeWarning, match=f"planned for the {info.backend} kernels but the {other} kernels"):
        session = load(path, kernels_backend=other)
    assert session.replanned and session.arena_bytes <= MOBILENET_BUDGET
    x = np.random.default_rng(12).standard_normal(MOBILENET_SHAPE).astype(np.float32)
    assert_close_to_ort(session.run(None, {"input": x})[0], run_ort(model, {"input": x})[0])


def test_every_attribute_kind_round_trips_through_the_header():
    from edgerun.bundle_format import TensorTable as _TensorTable, _decode_attr, _encode_attr
    from edgerun.ir import Node

    table = _TensorTable()
    tensor = np.arange(6, dtype=np.int64).reshape(2, 3)
    attrs = {"i": np.int64(7), "b": True, "f": np.float32(0.25), "inf": float("inf"), "s": "relu",
             "ints": (1, 2, 3), "floats": [0.0, float("-inf"), 6.5], "strs": ["a", "b"], "t": tensor, "again": tensor}
    node = Node("Op", ["x"], ["y"], attrs, name="n")
    header = json.loads(json.dumps({k: _encode_attr(node, k, v, table) for k, v in attrs.items()}, allow_nan=False))
    assert len(table.entries) == 1                     # one array shared by two attributes is stored once
    weights = np.concatenate([np.frombuffer(bytes(c), np.uint8) for c in table.chunks()])
    stored = [weights[e["offset"]:e["offset"] + e["nbytes"]].view(np.int64).reshape(e["shape"]) for e in table.entries]
    decoded = {k: _decode_attr(v, stored, k) for k, v in header.items()}
    assert decoded["i"] == 7 and decoded["b"] == 1 and decoded["f"] == 0.25 and decoded["inf"] == float("inf")
    assert decoded["s"] == "relu" and decoded["ints"] == [1, 2, 3] and decoded["strs"] == ["a", "b"]
    assert decoded["floats"] == [0.0, float("-inf"), 6.5]
    np.testing.assert_array_equal(decoded["t"], tensor)
    assert decoded["again"] is decoded["t"]


def test_pretrained_mobilenet_bundle_classifies_the_sample_photo_like_onnxruntime(tmp_path):
    from edgerun.zoo.images import preprocess_imagenet, sample_image
    from edgerun.zoo.mobilenet_v2 import mobilenet_v2

    model = mobilenet_v2(pretrained=True, batch=1)
    path = tmp_path / "pretrained.erb"
    info = compile_bundle(model.SerializeToString(), path, memory_budget="2MB")
    assert info.arena_bytes <= 2_000_000
    x = preprocess_imagenet(sample_image())
    (logits,) = load(path).run(None, {"input": x})
    (expected,) = run_ort(model, {"input": x})
    assert_close_to_ort(logits, expected)
    assert list(np.argsort(logits[0])[::-1][:5]) == list(np.argsort(expected[0])[::-1][:5])


def test_edgerun_run_and_plan_accept_a_bundle(mobilenet_bundle, tmp_path):
    model, path, info = mobilenet_bundle
    x = np.random.default_rng(5).standard_normal(MOBILENET_SHAPE).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = int(run_ort(model, {model.graph.input[0].name: x})[0].argmax())
    done = subprocess.run([sys.executable, "-m", "edgerun", "run", str(path), "--input", str(tmp_path / "x.npy"),
                           "--top", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"(class {expected})" in done.stdout
    assert f"planned peak:  {info.arena_bytes:,} B" in done.stdout
    tighter = subprocess.run([sys.executable, "-m", "edgerun", "run", str(path), "--budget",
                              str(info.arena_bytes - 1)], capture_output=True, text=True, timeout=300)
    assert tighter.returncode == 2 and "compile it again" in tighter.stderr
