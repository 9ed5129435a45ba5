"""Hostile archives for the upload tests: zips written byte by byte, so a member can hold
gigabytes of zeros in a few megabytes (deflate of zeros is ~1000:1) and declare whatever
sizes and .npy headers a test wants, without the test process ever holding them.

A MiB of zeros is deflated once with a full flush (no back-references across it), and
the same bytes are repeated: the stream inflates to any number of MiB at no cost here.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np

MIB = 1 << 20
_ZEROS = bytes(MIB)


@dataclass
class Member:
    name: str
    pieces: list  # raw deflate stream, in pieces
    crc: int
    compressed: int
    size: int  # inflated


def _deflated(data: bytes) -> bytes:
    """``data`` as a raw deflate piece that can be followed by other pieces."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


_ZERO_MIB = _deflated(_ZEROS)
_FINAL = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty final block


def member(name: str, prefix: bytes, zeros: int = 0) -> Member:
    """A deflated member: ``prefix`` then ``zeros`` zero bytes."""
    whole, rest = divmod(zeros, MIB)
    pieces = [_deflated(prefix)] + [_ZERO_MIB] * whole + ([_deflated(bytes(rest))] if rest else []) + [_FINAL]
    crc = zlib.crc32(prefix)
    for _ in range(whole):
        crc = zlib.crc32(_ZEROS, crc)
    crc = zlib.crc32(bytes(rest), crc)
    return Member(name, pieces, crc, sum(map(len, pieces)), len(prefix) + zeros)


def npy_header(shape: tuple, dtype: str, fortran_order: bool = False) -> bytes:
    """The .npy header of an array of ``shape`` and ``dtype`` (a numpy descr, e.g. "<f4")."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": fortran_order,
                                                  "shape": tuple(shape)})
    return buffer.getvalue()


def npy_member(name: str, shape: tuple, dtype: str, extra_zeros: int = 0) -> Member:
    """``name.npy`` declaring ``shape`` / ``dtype``, holding zeros of exactly that size
    (plus ``extra_zeros`` more)."""
    nbytes = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
    return member(f"{name}.npy", npy_header(shape, dtype), nbytes + extra_zeros)


def array_members(arrays: dict[str, np.ndarray]) -> list[Member]:
    """Ordinary arrays as members (as np.savez_compressed would write them)."""
    members = []
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
        members.append(member(f"{name}.npy", buffer.getvalue()))
    return members


def zip_bytes(members: list[Member]) -> bytes:
    """A zip of deflated ``members`` (each under 4 GiB: no zip64 records needed)."""
    out, directory = bytearray(), bytearray()
    for item in members:
        name = item.name.encode()
        assert item.size < 1 << 32 and item.compressed < 1 << 32, "no zip64 here"
        offset = len(out)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, item.crc, item.compressed, item.size,
                           len(name), 0) + name
        for piece in item.pieces:
            out += piece
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, item.crc, item.compressed,
                                 item.size, len(name), 0, 0, 0, 0, 0, offset) + name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), len(out), 0)
    return bytes(out + directory + end)


def passes_with(arrays: dict[str, np.ndarray], *hostile: Member) -> bytes:
    """A passes .npz: the ordinary ``arrays`` (those a hostile member replaces left out) plus ``hostile``."""
    replaced = {item.name.removesuffix(".npy") for item in hostile}
    return zip_bytes(array_members({k: v for k, v in arrays.items() if k not in replaced}) + list(hostile))
