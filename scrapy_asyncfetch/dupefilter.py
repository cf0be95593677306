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

from typing import TYPE_CHECKING, Any

from scrapy.dupefilters import RFPDupeFilter

from . import _compat
from ._fingerprintset import FingerprintSet

if TYPE_CHECKING:
    from scrapy import Request


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
