"""Register codec: word order, scaling, not-implemented markers and range errors."""

from __future__ import annotations

import math

import pytest

from appliance.points.codec import NOT_IMPLEMENTED, CodecError, decode, encode
from appliance.points.model import ModbusMapping, RegisterType


def mapping(rtype: RegisterType, gain: float = 1.0) -> ModbusMapping:
    return ModbusMapping(address=0, type=rtype, gain=gain)


def test_float32_is_high_word_first() -> None:
    # 230.2 V as an SDM630 sent it: 0x4366 0x3334 (the last bit differs by rounding).
    m = mapping(RegisterType.FLOAT32)
    decoded = decode(m, (0x4366, 0x3334))
    assert decoded is not None
    assert math.isclose(decoded, 230.2, rel_tol=1e-6)
    assert encode(m, 230.2) == (0x4366, 0x3333)


@pytest.mark.parametrize(
    ("rtype", "gain", "value", "words"),
    [
        (RegisterType.INT16, 10.0, -12.3, (0xFF85,)),
        (RegisterType.UINT16, 1.0, 65534, (0xFFFE,)),
        (RegisterType.INT32, 1.0, -2, (0xFFFF, 0xFFFE)),
        (RegisterType.UINT32, 1.0, 0x12345678, (0x1234, 0x5678)),
    ],
)
def test_integer_encodings_round_trip(
    rtype: RegisterType, gain: float, value: float, words: tuple[int, ...]
) -> None:
    m = mapping(rtype, gain)
    assert encode(m, value) == words
    decoded = decode(m, words)
    assert decoded is not None
    assert math.isclose(decoded, value, abs_tol=1e-9)


@pytest.mark.parametrize("rtype", list(RegisterType))
def test_missing_value_encodes_as_not_implemented_and_decodes_as_none(rtype: RegisterType) -> None:
    m = mapping(rtype)
    assert encode(m, None) == NOT_IMPLEMENTED[rtype]
    assert decode(m, NOT_IMPLEMENTED[rtype]) is None


def test_value_outside_register_type_is_an_error() -> None:
    with pytest.raises(CodecError, match="does not fit int16"):
        encode(mapping(RegisterType.INT16, 10.0), 4000)
    with pytest.raises(CodecError, match="does not fit uint16"):
        encode(mapping(RegisterType.UINT16), -1)


def test_wrong_register_count_is_an_error() -> None:
    with pytest.raises(CodecError, match="expected 2 registers"):
        decode(mapping(RegisterType.FLOAT32), [1])


def test_bool_encodes_as_one_register() -> None:
    assert encode(mapping(RegisterType.UINT16), True) == (1,)
