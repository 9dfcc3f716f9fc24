"""Modbus request PDUs parsed with the specification's exception codes, and responses built.

Pure. pymodbus' own request decoding is not used for this: in 3.16.1 it answers a read of
more than 125 registers with 0x01 (its decoder raises, the server turns every decode failure
into ILLEGAL_FUNCTION), takes a request with the exception bit set for an exception response,
and ignores trailing bytes. Here (Modbus Application Protocol v1.1b3, section 6):

| Request | Answer 0x03 ILLEGAL_DATA_VALUE when |
|---|---|
| FC 01 / 02 read bits | the PDU is not 5 bytes; quantity not 1 .. 2000 |
| FC 03 / 04 read registers | the PDU is not 5 bytes; quantity not 1 .. 125 |
| FC 05 write one bit | the PDU is not 5 bytes; value not 0xFF00 or 0x0000 |
| FC 06 write one register | the PDU is not 5 bytes |
| FC 15 write bits | quantity not 1 .. 1968; byte count not ceil(quantity / 8) or not the bytes sent |
| FC 16 write registers | quantity not 1 .. 123; byte count not 2 x quantity or not the bytes sent |

A range that runs past address 65535 answers 0x02; any other function code answers 0x01.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pymodbus.constants import ExcCodes

READ_BITS_MAX = 2000
READ_REGISTERS_MAX = 125
WRITE_BITS_MAX = 1968
WRITE_REGISTERS_MAX = 123
COIL_ON, COIL_OFF = 0xFF00, 0x0000

READ_COILS, READ_DISCRETE_INPUTS, READ_HOLDING, READ_INPUT = 1, 2, 3, 4
WRITE_COIL, WRITE_REGISTER, WRITE_COILS, WRITE_REGISTERS = 5, 6, 15, 16
FUNCTIONS = frozenset({1, 2, 3, 4, 5, 6, 15, 16})
WRITES = frozenset({5, 6, 15, 16})


@dataclass(frozen=True, slots=True)
class Read:
    function: int  # 1, 2 (bits) or 3, 4 (registers)
    address: int
    count: int

    @property
    def bits(self) -> bool:
        return self.function in (READ_COILS, READ_DISCRETE_INPUTS)


@dataclass(frozen=True, slots=True)
class WriteRegisters:
    function: int  # 6 or 16
    address: int
    values: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WriteBits:
    function: int  # 5 or 15
    address: int
    values: tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    """A request answered with an exception before it reaches the map."""

    function: int
    code: ExcCodes


Request = Read | WriteRegisters | WriteBits | Refused


def parse(pdu: bytes) -> Request:
    """The request in a PDU (function code and data); never raises."""
    if not pdu:
        return Refused(0, ExcCodes.ILLEGAL_FUNCTION)
    function, data = pdu[0], pdu[1:]
    if function not in FUNCTIONS:
        return Refused(function & 0x7F, ExcCodes.ILLEGAL_FUNCTION)
    if function in (WRITE_COILS, WRITE_REGISTERS):
        return _parse_multiple(function, data)
    if len(data) != 4:
        return Refused(function, ExcCodes.ILLEGAL_VALUE)
    address, word = struct.unpack(">HH", data)
    if function in (WRITE_COIL, WRITE_REGISTER):
        return _parse_single(function, address, word)
    return _parse_read(function, address, word)


def _parse_single(function: int, address: int, word: int) -> Request:
    if function == WRITE_REGISTER:
        return WriteRegisters(function, address, (word,))
    if word not in (COIL_ON, COIL_OFF):
        return Refused(function, ExcCodes.ILLEGAL_VALUE)
    return WriteBits(function, address, (word == COIL_ON,))


def _parse_read(function: int, address: int, count: int) -> Request:
    limit = READ_BITS_MAX if function in (READ_COILS, READ_DISCRETE_INPUTS) else READ_REGISTERS_MAX
    if not 1 <= count <= limit:
        return Refused(function, ExcCodes.ILLEGAL_VALUE)
    if address + count > 0x10000:
        return Refused(function, ExcCodes.ILLEGAL_ADDRESS)
    return Read(function, address, count)


def _parse_multiple(function: int, data: bytes) -> Request:
    if len(data) < 5:
        return Refused(function, ExcCodes.ILLEGAL_VALUE)
    address, count, byte_count = struct.unpack(">HHB", data[:5])
    payload = data[5:]
    if function == WRITE_REGISTERS:
        valid = 1 <= count <= WRITE_REGISTERS_MAX and byte_count == 2 * count
    else:
        valid = 1 <= count <= WRITE_BITS_MAX and byte_count == (count + 7) // 8
    if not valid or len(payload) != byte_count:
        return Refused(function, ExcCodes.ILLEGAL_VALUE)
    if address + count > 0x10000:
        return Refused(function, ExcCodes.ILLEGAL_ADDRESS)
    if function == WRITE_REGISTERS:
        return WriteRegisters(function, address, struct.unpack(f">{count}H", payload))
    bits = tuple(bool(payload[i // 8] >> (i % 8) & 1) for i in range(count))
    return WriteBits(function, address, bits)


# --------------------------------------------------------------------------- responses


def exception(function: int, code: ExcCodes) -> bytes:
    return bytes([(function & 0x7F) | 0x80, int(code)])


def read_registers_response(function: int, words: list[int]) -> bytes:
    return bytes([function, 2 * len(words)]) + struct.pack(f">{len(words)}H", *words)


def read_bits_response(function: int, bits: list[bool]) -> bytes:
    packed = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            packed[i // 8] |= 1 << (i % 8)
    return bytes([function, len(packed)]) + bytes(packed)


def write_response(request: WriteRegisters | WriteBits) -> bytes:
    """The echo a successful write answers with."""
    if request.function == WRITE_REGISTER:
        return struct.pack(">BHH", request.function, request.address, request.values[0])
    if request.function == WRITE_COIL:
        value = COIL_ON if request.values[0] else COIL_OFF
        return struct.pack(">BHH", request.function, request.address, value)
    return struct.pack(">BHH", request.function, request.address, len(request.values))
