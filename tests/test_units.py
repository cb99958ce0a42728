"""One size rule for Python and the command line (edgerun.units): plain numbers are bytes, KB/MB/GB are
powers of 1000, KiB/MiB/GiB powers of 1024; ambiguous units and fractions of a byte are refused."""
import pytest

from edgerun.errors import InvalidOptionError
from edgerun.units import parse_bytes


@pytest.mark.parametrize("value, expected", [
    (1200000, 1_200_000), ("1200000", 1_200_000), ("1e6", 1_000_000), (1e6, 1_000_000), ("2.5e3", 2_500),
    ("1.2MB", 1_200_000), ("1.2mb", 1_200_000), ("1.2 MB", 1_200_000), ("512KB", 512_000), ("1GB", 10**9),
    ("2MiB", 2 * 1024 * 1024), ("1.5KiB", 1536), ("512kib", 524_288), ("1GiB", 1024**3), ("64B", 64),
    ("  7 b ", 7), (".5KB", 500),
])
def test_sizes_follow_the_documented_rule(value, expected):
    assert parse_bytes(value) == expected


@pytest.mark.parametrize("value, words", [
    ("2M", ["ambiguous", "2MB", "2MiB"]), ("512k", ["ambiguous", "512KB", "512KiB"]), ("1G", ["ambiguous"]),
    ("1.5", ["whole number of bytes"]), (1.5, ["whole number of bytes"]), ("1.0001KB", ["whole number"]),
    ("0.1B", ["whole number"]), (float("inf"), ["whole number"]), (float("nan"), ["whole number"]),
    ("0", ["positive"]), (0, ["positive"]), (-5, ["positive"]), ("-5MB", ["cannot read"]),
    ("12 parsecs", ["cannot read"]), ("", ["cannot read"]), ("MB", ["cannot read"]), (True, ["expected a size"]),
    ([1], ["expected a size"]), ("1e", ["cannot read"]),
])
def test_what_the_rule_does_not_define_is_refused_naming_the_option(value, words):
    with pytest.raises(InvalidOptionError) as info:
        parse_bytes(value, option="--budget")
    message = str(info.value)
    assert message.startswith("--budget")
    for word in words:
        assert word in message


def test_none_means_no_budget():
    assert parse_bytes(None) is None


def test_the_session_uses_the_same_rule():
    from edgerun.session import InferenceSession
    from test_profiler import tiny_convnet
    assert InferenceSession(tiny_convnet(), memory_budget="1e6").memory_budget == 1_000_000
    with pytest.raises(InvalidOptionError, match="ambiguous"):
        InferenceSession(tiny_convnet(), memory_budget="2M")
