"""Ahead-of-time bundles: compile a model once, run it on a device without onnx.

`compile_bundle` runs the whole front end (loader, shape inference, passes, scheduler)
and writes one file: a fixed 64-byte prefix, a JSON header (graph, value shapes, plan,
tensor table) and a weights section whose arrays are 64-byte aligned so `load` can
memory-map them read-only.  The layout is documented in docs/bundle-format.md.

A bundle is untrusted input: `load` checks magic, version, lengths, both checksums and
every offset, shape and dtype before use, and reports any problem as a BundleError.
It imports neither onnx nor onnxruntime (nor edgerun.loader).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import struct
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgerun.errors import (BundleError, EdgerunError, InvalidInputError, InvalidModelError, InvalidOptionError,
                            MemoryBudgetError, ResourceLimitError)
from edgerun.ir import Graph, Node, TensorInfo, ValueInfo
from edgerun.session import (checked_backend, checked_feeds, checked_output_names, checked_threads, node_arg,
                             run_measured)

MAGIC = b"\x89EDGERUN"


def is_bundle(path) -> bool:
    """True when the file at `path` starts with the bundle magic."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
# magic, major, minor, flags, header length, header sha256, 8 reserved bytes: 64 bytes.
PREFIX = struct.Struct("<8sHHIQ32s8x")
TENSOR_ALIGNMENT = 64
MAX_HEADER_BYTES = 64 * 1024**2
DEFAULT_MAX_ARENA_BYTES = 4 * 1024**3
_MAX_TENSOR_BYTES = 1 << 48
_MAX_DIM = 1 << 40
_HASH_CHUNK = 16 * 1024**2

# Stored dtype name -> little-endian numpy dtype. Anything else is refused.
_DTYPES = {name: np.dtype(code) for name, code in {
    "float32": "<f4", "float16": "<f2", "float64": "<f8",
    "int8": "i1", "uint8": "u1", "int16": "<i2", "uint16": "<u2",
    "int32": "<i4", "uint32": "<u4", "int64": "<i8", "uint64": "<u8", "bool": "?"}.items()}
_ATTR_TYPES = ("int", "float", "str", "ints", "floats", "strs", "tensor")
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
EXIT_USAGE, EXIT_BUDGET = 2, 3   # as edgerun.cli: bad usage or input / does not fit the budget


