"""ONNX file, bytes or ModelProto -> edgerun.ir.Graph.

Model files are untrusted: parsing errors become ModelLoadError, and external data is read only
from regular files inside the model's own folder, within their declared bounds.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgerun import limits, ops
from edgerun.errors import ModelLoadError, UnsupportedOperatorError
from edgerun.ir import Graph, Node, ValueInfo, readonly

MIN_OPSET, MAX_OPSET = 7, 21

# Operator versions introduced after opset 21 that change nothing for edgerun: each one only widens the
# operator's type constraints (ONNX changelog, checked against onnx.defs by tests/test_onnx_backend.py), so a
# model at a newer opset means exactly what it would at opset 21 for the types edgerun runs.
_TYPE_ONLY_REVISIONS: dict[tuple[str, int], str] = {
    **{(op, 22): "adds bfloat16 (onnx PR #6099, 'Add bfloat16 to all relevant ops')"
       for op in ("Conv", "ConvTranspose", "GlobalAveragePool", "HardSigmoid", "HardSwish")},
    # The opset-22 text also states that, with ceil_mode, windows starting in the right padding are ignored:
    # a clarification of the output-size rule that edgerun's pools apply at every opset.
    ("AveragePool", 22): "adds bfloat16; clarifies ceil_mode windows starting in the right padding are dropped",
    ("MaxPool", 22): "adds bfloat16; clarifies ceil_mode windows starting in the right padding are dropped",
    ("Dropout", 22): "adds bfloat16 and the float8 types (ratio description reworded, same default 0.5)",
    **{(op, v): note
       for op in ("Cast", "Constant", "ConstantOfShape", "Flatten", "Identity", "Pad", "Reshape", "Shape",
                  "Squeeze", "Transpose", "Unsqueeze")
       for v, note in ((23, "adds float4e2m1"), (24, "adds float8e8m0"), (25, "adds int2/uint2"))},
    # Cast 24 also adds `round_mode`, which only applies to casts to float8e8m0 (a type edgerun refuses).
    ("Cast", 24): "adds float8e8m0 and its round_mode attribute (used only for casts to float8e8m0)",
    ("Cast", 28): "adds float6e2m3/float6e3m2",
}
_MAX_MODEL_BYTES = 2 * 1024**3


def load_model(model, base_dir: str | os.PathLike | None = None) -> Graph:
    """Load a path, bytes or onnx.ModelProto into a Graph."""
    proto, base_dir = _read_proto(model, base_dir)
    opset = _default_opset(proto)
    _check_operators_supported(proto, opset)
    _check_newer_opset(proto, opset)
    _check_structure(proto, model if _uses_external_data(proto) else None)
    return _to_graph(proto, opset, base_dir)


def _read_proto(model, base_dir):
    if isinstance(model, onnx.ModelProto):
        return model, base_dir
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _parse(bytes(model), "<bytes>"), base_dir
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"model file {str(path)!r} does not exist or is not a regular file")
        if path.stat().st_size > _MAX_MODEL_BYTES:
            raise ModelLoadError(f"model file {str(path)!r} is larger than 2 GiB; keep weights in external data")
        return _parse(path.read_bytes(), str(path)), path.resolve().parent
    raise ModelLoadError(f"model must be a path, bytes or onnx.ModelProto, not {type(model).__name__}")


def _parse(data: bytes, origin: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{origin}: the model is empty (0 bytes)")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelLoadError(f"{origin}: not a valid ONNX protobuf ({exc}); the file may be truncated or corrupt") from None
    if not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise ModelLoadError(f"{origin}: the model has no graph or an empty graph; the file may be truncated or not ONNX")
    return proto


def _default_opset(proto: onnx.ModelProto) -> int:
    versions = [op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")]
    if not versions:
        raise ModelLoadError("the model declares no opset for the default ONNX domain")
    opset = versions[0]
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= max(MAX_OPSET, newest):
        raise ModelLoadError(f"the model uses ONNX opset {opset}; edgerun supports opsets {MIN_OPSET} to {MAX_OPSET}"
                             f" (and later opsets up to {newest} where the model's operators did not change)")
    return opset


def operator_changes_after(op_type: str, opset: int) -> list[int]:
    """Versions of the ONNX operator `op_type` introduced after MAX_OPSET, up to `opset`."""
    versions = set()
    for version in range(MAX_OPSET + 1, opset + 1):
        try:
            since = onnx.defs.get_schema(op_type, max_inclusive_version=version, domain="").since_version
        except onnx.defs.SchemaError:
            continue
        if since > MAX_OPSET:
            versions.add(since)
    return sorted(versions)


def _check_newer_opset(proto: onnx.ModelProto, opset: int) -> None:
    """Accept a model declaring an opset above MAX_OPSET only where that opset means what opset 21 means.

    Promise: edgerun implements the ONNX operators as defined in opsets 7 to 21 (MAX_OPSET). A model that
    declares a newer default-domain opset N is accepted when, for every node, each version of its operator
    introduced in opsets 22..N is listed in _TYPE_ONLY_REVISIONS: revisions that only add element types
    (bfloat16, float8, float4, int2, ...), checked against onnx.defs by tests/test_onnx_backend.py. Such a
    model means what it would mean at opset 21; a newly allowed element type runs only where edgerun's
    kernels handle it (Cast, for one, refuses to cast to bfloat16, float8, float4 or 2-/4-bit integers).
    Any other revision (new attribute, new input, changed behaviour) raises ModelLoadError naming the node,
    the operator, the version that changed it and the model's opset. Opsets newer than the installed onnx
    package knows are refused, as their operators cannot be looked up.
    """
    if opset <= MAX_OPSET:
        return
    for index, node in enumerate(proto.graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        for version in operator_changes_after(node.op_type, opset):
            if (node.op_type, version) not in _TYPE_ONLY_REVISIONS:
                name = node.name or f"{node.op_type}_{index}"
                raise ModelLoadError(
                    f"node {name!r}: operator {node.op_type!r} changed in opset {version} and the model uses "
                    f"opset {opset}; edgerun implements opsets {MIN_OPSET} to {MAX_OPSET} (later opsets only for "
                    f"operators that gained types and nothing else)")


def _check_operators_supported(proto: onnx.ModelProto, opset: int) -> None:
    for index, node in enumerate(proto.graph.node):
        if not ops.is_supported(node.op_type, node.domain):
            raise UnsupportedOperatorError(node.name or f"{node.op_type}_{index}", node.op_type, node.domain,
                                           opset, ops.supported_ops())


def _uses_external_data(proto: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def _check_structure(proto: onnx.ModelProto, path=None) -> None:
    """onnx's checker; given the file's path when external data must be found beside it."""
    try:
        onnx.checker.check_model(str(path) if isinstance(path, (str, os.PathLike)) else proto)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise ModelLoadError(f"the model is malformed: {first_line}") from None
    except ValueError as exc:  # checker refuses > 2 GiB protos; external data is checked by us
        if "2GB" not in str(exc):
            raise ModelLoadError(f"the model is malformed: {exc}") from None


def _to_graph(proto: onnx.ModelProto, opset: int, base_dir) -> Graph:
    g = proto.graph
    weights = limits.Budget("the model's weights")
    initializers = {}
    for t in g.initializer:
        weights.add(_declared_nbytes(t), f"initializer {t.name!r} (shape {list(t.dims)})")
        initializers[t.name] = _tensor_to_array(t, base_dir)
    nodes = [_to_node(n, i, opset) for i, n in enumerate(g.node)]
    inputs = [_value_info(v, "graph input") for v in g.input if v.name not in initializers]
    outputs = [_value_info(v, "graph output") for v in g.output]
    return Graph(nodes=nodes, inputs=inputs, outputs=outputs, initializers=initializers,
                 opset=opset, name=g.name or "graph")


def _value_info(v: onnx.ValueInfoProto, role: str) -> ValueInfo:
    tt = v.type.tensor_type
    if not v.type.HasField("tensor_type"):
        raise ModelLoadError(f"{role} {v.name!r} is not a tensor; only tensors are supported")
    dtype = _np_dtype(tt.elem_type, v.name)
    shape = None
    if tt.HasField("shape"):
        shape = tuple(_dim(d) for d in tt.shape.dim)
        _check_declared_dims(shape, v.name, role)
    return ValueInfo(v.name, shape, dtype)


def _check_declared_dims(shape: tuple, name: str, role: str) -> None:
    """A declared dimension is a size: negative is meaningless, and edgerun runs no empty input (a 0 there
    would also switch off the check of the fed shape)."""
    smallest = 1 if role == "graph input" else 0
    for axis, d in enumerate(shape):
        if isinstance(d, int) and d < smallest:
            rule = "edgerun runs no empty inputs" if d == 0 else "a size cannot be negative"
            raise ModelLoadError(f"{role} {name!r}: dimension {axis} is declared as {d} (shape {list(shape)}); "
                                 f"{rule}: declare a dimension >= {smallest}, or a symbolic one")


def _dim(d):
    if d.HasField("dim_value"):
        return int(d.dim_value)
    if d.HasField("dim_param") and d.dim_param:
        return d.dim_param
    return None


def _np_dtype(elem_type: int, what: str) -> np.dtype:
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        raise ModelLoadError(f"{what!r}: unsupported element type {elem_type}") from None
    if dtype.hasobject:
        raise ModelLoadError(f"{what!r}: element type {onnx.TensorProto.DataType.Name(elem_type)} is not supported; "
                             f"edgerun runs numeric tensors only")
    return dtype


def _to_node(n: onnx.NodeProto, index: int, opset: int) -> Node:
    name = n.name or f"{n.op_type}_{index}"
    attrs = {a.name: _attribute_value(a, name, n.op_type, opset) for a in n.attribute}
    return Node(op_type=n.op_type, inputs=list(n.input), outputs=list(n.output), attrs=attrs,
                name=name, domain=n.domain)


def _attribute_value(a: onnx.AttributeProto, node_name: str, op_type: str, opset: int):
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise UnsupportedOperatorError(node_name, op_type, "", opset, [])
    if a.type == onnx.AttributeProto.TENSOR:
        return readonly(numpy_helper.to_array(a.t))
    if a.type == onnx.AttributeProto.TENSORS:
        return [readonly(numpy_helper.to_array(t)) for t in a.tensors]
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in value]
    return value


def _tensor_to_array(t: onnx.TensorProto, base_dir) -> np.ndarray:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return readonly(_external_tensor(t, base_dir))
    try:
        return readonly(numpy_helper.to_array(t))
    except Exception as exc:
        raise ModelLoadError(f"initializer {t.name!r} cannot be decoded: {exc}") from None


def _declared_nbytes(t: onnx.TensorProto) -> int:
    """Bytes the initializer's declared shape takes, before anything is decoded or read."""
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"initializer {t.name!r}: negative dimension in its shape {dims}")
    itemsize = _np_dtype(t.data_type, t.name).itemsize
    return math.prod(dims) * itemsize


