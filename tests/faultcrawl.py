"""Crawls for the fault, soak and resume tests.

* :class:`FaultSpider` requests a list of URLs and yields a
  :class:`~scrapy_asyncfetch.Page` for every response, so the page pipeline and
  the ledger account for each URL; it also keeps what its callbacks and errbacks
  saw, and how long each URL took from being yielded to its outcome.
* :func:`read_outcomes` and :func:`assert_accounted_once` read the pages
  directory back: every URL must be in the manifest or in ``failures.jsonl``,
  exactly once.
* Run as ``python -m tests.faultcrawl`` it crawls a URL file in a process of its
  own (soak, kill and resume tests) and prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scrapy import Request, Spider, signals
from scrapy.crawler import Crawler
from scrapy.http import Response
from twisted.python.failure import Failure

from scrapy_asyncfetch import Ledger, Page
from scrapy_asyncfetch.storage import MANIFEST_NAME, TEMP_PREFIX

FAILURES_NAME = "failures.jsonl"
#: Reason given to inputs that cannot even become a Request.
INVALID_INPUT = "InvalidURL"
#: Request meta key: when the spider yielded the request (monotonic seconds).
T0_KEY = "faultcrawl_t0"


@dataclass
class Outcome:
    """What the spider saw for one URL."""

    kind: str  # "response" or "failure"
    cls: type[BaseException] | None
    status: int | None
    elapsed: float
    message: str = ""


def original_url(request: Request) -> str:
    return (request.meta.get("redirect_urls") or [request.url])[0]


class FaultSpider(Spider):
    """Requests ``urls`` (strings or Requests) and turns every response into a Page.

    ``errbacks``: give every request an errback that records the failure (as a
    spider normally would); without, Scrapy logs failures itself.
    ``lazy``: yield start requests only while the downloader has room, so the
    scheduler never holds the whole list (memory measurements stay meaningful).
    Inputs that cannot become a Request are recorded in the ledger with
    :meth:`Ledger.record_failure`, reason ``InvalidURL``.
    """

    name = "faultcrawl"

    def __init__(
        self,
        urls: Iterable[Request | str] = (),
        errbacks: bool = True,
        lazy: bool = False,
        rss_every: int = 0,
        keep_outcomes: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.urls = list(urls)
        self.errbacks = errbacks
        self.lazy = lazy
        #: False: only count them, so a long crawl's memory is the plugin's, not ours.
        self.keep_outcomes = keep_outcomes
        self.outcomes: dict[str, list[Outcome]] = {}
        self.recorded = 0
        self.rejected: list[str] = []
        self.rss_every = rss_every
        self.responses_seen = 0
        #: (responses received so far, RSS in bytes): every ``rss_every``
        #: responses, and once all are in.
        self.rss_samples: list[tuple[int, int]] = []

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> FaultSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        assert isinstance(spider, FaultSpider)
        if spider.rss_every:
            crawler.signals.connect(spider._sample_rss, signal=signals.response_received)
            crawler.signals.connect(spider._sample_rss_at_end, signal=signals.spider_idle)
        return spider

    async def start(self) -> AsyncIterator[Request]:
        for item in self.urls:
            if self.lazy:
                while self.crawler.engine.needs_backout():
                    await self.crawler.signals.wait_for(signals.scheduler_empty)
            request = self.make_request(item)
            if request is not None:
                yield request

    def make_request(self, item: Request | str) -> Request | None:
        if isinstance(item, Request):
            request = item
        else:
            try:
                request = Request(item)
            except ValueError as exc:
                self.rejected.append(item)
                ledger = self.crawler.get_extension(Ledger)
                assert ledger is not None
                ledger.record_failure(item, INVALID_INPUT, str(exc))
                return None
        meta = {**request.meta, T0_KEY: time.monotonic()}
        return request.replace(
            callback=request.callback or self.parse,
            errback=request.errback or (self.on_error if self.errbacks else None),
            meta=meta,
        )

    def _record(self, request: Request, outcome: Outcome) -> None:
        self.recorded += 1
        if self.keep_outcomes:
            self.outcomes.setdefault(original_url(request), []).append(outcome)

    def _elapsed(self, request: Request) -> float:
        return time.monotonic() - request.meta.get(T0_KEY, time.monotonic())

    def parse(self, response: Response) -> Any:
        request = response.request
        assert request is not None
        self._record(request, Outcome("response", None, response.status, self._elapsed(request)))
        yield Page.from_response(response)

    def on_error(self, failure: Failure) -> None:
        request = failure.request  # type: ignore[attr-defined]
        value = failure.value
        assert value is not None
        response = getattr(value, "response", None)
        status = response.status if isinstance(response, Response) else None
        outcome = Outcome("failure", type(value), status, self._elapsed(request), str(value))
        self._record(request, outcome)

    def _sample_rss(self) -> None:
        self.responses_seen += 1
        if self.responses_seen % self.rss_every == 0:
            self.rss_samples.append((self.responses_seen, current_rss()))

    def _sample_rss_at_end(self) -> None:
        # The first idle comes once everything was fetched (start() is lazy but
        # the engine does not call a spider idle while it still has requests),
        # before the pipeline compacts the manifest at close.
        if not self.rss_samples or self.rss_samples[-1][0] != self.responses_seen:
            self.rss_samples.append((self.responses_seen, current_rss()))

    # Sequencing and assertions ----------------------------------------------

    async def wait_outcomes(self, count: int) -> None:
        """Wait (from ``start()``) until ``count`` outcomes were recorded."""
        deadline = time.monotonic() + 30
        while self.recorded < count:
            assert time.monotonic() < deadline, f"{self.recorded} of {count} outcomes"
            await asyncio.sleep(0.01)

    def only(self, url: str) -> Outcome:
        """The single outcome of ``url`` (fails if it had none or several)."""
        outcomes = self.outcomes.get(Request(url).url, [])
        assert len(outcomes) == 1, (url, outcomes, self.outcomes)
        return outcomes[0]


def current_rss() -> int:
    import psutil  # noqa: PLC0415 - only the subprocess runs need it

    return int(psutil.Process().memory_info().rss)


# --------------------------------------------------------------------------- files


def read_json_lines(path: Path, *, allow_torn_tail: bool = False) -> list[dict[str, Any]]:
    """Every line of a JSON Lines file, parsed; fails on a torn or foreign line
    (but for a last line without its newline, with ``allow_torn_tail``: what a
    killed writer may leave, and the next run cuts off)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if allow_torn_tail:
        data = data[: data.rfind(b"\n") + 1]
    assert not data or data.endswith(b"\n"), f"{path} ends with a torn line: {data[-200:]!r}"
    records = []
    for number, line in enumerate(data.splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path}:{number} is not JSON: {line[:200]!r}") from None
        assert isinstance(record, dict), (number, line)
        assert isinstance(record.get("url"), str), (number, line)
        records.append(record)
    return records