def _align_up(size: int, alignment: int = TENSOR_ALIGNMENT) -> int:
    return -(-size // alignment) * alignment


# =====================================================================================
# Compiling
# =====================================================================================

@dataclass(frozen=True)
class BundleInfo:
    """What compile_bundle wrote."""

    path: str
    file_bytes: int
    header_bytes: int
    weights_bytes: int
    arena_bytes: int
    memory_budget: int | None
    backend: str
    plan: object = field(repr=False)   # the scheduler.Plan stored in the bundle


def compile_bundle(model, out_path, memory_budget=None, input_shapes=None, **session_options) -> BundleInfo:
    """Compile `model` (path, bytes or onnx.ModelProto) for fixed input shapes into a bundle file.

    input_shapes: {input name: shape} for inputs with dynamic dimensions (required for those).
    session_options: passed to InferenceSession (kernels_backend, planner, schedule, max_t, ...).
    """
    from edgerun.session import InferenceSession

    session = InferenceSession(model, memory_budget=memory_budget, **session_options)
    session.prepare(_static_input_shapes(session.get_inputs(), input_shapes))
    tensors = _TensorTable()
    header = {
        "format": "edgerun-bundle",
        "producer": _producer(),
        "graph": _graph_header(session.graph, tensors),
        "plan": session.plan.to_dict(),
        "arena_bytes": session.plan.peak_bytes,
        "memory_budget": session.memory_budget,
        "backend": session.backend,
        "planner": session.plan.planner,
        "max_t": session.max_t,
        "tensors": tensors.entries,
    }
    return _write_bundle(Path(out_path), header, tensors, session)


def _producer() -> str:
    import edgerun
    return f"edgerun {edgerun.__version__}"


def _static_input_shapes(inputs, given) -> dict[str, tuple[int, ...]]:
    given = dict(given or {})
    names = [arg.name for arg in inputs]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise InvalidOptionError(f"input_shapes names unknown input(s) {unknown}; the model's inputs are {names}")
    shapes = {}
    for arg in inputs:
        if arg.name in given:
            shapes[arg.name] = _checked_given_shape(arg, given[arg.name])
        elif arg.shape is not None and all(_is_positive_int(d) for d in arg.shape):
            shapes[arg.name] = tuple(arg.shape)
        else:
            example = "x".join(str(d) if _is_positive_int(d) else "N" for d in (arg.shape or ["N"]))
            raise InvalidOptionError(
                f"input {arg.name!r} has dynamic shape {arg.shape}: a bundle needs static shapes; give it with "
                f"input_shapes={{{arg.name!r}: (...)}} or on the command line --input-shape {arg.name}={example}")
    return shapes


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _checked_given_shape(arg, shape) -> tuple[int, ...]:
    shape = tuple(shape)
    if not all(_is_positive_int(d) for d in shape):
        raise InvalidOptionError(f"input_shapes[{arg.name!r}] = {list(shape)}: dimensions must be positive integers")
    if arg.shape is not None:
        if len(shape) != len(arg.shape):
            raise InvalidOptionError(f"input_shapes[{arg.name!r}] = {list(shape)} has rank {len(shape)}, "
                                     f"the model's input has rank {len(arg.shape)} (shape {arg.shape})")
        for axis, (fixed, wanted) in enumerate(zip(arg.shape, shape)):
            if _is_positive_int(fixed) and fixed != wanted:
                raise InvalidOptionError(f"input_shapes[{arg.name!r}] = {list(shape)}: dimension {axis} is "
                                         f"fixed to {fixed} by the model")
    return shape


class _TensorTable:
    """Arrays destined for the weights section, each at a 64-byte aligned offset."""

    def __init__(self):
        self.entries: list[dict] = []
        self.arrays: list[np.ndarray] = []
        self._index_by_id: dict[int, int] = {}
        self._originals: list[np.ndarray] = []   # keeps ids stable while the table lives
        self.size = 0

    def add(self, name: str, array: np.ndarray) -> int:
        if id(array) in self._index_by_id:
            return self._index_by_id[id(array)]
        array = np.asarray(array)
        dtype_name = _dtype_name(array.dtype, name)
        stored = np.ascontiguousarray(array, dtype=_DTYPES[dtype_name])
        offset = _align_up(self.size)
        self.entries.append({"name": name, "dtype": dtype_name, "shape": list(array.shape),
                             "offset": offset, "nbytes": int(stored.nbytes)})
        self.arrays.append(stored)
        self._originals.append(array)
        self._index_by_id[id(array)] = len(self.entries) - 1
        self.size = offset + int(stored.nbytes)
        return len(self.entries) - 1

    @property
    def section_bytes(self) -> int:
        return _align_up(self.size)

    def chunks(self):
        """The weights section as byte chunks (padding included), in file order."""
        position = 0
        for entry, array in zip(self.entries, self.arrays):
            if entry["offset"] > position:
                yield bytes(entry["offset"] - position)
            yield memoryview(array.reshape(-1).view(np.uint8))
            position = entry["offset"] + entry["nbytes"]
        if self.section_bytes > position:
            yield bytes(self.section_bytes - position)


def _dtype_name(dtype, what: str) -> str:
    for name, stored in _DTYPES.items():
        if np.dtype(dtype) == stored or np.dtype(dtype) == stored.newbyteorder("="):
            return name
    raise InvalidModelError(f"tensor {what!r} has dtype {np.dtype(dtype)}, which a bundle cannot store "
                            f"(supported: {', '.join(_DTYPES)})")


def _graph_header(graph: Graph, tensors: _TensorTable) -> dict:
    vi = graph.value_info
    return {
        "name": graph.name,
        "opset": graph.opset,
        "inputs": [_value_header(v.name, vi[v.name]) for v in graph.inputs],
        "outputs": [_value_header(v.name, vi[v.name]) for v in graph.outputs],
        "initializers": {name: tensors.add(name, array) for name, array in graph.initializers.items()},
        "value_info": {name: _value_info_header(name, info, tensors) for name, info in vi.items()},
        "nodes": [_node_header(node, tensors) for node in graph.nodes],
    }


def _value_header(name: str, info: TensorInfo) -> dict:
    return {"name": name, "shape": list(info.shape), "dtype": _dtype_name(info.dtype, name)}


def _value_info_header(name: str, info: TensorInfo, tensors: _TensorTable) -> dict:
    shape = None if info.shape is None else [d if isinstance(d, int) else str(d) for d in info.shape]
    value = None if info.value is None else tensors.add(name, info.value)
    return {"shape": shape, "dtype": _dtype_name(info.dtype, name), "value": value}


def _node_header(node: Node, tensors: _TensorTable) -> dict:
    return {"op_type": node.op_type, "domain": node.domain, "name": node.name,
            "inputs": list(node.inputs), "outputs": list(node.outputs),
            "attrs": {key: _encode_attr(node, key, value, tensors) for key, value in node.attrs.items()}}


def _encode_attr(node: Node, key: str, value, tensors: _TensorTable) -> dict:
    if isinstance(value, np.ndarray):
        return {"type": "tensor", "value": tensors.add(f"{node.name}:{key}", value)}
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return {"type": "int", "value": int(value)}
    if isinstance(value, (float, np.floating)):
        return {"type": "float", "value": _encode_float(value)}
    if isinstance(value, str):
        return {"type": "str", "value": value}
    if isinstance(value, (list, tuple)):
        items = list(value)
        if all(isinstance(v, (bool, np.bool_, int, np.integer)) for v in items):
            return {"type": "ints", "value": [int(v) for v in items]}
        if all(isinstance(v, (bool, int, float, np.integer, np.floating)) for v in items):
            return {"type": "floats", "value": [_encode_float(v) for v in items]}
        if all(isinstance(v, str) for v in items):
            return {"type": "strs", "value": items}
    raise InvalidModelError(f"{node.describe()}: attribute {key!r} = {value!r} cannot be stored in a bundle")


def _encode_float(value):
    value = float(value)
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _write_bundle(path: Path, header: dict, tensors: _TensorTable, session) -> BundleInfo:
    digest = hashlib.sha256()
    for chunk in tensors.chunks():
        digest.update(chunk)
    header["weights"] = {"length": tensors.section_bytes, "sha256": digest.hexdigest()}
    try:
        header_bytes = json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except ValueError as exc:
        raise InvalidModelError(f"the compiled model cannot be written as a bundle header: {exc}") from None
    prefix = PREFIX.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, 0, len(header_bytes),
                         hashlib.sha256(header_bytes).digest())
    weights_offset = _align_up(PREFIX.size + len(header_bytes))
    temporary = path.with_name(path.name + ".partial")
    try:
        with open(temporary, "wb") as out:
            out.write(prefix)
            out.write(header_bytes)
            out.write(bytes(weights_offset - PREFIX.size - len(header_bytes)))
            for chunk in tensors.chunks():
                out.write(chunk)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise InvalidOptionError(f"cannot write the bundle to {str(path)!r}: {exc.strerror or exc}") from None
    return BundleInfo(str(path), weights_offset + tensors.section_bytes, len(header_bytes), tensors.section_bytes,
                      session.plan.peak_bytes, session.memory_budget, session.backend, session.plan)


