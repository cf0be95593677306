"""One run: start the mix's server, crawl it with the example project, collect both sides.

The crawl is ``scrapy crawl pages`` in ``example_project/``, in a fresh subprocess, with the
same settings for every variant plus the mix's and the variant's ``-s`` overrides. Pages are
counted from the run's ``manifest.jsonl``; Scrapy's stats come from the stats dump at the end
of its log; the server's counters from the JSON line it prints when stopped.
"""

from __future__ import annotations

import ast
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from benchmarks.politeness.mixes import Mix, UrlEntry, url_entries
from benchmarks.politeness.variants import Variant
from benchmarks.serverctl import stop_process
from scrapy_asyncfetch.storage import MANIFEST_NAME, read_manifest

REPO = Path(__file__).resolve().parents[2]
PROJECT_DIR = REPO / "example_project"
#: Settings of every run, whatever the variant.
COMMON_SETTINGS = {"ROBOTSTXT_OBEY": "False", "LOG_LEVEL": "INFO"}
_SERVER_START_TIMEOUT = 30.0
_SERVER_STOP_TIMEOUT = 15.0
#: After a timeout: how long Scrapy gets to stop on SIGTERM before SIGKILL.
_TERM_GRACE = 15.0
_STATS_START = "Dumping Scrapy stats:"
_STAT_LINE = re.compile(r"^[\s{]*'(?P<key>[^']+)':\s*(?P<value>.*?),?\}?$")


@dataclass(frozen=True)
class RunSpec:
    mix: Mix
    arrangement: str
    variant: Variant
    round: int
    scale: float
    timeout: float

    @property
    def run_id(self) -> str:
        return f"r{self.round}-{self.mix.name}-{self.arrangement}-{self.variant.name}"


