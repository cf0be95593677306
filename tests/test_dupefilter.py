"""The compact duplicate filter: RFPDupeFilter's behaviour in a few bytes per request."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from scrapy import Request
from scrapy.dupefilters import RFPDupeFilter

from scrapy_asyncfetch.dupefilter import CompactDupeFilter, FingerprintSet
from tests.conftest import asyncio_test, crawl
from tests.mockserver import MockServer
from tests.spiders import Collector


def digests(count: int, salt: str = "") -> list[bytes]:
    return [hashlib.sha1(f"{salt}{n}".encode()).digest() for n in range(count)]


def test_holds_what_a_set_holds_through_growth() -> None:
    members = digests(20_000)
    fingerprints = FingerprintSet(members[:10_000])
    for fingerprint in members[10_000:]:
        fingerprints.add(fingerprint)
    fingerprints.add(members[0])  # again: no change
    assert len(fingerprints) == 20_000
    assert all(fingerprint in fingerprints for fingerprint in members)
    assert not any(fingerprint in fingerprints for fingerprint in digests(20_000, salt="x"))


def test_keys_are_the_first_eight_bytes() -> None:
    fingerprints = FingerprintSet()
    zero, other = bytes(20), bytes(8) + b"\x01" * 12
    assert zero not in fingerprints
    fingerprints.add(zero)
    # A key of 0 (the empty-slot marker) is remembered apart, and counted once.
    assert zero in fingerprints
    assert other in fingerprints  # same first 8 bytes: the documented collision
    fingerprints.add(other)
    assert len(fingerprints) == 1
    assert "not bytes" not in fingerprints


def test_uneven_fingerprints_still_spread() -> None:
    # A custom fingerprinter's keys that differ only in their high bits.
    members = [n.to_bytes(8, "big")[::-1] for n in range(1, 5_000)]
    fingerprints = FingerprintSet(random.sample(members, len(members)))
    assert all(member in fingerprints for member in members)


def request(n: int) -> Request:
    return Request(f"http://example.com/{n}")


def test_filters_as_rfpdupefilter_does() -> None:
    compact, stock = CompactDupeFilter(), RFPDupeFilter()
    for n in [1, 2, 1, 3, 2, 4]:
        assert compact.request_seen(request(n)) == stock.request_seen(request(n))


def test_jobdir_file_is_shared_with_rfpdupefilter_and_written_at_once(tmp_path: Path) -> None:
    compact = CompactDupeFilter(str(tmp_path))
    for n in range(5):
        compact.request_seen(request(n))
    # Before close: a kill now must not lose what was seen.
    stock = RFPDupeFilter(str(tmp_path))
    assert all(stock.request_seen(request(n)) for n in range(5))
    stock.close("finished")
    compact.close("finished")
    # And the other way: a JOBDIR written by Scrapy's filter is read back.
    stock = RFPDupeFilter(str(tmp_path))
    stock.request_seen(request(7))
    stock.close("finished")
    resumed = CompactDupeFilter(str(tmp_path))
    assert all(resumed.request_seen(request(n)) for n in (0, 4, 7))
    assert not resumed.request_seen(request(8))
    resumed.close("finished")


@asyncio_test
async def test_a_crawl_filters_duplicates(mockserver: MockServer) -> None:
    urls = [mockserver.url(f"/echo?n={n % 5}") for n in range(20)]
    crawler = await crawl(Collector, requests=urls, dont_filter=False)
    assert crawler.stats is not None
    assert crawler.stats.get_value("dupefilter/filtered") == 15
    assert crawler.stats.get_value("response_received_count") == 5
    assert crawler.settings.get("DUPEFILTER_CLASS") is CompactDupeFilter