def _is_file_inside(root: Path, location: str) -> bool:
    if "\0" in location:
        return False
    try:
        target = (root / location).resolve()
        return root in target.parents and target.is_file()
    except (OSError, RuntimeError, ValueError):  # unreadable path, symlink loop
        return False


def _external_int(info: dict, key: str, default: int | None, name: str) -> int | None:
    text = info.get(key)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit():
        raise ModelLoadError(f"initializer {name!r}: external data {key} {text!r} is not a non-negative integer")
    return int(text)


def _external_tensor(t: onnx.TensorProto, base_dir) -> np.ndarray:
    info = {e.key: e.value for e in t.external_data}
    if base_dir is None:
        raise ModelLoadError(f"initializer {t.name!r} uses external data, but the model was not loaded from a file")
    root = Path(base_dir).resolve()
    location = info.get("location", "")
    if not location or not _is_file_inside(root, location):
        raise ModelLoadError(f"initializer {t.name!r}: external data location {location!r} is not a file inside "
                             f"the model's folder {str(root)!r}")
    target = (root / location).resolve()
    dtype = _np_dtype(t.data_type, t.name)
    expected = _declared_nbytes(t)
    offset = _external_int(info, "offset", 0, t.name)
    length = _external_int(info, "length", expected, t.name)
    file_size = target.stat().st_size
    if length != expected or offset + length > file_size:
        raise ModelLoadError(f"initializer {t.name!r}: external data (offset {offset}, length {length}) does not "
                             f"match its shape {list(t.dims)} or lies beyond the end of {location!r} "
                             f"({file_size} bytes)")
    with open(target, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise ModelLoadError(f"initializer {t.name!r}: {location!r} ended after {len(data)} of {length} bytes")
    return np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(tuple(t.dims))
