"""Read a PyTorch ``.pth`` state dict without torch.

Two layouts exist:

* the zip layout (torch >= 1.6): ``<prefix>/data.pkl`` holds the pickled state dict and
  ``<prefix>/data/<key>`` the raw bytes of each storage;
* the legacy stream (torch < 1.6): five pickles one after another (magic number, protocol
  version, system info, the state dict, the list of storage keys), then each storage as an
  int64 element count followed by its raw bytes.

Both pickles are read with a restricted unpickler: only the few globals a tensor state dict
needs are resolved, to objects of this module; every other global is refused with a
ModelLoadError naming it. Nothing from the file is ever executed.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
import zipfile
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from edgerun import limits
from edgerun.errors import EdgerunError, ModelLoadError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch storage class name -> numpy dtype of one element (byte order applied later).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(np.uint16),  # widened to float32 on rebuild
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class StorageType(NamedTuple):
    """What `torch.<Name>Storage` resolves to: a name and an element dtype (immutable)."""
    name: str
    dtype: np.dtype


class _Storage:
    """A storage named in the pickle; its bytes are attached once read (`attach`).

    Immutable to the pickle: no __dict__ and no attribute assignment, so a BUILD opcode in a
    hostile file cannot rewrite its size or point it elsewhere."""
    __slots__ = ("key", "storage_type", "numel", "root", "view_offset", "data")

    def __init__(self, key, storage_type, numel, root=None, view_offset=0):
        for name, value in (("key", key), ("storage_type", storage_type), ("numel", numel),
                            ("root", root), ("view_offset", view_offset), ("data", None)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"storage {self.key!r} is read-only")

    def attach(self, data):
        if self.root is not None or self.data is not None or data.size != self.numel:
            raise ModelLoadError(f"storage {self.key!r}: data attached twice or of the wrong size")
        object.__setattr__(self, "data", data)

    def elements(self):
        if self.root is not None:
            base = self.root.elements()
            return base[self.view_offset:self.view_offset + self.numel]
        if self.data is None:
            raise ModelLoadError(f"storage {self.key!r} is referenced but its data was never stored")
        return self.data


class _PendingTensor(NamedTuple):
    """A tensor whose storage bytes may not have been read yet (legacy stream); immutable."""
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple


MAX_RANK = 32  # numpy's (and edgerun's) most dimensions a tensor may have
MAX_EXTENT = 1 << 48  # sizes, strides and offsets above this cannot describe bytes in memory
MAX_PICKLE_BYTES = 64 * 1024**2  # data.pkl holds names and small tuples, never tensor bytes


def _check_int_tuple(value, what):
    if isinstance(value, tuple) and len(value) > MAX_RANK:
        raise ModelLoadError(f"tensor {what} has {len(value)} dimensions; at most {MAX_RANK} are supported")
    if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_EXTENT
                                               for v in value):
        raise ModelLoadError(f"tensor {what} must be a tuple of non-negative ints up to 2**48, got {value!r}")
    return value


def _check_extent(offset, size, stride, numel, key):
    extent = 0 if 0 in size else offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if extent > numel:
        raise ModelLoadError(f"tensor of size {size}, stride {stride}, offset {offset} reaches element "
                             f"{extent} of storage {key!r} which holds only {numel}")
    count = int(np.prod(size, dtype=object)) if size else 1
    if count > max(numel, 1):
        raise ModelLoadError(f"tensor of size {size} has {count} elements, more than storage {key!r} "
                             f"holds ({numel}): overlapping views that large are not supported")


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    if not isinstance(storage, _Storage):
        raise ModelLoadError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
    if not isinstance(storage_offset, int) or isinstance(storage_offset, bool) or not 0 <= storage_offset <= MAX_EXTENT:
        raise ModelLoadError(f"tensor storage offset must be a non-negative int, got {storage_offset!r}")
    size = _check_int_tuple(size, "size")
    stride = _check_int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise ModelLoadError(f"tensor size {size} and stride {stride} differ in length")
    _check_extent(storage_offset, size, stride, storage.numel, storage.key)
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    if not isinstance(data, _PendingTensor):
        raise ModelLoadError(f"parameter rebuilt from {type(data).__name__}, expected a tensor")
    return data


def _materialize(tensor):
    data = tensor.storage.elements()
    # checked again against the bytes actually read: nothing in the file can move a view out of them
    _check_extent(tensor.offset, tensor.size, tensor.stride, data.size, tensor.storage.key)
    if 0 in tensor.size:
        out = np.zeros(tensor.size, dtype=data.dtype)
    else:
        view = np.lib.stride_tricks.as_strided(
            data[tensor.offset:], shape=tensor.size,
            strides=tuple(s * data.itemsize for s in tensor.stride), writeable=False)
        out = np.array(view, dtype=data.dtype.newbyteorder("="), order="C")
    if tensor.storage.storage_type.name == "BFloat16Storage":
        out = (out.astype(np.uint32) << 16).view(np.float32)
    out.setflags(write=False)
    return out


def _load_build(unpickler):
    """BUILD sets an object's state. torch uses it on one kind of object only: the OrderedDicts the pickle
    itself made (a state dict's `_metadata`, a tensor's hooks), whose state edgerun never reads, so it is
    checked and dropped. BUILD on anything else (an allowed global such as one of this module's functions,
    a storage type) would let a file rewrite edgerun's own objects, and is refused."""
    state = unpickler.stack.pop()
    target = unpickler.stack[-1]
    if type(target) is not OrderedDict or not isinstance(state, (dict, tuple, type(None))):
        raise ModelLoadError(f"refused BUILD (set state) on a {type(target).__name__}: it is read-only to the "
                             f"pickle, which may only set the state of the OrderedDicts it made")


