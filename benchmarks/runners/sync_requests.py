"""Runner 1: a plain synchronous loop over one ``requests.Session`` (concurrency 1).

The baseline everyone writes first. C is ignored: it always fetches one page at a time,
so its physical limit is ``1 / latency`` pages/s.
"""

from __future__ import annotations

import requests

from benchmarks.runners.common import RunResult, Snapshot, current_rss_mb, page_urls, parse_args


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    ok = errors = 0
    rss_start = current_rss_mb()
    start = Snapshot.take()
    with requests.Session() as session:
        for url in page_urls(args.base_url, args.pages):
            try:
                response = session.get(url, timeout=args.timeout)
            except requests.RequestException:
                errors += 1
                continue
            if response.status_code == 200:
                ok += 1
            else:
                errors += 1
    end = Snapshot.take()
    RunResult.between(
        "1-sync",
        args,
        start,
        end,
        pages_ok=ok,
        errors=errors,
        rss_start_mb=rss_start,
        concurrency=1,
    ).emit()


if __name__ == "__main__":
    main()