@dataclass
class Outcomes:
    pages: dict[str, dict[str, Any]]  # url -> last manifest record
    manifest_lines: int
    failures: list[dict[str, Any]]  # every line of failures.jsonl

    @property
    def failed(self) -> dict[str, dict[str, Any]]:
        return {record["url"]: record for record in self.failures}


def read_outcomes(pages_dir: Path) -> Outcomes:
    manifest = read_json_lines(pages_dir / MANIFEST_NAME)
    return Outcomes(
        pages={record["url"]: record for record in manifest},
        manifest_lines=len(manifest),
        failures=read_json_lines(pages_dir / FAILURES_NAME),
    )


def temp_files(pages_dir: Path) -> list[Path]:
    return [path for path in pages_dir.rglob("*") if path.name.startswith(TEMP_PREFIX)]


def assert_accounted_once(pages_dir: Path, urls: Iterable[str]) -> Outcomes:
    """Every URL is in the manifest or in the failures, never both, never twice,
    and nothing else is; no temporary file is left."""
    expected = set(urls)
    outcomes = read_outcomes(pages_dir)
    failed_urls = [record["url"] for record in outcomes.failures]
    twice = sorted({url for url in failed_urls if failed_urls.count(url) > 1})
    assert not twice, f"{len(twice)} URLs failed more than once, e.g. {twice[:5]}"
    assert outcomes.manifest_lines == len(outcomes.pages), "manifest not compacted"
    both = set(outcomes.pages) & set(failed_urls)
    assert not both, f"{len(both)} URLs are both pages and failures, e.g. {sorted(both)[:5]}"
    missing = expected - set(outcomes.pages) - set(failed_urls)
    assert not missing, f"{len(missing)} URLs unaccounted for, e.g. {sorted(missing)[:5]}"
    extra = (set(outcomes.pages) | set(failed_urls)) - expected
    assert not extra, f"{len(extra)} unexpected URLs, e.g. {sorted(extra)[:5]}"
    assert not temp_files(pages_dir), temp_files(pages_dir)[:5]
    return outcomes


# --------------------------------------------------------------------------- subprocess


def run_crawl(args: argparse.Namespace) -> dict[str, Any]:
    from scrapy.crawler import CrawlerProcess  # noqa: PLC0415 - installs the reactor

    urls = Path(args.urls).read_text().splitlines()
    settings = json.loads(args.settings)
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(FaultSpider)
    started = time.monotonic()
    process.crawl(
        crawler,
        urls=urls,
        errbacks=False,
        lazy=args.lazy,
        rss_every=args.rss_every,
        keep_outcomes=False,
    )
    process.start()
    elapsed = time.monotonic() - started
    spider = crawler.spider
    assert isinstance(spider, FaultSpider)
    stats = {
        key: value
        for key, value in (crawler.stats.get_stats() if crawler.stats else {}).items()
        if isinstance(value, int | float | str)
    }
    return {"elapsed": elapsed, "stats": stats, "rss": spider.rss_samples}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Crawl a URL file with FaultSpider")
    parser.add_argument("--urls", required=True, help="file with one URL a line")
    parser.add_argument("--settings", required=True, help="Scrapy settings as JSON")
    parser.add_argument("--rss-every", type=int, default=0, help="sample RSS every N responses")
    parser.add_argument("--lazy", action="store_true", help="yield start requests lazily")
    args = parser.parse_args(argv)
    # Leaks show up as ResourceWarnings ("unclosed ..."): send them to the log.
    warnings.simplefilter("always", ResourceWarning)
    logging.captureWarnings(True)
    result = run_crawl(args)
    # Objects left unclosed report themselves when collected: before exiting, so
    # that the report reaches the log.
    gc.collect()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    logging.shutdown()


if __name__ == "__main__":
    main()
