"""The bundle file format: writing and reading it, and nothing that runs it.

A bundle is one file: a fixed 64-byte prefix, a JSON header (graph, value shapes, plan, tensor
table) and a weights section whose arrays are 64-byte aligned so that they can be memory-mapped
read-only. The layout is documented in docs/bundle-format.md.

A bundle is untrusted input: `read_bundle` checks magic, version, lengths, both checksums and
every offset, shape and dtype, `graph_from_header` every field of the graph, and both report any
problem as a BundleError. This module knows the IR (edgerun.ir) and nothing else of edgerun:
no session, executor, operator, scheduler or onnx (edgerun.bundle checks the graph against the
operators and runs it; edgerun.compiler writes it).
"""
from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerun.errors import BundleError, InvalidModelError, InvalidOptionError
from edgerun.ir import Graph, Node, TensorInfo, ValueInfo

MAGIC = b"\x89EDGERUN"


def is_bundle(path) -> bool:
    """True when the file at `path` starts with the bundle magic."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
FORMAT_MAJOR = 1
FORMAT_MINOR = 1   # 1.1: the optional C program (header.c_program, edgerun/c_program.py)
FLAG_C_PROGRAM = 1   # flags bit 0: the weights section ends with the C program (readers may ignore flags)
# magic, major, minor, flags, header length, header sha256, 8 reserved bytes: 64 bytes.
PREFIX = struct.Struct("<8sHHIQ32s8x")
TENSOR_ALIGNMENT = 64
MAX_HEADER_BYTES = 64 * 1024**2
MAX_TENSOR_BYTES = 1 << 48
_MAX_DIM = 1 << 40
_HASH_CHUNK = 16 * 1024**2

# Stored dtype name -> little-endian numpy dtype. Anything else is refused.
DTYPES = {name: np.dtype(code) for name, code in {
    "float32": "<f4", "float16": "<f2", "float64": "<f8",
    "int8": "i1", "uint8": "u1", "int16": "<i2", "uint16": "<u2",
    "int32": "<i4", "uint32": "<u4", "int64": "<i8", "uint64": "<u8", "bool": "?"}.items()}
_ATTR_TYPES = ("int", "float", "str", "ints", "floats", "strs", "tensor")
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _align_up(size: int, alignment: int = TENSOR_ALIGNMENT) -> int:
    return -(-size // alignment) * alignment


class TensorTable:
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
        kind = stored_dtype_name(array.dtype, name)
        stored = np.ascontiguousarray(array, dtype=DTYPES[kind])
        offset = _align_up(self.size)
        self.entries.append({"name": name, "dtype": kind, "shape": list(array.shape),
                             "offset": offset, "nbytes": int(stored.nbytes)})
        self.arrays.append(stored)
        self._originals.append(array)
        self._index_by_id[id(array)] = len(self.entries) - 1
        self.size = offset + int(stored.nbytes)
        return len(self.entries) - 1

    @property
    def section_bytes(self) -> int:
        return _align_up(self.size)

    def place_last(self, indices) -> None:
        """Move the arrays at `indices` (table indices, which stay valid) to the end of the section, in
        table order: arrays a session never reads (weights whose kernel layout the bundle also stores)
        then share no page with the ones it reads, so a session maps only the pages it uses."""
        last = set(indices)
        self.order_by(lambda index: index in last)

    def order_by(self, group) -> None:
        """Lay the arrays out again by group(table index), a stable sort: table indices stay valid."""
        self.size = 0
        for i in sorted(range(len(self.entries)), key=group):
            self.entries[i]["offset"] = _align_up(self.size)
            self.size = self.entries[i]["offset"] + self.entries[i]["nbytes"]

    def chunks(self):
        """The weights section as byte chunks (padding included), in file order."""
        position = 0
        placed = sorted(zip(self.entries, self.arrays), key=lambda pair: pair[0]["offset"])
        for entry, array in placed:
            if entry["offset"] > position:
                yield bytes(entry["offset"] - position)
            yield memoryview(array.reshape(-1).view(np.uint8))
            position = entry["offset"] + entry["nbytes"]
        if self.section_bytes > position:
            yield bytes(self.section_bytes - position)


def add_kernel_layouts(graph: dict, tensors: TensorTable, layouts: dict, superseded: set) -> dict:
    """Add the kernels' weight layouts ({key: float32 array}, edgerun.kernels.layouts) to the table and
    place the graph's initializers named in `superseded` (read through a layout only) at the end of the
    section; header.kernel_layouts ({key: table index}). `graph` is graph_header's result."""
    table = {key: tensors.add(f"layout:{key}", layouts[key]) for key in sorted(layouts)}
    initializers = graph["initializers"]
    tensors.place_last({initializers[name] for name in superseded if name in initializers})
    return table


