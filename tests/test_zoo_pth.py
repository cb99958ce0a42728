"""The torch-free .pth reader: the real torchvision file, hand-written files in both layouts
(written here opcode by opcode, so numpy arrays are the oracle), and hostile files."""
import io
import pickle
import struct
import zipfile

import numpy as np
import pytest

from edgerun.errors import ModelLoadError
from edgerun.zoo.mobilenet_v2 import pretrained_weights_path
from edgerun.zoo.pth import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, load_state_dict

# ------------------------------------------------------------------ a tiny pickle writer

STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                 np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                 np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage",
                 np.dtype(np.bool_): "BoolStorage"}


def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text):
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(value):
    return b"J" + struct.pack("<i", value)


def _tuple(items):
    return b"(" + b"".join(items) + b"t"


def _ordered_dict():
    return _global("collections", "OrderedDict") + b")R"


class Tensor:
    """What to write: a tensor as (storage key, offset, size, stride) over a storage array."""

    def __init__(self, key, offset, size, stride, view=None):
        self.key, self.offset, self.size, self.stride, self.view = key, offset, size, stride, view


def _persistent_id(storage_name, key, numel, legacy, view=None):
    items = [_str("storage"), _global("torch", storage_name), _str(key), _str("cpu"), _int(numel)]
    if legacy:
        items.append(b"N" if view is None else _tuple([_str(view[0]), _int(view[1]), _int(view[2])]))
    return _tuple(items) + b"Q"


def state_dict_pickle(tensors, storages, legacy=False):
    """Protocol-2 pickle of an OrderedDict name -> torch._utils._rebuild_tensor_v2(...)."""
    body = [b"\x80\x02", _ordered_dict(), b"("]
    for name, t in tensors.items():
        storage = storages[t.key]
        pid = _persistent_id(STORAGE_NAMES[storage.dtype], t.key, storage.size, legacy, t.view)
        args = _tuple([pid, _int(t.offset), _tuple([_int(n) for n in t.size]),
                       _tuple([_int(s) for s in t.stride]), b"\x89", _ordered_dict()])
        body += [_str(name), _global("torch._utils", "_rebuild_tensor_v2"), args, b"R"]
    body += [b"u", b"."]
    return b"".join(body)


def zip_pth(data_pkl, storages, prefix="archive", extra_members=()):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", data_pkl)
        archive.writestr(f"{prefix}/byteorder", "little")
        for key, array in storages.items():
            archive.writestr(f"{prefix}/data/{key}", array.astype(array.dtype.newbyteorder("<")).tobytes())
        for name, raw in extra_members:
            archive.writestr(name, raw)
    return buffer.getvalue()