# =====================================================================================
# Reading and checking
# =====================================================================================

@dataclass
class _RawBundle:
    header: dict
    weights: np.ndarray          # read-only uint8 memmap of the weights section (or empty)
    tensors: list[np.ndarray]    # read-only views into `weights`, by table index
    file_bytes: int


def read_bundle(path, *, verify_weights: bool = True) -> _RawBundle:
    """Open, check and map a bundle file; raise BundleError for anything malformed."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as stream:
            file_bytes = os.fstat(stream.fileno()).st_size
            header_length, header_digest = _read_prefix(stream, file_bytes)
            header_bytes = stream.read(header_length)
            padding = stream.read(_align_up(PREFIX.size + header_length) - PREFIX.size - header_length)
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path!r}: {exc}") from None
    if len(header_bytes) != header_length:
        raise BundleError(f"bundle header is truncated: expected {header_length} bytes, read {len(header_bytes)}")
    if hashlib.sha256(header_bytes).digest() != header_digest:
        raise BundleError("bundle header checksum mismatch: the header is corrupted")
    header = _parse_header(header_bytes)
    if padding.strip(b"\0"):
        raise BundleError("bundle padding between the header and the weights is not zero: the file is corrupted")
    weights_offset = _align_up(PREFIX.size + header_length)
    weights = _map_weights(path, header, weights_offset, file_bytes, verify_weights)
    tensors = _tensor_views(header, weights)
    return _RawBundle(header, weights, tensors, file_bytes)


def _read_prefix(stream, file_bytes: int) -> tuple[int, bytes]:
    raw = stream.read(PREFIX.size)
    if len(raw) < len(MAGIC) or raw[:len(MAGIC)] != MAGIC:
        raise BundleError(f"not an edgerun bundle: the file starts with {raw[:len(MAGIC)]!r}, "
                          f"expected the magic bytes {MAGIC!r}")
    if len(raw) < PREFIX.size:
        raise BundleError(f"bundle is truncated: {file_bytes} bytes, shorter than the {PREFIX.size}-byte prefix")
    _, major, minor, _flags, header_length, digest = PREFIX.unpack(raw)
    if major != FORMAT_MAJOR:
        raise BundleError(f"bundle format version {major}.{minor} is not supported: this edgerun reads major "
                          f"version {FORMAT_MAJOR} only; recompile the bundle with this edgerun")
    available = file_bytes - PREFIX.size
    if header_length == 0 or header_length > available or header_length > MAX_HEADER_BYTES:
        raise BundleError(f"bundle header length {header_length} bytes is invalid: it extends beyond the end of "
                          f"the file ({file_bytes} bytes, {available} after the prefix) or is out of range "
                          f"(1..{MAX_HEADER_BYTES})")
    return header_length, digest


def _parse_header(header_bytes: bytes) -> dict:
    try:
        header = json.loads(header_bytes.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"bundle header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != "edgerun-bundle":
        raise BundleError("bundle header is not an edgerun-bundle JSON object")
    return header


def _refuse_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def _map_weights(path: str, header: dict, offset: int, file_bytes: int, verify: bool) -> np.ndarray:
    section = _field(header, "weights", dict, "header")
    length = _int_field(section, "length", "header.weights", maximum=_MAX_TENSOR_BYTES)
    expected_digest = _field(section, "sha256", str, "header.weights")
    expected_size = offset + length
    if file_bytes < expected_size:
        raise BundleError(f"bundle is truncated: the header promises {expected_size} bytes "
                          f"(weights section of {length} bytes at offset {offset}), the file has {file_bytes}")
    if file_bytes > expected_size:
        raise BundleError(f"bundle has {file_bytes - expected_size} unexpected bytes after the weights section")
    if length == 0:
        weights = np.zeros(0, dtype=np.uint8)
        weights.flags.writeable = False
    else:
        weights = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(length,))
    if verify and _sha256_hex(weights) != expected_digest:
        raise BundleError("bundle weights checksum mismatch: the weights section is corrupted")
    return weights


def _sha256_hex(data: np.ndarray) -> str:
    digest = hashlib.sha256()
    for start in range(0, data.size, _HASH_CHUNK):
        digest.update(memoryview(data[start:start + _HASH_CHUNK]))
    return digest.hexdigest()


def _tensor_views(header: dict, weights: np.ndarray) -> list[np.ndarray]:
    table = _field(header, "tensors", list, "header")
    return [_tensor_view(entry, weights, f"header.tensors[{i}]") for i, entry in enumerate(table)]


def _tensor_view(entry, weights: np.ndarray, where: str) -> np.ndarray:
    _require(isinstance(entry, dict), f"{where}: expected an object")
    name = _field(entry, "name", str, where)
    where = f"{where} ({name!r})"
    dtype = _dtype_field(entry, "dtype", where)
    shape = _shape_field(entry, "shape", where)
    offset = _int_field(entry, "offset", where, maximum=_MAX_TENSOR_BYTES)
    nbytes = _int_field(entry, "nbytes", where, maximum=_MAX_TENSOR_BYTES)
    _require(offset % TENSOR_ALIGNMENT == 0, f"{where}: offset {offset} is not {TENSOR_ALIGNMENT}-byte aligned")
    _require(nbytes == math.prod(shape) * dtype.itemsize,
             f"{where}: nbytes {nbytes} does not match shape {shape} of {dtype.name}")
    _require(offset + nbytes <= weights.size,
             f"{where}: bytes [{offset}, {offset + nbytes}) lie beyond the weights section ({weights.size} bytes)")
    array = weights[offset:offset + nbytes].view(np.ndarray).view(dtype).reshape(shape)
    array.flags.writeable = False
    return array


# ---- small checkers: each names where in the header the problem is

def _require(condition: bool, message: str) -> None:
    if not condition:
        raise BundleError(f"malformed bundle: {message}")


def _field(obj: dict, key: str, kind, where: str):
    _require(isinstance(obj, dict) and key in obj, f"{where}: missing field {key!r}")
    value = obj[key]
    _require(isinstance(value, kind) and not (kind is int and isinstance(value, bool)),
             f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _int_field(obj: dict, key: str, where: str, minimum: int = 0, maximum: int = _MAX_TENSOR_BYTES) -> int:
    value = _field(obj, key, int, where)
    _require(minimum <= value <= maximum, f"{where}.{key} = {value} is outside {minimum}..{maximum}")
    return value


def _dtype_field(obj: dict, key: str, where: str) -> np.dtype:
    name = _field(obj, key, str, where)
    _require(name in _DTYPES, f"{where}.{key}: unknown dtype {name!r}")
    return _DTYPES[name]


def _shape_field(obj: dict, key: str, where: str, symbolic: bool = False) -> tuple:
    shape = _field(obj, key, list, where)
    for d in shape:
        ok_int = isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= _MAX_DIM
        _require(ok_int or (symbolic and isinstance(d, str)), f"{where}.{key}: bad dimension {d!r} in {shape}")
    static = [d for d in shape if isinstance(d, int)]
    _require(len(shape) <= 32 and math.prod(static) <= _MAX_TENSOR_BYTES, f"{where}.{key}: shape {shape} is too large")
    return tuple(shape)


def _str_list(obj: dict, key: str, where: str) -> list[str]:
    values = _field(obj, key, list, where)
    _require(all(isinstance(v, str) for v in values), f"{where}.{key}: expected a list of strings")
    return list(values)


def _tensor_ref(value, tensors: list[np.ndarray], where: str) -> np.ndarray:
    _require(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(tensors),
             f"{where}: tensor reference {value!r} is not an index into the tensor table ({len(tensors)} entries)")
    return tensors[value]


# ---- rebuilding the graph

def _graph_from_header(data, tensors: list[np.ndarray]) -> Graph:
    _require(isinstance(data, dict), "header.graph: expected an object")
    where = "header.graph"
    initializers = _field(data, "initializers", dict, where)
    value_info = _field(data, "value_info", dict, where)
    graph = Graph(
        nodes=[_node_from_header(n, tensors, f"{where}.nodes[{i}]")
               for i, n in enumerate(_field(data, "nodes", list, where))],
        inputs=[_value_from_header(v, f"{where}.inputs[{i}]")
                for i, v in enumerate(_field(data, "inputs", list, where))],
        outputs=[_value_from_header(v, f"{where}.outputs[{i}]")
                 for i, v in enumerate(_field(data, "outputs", list, where))],
        initializers={str(k): _tensor_ref(v, tensors, f"{where}.initializers[{k!r}]") for k, v in initializers.items()},
        opset=_int_field(data, "opset", where, minimum=1, maximum=10_000),
        name=_field(data, "name", str, where),
        value_info={str(k): _tensor_info_from_header(v, tensors, f"{where}.value_info[{k!r}]")
                    for k, v in value_info.items()},
    )
    _check_graph_wiring(graph)
    _check_shapes_by_inference(graph)
    return graph


def _value_from_header(data, where: str) -> ValueInfo:
    return ValueInfo(_field(data, "name", str, where), _shape_field(data, "shape", where),
                     _dtype_field(data, "dtype", where))


def _tensor_info_from_header(data, tensors, where: str) -> TensorInfo:
    _require(isinstance(data, dict) and "shape" in data and "value" in data, f"{where}: expected shape and value")
    shape = None if data["shape"] is None else _shape_field(data, "shape", where, symbolic=True)
    dtype = _dtype_field(data, "dtype", where)
    value = None if data["value"] is None else _tensor_ref(data["value"], tensors, f"{where}.value")
    if value is not None:
        _require(value.dtype == dtype and shape == value.shape,
                 f"{where}: constant value {value.dtype.name}{list(value.shape)} does not match "
                 f"{dtype.name}{list(shape or [])}")
    return TensorInfo(shape, dtype, value)


def _node_from_header(data, tensors, where: str) -> Node:
    _require(isinstance(data, dict), f"{where}: expected an object")
    attrs = _field(data, "attrs", dict, where)
    return Node(
        op_type=_field(data, "op_type", str, where),
        inputs=_str_list(data, "inputs", where),
        outputs=_str_list(data, "outputs", where),
        attrs={str(k): _decode_attr(v, tensors, f"{where}.attrs[{k!r}]") for k, v in attrs.items()},
        name=_field(data, "name", str, where),
        domain=_field(data, "domain", str, where),
    )


def _decode_attr(data, tensors, where: str):
    _require(isinstance(data, dict) and data.get("type") in _ATTR_TYPES and "value" in data,
             f"{where}: expected {{'type': one of {_ATTR_TYPES}, 'value': ...}}")
    kind, value = data["type"], data["value"]
    if kind == "tensor":
        return _tensor_ref(value, tensors, where)
    if kind in ("int", "float", "str"):
        return _decode_scalar(kind, value, where)
    _require(isinstance(value, list), f"{where}: expected a list for type {kind!r}")
    return [_decode_scalar(kind[:-1], v, where) for v in value]


def _decode_scalar(kind: str, value, where: str):
    if kind == "int":
        _require(isinstance(value, int) and not isinstance(value, bool), f"{where}: expected an int, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, str) and value in _NON_FINITE:
            return _NON_FINITE[value]
        _require(isinstance(value, (int, float)) and not isinstance(value, bool),
                 f"{where}: expected a float, got {value!r}")
        return float(value)
    _require(isinstance(value, str), f"{where}: expected a string, got {value!r}")
    return value


def _check_graph_wiring(graph: Graph) -> None:
    """Every value a node reads exists before it runs, every output has a static shape, names are unique."""
    from edgerun import ops

    names = [n.name for n in graph.nodes]
    _require(len(set(names)) == len(names), "graph node names are not unique")
    known = {v.name for v in graph.inputs} | set(graph.initializers) | {""}
    known |= {n for n, info in graph.value_info.items() if info.value is not None}
    for node in graph.nodes:
        ops.lookup(node, graph.opset)   # UnsupportedOperatorError names the node
        missing = [i for i in node.inputs if i not in known]
        _require(not missing, f"{node.describe()} reads {missing}, which nothing before it produces")
        for name in (o for o in node.outputs if o):
            info = graph.value_info.get(name)
            _require(info is not None and info.is_static, f"{node.describe()}: output {name!r} has no static shape")
            known.add(name)
    for value in graph.inputs + graph.outputs:
        info = graph.value_info.get(value.name)
        _require(info is not None and info.shape == value.shape and info.dtype == value.dtype,
                 f"graph input/output {value.name!r} does not match its value_info")
        _require(value.name in known, f"graph output {value.name!r} is never produced")


def _check_shapes_by_inference(graph: Graph) -> None:
    """Run the operators' shape functions again (they validate every attribute) and require the stored
    shapes and dtypes of every value to be what they infer."""
    from edgerun.shape_inference import infer_shapes

    try:
        inferred = infer_shapes(graph, {v.name: v.shape for v in graph.inputs}).value_info
    except (BundleError, ResourceLimitError):
        raise
    except EdgerunError as exc:
        raise BundleError(f"malformed bundle: the graph fails shape inference: {exc}") from None
    except (ArithmeticError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            MemoryError) as exc:
        raise BundleError(f"malformed bundle: the graph fails shape inference: {exc!r}") from None
    for name, info in inferred.items():
        stored = graph.value_info.get(name)
        _require(stored is not None and stored.dtype == info.dtype and _same_shape(stored.shape, info.shape),
                 f"value {name!r}: stored {_describe(stored)} but the graph infers {_describe(info)}")


def _same_shape(a, b) -> bool:
    return a is not None and b is not None and tuple(a) == tuple(b)


def _describe(info) -> str:
    return "nothing" if info is None else f"{np.dtype(info.dtype).name}{list(info.shape or [])}"


# ---- the plan

def _plan_from_header(header: dict, max_arena_bytes: int):
    from scheduler.plan import Plan

    try:
        plan = Plan.from_dict(_field(header, "plan", dict, "header"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"malformed bundle: header.plan cannot be read: {exc!r}") from None
    arena = _int_field(header, "arena_bytes", "header", maximum=_MAX_TENSOR_BYTES)
    _require(plan.peak_bytes == arena, f"plan peak {plan.peak_bytes} differs from arena_bytes {arena}")
    if arena > max_arena_bytes:
        raise BundleError(f"bundle asks for an activation arena of {arena} bytes, above the limit of "
                          f"{max_arena_bytes} bytes (raise max_arena_bytes to allow it)")
    budget = header.get("memory_budget")
    _require(budget is None or (isinstance(budget, int) and not isinstance(budget, bool) and budget > 0),
             f"header.memory_budget: expected null or a positive int, got {budget!r}")
    _require(budget is None or arena <= budget, f"arena of {arena} bytes exceeds the recorded budget of {budget}")
    offsets = list(plan.offsets.values()) + [o for s in plan.steps for o in s.scratch_offsets.values()]
    _require(all(0 <= o <= arena for o in offsets), "a plan offset lies outside the arena")
    _require(all(s.t >= 1 and s.band_rows >= 0 for s in plan.steps), "a plan step has t < 1 or band_rows < 0")
    return plan


# =====================================================================================
# Running
# =====================================================================================

class BundleSession:
    """A compiled bundle ready to run: onnxruntime-style run / get_inputs / get_outputs."""

    def __init__(self, raw: _RawBundle, *, threads=None, kernels_backend=None,
                 max_arena_bytes: int = DEFAULT_MAX_ARENA_BYTES):
        from edgerun import kernels

        header = raw.header
        self.file_bytes = raw.file_bytes
        self.weights = raw.weights
        self.graph = _graph_from_header(header.get("graph"), raw.tensors)
        self.planned_backend = _field(header, "backend", str, "header")
        _require(self.planned_backend in kernels.BACKENDS, f"header.backend: unknown backend {self.planned_backend!r}")
        self.memory_budget = header.get("memory_budget")
        self.threads = checked_threads(threads)
        self.backend = kernels.backend() if kernels_backend is None else checked_backend(kernels_backend)
        stored_plan = _plan_from_header(header, max_arena_bytes)
        self.last_run = None
        self.replanned = self.backend != self.planned_backend
        if self.replanned:
            self._compiled = self._replanned(header, max_arena_bytes)
        else:
            self._compiled = self._with_stored_plan(stored_plan)

    @property
    def compiled(self):
        """The executor's compiled model (graph, problem, plan, arena), as InferenceSession.compiled."""
        return self._compiled

    @property
    def plan(self):
        return self._compiled.plan

    @property
    def arena_bytes(self) -> int:
        return self._compiled.plan.peak_bytes

    @property
    def weights_bytes(self) -> int:
        return int(self.weights.size)

    def _with_stored_plan(self, plan):
        from edgerun.executor import CompiledModel

        try:
            compiled = CompiledModel(self.graph, budget=None, backend=self.backend, threads=self.threads, plan=plan)
        except ResourceLimitError:
            raise
        except EdgerunError as exc:
            raise BundleError(f"bundle graph cannot be prepared: {exc}") from None
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
            raise BundleError(f"malformed bundle: the graph and plan are inconsistent: {exc!r}") from None
        return compiled

    def _replanned(self, header: dict, max_arena_bytes: int):
        """The plan's scratch sizes belong to the planning backend: plan again, same budget."""
        from edgerun.executor import CompiledModel
        from scheduler.planner import PLANNERS

        planner = header.get("planner", "greedy")
        max_t = header.get("max_t", 5)
        _require(isinstance(planner, str) and planner in PLANNERS, f"header.planner: unknown planner {planner!r}")
        _require(isinstance(max_t, int) and not isinstance(max_t, bool) and 1 <= max_t <= 1024,
                 f"header.max_t: expected an int in 1..1024, got {max_t!r}")
        warnings.warn(f"bundle was planned for the {self.planned_backend} kernels but the {self.backend} kernels "
                      f"run here: re-planning the arena with the same budget", RuntimeWarning, stacklevel=4)
        budget = self.memory_budget if self.memory_budget is not None else max_arena_bytes
        try:
            return CompiledModel(self.graph, budget=budget, backend=self.backend, planner=planner, max_t=max_t,
                                 threads=self.threads)
        except EdgerunError:
            raise
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
            raise BundleError(f"malformed bundle: the graph cannot be planned: {exc!r}") from None

    # ---- onnxruntime-style introspection
    def get_inputs(self):
        return [node_arg(v) for v in self.graph.inputs]

    def get_outputs(self):
        return [node_arg(v) for v in self.graph.outputs]

    def get_providers(self) -> list[str]:
        return [f"edgerun-{self.backend}"]

    # ---- running
    def run(self, output_names, input_feed: dict, run_options=None, *, profile: bool = False) -> list[np.ndarray]:
        """Outputs by name (None: all). profile=True also records `last_run` (session.RunStats)."""
        feeds = checked_feeds(self.graph.inputs, input_feed)
        names = checked_output_names(self.graph.output_names(), output_names)
        if not profile:
            outputs, _ = self._compiled.run(feeds, names)
            return outputs
        outputs, self.last_run = run_measured(self._compiled, feeds, names)
        return outputs