def stored_dtype_name(dtype, what: str) -> str:
    for name, stored in DTYPES.items():
        if np.dtype(dtype) == stored or np.dtype(dtype) == stored.newbyteorder("="):
            return name
    raise InvalidModelError(f"tensor {what!r} has dtype {np.dtype(dtype)}, which a bundle cannot store "
                            f"(supported: {', '.join(DTYPES)})")


def graph_header(graph: Graph, tensors: TensorTable) -> dict:
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
    return {"name": name, "shape": list(info.shape), "dtype": stored_dtype_name(info.dtype, name)}


def _value_info_header(name: str, info: TensorInfo, tensors: TensorTable) -> dict:
    shape = None if info.shape is None else [d if isinstance(d, int) else str(d) for d in info.shape]
    value = None if info.value is None else tensors.add(name, info.value)
    return {"shape": shape, "dtype": stored_dtype_name(info.dtype, name), "value": value}


def _node_header(node: Node, tensors: TensorTable) -> dict:
    return {"op_type": node.op_type, "domain": node.domain, "name": node.name,
            "inputs": list(node.inputs), "outputs": list(node.outputs),
            "attrs": {key: _encode_attr(node, key, value, tensors) for key, value in node.attrs.items()}}


def _encode_attr(node: Node, key: str, value, tensors: TensorTable) -> dict:
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


def write_bundle(path: Path, header: dict, tensors: TensorTable, flags: int = 0) -> tuple[int, int]:
    """Write the file (atomically: a temporary file renamed into place); (file bytes, header bytes)."""
    digest = hashlib.sha256()
    for chunk in tensors.chunks():
        digest.update(chunk)
    header["weights"] = {"length": tensors.section_bytes, "sha256": digest.hexdigest()}
    try:
        header_bytes = json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except ValueError as exc:
        raise InvalidModelError(f"the compiled model cannot be written as a bundle header: {exc}") from None
    prefix = PREFIX.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, flags, len(header_bytes),
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
    return weights_offset + tensors.section_bytes, len(header_bytes)


# =====================================================================================
# Reading and checking
# =====================================================================================

@dataclass
class RawBundle:
    header: dict
    weights: np.ndarray          # read-only uint8 memmap of the weights section (or empty)
    tensors: list[np.ndarray]    # read-only views into `weights`, by table index
    file_bytes: int


def read_bundle(path, *, verify_weights: bool = True) -> RawBundle:
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
    return RawBundle(header, weights, tensors, file_bytes)


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
    section = header_field(header, "weights", dict, "header")
    length = int_field(section, "length", "header.weights", maximum=MAX_TENSOR_BYTES)
    expected_digest = header_field(section, "sha256", str, "header.weights")
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
    if verify:
        matches = _sha256_hex(weights) == expected_digest
        _unmap_pages(weights)
        if not matches:
            raise BundleError("bundle weights checksum mismatch: the weights section is corrupted")
    return weights


