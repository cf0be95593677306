"""Runner 2: a ``ThreadPoolExecutor`` of C threads, one ``requests.Session`` per thread.

The usual way to make blocking code concurrent. A session per thread because
``requests.Session`` is not documented as thread-safe, and it gives each thread its own
keep-alive connection.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import requests

from benchmarks.runners.common import RunResult, Snapshot, current_rss_mb, page_urls, parse_args


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    local = threading.local()
    sessions: list[requests.Session] = []
    sessions_lock = threading.Lock()

    def fetch(url: str) -> bool:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            with sessions_lock:
                sessions.append(session)
        try:
            return session.get(url, timeout=args.timeout).status_code == 200
        except requests.RequestException:
            return False

    rss_start = current_rss_mb()
    start = Snapshot.take()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        # map() submits every URL up front, as a typical script does.
        outcomes = list(pool.map(fetch, page_urls(args.base_url, args.pages)))
    end = Snapshot.take()
    for session in sessions:
        session.close()
    ok = sum(outcomes)
    errors = len(outcomes) - ok
    RunResult.between(
        "2-threads", args, start, end, pages_ok=ok, errors=errors, rss_start_mb=rss_start
    ).emit()


if __name__ == "__main__":
    main()