class _RestrictedUnpickler(pickle._Unpickler):
    """Resolves only the globals of a tensor state dict; refuses everything else.

    The pure-Python unpickler, because its opcode table can be changed: BUILD goes through _load_build."""

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _load_build

    def __init__(self, file, persistent_load):
        super().__init__(file)
        self._persistent_load = persistent_load

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name, STORAGE_DTYPES[name])
        raise ModelLoadError(f"refused global {module}.{name} in pickle: not part of a tensor state dict")

    def persistent_load(self, pid):
        return self._persistent_load(pid)


def _no_persistent_ids(pid):
    raise ModelLoadError(f"unexpected persistent id {pid!r} in a header pickle")


def _unpickle(stream, persistent_load):
    try:
        return _RestrictedUnpickler(stream, persistent_load).load()
    except EdgerunError:
        raise
    except Exception as exc:  # a malformed pickle can raise almost anything
        raise ModelLoadError(f"malformed pickle: {type(exc).__name__}: {exc}") from exc


def _parse_storage_id(pid, expected_length):
    if not isinstance(pid, tuple) or len(pid) != expected_length or pid[0] != "storage":
        raise ModelLoadError(f"unexpected persistent id {pid!r}: expected a ('storage', ...) tuple "
                             f"of length {expected_length}")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, StorageType):
        raise ModelLoadError(f"persistent id {pid!r} does not name a storage type")
    if not isinstance(key, str) or not key.isalnum():
        raise ModelLoadError(f"storage key {key!r} is not a plain alphanumeric name")
    if not isinstance(numel, int) or numel < 0:
        raise ModelLoadError(f"storage {key!r} has an invalid element count {numel!r}")
    return storage_type, key, numel


def _require_state_dict(obj, source):
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{source}: top-level object is a {type(obj).__name__}, not a state dict")
    result = OrderedDict()
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, _PendingTensor):
            raise ModelLoadError(f"{source}: entry {name!r} is a {type(value).__name__}, not a tensor")
        result[name] = _materialize(value)
    return result


# ---------------------------------------------------------------------------------- zip layout

def _zip_prefix(names, source):
    pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise ModelLoadError(f"{source}: expected exactly one data.pkl in the archive, found {len(pickles)}")
    return pickles[0][:-len("data.pkl")]