def _unmap_pages(weights: np.ndarray) -> None:
    """Drop the pages hashing mapped from this process (they stay in the page cache): a session's RSS
    then holds only the weight pages its kernels read, not the bundle's stored originals beside them."""
    mapping = getattr(weights, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapping.madvise(mmap.MADV_DONTNEED)
        except OSError:   # advice only: the pages stay mapped
            pass


def _sha256_hex(data: np.ndarray) -> str:
    digest = hashlib.sha256()
    for start in range(0, data.size, _HASH_CHUNK):
        digest.update(memoryview(data[start:start + _HASH_CHUNK]))
    return digest.hexdigest()


def _tensor_views(header: dict, weights: np.ndarray) -> list[np.ndarray]:
    table = header_field(header, "tensors", list, "header")
    return [_tensor_view(entry, weights, f"header.tensors[{i}]") for i, entry in enumerate(table)]


def _tensor_view(entry, weights: np.ndarray, where: str) -> np.ndarray:
    require(isinstance(entry, dict), f"{where}: expected an object")
    name = header_field(entry, "name", str, where)
    where = f"{where} ({name!r})"
    dtype = _dtype_field(entry, "dtype", where)
    shape = _shape_field(entry, "shape", where)
    offset = int_field(entry, "offset", where, maximum=MAX_TENSOR_BYTES)
    nbytes = int_field(entry, "nbytes", where, maximum=MAX_TENSOR_BYTES)
    require(offset % TENSOR_ALIGNMENT == 0, f"{where}: offset {offset} is not {TENSOR_ALIGNMENT}-byte aligned")
    require(nbytes == math.prod(shape) * dtype.itemsize,
            f"{where}: nbytes {nbytes} does not match shape {shape} of {dtype.name}")
    require(offset + nbytes <= weights.size,
            f"{where}: bytes [{offset}, {offset + nbytes}) lie beyond the weights section ({weights.size} bytes)")
    array = weights[offset:offset + nbytes].view(np.ndarray).view(dtype).reshape(shape)
    array.flags.writeable = False
    return array


def kernel_layouts(header: dict, tensors: list[np.ndarray]) -> dict[str, np.ndarray]:
    """header.kernel_layouts (optional): {layout key (edgerun.kernels.layouts): tensor index} -> {key: array}."""
    table = header.get("kernel_layouts", {})
    require(isinstance(table, dict), "header.kernel_layouts: expected an object")
    layouts = {}
    for key, index in table.items():
        require(isinstance(key, str), f"header.kernel_layouts: key {key!r} is not a string")
        layouts[key] = _tensor_ref(index, tensors, f"header.kernel_layouts[{key!r}]")
    return layouts


# ---- small checkers: each names where in the header the problem is

def require(condition: bool, message: str) -> None:
    if not condition:
        raise BundleError(f"malformed bundle: {message}")


def header_field(obj: dict, key: str, kind, where: str):
    require(isinstance(obj, dict) and key in obj, f"{where}: missing field {key!r}")
    value = obj[key]
    require(isinstance(value, kind) and not (kind is int and isinstance(value, bool)),
            f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def int_field(obj: dict, key: str, where: str, minimum: int = 0, maximum: int = MAX_TENSOR_BYTES) -> int:
    value = header_field(obj, key, int, where)
    require(minimum <= value <= maximum, f"{where}.{key} = {value} is outside {minimum}..{maximum}")
    return value


def _dtype_field(obj: dict, key: str, where: str) -> np.dtype:
    name = header_field(obj, key, str, where)
    require(name in DTYPES, f"{where}.{key}: unknown dtype {name!r}")
    return DTYPES[name]


def _shape_field(obj: dict, key: str, where: str, symbolic: bool = False) -> tuple:
    shape = header_field(obj, key, list, where)
    for d in shape:
        ok_int = isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= _MAX_DIM
        require(ok_int or (symbolic and isinstance(d, str)), f"{where}.{key}: bad dimension {d!r} in {shape}")
    static = [d for d in shape if isinstance(d, int)]
    require(len(shape) <= 32 and math.prod(static) <= MAX_TENSOR_BYTES, f"{where}.{key}: shape {shape} is too large")
    return tuple(shape)


def _str_list(obj: dict, key: str, where: str) -> list[str]:
    values = header_field(obj, key, list, where)
    require(all(isinstance(v, str) for v in values), f"{where}.{key}: expected a list of strings")
    return list(values)


def _tensor_ref(value, tensors: list[np.ndarray], where: str) -> np.ndarray:
    require(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(tensors),
            f"{where}: tensor reference {value!r} is not an index into the tensor table ({len(tensors)} entries)")
    return tensors[value]


# ---- rebuilding the graph

def graph_from_header(data, tensors: list[np.ndarray]) -> Graph:
    require(isinstance(data, dict), "header.graph: expected an object")
    where = "header.graph"
    initializers = header_field(data, "initializers", dict, where)
    value_info = header_field(data, "value_info", dict, where)
    graph = Graph(
        nodes=[_node_from_header(n, tensors, f"{where}.nodes[{i}]")
               for i, n in enumerate(header_field(data, "nodes", list, where))],
        inputs=[_value_from_header(v, f"{where}.inputs[{i}]")
                for i, v in enumerate(header_field(data, "inputs", list, where))],
        outputs=[_value_from_header(v, f"{where}.outputs[{i}]")
                 for i, v in enumerate(header_field(data, "outputs", list, where))],
        initializers={str(k): _tensor_ref(v, tensors, f"{where}.initializers[{k!r}]") for k, v in initializers.items()},
        opset=int_field(data, "opset", where, minimum=1, maximum=10_000),
        name=header_field(data, "name", str, where),
        value_info={str(k): _tensor_info_from_header(v, tensors, f"{where}.value_info[{k!r}]")
                    for k, v in value_info.items()},
    )
    return graph


def _value_from_header(data, where: str) -> ValueInfo:
    return ValueInfo(header_field(data, "name", str, where), _shape_field(data, "shape", where),
                     _dtype_field(data, "dtype", where))


def _tensor_info_from_header(data, tensors, where: str) -> TensorInfo:
    require(isinstance(data, dict) and "shape" in data and "value" in data, f"{where}: expected shape and value")
    shape = None if data["shape"] is None else _shape_field(data, "shape", where, symbolic=True)
    dtype = _dtype_field(data, "dtype", where)
    value = None if data["value"] is None else _tensor_ref(data["value"], tensors, f"{where}.value")
    if value is not None:
        require(value.dtype == dtype and shape == value.shape,
                f"{where}: constant value {value.dtype.name}{list(value.shape)} does not match "
                f"{dtype.name}{list(shape or [])}")
    return TensorInfo(shape, dtype, value)


def _node_from_header(data, tensors, where: str) -> Node:
    require(isinstance(data, dict), f"{where}: expected an object")
    attrs = header_field(data, "attrs", dict, where)
    return Node(
        op_type=header_field(data, "op_type", str, where),
        inputs=_str_list(data, "inputs", where),
        outputs=_str_list(data, "outputs", where),
        attrs={str(k): _decode_attr(v, tensors, f"{where}.attrs[{k!r}]") for k, v in attrs.items()},
        name=header_field(data, "name", str, where),
        domain=header_field(data, "domain", str, where),
    )


def _decode_attr(data, tensors, where: str):
    require(isinstance(data, dict) and data.get("type") in _ATTR_TYPES and "value" in data,
            f"{where}: expected {{'type': one of {_ATTR_TYPES}, 'value': ...}}")
    kind, value = data["type"], data["value"]
    if kind == "tensor":
        return _tensor_ref(value, tensors, where)
    if kind in ("int", "float", "str"):
        return _decode_scalar(kind, value, where)
    require(isinstance(value, list), f"{where}: expected a list for type {kind!r}")
    return [_decode_scalar(kind[:-1], v, where) for v in value]


def _decode_scalar(kind: str, value, where: str):
    if kind == "int":
        require(isinstance(value, int) and not isinstance(value, bool), f"{where}: expected an int, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, str) and value in _NON_FINITE:
            return _NON_FINITE[value]
        require(isinstance(value, (int, float)) and not isinstance(value, bool),
                f"{where}: expected a float, got {value!r}")
        return float(value)
    require(isinstance(value, str), f"{where}: expected a string, got {value!r}")
    return value

