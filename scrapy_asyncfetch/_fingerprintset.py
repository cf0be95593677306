"""A set of byte strings (fingerprints, hashes) that keeps 8 bytes of each in one table of
64-bit integers, not a Python object per member: for the duplicate filter and any other
count of what a long crawl has seen (e.g. the manifest's compaction). Plain Python.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

#: Slots in a new table; a power of two, so that an index is a mask away.
_INITIAL_SLOTS = 1 << 12
_KEY_BYTES = 8
# Fingerprints are meant to be hashes, but a custom fingerprinter's need not be uniform
# in their low bits: a multiplicative mix spreads any key over the table.
_MIX = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


class FingerprintSet:
    """A set of fingerprints (bytes) that stores 8 bytes of each.

    Linear probing in an ``array('Q')`` at most two-thirds full; 0 marks an empty slot,
    so a fingerprint whose key is 0 is remembered by a flag of its own.
    """

    __slots__ = ("_has_zero", "_len", "_mask", "_table")

    def __init__(self, fingerprints: Iterable[bytes] = ()) -> None:
        self._table = array("Q", bytes(_KEY_BYTES * _INITIAL_SLOTS))
        self._mask = _INITIAL_SLOTS - 1
        self._len = 0
        self._has_zero = False
        self.update(fingerprints)

    def __len__(self) -> int:
        return self._len

    def __contains__(self, fingerprint: object) -> bool:
        if not isinstance(fingerprint, bytes):
            return False
        key = int.from_bytes(fingerprint[:_KEY_BYTES], "big")
        if key == 0:
            return self._has_zero
        return self._table[self._index(key)] == key

    def add(self, fingerprint: bytes) -> None:
        key = int.from_bytes(fingerprint[:_KEY_BYTES], "big")
        if key == 0:
            self._len += not self._has_zero
            self._has_zero = True
            return
        index = self._index(key)
        if self._table[index] == key:
            return
        self._table[index] = key
        self._len += 1
        if 3 * self._len > 2 * len(self._table):
            self._grow()

    def update(self, fingerprints: Iterable[bytes]) -> None:
        for fingerprint in fingerprints:
            self.add(fingerprint)

    def _index(self, key: int) -> int:
        """The slot holding *key*, or the empty slot where it belongs."""
        table, mask = self._table, self._mask
        index = ((key * _MIX) & _MASK64) >> 32 & mask
        while True:
            found = table[index]
            if found in (0, key):
                return index
            index = (index + 1) & mask

    def _grow(self) -> None:
        old = self._table
        self._table = array("Q", bytes(_KEY_BYTES * 2 * len(old)))
        self._mask = 2 * len(old) - 1
        table = self._table
        for key in old:
            if key:
                table[self._index(key)] = key