def _zip_byteorder(archive, prefix, names):
    record = prefix + "byteorder"
    if record not in names:
        return "<"
    if archive.getinfo(record).file_size > 16:
        raise ModelLoadError(f"byteorder record of {archive.getinfo(record).file_size} bytes; "
                             f"expected 'little' or 'big'")
    order = archive.read(record).decode("ascii", "replace").strip()
    if order not in ("little", "big"):
        raise ModelLoadError(f"unknown byteorder record {order!r}")
    return "<" if order == "little" else ">"


MAX_EXPANSION = 64  # torch stores storages uncompressed; tensor bytes deflate far less than this


def _check_expansion(info, key, source):
    """A deflated storage that would expand more than MAX_EXPANSION times is a zip bomb, not weights."""
    if info.file_size > (1 << 20) and info.file_size > MAX_EXPANSION * max(info.compress_size, 1):
        raise ModelLoadError(f"{source}: storage {key!r} would expand from {info.compress_size} to "
                             f"{info.file_size} bytes (more than {MAX_EXPANSION}x): refused as a zip bomb")


def _read_member(archive, info, key, source) -> np.ndarray:
    """The member's bytes read into one array of its declared size (already checked against the ceiling):
    never more than that is decompressed, and no second copy is made."""
    out = np.empty(info.file_size, dtype=np.uint8)
    view, filled = memoryview(out), 0
    with archive.open(info) as member:
        while filled < info.file_size:
            count = member.readinto(view[filled:])
            if not count:
                break
            filled += count
        if filled != info.file_size or member.read(1):
            raise ModelLoadError(f"{source}: storage {key!r} does not hold the {info.file_size} bytes its zip "
                                 f"entry declares")
    return out


def _load_zip(archive, source):
    names = set(archive.namelist())
    prefix = _zip_prefix(names, source)
    byteorder = _zip_byteorder(archive, prefix, names)
    storages = {}
    storage_bytes = limits.Budget(f"{source}: the decompressed storages")

    def persistent_load(pid):
        storage_type, key, numel = _parse_storage_id(pid, 5)
        if key in storages:
            return storages[key]
        member = f"{prefix}data/{key}"
        if member not in names:
            raise ModelLoadError(f"{source}: storage {key!r} is not in the archive (no member {member!r})")
        dtype = storage_type.dtype.newbyteorder(byteorder)
        storage_bytes.add(numel * dtype.itemsize, f"{source}: storage {key!r} ({numel} x {dtype.itemsize} bytes)")
        info = archive.getinfo(member)
        if info.file_size != numel * dtype.itemsize:
            raise ModelLoadError(f"{source}: storage {key!r} holds {info.file_size} bytes, "
                                 f"expected {numel} x {dtype.itemsize}")
        _check_expansion(info, key, source)
        storage = _Storage(key, storage_type, numel)
        storage.attach(_read_member(archive, info, key, source).view(dtype))
        storages[key] = storage
        return storage

    pickle_size = archive.getinfo(prefix + "data.pkl").file_size
    if pickle_size > MAX_PICKLE_BYTES:
        raise ModelLoadError(f"{source}: data.pkl declares {pickle_size} bytes, more than a state dict's pickle "
                             f"needs (at most {MAX_PICKLE_BYTES})")
    state = _unpickle(io.BytesIO(archive.read(prefix + "data.pkl")), persistent_load)
    return _require_state_dict(state, source)


# ------------------------------------------------------------------------------ legacy stream

def _legacy_header(stream, source):
    magic = _unpickle(stream, _no_persistent_ids)
    if magic != LEGACY_MAGIC_NUMBER:
        raise ModelLoadError(f"{source}: not a PyTorch file (bad magic number {magic!r})")
    version = _unpickle(stream, _no_persistent_ids)
    if version != LEGACY_PROTOCOL_VERSION:
        raise ModelLoadError(f"{source}: unsupported legacy protocol version {version!r}")
    sys_info = _unpickle(stream, _no_persistent_ids)
    if not isinstance(sys_info, dict):
        raise ModelLoadError(f"{source}: malformed system info record")
    return "<" if sys_info.get("little_endian", True) else ">"