def legacy_pth(main_pickle, storages, keys=None):
    parts = [pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2), pickle.dumps(LEGACY_PROTOCOL_VERSION, protocol=2),
             pickle.dumps({"protocol_version": 1001, "little_endian": True,
                           "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2),
             main_pickle, pickle.dumps(list(storages) if keys is None else keys, protocol=2)]
    for array in storages.values():
        parts.append(struct.pack("<q", array.size) + array.astype(array.dtype.newbyteorder("<")).tobytes())
    return b"".join(parts)


def expected_view(storage, t):
    """The oracle: numpy's own strided view of the storage."""
    base = storage[t.view[1]:t.view[1] + t.view[2]] if t.view else storage
    return np.lib.stride_tricks.as_strided(base[t.offset:], shape=t.size,
                                           strides=[s * base.itemsize for s in t.stride])


def _sample_storages():
    rng = np.random.default_rng(7)
    return {"0": rng.normal(size=24).astype(np.float32),
            "1": rng.integers(-2**40, 2**40, size=6).astype(np.int64),
            "2": rng.normal(size=5).astype(np.float16),
            "3": np.array([True, False, True]),
            "4": rng.normal(size=7)}


SAMPLE_TENSORS = {
    "conv.weight": Tensor("0", 0, (2, 3, 2, 2), (12, 4, 2, 1)),
    "transposed": Tensor("0", 0, (4, 6), (1, 4)),        # non-contiguous, shares storage "0"
    "offset_row": Tensor("0", 18, (6,), (1,)),           # storage offset
    "steps": Tensor("1", 0, (6,), (1,)),
    "halves": Tensor("2", 1, (2, 2), (2, 1)),
    "flags": Tensor("3", 0, (3,), (1,)),
    "scalar": Tensor("4", 6, (), ()),
    "broadcast": Tensor("4", 2, (3, 2), (0, 1)),          # zero stride (expanded tensor)
}


@pytest.fixture(scope="module")
def real_state_dict():
    return load_state_dict(pretrained_weights_path())


# ------------------------------------------------------------------ the real file

def test_real_torchvision_file_loads_expected_keys_and_shapes(real_state_dict):
    sd = real_state_dict
    assert len(sd) == 314  # 52 conv weights + 52 BNs x 5 entries + classifier weight and bias
    assert sd["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert sd["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)
    assert sd["features.17.conv.2.weight"].shape == (320, 960, 1, 1)
    assert sd["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert sd["classifier.1.weight"].shape == (1000, 1280)
    assert sd["classifier.1.bias"].shape == (1000,)
    assert sd["features.0.1.num_batches_tracked"].dtype == np.int64
    assert list(sd)[0] == "features.0.0.weight" and list(sd)[-1] == "classifier.1.bias"


def test_real_file_arrays_are_float32_readonly_and_plausible(real_state_dict):
    sd = real_state_dict
    for key, value in sd.items():
        assert value.flags.c_contiguous and not value.flags.writeable, key
        if key.endswith("running_var"):
            assert value.dtype == np.float32 and (value > 0).all(), key
        if value.dtype == np.float32:
            assert np.isfinite(value).all(), key
    learned = sum(v.size for k, v in sd.items() if not k.endswith(("running_mean", "running_var",
                                                                     "num_batches_tracked")))
    assert learned == 3_504_872  # torchvision's published parameter count for mobilenet_v2


def test_truncated_legacy_file_is_refused(tmp_path, real_state_dict):
    data = pretrained_weights_path().read_bytes()
    for cut in (len(data) - 10, len(data) // 2, 600, 40):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError):
            load_state_dict(path)


# ------------------------------------------------------------------ hand-written files

@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_hand_written_file_round_trips_through_strides_offsets_and_dtypes(tmp_path, layout):
    storages = _sample_storages()
    pickled = state_dict_pickle(SAMPLE_TENSORS, storages, legacy=layout == "legacy")
    data = zip_pth(pickled, storages) if layout == "zip" else legacy_pth(pickled, storages)
    path = tmp_path / "model.pth"
    path.write_bytes(data)
    sd = load_state_dict(path)
    assert list(sd) == list(SAMPLE_TENSORS)
    for name, t in SAMPLE_TENSORS.items():
        want = expected_view(storages[t.key], t)
        assert sd[name].dtype == want.dtype and sd[name].shape == want.shape, name
        np.testing.assert_array_equal(sd[name], want, err_msg=name)
        assert sd[name].flags.c_contiguous and not sd[name].flags.writeable
    assert sd["transposed"][1, 0] == storages["0"][1] and sd["transposed"][0, 1] == storages["0"][4]


def test_legacy_storage_views_are_resolved():
    storages = {"9": np.arange(10, dtype=np.float32)}
    tensors = {"tail": Tensor("9", 1, (3,), (1,), view=("view9", 4, 5)),
               "head": Tensor("9", 0, (2,), (1,))}
    sd = load_state_dict(legacy_pth(state_dict_pickle(tensors, storages, legacy=True), storages))
    np.testing.assert_array_equal(sd["tail"], [5.0, 6.0, 7.0])
    np.testing.assert_array_equal(sd["head"], [0.0, 1.0])


def test_zip_without_prefix_folder_and_bytes_input():
    storages = {"0": np.arange(6, dtype=np.float32)}
    tensors = {"w": Tensor("0", 0, (2, 3), (3, 1))}
    data = zip_pth(state_dict_pickle(tensors, storages), storages, prefix="mymodel")
    np.testing.assert_array_equal(load_state_dict(data)["w"], np.arange(6).reshape(2, 3))


# ------------------------------------------------------------------ hostile or broken files

def _os_system_pickle(marker):
    return b"\x80\x02" + _global("os", "system") + _tuple([_str(f"touch {marker}")]) + b"R."


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_pickle_calling_os_system_is_refused_and_never_runs(tmp_path, layout):
    marker = tmp_path / "pwned"
    evil = _os_system_pickle(marker)
    data = zip_pth(evil, {}) if layout == "zip" else legacy_pth(evil, {})
    with pytest.raises(ModelLoadError, match=r"os\.system"):
        load_state_dict(data)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("subprocess", "Popen"),
                                         ("torch", "load"), ("numpy", "load"),
                                         ("torch._utils", "_rebuild_device_tensor_from_numpy")])
def test_any_global_outside_the_allow_list_is_refused_by_name(module, name):
    evil = b"\x80\x02" + _global(module, name) + _tuple([_str("1+1")]) + b"R."
    with pytest.raises(ModelLoadError, match=f"{module}.{name}".replace(".", r"\.")):
        load_state_dict(zip_pth(evil, {}))


def test_global_hidden_inside_a_tensor_entry_is_refused():
    storages = {"0": np.zeros(4, dtype=np.float32)}
    good = state_dict_pickle({"w": Tensor("0", 0, (4,), (1,))}, storages)
    evil = good.replace(_global("collections", "OrderedDict"), _global("posix", "system"), 1)
    with pytest.raises(ModelLoadError, match=r"posix\.system"):
        load_state_dict(zip_pth(evil, storages))


@pytest.mark.parametrize("key", ["../../etc/passwd", "0/../1", "", "a b"])
def test_storage_keys_that_are_not_plain_names_are_refused(key):
    storages = {"0": np.zeros(4, dtype=np.float32)}
    pickled = state_dict_pickle({"w": Tensor("0", 0, (4,), (1,))}, storages).replace(
        _str("0"), _str(key))
    with pytest.raises(ModelLoadError, match="storage key"):
        load_state_dict(zip_pth(pickled, storages, extra_members=[("etc/passwd", b"x")]))


def test_storage_missing_from_the_archive_is_refused():
    storages = {"0": np.zeros(4, dtype=np.float32)}
    pickled = state_dict_pickle({"w": Tensor("0", 0, (4,), (1,))}, storages)
    with pytest.raises(ModelLoadError, match="'0' is not in the archive"):
        load_state_dict(zip_pth(pickled, {}))


def test_tensor_reaching_past_its_storage_is_refused():
    storages = {"0": np.zeros(6, dtype=np.float32)}
    pickled = state_dict_pickle({"w": Tensor("0", 2, (2, 3), (3, 1))}, storages)
    with pytest.raises(ModelLoadError, match="reaches element 8 of storage '0' which holds only 6"):
        load_state_dict(zip_pth(pickled, storages))


def test_storage_bytes_disagreeing_with_its_declared_size_are_refused():
    storages = {"0": np.zeros(6, dtype=np.float32)}
    pickled = state_dict_pickle({"w": Tensor("0", 0, (6,), (1,))}, storages)
    short = {"0": np.zeros(5, dtype=np.float32)}
    with pytest.raises(ModelLoadError, match="holds 20 bytes"):
        load_state_dict(zip_pth(pickled, short))
    with pytest.raises(ModelLoadError, match="holds 5 elements"):
        load_state_dict(legacy_pth(state_dict_pickle({"w": Tensor("0", 0, (5,), (1,))}, short, legacy=True)
                                   .replace(_int(5), _int(6), 1), short))


def test_truncated_zip_is_refused(tmp_path):
    storages = _sample_storages()
    data = zip_pth(state_dict_pickle(SAMPLE_TENSORS, storages), storages)
    for cut in (len(data) - 1, len(data) // 2, 30):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match="zip"):
            load_state_dict(path)


def test_files_in_no_known_layout_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="not a PyTorch .pth file"):
        load_state_dict(b"\x00\x01 not a checkpoint")
    with pytest.raises(ModelLoadError, match="bad magic number"):
        load_state_dict(pickle.dumps(12345, protocol=2))
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_state_dict(tmp_path / "missing.pth")


def test_top_level_must_be_a_mapping_of_tensors():
    with pytest.raises(ModelLoadError, match="not a state dict"):
        load_state_dict(zip_pth(b"\x80\x02" + _tuple([_int(1)]) + b".", {}))
    not_tensor = b"\x80\x02" + _ordered_dict() + b"(" + _str("lr") + _int(3) + b"u."
    with pytest.raises(ModelLoadError, match="entry 'lr' is a int"):
        load_state_dict(zip_pth(not_tensor, {}))


def test_garbage_pickle_bytes_raise_model_load_error():
    with pytest.raises(ModelLoadError, match="malformed pickle"):
        load_state_dict(zip_pth(b"\x80\x02(((", {}))


@pytest.mark.parametrize("state", [
    b"}" + _str("offset") + _int(1 << 30) + b"s",                        # BUILD with a __dict__ update
    b"N}" + _str("offset") + _int(1 << 30) + b"s\x86",                   # BUILD with slot state
])
def test_build_opcode_cannot_rewrite_a_tensor_after_its_bounds_check(state):
    storages = {"0": np.zeros(4, dtype=np.float32)}
    good = state_dict_pickle({"w": Tensor("0", 0, (4,), (1,))}, storages)
    assert good.endswith(b"Ru.")
    evil = good[:-2] + state + b"bu."  # BUILD applied to the rebuilt tensor
    with pytest.raises(ModelLoadError):
        load_state_dict(zip_pth(evil, storages))


def test_build_opcode_cannot_rewrite_a_storage():
    storages = {"0": np.zeros(4, dtype=np.float32)}
    pid = _persistent_id("FloatStorage", "0", 4, legacy=False)
    evil = (b"\x80\x02" + _ordered_dict() + b"(" + _str("w") + _global("torch._utils", "_rebuild_tensor_v2")
            + b"(" + pid + b"N}" + _str("numel") + _int(1 << 30) + b"s\x86b"
            + _int(0) + _tuple([_int(4)]) + _tuple([_int(1)]) + b"\x89" + _ordered_dict() + b"tRu.")
    with pytest.raises(ModelLoadError, match="read-only"):
        load_state_dict(zip_pth(evil, storages))


def test_zero_stride_view_larger_than_its_storage_is_refused():
    storages = {"0": np.zeros(2, dtype=np.float32)}
    pickled = state_dict_pickle({"w": Tensor("0", 0, (1 << 30, 1 << 30), (0, 0))}, storages)
    with pytest.raises(ModelLoadError, match="more than storage '0' holds"):
        load_state_dict(zip_pth(pickled, storages))


@pytest.mark.parametrize("keys", [[["0"]], ["0", "0"], ["1"], "0"])
def test_legacy_storage_key_list_must_match_the_storages(keys):
    storages = {"0": np.arange(3, dtype=np.float32)}
    pickled = state_dict_pickle({"w": Tensor("0", 0, (3,), (1,))}, storages, legacy=True)
    with pytest.raises(ModelLoadError, match="storage key list"):
        load_state_dict(legacy_pth(pickled, storages, keys=keys))