def load(path, *, threads=None, kernels_backend=None, verify_weights: bool = True,
         max_arena_bytes: int = DEFAULT_MAX_ARENA_BYTES) -> BundleSession:
    """Open a bundle written by compile_bundle; weights stay memory-mapped read-only.

    kernels_backend: None picks the runtime's default; if it is not the backend the bundle was planned
    for, the arena is re-planned with the bundle's budget (RuntimeWarning, `session.replanned`).
    verify_weights=False skips hashing the weights section (faster start, corruption there undetected).
    """
    raw = read_bundle(path, verify_weights=verify_weights)
    return BundleSession(raw, threads=threads, kernels_backend=kernels_backend, max_arena_bytes=max_arena_bytes)


# =====================================================================================
# Command line: edgerun compile MODEL --budget SIZE -o OUT
# =====================================================================================

def compile_main(argv=None) -> int:
    parser = _compile_parser()
    args = parser.parse_args(argv)
    try:
        shapes = dict(_parse_input_shape(text) for text in args.input_shape)
        model = _resolve_model(args.model)
        options = {} if args.kernels is None else {"kernels_backend": args.kernels}
        info = compile_bundle(model, args.output, memory_budget=args.budget, input_shapes=shapes,
                              planner=args.planner, **options)
    except EdgerunError as exc:
        print(f"edgerun compile: error: {exc}", file=sys.stderr)
        return EXIT_BUDGET if isinstance(exc, MemoryBudgetError) else EXIT_USAGE
    from edgerun.units import format_bytes
    budget = "none (fastest plan)" if info.memory_budget is None else f"{info.memory_budget:,} bytes"
    print(f"wrote {info.path}")
    print(f"  bundle size   {info.file_bytes:>12,} bytes ({format_bytes(info.file_bytes)})")
    print(f"  weights       {info.weights_bytes:>12,} bytes ({format_bytes(info.weights_bytes)})")
    print(f"  arena         {info.arena_bytes:>12,} bytes ({format_bytes(info.arena_bytes)})")
    print(f"  budget        {budget}")
    print(f"  planned for   {info.backend} kernels")
    return 0


def _compile_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgerun compile",
        description="Compile a model ahead of time into a bundle that edgerun.load() runs without onnx.")
    parser.add_argument("model", help="path to an .onnx file, or a zoo name such as mobilenet_v2 "
                                      "(options as mobilenet_v2:width=0.35,resolution=96)")
    parser.add_argument("--budget", default=None, help="activation memory budget, e.g. 1.2MB or 600KiB "
                                                      "(default: the fastest plan)")
    parser.add_argument("-o", "--output", required=True, help="bundle file to write")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                        help="static shape of a dynamic input, e.g. input=1x3x224x224 (repeatable)")
    parser.add_argument("--kernels", choices=("numpy", "native"), default=None,
                        help="kernel backend to plan for (default: the one that runs here)")
    parser.add_argument("--planner", choices=("greedy", "noreuse"), default="greedy")
    return parser


def _parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 1:
        raise InvalidOptionError(f"--input-shape {text!r}: expected NAME=DIMS such as input=1x3x224x224")
    return name, shape


def _resolve_model(spec: str):
    """A file path, or a zoo model `name[:key=value,...]` (built for batch 1) via the CLI's resolver."""
    from edgerun.cli import resolve_model

    model, _display_name = resolve_model(spec)
    return model