def _read_legacy_storage(stream, storage, byteorder, source, storage_bytes):
    header = stream.read(8)
    if len(header) != 8:
        raise ModelLoadError(f"{source}: file truncated before storage {storage.key!r}")
    (numel,) = struct.unpack(byteorder + "q", header)
    if numel != storage.numel:
        raise ModelLoadError(f"{source}: storage {storage.key!r} holds {numel} elements, "
                             f"the pickle says {storage.numel}")
    dtype = storage.storage_type.dtype.newbyteorder(byteorder)
    storage_bytes.add(numel * dtype.itemsize, f"{source}: storage {storage.key!r} ({numel} x {dtype.itemsize} bytes)")
    raw = stream.read(numel * dtype.itemsize)
    if len(raw) != numel * dtype.itemsize:
        raise ModelLoadError(f"{source}: file truncated inside storage {storage.key!r}")
    storage.attach(np.frombuffer(raw, dtype=dtype))


def _legacy_view(root, view_metadata, pid):
    if not (isinstance(view_metadata, tuple) and len(view_metadata) == 3):
        raise ModelLoadError(f"malformed storage view in persistent id {pid!r}")
    view_key, offset, size = view_metadata
    if not (isinstance(offset, int) and isinstance(size, int) and offset >= 0 and size >= 0
            and offset + size <= root.numel):
        raise ModelLoadError(f"storage view {view_key!r} [{offset}, {offset}+{size}) lies outside "
                             f"storage {root.key!r} of {root.numel} elements")
    return _Storage(str(view_key), root.storage_type, size, root=root, view_offset=offset)


def _load_legacy(data, source):
    stream = io.BytesIO(data)
    byteorder = _legacy_header(stream, source)
    roots, views = {}, {}

    def persistent_load(pid):
        storage_type, key, numel = _parse_storage_id(pid, 6)
        root = roots.setdefault(key, _Storage(key, storage_type, numel))
        if root.numel != numel or root.storage_type != storage_type:
            raise ModelLoadError(f"{source}: storage {key!r} is declared twice with different types/sizes")
        if pid[5] is None:
            return root
        view_key = pid[5][0] if isinstance(pid[5], tuple) and pid[5] else None
        if view_key not in views:
            views[view_key] = _legacy_view(root, pid[5], pid)
        return views[view_key]

    state = _unpickle(stream, persistent_load)
    keys = _unpickle(stream, _no_persistent_ids)
    if (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
            or set(keys) != set(roots) or len(keys) != len(roots)):
        raise ModelLoadError(f"{source}: storage key list {keys!r} does not match the storages "
                             f"the state dict uses")
    storage_bytes = limits.Budget(f"{source}: the storages")
    for key in keys:
        _read_legacy_storage(stream, roots[key], byteorder, source, storage_bytes)
    return _require_state_dict(state, source)


# ---------------------------------------------------------------------------------- public API

def load_state_dict(path_or_bytes) -> "OrderedDict[str, np.ndarray]":
    """Read a .pth state dict into read-only, C-contiguous numpy arrays, keys in file order."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data, source = bytes(path_or_bytes), "<bytes>"
    else:
        source = str(path_or_bytes)
        try:
            limits.check_bytes(os.stat(path_or_bytes).st_size, f".pth file {source!r}")
            with open(path_or_bytes, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ModelLoadError(f"cannot read {source}: {exc}") from exc
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                return _load_zip(archive, source)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError,
                NotImplementedError, RuntimeError) as exc:  # unsupported zip features, encrypted members
            raise ModelLoadError(f"{source}: truncated or corrupt zip archive: {exc}") from exc
    if data[:2] == b"\x80\x02":
        return _load_legacy(data, source)
    raise ModelLoadError(f"{source}: not a PyTorch .pth file (neither a zip archive nor a legacy "
                         f"pickle stream; the older tar format is not supported)")
