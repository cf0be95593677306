"""A duplicate filter whose memory is a few bytes per URL, not a Python object per URL.

Scrapy's ``RFPDupeFilter`` keeps every fingerprint as a ``bytes`` object in a ``set``:
about 90 bytes per distinct request, 90 MB for a million URLs, which is most of what a
long crawl's memory grows by once ``start()`` is read as the crawl goes. This one keeps the
first 8 bytes of each fingerprint in one open-addressing table of 64-bit integers (12 to 24
bytes per request), and behaves as ``RFPDupeFilter`` otherwise: same fingerprints (from
``REQUEST_FINGERPRINTER_CLASS``), same ``JOBDIR`` file, same log and stats.

Two requests whose fingerprints share their first 64 bits count as duplicates: for a
crawl of n distinct requests the chance of any such pair is about n² / 2⁶⁵ (3 in 100
million for a million requests, 3 in 10,000 for a hundred million).
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Any

from scrapy.dupefilters import RFPDupeFilter

from . import _compat

if TYPE_CHECKING:
    from collections.abc import Iterable

    from scrapy import Request

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


class CompactDupeFilter(RFPDupeFilter):
    """``RFPDupeFilter`` keeping its fingerprints in a :class:`FingerprintSet`.

    Set as ``DUPEFILTER_CLASS`` by the add-on unless the project chose its own. With
    ``JOBDIR``, each new fingerprint is handed to the OS at once: Scrapy's buffered file
    loses its last few hundred on a kill, and ``start()``, read as the crawl goes, would
    then yield again requests already fetched.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Those read from a JOBDIR are converted once, at start-up.
        _compat.replace_dupefilter_fingerprints(self, FingerprintSet)

    def request_seen(self, request: Request) -> bool:
        seen = super().request_seen(request)
        if not seen and self.file is not None:
            self.file.flush()
        return seen