class ServerProcess:
    """The mix's server (``benchmarks.politeness.server``) in its own process."""

    def __init__(self, mix: Mix, scale: float, seed: int, log_path: Path) -> None:
        self._cmd = [
            sys.executable,
            "-m",
            "benchmarks.politeness.server",
            "--mix",
            mix.name,
            "--scale",
            str(scale),
            "--seed",
            str(seed),
        ]
        self._log_path = log_path
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> ServerProcess:
        with self._log_path.open("w") as log:
            self._proc = subprocess.Popen(
                self._cmd,
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        line = self._read_line(_SERVER_START_TIMEOUT)
        if not line:
            self._kill()
            raise RuntimeError(f"the politeness server did not start; see {self._log_path}")
        self.port = json.loads(line)["port"]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._kill()

    def _read_line(self, timeout: float) -> str:
        assert self._proc is not None
        assert self._proc.stdout is not None
        readable, _, _ = select.select([self._proc.stdout], [], [], timeout)
        return self._proc.stdout.readline() if readable else ""

    def collect(self) -> dict[str, Any]:
        """Stop the server (end of its stdin) and return the counters it prints."""
        assert self._proc is not None
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        line = self._read_line(_SERVER_STOP_TIMEOUT)
        if not line:
            raise RuntimeError(f"the politeness server sent no counters; see {self._log_path}")
        return json.loads(line)

    def _kill(self) -> None:
        if self._proc is None:
            return
        stop_process(self._proc)
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        self._proc = None


def pages_command(urls_file: Path, settings: dict[str, str]) -> list[str]:
    """``scrapy crawl pages -a urls=FILE`` with ``-s`` overrides, run in ``PROJECT_DIR``."""
    cmd = [sys.executable, "-m", "scrapy", "crawl", "pages", "-a", f"urls={urls_file}"]
    for name, value in settings.items():
        cmd += ["-s", f"{name}={value}"]
    return cmd


def crawl_command(spec: RunSpec, urls_file: Path, pages_dir: Path, log_file: Path) -> list[str]:
    settings = {
        **COMMON_SETTINGS,
        "ASYNCFETCH_PAGES_DIR": str(pages_dir),
        "LOG_FILE": str(log_file),
        **spec.mix.settings,
        **spec.variant.settings,
    }
    return pages_command(urls_file, settings)


@dataclass(frozen=True)
class CrawlOutcome:
    returncode: int | None
    timed_out: bool
    wall_s: float


def run_crawl(cmd: list[str], timeout: float, output: Path) -> CrawlOutcome:
    """Run the crawl; past *timeout*, SIGTERM its process group, then SIGKILL."""
    start = time.perf_counter()
    with output.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=PROJECT_DIR, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode: int | None = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            returncode = stop_group(proc)
    return CrawlOutcome(returncode, timed_out, round(time.perf_counter() - start, 3))


def stop_group(
    proc: subprocess.Popen[bytes],
    steps: tuple[tuple[signal.Signals, float], ...] = (
        (signal.SIGTERM, _TERM_GRACE),
        (signal.SIGKILL, 10.0),
    ),
) -> int | None:
    """Send each signal of ``steps`` to the process group in turn, waiting its grace
    seconds for the process to end; its exit status, or None if it still runs."""
    for sig, grace in steps:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def _stat_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # datetimes and the like: kept as written


def parse_stats(log_text: str) -> dict[str, Any]:
    """Scrapy's final stats dump (a pprint of a dict, one key per line) from its log."""
    start = log_text.rfind(_STATS_START)
    if start == -1:
        return {}
    stats: dict[str, Any] = {}
    for line in log_text[start + len(_STATS_START) :].splitlines()[1:]:
        match = _STAT_LINE.match(line)
        if match:
            stats[match["key"]] = _stat_value(match["value"])
        if line.rstrip().endswith("}"):
            break
    return stats


def enabled_addons(log_text: str) -> str | None:
    """The list after "Enabled addons:", as logged (``[]`` when the add-on is off)."""
    match = re.search(r"Enabled addons:\n(\[.*?\])", log_text, re.DOTALL)
    return " ".join(match[1].split()) if match else None


def _host_of(url: str, addresses: dict[str, str]) -> str:
    return addresses.get(urlsplit(url).hostname or "", "?")


def client_side(entries: list[UrlEntry], manifest: dict[str, Any], mix: Mix) -> dict[str, Any]:
    """Pages written and URLs lost, in all and per host."""
    addresses = {h.address: h.name for h in mix.hosts}
    good = {e.url: e.host for e in entries if e.good}
    written = Counter(_host_of(url, addresses) for url in manifest if url in good)
    wanted = Counter(good.values())
    return {
        "pages": sum(written.values()),
        "good_urls": len(good),
        "lost": len(good) - sum(written.values()),
        "other_pages": sum(1 for url in manifest if url not in good),
        "per_host": {
            h.name: {"pages": written[h.name], "lost": wanted[h.name] - written[h.name]}
            for h in mix.hosts
        },
    }


def _host_row(server: dict[str, Any], client: dict[str, Any]) -> dict[str, Any]:
    good, bad = server["status"], server["bad_status"]
    return {
        **client,
        "requests": server["requests"],
        "429": good.get("429", 0) + bad.get("429", 0),
        "503": good.get("503", 0) + bad.get("503", 0),
        "busiest": server["busiest"],
        "last_page_s": server["last_ok_s"],
        "listening_from_s": server["listening_from_s"],
        "status": good,
        "bad_status": bad,
        "ok_per_second": server["ok_per_second"],
        "refused_per_second": server["refused_per_second"],
    }


def run_one(spec: RunSpec, raw_dir: Path) -> dict[str, Any]:
    """Do one run and return its record (what results.json keeps)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"politeness-{spec.run_id}-"))
    try:
        return _run_in(spec, tmp, raw_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_in(spec: RunSpec, tmp: Path, raw_dir: Path) -> dict[str, Any]:
    log_file, pages_dir, urls_file = tmp / "crawl.log", tmp / "pages", tmp / "urls.txt"
    server_log = raw_dir / f"{spec.run_id}.server.log"
    with ServerProcess(spec.mix, spec.scale, spec.round, server_log) as server:
        entries = url_entries(spec.mix, server.port, spec.arrangement)
        urls_file.write_text("".join(e.url + "\n" for e in entries))
        cmd = crawl_command(spec, urls_file, pages_dir, log_file)
        outcome = run_crawl(cmd, spec.timeout, raw_dir / f"{spec.run_id}.stdout")
        server_stats = server.collect()
    log_text = log_file.read_text(errors="replace") if log_file.exists() else ""
    if log_file.exists():
        shutil.copyfile(log_file, raw_dir / f"{spec.run_id}.log")
    stats = parse_stats(log_text)
    addons = enabled_addons(log_text)
    addon_enabled = addons is not None and "scrapy_asyncfetch" in addons
    if addon_enabled != spec.variant.addon:
        print(f"WARNING {spec.run_id}: enabled add-ons {addons!r}", file=sys.stderr)
    client = client_side(entries, read_manifest(str(pages_dir / MANIFEST_NAME)), spec.mix)
    hosts = {
        name: _host_row(server_stats["hosts"][name], client["per_host"][name])
        for name in client["per_host"]
    }
    return {
        "run_id": spec.run_id,
        "mix": spec.mix.name,
        "arrangement": spec.arrangement,
        "variant": spec.variant.name,
        "round": spec.round,
        "scale": spec.scale,
        "command": cmd,
        "timed_out": outcome.timed_out,
        "returncode": outcome.returncode,
        "wall_s": outcome.wall_s,
        "elapsed_s": stats.get("elapsed_time_seconds"),
        "finish_reason": stats.get("finish_reason"),
        "addons": addons,
        "addon_enabled": addon_enabled,
        "pages": client["pages"],
        "good_urls": client["good_urls"],
        "lost": client["lost"],
        "other_pages": client["other_pages"],
        "refused": sum(h["429"] + h["503"] for h in hosts.values()),
        "server_crawl_seconds": server_stats["crawl_seconds"],
        "hosts": hosts,
        "stats": stats,
        "log": f"raw/{spec.run_id}.log",
    }
