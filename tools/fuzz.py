"""Fuzz edgerun with hostile files: every case must end in success or an EdgerunError.

    python tools/fuzz.py --cases 20000 --seed 1 [--workers 2] [--timeout 30] [--max-bytes 64MiB]

Each case is generated from (seed, case index) alone, so any failure is reproduced by
`python tools/fuzz.py --seed S --only INDEX --verbose`. Cases run in worker subprocesses (one per --workers),
many cases per worker, each worker under a memory cap (RLIMIT_AS) with edgerun's own ceiling
(EDGERUN_MAX_BYTES) set well below it. A case fails when its worker dies on a signal (crash), does not answer
within --timeout seconds (hang), raises anything that is not an EdgerunError, or makes the worker's resident
memory grow beyond the ceiling. After a crash or a hang the worker is restarted and the run goes on.

Case kinds: byte mutations of ONNX models; structure-aware mutations of ONNX models (attributes, input
shapes, initializers, dangling names, cycles, huge dims, op types, opsets, external data); compiled bundles;
.pth state dicts (zip and legacy layouts); external-data folders.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("bytes", "struct", "bundle", "pth", "extdata")
SELFTEST_KINDS = ("selftest-crash", "selftest-hang", "selftest-python-error", "selftest-alloc", "selftest-rss")
DEFAULT_MAX_BYTES = 64 * 1024**2
ADDRESS_SPACE_HEADROOM = 1536 * 1024**2   # RLIMIT_AS = the worker's size after imports + this
ROOT = Path(__file__).resolve().parent.parent
WALL_FACTOR = 10   # a case is a hang after `timeout` s of CPU, or WALL_FACTOR x `timeout` s of wall time

INTERESTING_INTS = (0, 1, 2, 3, -1, -2, 7, 255, 2**15, 2**31 - 1, 2**31, -2**31, 2**32, 2**62, 2**63 - 1, -2**63,
                    50000, 1 << 20)
PLAUSIBLE_INTS = (0, 1, 1, 2, 2, 3, 4, -1)
INTERESTING_FLOATS = (0.0, -1.0, 1.0, 0.5, 1e-30, 1e30, float("nan"), float("inf"), float("-inf"), -0.0)
ATTRIBUTE_NAMES = ("pads", "strides", "dilations", "kernel_shape", "auto_pad", "group", "axis", "axes", "keepdims",
                   "ceil_mode", "perm", "size", "alpha", "beta", "bias", "mode", "epsilon", "transA", "transB",
                   "count_include_pad", "storage_order", "min", "max", "to", "split", "value", "allowzero",
                   "coordinate_transformation_mode", "nearest_mode", "noop_with_empty_axes", "output_padding")


# ============================================================================ seed models (built, not read)

def seed_models():
    """Small models covering edgerun's operators: {name: ModelProto}."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    def make(name, nodes, inputs, outputs, inits, opset=13):
        graph = helper.make_graph(nodes, name, inputs, outputs, inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    f32 = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.3  # noqa: E731
    vi = helper.make_tensor_value_info
    models = {}
    models["conv_net"] = make("conv_net", [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["m"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "Wf", "Bf"], ["y"], transB=1),
    ], [vi("x", TensorProto.FLOAT, ["N", 3, 16, 16])], [vi("y", TensorProto.FLOAT, ["N", 5])],
        [init("W", f32(8, 3, 3, 3)), init("B", f32(8)), init("lo", np.float32(0)), init("hi", np.float32(6)),
         init("Wf", f32(5, 8)), init("Bf", f32(5))])
    models["inverted_residual"] = make("inverted_residual", [
        helper.make_node("Conv", ["x", "We", "Be"], ["e"]),
        helper.make_node("Clip", ["e", "lo", "hi"], ["e6"]),
        helper.make_node("Conv", ["e6", "Wd", "Bd"], ["d"], group=48, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["d", "lo", "hi"], ["d6"]),
        helper.make_node("Conv", ["d6", "Wp", "Bp"], ["p"]),
        helper.make_node("Add", ["x", "p"], ["y"]),
    ], [vi("x", TensorProto.FLOAT, [1, 8, 12, 12])], [vi("y", TensorProto.FLOAT, [1, 8, 12, 12])],
        [init("We", f32(48, 8, 1, 1)), init("Be", f32(48)), init("Wd", f32(48, 1, 3, 3)), init("Bd", f32(48)),
         init("Wp", f32(8, 48, 1, 1)), init("Bp", f32(8)), init("lo", np.float32(0)), init("hi", np.float32(6))])
    models["shape_chain"] = make("shape_chain", [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Softmax", ["r"], ["sm"], axis=1),
        helper.make_node("MatMul", ["sm", "M"], ["mm"]),
        helper.make_node("Sigmoid", ["mm"], ["y"]),
    ], [vi("x", TensorProto.FLOAT, ["N", 4, 3, 3])], [vi("y", TensorProto.FLOAT, ["N", 6])],
        [init("i0", np.array(0, np.int64)), init("ax0", np.array([0], np.int64)),
         init("minus1", np.array([-1], np.int64)), init("M", f32(36, 6))])
    models["image_ops"] = make("image_ops", [
        helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Pad", ["up", "pads"], ["pd"], mode="constant"),
        helper.make_node("AveragePool", ["pd"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        helper.make_node("LRN", ["ap"], ["l"], size=3, alpha=1e-4, beta=0.75),
        helper.make_node("BatchNormalization", ["l", "g", "b", "mu", "var"], ["bn"]),
        helper.make_node("HardSwish", ["bn"], ["hs"]),
        helper.make_node("ReduceMean", ["hs"], ["rm"], axes=[2, 3], keepdims=1),
        helper.make_node("Transpose", ["rm"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Squeeze", ["t", "sq"], ["y"]),
    ], [vi("x", TensorProto.FLOAT, [1, 4, 6, 6])], [vi("y", TensorProto.FLOAT, [1, 4])],
        [init("scales", np.array([1, 1, 2, 2], np.float32)), init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
         init("g", f32(4) + 1), init("b", f32(4)), init("mu", f32(4)), init("var", np.abs(f32(4)) + 0.5),
         init("sq", np.array([1, 2], np.int64))], opset=14)
    models["elementwise"] = make("elementwise", [
        helper.make_node("ConstantOfShape", ["cshape"], ["c"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
        helper.make_node("Mul", ["x", "c"], ["m"]),
        helper.make_node("Sum", ["m", "x", "c"], ["s"]),
        helper.make_node("Split", ["s"], ["a", "b"], axis=1),
        helper.make_node("Sub", ["a", "b"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["p"]),
        helper.make_node("Sqrt", ["p"], ["q"]),
        helper.make_node("Slice", ["q", "st", "en", "axs"], ["sl"]),
        helper.make_node("Cast", ["sl"], ["cs"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["cs"], ["y"], to=TensorProto.FLOAT),
    ], [vi("x", TensorProto.FLOAT, [1, 6, 5])], [vi("y", TensorProto.FLOAT, [1, 3, 4])],
        [init("cshape", np.array([1, 6, 5], np.int64)), init("two", np.array(2, np.float32)),
         init("st", np.array([1], np.int64)), init("en", np.array([5], np.int64)),
         init("axs", np.array([2], np.int64))])
    return models


# ============================================================================ mutations

def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        if not data:
            break
        choice = rng.randrange(7)
        i = rng.randrange(len(data))
        if choice == 0:
            data[i] ^= 1 << rng.randrange(8)
        elif choice == 1:
            data[i] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
        elif choice == 2:
            del data[i:i + rng.randint(1, 16)]
        elif choice == 3:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif choice == 4:
            j = rng.randrange(len(data))
            data[i:i] = data[j:j + rng.randint(1, 64)]
        elif choice == 5:
            del data[i:]
        else:  # a varint-sized field set huge
            data[i:i + 1] = bytes([0xFF] * 9 + [0x01])
    return bytes(data)


def _random_attribute_value(name: str, rng: random.Random):
    from onnx import helper
    if name in ("auto_pad", "mode", "coordinate_transformation_mode", "nearest_mode"):
        return rng.choice(("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID", "nearest", "linear", "cubic", "",
                           "garbage", "asymmetric", "half_pixel", "round_prefer_floor"))
    if name in ("alpha", "beta", "bias", "epsilon", "min", "max"):
        return rng.choice(INTERESTING_FLOATS)
    if name == "value":
        from onnx import TensorProto
        return helper.make_tensor("v", rng.choice((TensorProto.FLOAT, TensorProto.INT64)), [1], [rng.choice((0, 1, 7))])
    if name in ("pads", "strides", "dilations", "kernel_shape", "axes", "perm", "split", "output_padding"):
        return [rng.choice(INTERESTING_INTS) for _ in range(rng.randint(0, 6))]
    return rng.choice(INTERESTING_INTS)


def _set_attribute(node, name, value):
    from onnx import helper
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    try:
        node.attribute.append(helper.make_attribute(name, value))
    except Exception:
        pass


def _mutate_attribute(model, rng):
    from onnx import AttributeProto
    nodes = list(model.graph.node)
    node = rng.choice(nodes)
    if node.attribute and rng.random() < 0.6:
        a = rng.choice(list(node.attribute))
        values = PLAUSIBLE_INTS if rng.random() < 0.5 else INTERESTING_INTS
        if a.type == AttributeProto.INT:
            a.i = rng.choice(values)
        elif a.type == AttributeProto.INTS and a.ints:
            a.ints[rng.randrange(len(a.ints))] = rng.choice(values)
            if rng.random() < 0.3:
                a.ints.append(rng.choice(INTERESTING_INTS))
        elif a.type == AttributeProto.FLOAT:
            a.f = rng.choice(INTERESTING_FLOATS)
        elif rng.random() < 0.5:
            node.attribute.remove(a)
        else:
            _set_attribute(node, a.name, _random_attribute_value(a.name, rng))
    else:
        name = rng.choice(ATTRIBUTE_NAMES)
        _set_attribute(node, name, _random_attribute_value(name, rng))


def _mutate_dims(value_info, rng):
    tt = value_info.type.tensor_type
    choice = rng.randrange(6)
    if choice == 0 or not tt.shape.dim:
        tt.ClearField("shape")
    elif choice == 1:
        tt.shape.dim.add().dim_value = rng.choice((1, 2, 50000))
    elif choice == 2:
        del tt.shape.dim[rng.randrange(len(tt.shape.dim))]
    elif choice == 3:
        tt.shape.dim[rng.randrange(len(tt.shape.dim))].dim_param = rng.choice(("N", "H", "", "x y"))
    elif choice == 4:
        tt.elem_type = rng.choice((0, 1, 2, 6, 7, 8, 9, 10, 11, 16, 99))
    else:
        tt.shape.dim[rng.randrange(len(tt.shape.dim))].dim_value = rng.choice(INTERESTING_INTS)


def _mutate_initializer(model, rng):
    import numpy as np
    from onnx import numpy_helper
    inits = list(model.graph.initializer)
    if not inits:
        return
    t = rng.choice(inits)
    choice = rng.randrange(6)
    if choice == 0 and t.dims:
        t.dims[rng.randrange(len(t.dims))] = rng.choice(INTERESTING_INTS)
    elif choice == 1:
        t.raw_data = t.raw_data[:rng.randrange(len(t.raw_data) + 1)]
    elif choice == 2:
        t.data_type = rng.choice((0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 16, 99))
    elif choice == 3:  # new values: shape-like tensors get huge or negative entries
        array = numpy_helper.to_array(t).copy()
        if array.size:
            flat = array.reshape(-1)
            flat[rng.randrange(flat.size)] = rng.choice(INTERESTING_INTS if array.dtype.kind in "iu"
                                                        else INTERESTING_FLOATS) if array.dtype.kind != "b" else True
            t.CopyFrom(numpy_helper.from_array(array.astype(array.dtype), t.name))
    elif choice == 4:
        del t.dims[:]
        t.dims.extend(rng.choice(INTERESTING_INTS) for _ in range(rng.randint(0, 5)))
    else:
        t.CopyFrom(numpy_helper.from_array(np.array([rng.choice(INTERESTING_INTS)], np.int64), t.name))


def _mutate_wiring(model, rng):
    nodes = model.graph.node
    node = rng.choice(list(nodes))
    choice = rng.randrange(6)
    if choice == 0 and node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(("dangling", "", "x", "y"))
    elif choice == 1 and node.input:  # a cycle: read an output of this node or a later one
        later = [o for n in list(nodes)[list(nodes).index(node):] for o in n.output]
        node.input[rng.randrange(len(node.input))] = rng.choice(later)
    elif choice == 2:
        nodes.remove(node)
    elif choice == 3:
        nodes.append(node)
    elif choice == 4 and node.output:
        node.output[0] = rng.choice([o for n in nodes for o in n.output] + ["x"])
    else:
        node.input.append(rng.choice(["x"] + [i.name for i in model.graph.initializer]))


def _mutate_op(model, rng):
    from edgerun import ops
    node = rng.choice(list(model.graph.node))
    node.op_type = rng.choice(sorted(ops.supported_ops()) + ["Unknown", "If", "Loop"])
    if rng.random() < 0.2:
        node.domain = rng.choice(("edgerun", "com.microsoft", "ai.onnx.ml"))


def _mutate_opset(model, rng):
    model.opset_import[0].version = rng.choice((1, 6, 7, 10, 11, 12, 13, 17, 18, 19, 21, 22, 23, 30, 10**6))


def _mutate_huge(model, rng):
    """Ask for big tensors from small constants (Resize scales, ConstantOfShape, Reshape shapes, input dims)."""
    import numpy as np
    from onnx import numpy_helper
    inits = [t for t in model.graph.initializer if t.data_type in (1, 7)]
    if inits and rng.random() < 0.6:
        t = rng.choice(inits)
        array = numpy_helper.to_array(t).copy()
        if array.size:
            flat = array.reshape(-1)
            flat[rng.randrange(flat.size)] = rng.choice((50000, 1 << 20, 1 << 31, 65536.0, 1e9))
            t.CopyFrom(numpy_helper.from_array(array, t.name))
    else:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        if dims:
            dims[rng.randrange(len(dims))].dim_value = rng.choice((50000, 1 << 31, 1 << 40))


STRUCT_MUTATIONS = {"attribute": _mutate_attribute,
                    "input-dims": lambda m, r: _mutate_dims(r.choice(list(m.graph.input)), r),
                    "output-dims": lambda m, r: _mutate_dims(r.choice(list(m.graph.output)), r),
                    "initializer": _mutate_initializer, "wiring": _mutate_wiring, "op": _mutate_op,
                    "opset": _mutate_opset, "huge": _mutate_huge}


def mutate_structure(model, rng):
    applied = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        name = rng.choice(sorted(STRUCT_MUTATIONS))
        try:
            STRUCT_MUTATIONS[name](model, rng)
        except Exception:  # an earlier mutation left nothing this one can apply to (numpy_helper refuses it)
            continue
        applied.append(name)
    return applied


# ---------------------------------------------------------------------------- .pth files

def _pickle_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _pickle_str(text):
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _pickle_int(value):
    if -2**31 <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _pickle_tuple(items):
    return b"(" + b"".join(items) + b"t"


def pth_pickle(tensors, legacy, rng):
    """A protocol-2 state-dict pickle: {name: (storage type, key, numel, offset, size, stride)}."""
    body = [b"\x80\x02", _pickle_global("collections", "OrderedDict"), b")R", b"("]
    for name, (storage, key, numel, offset, size, stride) in tensors.items():
        pid = [_pickle_str("storage"), _pickle_global("torch", storage), _pickle_str(key), _pickle_str("cpu"),
               _pickle_int(numel)]
        if legacy:
            pid.append(b"N")
        args = _pickle_tuple([_pickle_tuple(pid) + b"Q", _pickle_int(offset),
                              _pickle_tuple([_pickle_int(n) for n in size]),
                              _pickle_tuple([_pickle_int(s) for s in stride]), b"\x89",
                              _pickle_global("collections", "OrderedDict") + b")R"])
        body += [_pickle_str(name), _pickle_global("torch._utils", "_rebuild_tensor_v2"), args, b"R"]
    body += [b"u"]
    if rng.random() < 0.2:  # torch's _metadata, set with BUILD on the state dict itself
        body += [b"}", _pickle_str("_metadata"), _pickle_global("collections", "OrderedDict"), b")Rsb"]
    body += [b"."]
    return b"".join(body)


def make_pth(rng: random.Random) -> bytes:
    import io
    import pickle
    import zipfile
    itemsizes = {"FloatStorage": 4, "LongStorage": 8, "HalfStorage": 2, "ByteStorage": 1, "DoubleStorage": 8}
    storages, tensors = {}, {}
    for k in range(rng.randint(1, 3)):
        kind = rng.choice(sorted(itemsizes))
        numel = rng.randint(1, 64)
        storages[str(k)] = (kind, numel)
        size = (numel,) if rng.random() < 0.5 else (1, numel)
        tensors[f"t{k}"] = [kind, str(k), numel, 0, size, (1,) * len(size) if len(size) == 1 else (numel, 1)]
    for _ in range(rng.randint(0, 3)):  # structural mutations of the declared tensors
        t = tensors[rng.choice(sorted(tensors))]
        field_index = rng.choice((0, 2, 3, 4, 5))
        if field_index == 0:
            t[0] = rng.choice(("FloatStorage", "Storage", "BogusStorage"))
        elif field_index == 2:
            t[2] = rng.choice(INTERESTING_INTS)
        elif field_index == 3:
            t[3] = rng.choice(INTERESTING_INTS)
        elif field_index == 4:
            t[4] = tuple(rng.choice(INTERESTING_INTS) for _ in range(rng.choice((0, 1, 2, 4, 40, 100))))
        else:
            t[5] = tuple(rng.choice(INTERESTING_INTS) for _ in range(len(t[4])))
    legacy = rng.random() < 0.4
    pickled = pth_pickle({n: tuple(v) for n, v in tensors.items()}, legacy, rng)
    if rng.random() < 0.3:
        pickled = mutate_bytes(pickled, rng)
    payload = {key: bytes(rng.randrange(256) for _ in range(numel * itemsizes.get(kind, 4)))
               for key, (kind, numel) in storages.items()}
    if legacy:
        parts = [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
                 pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2), pickled,
                 pickle.dumps(list(storages), protocol=2)]
        for key, (kind, numel) in storages.items():
            parts.append(struct.pack("<q", numel) + payload[key])
        data = b"".join(parts)
    else:
        buffer = io.BytesIO()
        method = rng.choice((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED))
        with zipfile.ZipFile(buffer, "w", method) as archive:
            archive.writestr("archive/data.pkl", pickled)
            archive.writestr("archive/byteorder", rng.choice(("little", "big", "middle")))
            for key, raw in payload.items():
                if rng.random() < 0.1:  # a member that inflates to far more than the pickle declares
                    raw = bytes(rng.choice((1 << 20, 8 << 20)))
                archive.writestr(f"archive/data/{key}", raw)
        data = buffer.getvalue()
    if rng.random() < 0.3:
        data = mutate_bytes(data, rng)
    return data


# ---------------------------------------------------------------------------- external data folders

def _tensor_bytes(t) -> bytes:
    from onnx import numpy_helper
    try:
        return numpy_helper.to_array(t).tobytes()
    except Exception:  # a mutated tensor numpy_helper cannot decode: its file holds nothing
        return b""


def make_external_data_folder(model, folder: Path, rng: random.Random) -> Path:
    """Write `model` with its initializers moved to files in `folder`, with mutated references."""
    from onnx import TensorProto
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    blob = bytearray()
    for t in model.graph.initializer:
        raw = t.raw_data if t.raw_data else _tensor_bytes(t)
        offset = len(blob)
        blob += raw
        t.ClearField("raw_data")
        for field_name in ("float_data", "int64_data", "int32_data", "double_data"):
            t.ClearField(field_name)
        t.data_location = TensorProto.EXTERNAL
        entries = {"location": "weights.bin", "offset": str(offset), "length": str(len(raw))}
        if rng.random() < 0.05:
            key = rng.choice(("location", "offset", "length"))
            entries[key] = rng.choice(("abc", "-5", "1e3", "", "99999999999999999999", "0x10", " 7", "../weights.bin",
                                       "/etc/passwd", "sub", "link", "weights.bin\0x", str(2**63), "٣"))
        for key, value in entries.items():
            t.external_data.add(key=key, value=value)
    (folder / "weights.bin").write_bytes(bytes(blob[:rng.randrange(len(blob) + 1)]) if rng.random() < 0.1
                                         else bytes(blob))
    (folder / "sub").mkdir()
    try:
        os.symlink("/etc/hostname", folder / "link")
    except OSError:
        pass
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


# ============================================================================ running one case (in a worker)

@dataclass
class Worker:
    """What a worker process builds once and reuses for every case."""
    models: dict
    scratch: Path
    bundle_bytes: bytes | None = None
    names: list = field(default_factory=list)


def _session_options(rng):
    from edgerun import kernels
    backends = ["numpy"] + (["native"] if kernels.native_available() else [])
    return {"threads": 1, "kernels_backend": rng.choice(backends),
            "memory_budget": rng.choice((None, None, 4096, 64 * 1024, 1 << 20))}


def _feeds(session, rng, hostile=True):
    import numpy as np
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else rng.choice((1, 2, 4)) for d in (arg.shape or [1])]
        if hostile and rng.random() < 0.05 and shape:
            shape[rng.randrange(len(shape))] += 1
        dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(float16)": np.float16,
                 "tensor(double)": np.float64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
                 "tensor(int8)": np.int8, "tensor(bool)": np.bool_}.get(arg.type, np.float32)
        if math.prod(shape) > 1 << 22:
            shape = [1] * len(shape)
        values = np.random.default_rng(rng.randrange(1 << 30)).standard_normal(shape)
        if hostile and rng.random() < 0.1:
            values[...] = rng.choice(INTERESTING_FLOATS)
        feeds[arg.name] = _hostile_feed(values.astype(dtype), rng) if hostile and rng.random() < 0.1 \
            else values.astype(dtype)
    if hostile and rng.random() < 0.03:
        feeds[rng.choice(("extra", ""))] = np.zeros(1, np.float32)
    return feeds


def _hostile_feed(array, rng):
    """The same values as a view edgerun must not trust: non-contiguous, broadcast, wrong dtype or type."""
    import numpy as np
    choice = rng.randrange(6)
    if choice == 0 and array.ndim >= 2:
        return np.swapaxes(np.ascontiguousarray(np.swapaxes(array, 0, -1)), 0, -1)  # Fortran-like strides
    if choice == 1:
        return np.broadcast_to(array.reshape(-1)[:1].reshape((1,) * array.ndim), array.shape)
    if choice == 2:
        return array.astype(rng.choice((np.float64, np.int64, np.float16, np.bool_)))
    if choice == 3:
        return array.tolist()
    if choice == 4:
        return array[..., ::-1]
    return rng.choice((None, "text", 3.5, np.array("text"), np.array([b"x"])))


def _run_model(model_source, rng):
    from edgerun import InferenceSession
    session = InferenceSession(model_source, **_session_options(rng))
    session.run(None, _feeds(session, rng))


def _case_seed(worker, rng, index):
    """A seed model as built, run on ordinary inputs: must succeed (mutations start from valid models)."""
    from edgerun import InferenceSession
    session = InferenceSession(worker.models[worker.names[index % len(worker.names)]].SerializeToString(), threads=1)
    session.run(None, _feeds(session, rng, hostile=False))


def _case_bytes(worker, rng):
    model = worker.models[rng.choice(worker.names)]
    _run_model(mutate_bytes(model.SerializeToString(), rng), rng)


def _case_struct(worker, rng):
    import onnx
    model = onnx.ModelProto()
    model.CopyFrom(worker.models[rng.choice(worker.names)])
    mutate_structure(model, rng)
    _run_model(model.SerializeToString(), rng)


def _case_extdata(worker, rng):
    import onnx
    model = onnx.ModelProto()
    model.CopyFrom(worker.models[rng.choice(worker.names)])
    if rng.random() < 0.3:
        mutate_structure(model, rng)
    _run_model(str(make_external_data_folder(model, worker.scratch / "ext", rng)), rng)


def _case_pth(worker, rng):
    from edgerun.zoo.pth import load_state_dict
    data = make_pth(rng)
    if rng.random() < 0.5:
        load_state_dict(data)
    else:
        path = worker.scratch / "state.pth"
        path.write_bytes(data)
        load_state_dict(path)


def _bundle_bytes(worker):
    if worker.bundle_bytes is None:
        from edgerun.bundle import compile_bundle
        path = worker.scratch / "seed.erb"
        compile_bundle(worker.models["conv_net"].SerializeToString(), path, input_shapes={"x": (1, 3, 16, 16)})
        worker.bundle_bytes = path.read_bytes()
    return worker.bundle_bytes


def _rewritten_header(data: bytes, rng) -> bytes:
    """A consistent bundle (valid checksum) with one JSON header field changed: what a hostile producer writes."""
    import hashlib
    from edgerun.bundle import FORMAT_MAJOR, MAGIC, PREFIX
    length = PREFIX.unpack(data[:PREFIX.size])[4]
    header = json.loads(data[PREFIX.size:PREFIX.size + length])
    weights = data[-(-(PREFIX.size + length) // 64) * 64:]
    path, node = [], header
    while isinstance(node, (dict, list)) and node and rng.random() < 0.8:
        key = rng.choice(sorted(node) if isinstance(node, dict) else range(len(node)))
        path.append((node, key))
        node = node[key]
    if path:
        parent, key = path[-1]
        parent[key] = rng.choice(list(INTERESTING_INTS) + ["", "x", None, [], {}, 1.5, True, [2**40, 2**40]])
    text = json.dumps(header).encode()
    prefix = PREFIX.pack(MAGIC, FORMAT_MAJOR, 0, 0, len(text), hashlib.sha256(text).digest())
    return prefix + text + bytes(-(PREFIX.size + len(text)) % 64) + weights


def _case_bundle(worker, rng):
    import edgerun
    data = _bundle_bytes(worker)
    try:
        data = _rewritten_header(data, rng) if rng.random() < 0.6 else mutate_bytes(data, rng)
    except ImportError:  # the bundle format's internals moved: byte mutations still apply
        data = mutate_bytes(data, rng)
    path = worker.scratch / "case.erb"
    path.write_bytes(data)
    session = edgerun.load(str(path))
    session.run(None, _feeds(session, rng))


def _selftest(kind):
    if kind == "selftest-crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "selftest-hang":
        time.sleep(3600)
    if kind == "selftest-python-error":
        raise KeyError("planted")
    if kind == "selftest-alloc":
        return len(bytearray(64 * 1024**3))  # 64 GiB: beyond every cap
    if kind == "selftest-rss":  # below the address-space cap, above the resident-memory allowance
        block = bytearray(int(os.environ["EDGERUN_FUZZ_RSS_GROWTH"]) + 64 * 1024**2)
        memoryview(block)[::4096] = b"\1" * len(range(0, len(block), 4096))
        return len(block)


CASES = {"bytes": _case_bytes, "struct": _case_struct, "bundle": _case_bundle, "pth": _case_pth,
         "extdata": _case_extdata}


def case_kind(seed: int, index: int, kinds=KINDS) -> str:
    return random.Random(f"{seed}:{index}:kind").choice(kinds)


def run_case(worker: Worker, seed: int, index: int, kind: str) -> dict:
    """Run one case; {'status': 'ok'|'refused'|'error', 'detail': ...}. Only 'error' is a failure."""
    from edgerun.errors import EdgerunError
    rng = random.Random(f"{seed}:{index}")
    try:
        if kind.startswith("selftest"):
            _selftest(kind)
        elif kind == "seed":
            _case_seed(worker, rng, index)
        else:
            CASES[kind](worker, rng)
        return {"status": "ok"}
    except EdgerunError as exc:
        return {"status": "refused", "detail": f"{type(exc).__name__}: {str(exc)[:200]}"}
    except BaseException as exc:  # anything else is a finding
        frames = traceback.extract_tb(exc.__traceback__)[-3:]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))
        return {"status": "error", "detail": f"{type(exc).__name__}: {str(exc)[:300]} at {where}"}


def worker_main() -> None:
    """Read 'seed index kind' lines, answer one JSON line per case; 'start' lines let the parent name a crash."""
    import resource
    import numpy as np  # noqa: F401  (imported before the cap is measured)
    import onnx  # noqa: F401
    import edgerun  # noqa: F401
    from edgerun import InferenceSession  # noqa: F401

    cap = int(os.environ.get("EDGERUN_FUZZ_ADDRESS_CAP", "0"))
    if cap:
        size = _address_space_bytes()
        resource.setrlimit(resource.RLIMIT_AS, (size + cap, size + cap))
    max_rss_growth = int(os.environ.get("EDGERUN_FUZZ_RSS_GROWTH", "0"))
    worker = Worker(models=seed_models(), scratch=Path(tempfile.mkdtemp(prefix="edgerun-fuzz-")))
    worker.names = sorted(worker.models)
    _reset_peak_rss()
    base_rss = _max_rss_bytes()
    out = sys.stdout
    try:
        for line in sys.stdin:
            seed, index, kind = line.split()
            out.write(json.dumps({"start": int(index)}) + "\n")
            out.flush()
            result = run_case(worker, int(seed), int(index), kind)
            grown = _max_rss_bytes() - base_rss
            if max_rss_growth and grown > max_rss_growth and result["status"] != "error":
                result = {"status": "error", "detail": f"resident memory grew by {grown:,} bytes, above the "
                                                       f"ceiling's allowance of {max_rss_growth:,}", "restart": True}
            result["index"] = int(index)
            out.write(json.dumps(result) + "\n")
            out.flush()
            if result.get("restart"):
                return  # the parent starts a fresh worker (peak RSS cannot be reset in place)
    finally:
        shutil.rmtree(worker.scratch, ignore_errors=True)


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    """Linux keeps a process's peak RSS across fork and exec: a worker started by a big parent would inherit
    the parent's peak. Writing 5 to clear_refs resets it to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _max_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ============================================================================ the parent: schedule, watch, count

@dataclass
class Finding:
    index: int
    kind: str
    what: str       # crash, hang, error
    detail: str

    def __str__(self):
        return f"case {self.index} ({self.kind}): {self.what}: {self.detail}"


@dataclass
class Summary:
    seed: int
    cases: int = 0
    ok: int = 0
    refused: int = 0
    findings: list = field(default_factory=list)
    seconds: float = 0.0
    by_kind: dict = field(default_factory=dict)   # kind -> {"ok": n, "refused": n, "failed": n}

    def tally(self, kind, status):
        counts = self.by_kind.setdefault(kind, {"ok": 0, "refused": 0, "failed": 0})
        counts[status] += 1

    def merge(self, other):
        self.cases += other.cases
        self.ok += other.ok
        self.refused += other.refused
        self.findings += other.findings
        for kind, counts in other.by_kind.items():
            for status, n in counts.items():
                self.by_kind.setdefault(kind, {"ok": 0, "refused": 0, "failed": 0})[status] += n

    def count(self, what):
        return sum(1 for f in self.findings if f.what == what)

    def report(self) -> str:
        lines = [f"seed {self.seed}: {self.cases} cases in {self.seconds:.0f} s: {self.ok} ran, {self.refused} refused "
                 f"with an EdgerunError; crashes {self.count('crash')}, hangs {self.count('hang')}, "
                 f"non-EdgerunError {self.count('error')}"]
        lines += [f"  {kind}: {c['ok']} ran, {c['refused']} refused, {c['failed']} failed"
                  for kind, c in sorted(self.by_kind.items())]
        lines += [f"  {f}  (reproduce: python tools/fuzz.py --seed {self.seed} --only {f.index} --kinds {f.kind})"
                  for f in self.findings]
        return "\n".join(lines)


class WorkerProcess:
    def __init__(self, env):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"], cwd=str(ROOT),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, text=True, bufsize=1)
        self.buffer = ""

    def send(self, seed, index, kind):
        self.proc.stdin.write(f"{seed} {index} {kind}\n")
        self.proc.stdin.flush()

    def cpu_seconds(self) -> float:
        """CPU time the worker has used (user + system), from /proc; 0 where /proc is missing."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def read_line(self, deadline, timeout=None):
        """The next line, None on timeout, '' when the worker exited.

        With `timeout`, a worker past the deadline is still waited for while it has used less than `timeout`
        seconds of CPU since the deadline was set (a starved worker on a loaded machine is not hung), up to
        WALL_FACTOR x timeout of wall time (a worker that sleeps forever is)."""
        cpu_start, wall_start = self.cpu_seconds(), time.monotonic()
        while "\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                starved = (timeout is not None and self.cpu_seconds() - cpu_start < timeout
                           and time.monotonic() - wall_start < WALL_FACTOR * timeout)
                if not starved:
                    return None
                left = 1.0
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 65536).decode()
            if not chunk:
                return ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split("\n", 1)
        return line

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def exit_description(self):
        self.proc.wait(timeout=30)
        code = self.proc.returncode
        return f"worker killed by signal {signal.Signals(-code).name}" if code < 0 else f"worker exited with {code}"


def worker_env(max_bytes: int, address_cap: int) -> dict:
    env = dict(os.environ)
    env.update({"EDGERUN_MAX_BYTES": str(max_bytes), "EDGERUN_FUZZ_ADDRESS_CAP": str(address_cap),
                "EDGERUN_FUZZ_RSS_GROWTH": str(4 * max_bytes + 256 * 1024**2),
                "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")})
    return env


def run_cases(seed, indices, kinds=KINDS, timeout=30.0, max_bytes=DEFAULT_MAX_BYTES,
              address_cap=ADDRESS_SPACE_HEADROOM, on_progress=None, case_kinds=None) -> Summary:
    """Run the cases `indices` of `seed` in one worker stream; restart the worker after a crash or hang.

    The kind of each case is drawn from `kinds`, unless `case_kinds` gives it (one per index)."""
    summary = Summary(seed=seed)
    started = time.monotonic()
    env = worker_env(max_bytes, address_cap)
    pending = (list(zip(indices, case_kinds)) if case_kinds is not None
               else [(i, case_kind(seed, i, kinds)) for i in indices])
    worker = None
    while pending:
        if worker is None:
            worker = WorkerProcess(env)
        index, kind = pending.pop(0)
        worker.send(seed, index, kind)
        result = None
        deadline = time.monotonic() + timeout + 60  # the start line: covers the worker's import time
        while result is None:
            line = worker.read_line(deadline, timeout)
            if line is None:
                summary.findings.append(Finding(index, kind, "hang", f"no answer after {timeout:g} s of CPU time "
                                                                     f"or {WALL_FACTOR * timeout:g} s"))
                worker.stop()
                worker = None
                break
            if line == "":
                summary.findings.append(Finding(index, kind, "crash", worker.exit_description()))
                worker = None
                break
            message = json.loads(line)
            if "start" in message:
                deadline = time.monotonic() + timeout
                continue
            result = message
        summary.cases += 1
        if result is None or result["status"] == "error":
            summary.tally(kind, "failed")
        else:
            summary.tally(kind, result["status"])
        if result is not None:
            if result["status"] == "error":
                summary.findings.append(Finding(index, kind, "error", result["detail"]))
            else:
                setattr(summary, result["status"], getattr(summary, result["status"]) + 1)
            if result.get("restart"):
                worker.stop()
                worker = None
        if on_progress:
            on_progress(summary)
    if worker is not None:
        worker.proc.stdin.close()
        worker.proc.wait(timeout=60)
    summary.seconds = time.monotonic() - started
    return summary


def run_parallel(seed, cases, workers, **options) -> Summary:
    """Split the case indices over `workers` threads, each driving one worker process."""
    from concurrent.futures import ThreadPoolExecutor
    started = time.monotonic()
    shards = [range(w, cases, workers) for w in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda shard: run_cases(seed, shard, **options), shards))
    total = Summary(seed=seed)
    for part in parts:
        total.merge(part)
    total.findings.sort(key=lambda f: f.index)
    total.seconds = time.monotonic() - started
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a case may take before it is a hang")
    parser.add_argument("--max-bytes", default=str(DEFAULT_MAX_BYTES), help="edgerun's ceiling in the workers")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--only", type=int, help="run this one case index (to reproduce a finding)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main()
        return 0
    from edgerun.units import parse_bytes
    kinds = tuple(args.kinds.split(","))
    unknown = set(kinds) - set(KINDS) - set(SELFTEST_KINDS) - {"seed"}
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {KINDS}")
    options = dict(kinds=kinds, timeout=args.timeout, max_bytes=parse_bytes(args.max_bytes, "--max-bytes"))
    if args.only is not None:
        summary = run_cases(args.seed, [args.only], **options)
    else:
        summary = run_parallel(args.seed, args.cases, max(1, args.workers), **options)
    print(summary.report())
    return 1 if summary.findings else 0


if __name__ == "__main__":
    sys.exit(main())
