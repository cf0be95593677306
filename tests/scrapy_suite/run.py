"""Run Scrapy's own test suite twice, stock and with the add-on forced on, and compare.

    python -m tests.scrapy_suite.run [--in-place] [-n N] [--files F ...] [--timeout S]
                                     [--only stock|addon] [-- PYTEST_ARGS ...]

1. Downloads the sdist of the Scrapy version installed here with ``pip download --no-binary``
   and unpacks it into ``.scrapy-suite/`` at the repository root (kept as a cache, which ignores
   itself for git), moving the sdist's own ``scrapy/`` aside so the installed Scrapy is tested.
2. Makes a virtualenv there (``.scrapy-suite/venv-*``) with that Scrapy, this project (editable,
   so the run sees the plugin's current code) and the test requirements of the sdist's
   ``tox.ini``, all pinned where they can be to the versions of the environment running this
   script. ``--in-place`` installs the test requirements into the running environment instead
   (the tox env ``scrapy-suite`` does that).
3. Runs the :data:`TEST_FILES` of the sdist twice with JUnit XML output: stock, then with
   ``-p plugin`` (plugin.py, which sets ``ADDONS`` in Scrapy's default settings).
4. Exits 1 if a test fails (or errors, or is missing) with the add-on but passes stock, unless its
   node id is listed in ``by_design.txt``, or if a test is markedly slower with the add-on
   (more than :data:`SLOW_SECONDS` and more than :data:`SLOW_FACTOR` times its stock time).
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import venv
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = REPO / ".scrapy-suite"
BY_DESIGN = HERE / "by_design.txt"

# Scrapy's test files that run real crawls (engine, downloader, slots, signals, middlewares
# with get_crawler, feeds, pipelines), chosen by grepping the sdist's tests for the mockserver
# fixture and crawler.crawl() / get_crawler(), and keeping those whose subject sits on the
# request/response path the add-on's middleware takes over.
TEST_FILES: tuple[str, ...] = (
    "tests/test_engine.py",
    "tests/test_engine_loop.py",
    "tests/test_engine_stop_download_bytes.py",
    "tests/test_engine_stop_download_headers.py",
    "tests/test_crawl.py",
    "tests/test_crawler.py",
    "tests/test_signals.py",
    "tests/test_scheduler.py",
    "tests/test_scheduler_base.py",
    "tests/test_downloaderslotssettings.py",
    "tests/test_downloadermiddleware.py",
    "tests/test_downloadermiddleware_cookies.py",
    "tests/test_downloadermiddleware_defaultheaders.py",
    "tests/test_downloadermiddleware_downloadtimeout.py",
    "tests/test_downloadermiddleware_httpauth.py",
    "tests/test_downloadermiddleware_httpcache.py",
    "tests/test_downloadermiddleware_httpcompression.py",
    "tests/test_downloadermiddleware_httpproxy.py",
    "tests/test_downloadermiddleware_offsite.py",
    "tests/test_downloadermiddleware_redirect.py",
    "tests/test_downloadermiddleware_retry.py",
    "tests/test_downloadermiddleware_robotstxt.py",
    "tests/test_downloadermiddleware_stats.py",
    "tests/test_downloadermiddleware_useragent.py",
    "tests/test_request_left.py",
    "tests/test_request_cb_kwargs.py",
    "tests/test_request_attribute_binding.py",
    "tests/test_extension_throttle.py",
    "tests/test_closespider.py",
    "tests/test_feedexport.py",
    "tests/test_pipelines.py",
    "tests/test_pipeline_crawl.py",
    "tests/test_spidermiddleware_httperror.py",
    "tests/test_spidermiddleware_output_chain.py",
)

#: A test is "markedly slower" with the add-on past both of these.
SLOW_SECONDS = 2.0
SLOW_FACTOR = 5.0
#: pytest-timeout's limit for one test, in both passes, so that a hang is a failure.
DEFAULT_TIMEOUT = 120
#: Extra packages the test files above need beyond tox.ini's test requirements.
EXTRA_TEST_DEPS: tuple[str, ...] = ()
PLUGIN_MODULE = "plugin"
NETGUARD_MODULE = "netguard"
HEADER_PREFIX = "scrapy-asyncfetch forced on:"

FAILED = ("failed", "error")


@dataclass
class Result:
    outcome: str  # passed, failed, error, skipped
    seconds: float
    message: str = ""


@dataclass
class Pass:
    name: str
    results: dict[str, Result]
    wall: float
    returncode: int
    log: Path


def say(*args: object) -> None:
    print(*args, flush=True)


def run(cmd: list[str], **kwargs: object) -> None:
    say("+", " ".join(str(c) for c in cmd))
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


# -- sdist ------------------------------------------------------------------------------------


def scrapy_version(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('scrapy'))"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def fetch_sdist(version: str) -> Path:
    """Download and unpack Scrapy's sdist for *version*; return the unpacked directory."""
    target = CACHE / f"scrapy-{version}"
    if (target / "tox.ini").is_file():
        return hide_sdist_package(target)
    dist = CACHE / "dist"
    dist.mkdir(parents=True, exist_ok=True)
    archives = list(dist.glob(f"[sS]crapy-{version}.tar.gz"))
    if not archives:
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"scrapy=={version}",
                "-d",
                str(dist),
            ]
        )
        archives = list(dist.glob(f"[sS]crapy-{version}.tar.gz"))
    if len(archives) != 1:
        sys.exit(f"expected one Scrapy {version} sdist in {dist}, found {archives}")
    tmp = CACHE / f".unpack-{version}"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archives[0]) as tar:
        tar.extractall(tmp, filter="data")
    (inner,) = tmp.iterdir()
    inner.rename(target)
    tmp.rmdir()
    return hide_sdist_package(target)


def hide_sdist_package(sdist: Path) -> Path:
    """Move the sdist's own ``scrapy/`` aside, so that the tests, run from the sdist's root
    (which pytest puts first on sys.path), import the installed Scrapy, as the add-on does."""
    package = sdist / "scrapy"
    if package.is_dir():
        package.rename(sdist / "scrapy-sdist-source")
    return sdist


def tox_test_requirements(sdist: Path) -> list[str]:
    """The test requirements of the sdist's tox.ini: [test-requirements] and [testenv] deps."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#",))
    parser.read(sdist / "tox.ini", encoding="utf-8")
    reqs: list[str] = []
    for section in ("test-requirements", "testenv"):
        for raw in parser.get(section, "deps", fallback="").splitlines():
            line = raw.strip()
            if line and not line.startswith("{"):
                reqs.append(line)
    return [*reqs, *EXTRA_TEST_DEPS]


# -- environment ------------------------------------------------------------------------------


def constraints_file() -> Path:
    """Pin every package that the running environment has to its version here."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pins = [
        line
        for line in out.splitlines()
        if re.match(r"^[A-Za-z0-9._-]+==", line)
        and not line.lower().startswith(("scrapy-asyncfetch==", "pip==", "setuptools=="))
    ]
    path = CACHE / "constraints.txt"
    path.write_text("\n".join(pins) + "\n", encoding="utf-8")
    return path


def prepare_env(sdist: Path, version: str, in_place: bool) -> str:
    """Return the Python to run the suite with, with everything installed."""
    reqs = tox_test_requirements(sdist)
    constraints = constraints_file()
    if in_place:
        python = sys.executable
        packages = reqs
        stamp = CACHE / f"installed-in-place-{hashlib.sha1(python.encode()).hexdigest()[:8]}"
    else:
        tag = f"py{sys.version_info.major}{sys.version_info.minor}-scrapy{version}"
        env_dir = CACHE / f"venv-{tag}"
        python = str(env_dir / "bin" / "python")
        if not Path(python).exists():
            venv.create(env_dir, with_pip=True)
        packages = [f"scrapy=={version}", "-e", str(REPO), *reqs]
        stamp = env_dir / ".installed"
    # What the install depends on. In place, the constraints are the environment's own
    # versions, which the install itself changes: they are left out of the key there.
    inputs = [python, *packages]
    inputs += [(REPO / f).read_text(encoding="utf-8") for f in ("setup.cfg", "pyproject.toml")]
    if not in_place:
        inputs.append(constraints.read_text(encoding="utf-8"))
    key = hashlib.sha1(json.dumps(inputs).encode()).hexdigest()
    if not (stamp.exists() and stamp.read_text(encoding="utf-8") == key):
        run([python, "-m", "pip", "install", "-q", "-c", str(constraints), *packages])
        stamp.write_text(key, encoding="utf-8")
    got = scrapy_version(python)
    if got != version:
        sys.exit(f"{python} has Scrapy {got}, expected {version}")
    return python


# -- passes -----------------------------------------------------------------------------------


def node_id(case: ET.Element, root: Path) -> str:
    """pytest's node id for a JUnit test case: the module is the longest dotted prefix of the
    class name that is a file under *root* (the ``file`` attribute names the file that defines
    the function, which for an inherited test is the base class's)."""
    classname = case.get("classname") or ""
    name = case.get("name") or ""
    parts = classname.split(".") if classname else []
    for i in range(len(parts), 0, -1):
        file = "/".join(parts[:i]) + ".py"
        if (root / file).is_file():
            return "::".join([file, *parts[i:], name])
    return f"{classname}::{name}" if classname else name


def failure_summary(element: ET.Element) -> str:
    """The failure's message, and the failing source line when the message says little."""
    message = (element.get("message") or "").strip()
    text = element.text or ""
    if len(message) < 40:
        source = [ln[1:].strip() for ln in text.splitlines() if ln.startswith(">")]
        if source:
            message = f"{message} at: {source[-1]}" if message else source[-1]
    return message or text.strip()


def parse_junit(path: Path, root: Path) -> dict[str, Result]:
    results: dict[str, Result] = {}
    if not path.exists():
        return results
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                message = failure_summary(child)
                break
            if child.tag == "skipped":
                xfail = child.get("type") == "pytest.xfail"
                outcome = "xfailed" if xfail else "skipped"
                message = (child.get("message") or "").strip()
        nid = node_id(case, root)
        seconds = float(case.get("time") or 0)
        if nid in results:  # a teardown error is a second entry for the same test
            prev = results[nid]
            if prev.outcome not in FAILED:
                results[nid] = Result(outcome, prev.seconds + seconds, message)
            continue
        results[nid] = Result(outcome, seconds, message)
    return results


def run_pass(
    name: str, python: str, sdist: Path, files: list[str], args: argparse.Namespace
) -> Pass:
    out = CACHE / "results"
    out.mkdir(parents=True, exist_ok=True)
    junit = out / f"{name}.xml"
    log = out / f"{name}.log"
    junit.unlink(missing_ok=True)
    cmd = [
        python,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-o",
        "junit_family=xunit1",
        f"--junitxml={junit}",
        f"--timeout={args.timeout}",
        "--durations=15",
        "-rfE",
    ]
    if args.workers:
        cmd += ["-n", str(args.workers)]
    # Both passes: nothing resolved or connected off this machine.
    cmd += ["-p", NETGUARD_MODULE]
    if name == "addon":
        cmd += ["-p", PLUGIN_MODULE]
    cmd += [*args.pytest_args, *files]
    env = dict(os.environ)
    # Both passes get the same PYTHONPATH; only the add-on pass loads the plugin from it.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("VIRTUAL_ENV", None)
    say(f"== {name} pass: {len(files)} files, log in {log}")
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(
            cmd, check=False, cwd=sdist, env=env, stdout=fh, stderr=subprocess.STDOUT
        )
    wall = time.monotonic() - started
    tail = log.read_text(encoding="utf-8", errors="replace").rstrip().splitlines()[-1:]
    say(f"   {name}: {wall:.0f} s, exit {proc.returncode}: {' '.join(tail)}")
    return Pass(name, parse_junit(junit, sdist), wall, proc.returncode, log)


# -- comparison -------------------------------------------------------------------------------


def read_by_design() -> dict[str, str]:
    entries: dict[str, str] = {}
    if not BY_DESIGN.exists():
        return entries
    for raw in BY_DESIGN.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        nid, _, reason = line.partition("#")
        entries[nid.strip()] = reason.strip()
    return entries


def counts(results: dict[str, Result]) -> str:
    tally = {k: 0 for k in ("passed", "failed", "error", "skipped", "xfailed")}
    for r in results.values():
        tally[r.outcome] = tally.get(r.outcome, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in tally.items())


def short(message: str, width: int = 110) -> str:
    line = " ".join(message.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def compare(stock: Pass, addon: Pass, by_design: dict[str, str]) -> int:
    rows: list[tuple[str, str, str, str, str, str]] = []
    regressions = slow = 0
    expected: list[str] = []
    for nid in sorted(set(stock.results) | set(addon.results)):
        s = stock.results.get(nid)
        a = addon.results.get(nid)
        s_out = s.outcome if s else "missing"
        a_out = a.outcome if a else "missing"
        s_sec = f"{s.seconds:.2f}" if s else "-"
        a_sec = f"{a.seconds:.2f}" if a else "-"
        if s_out == "passed" and a_out in (*FAILED, "missing"):
            if nid in by_design:
                verdict = "by design"
                expected.append(nid)
            else:
                verdict = "REGRESSION"
                regressions += 1
            rows.append((verdict, nid, s_out, a_out, s_sec, a_sec))
            if a and verdict == "REGRESSION":
                rows.append(("", "    " + short(a.message), "", "", "", ""))
        elif s_out not in (*FAILED, "missing") and a_out in FAILED:
            verdict = "by design" if nid in by_design else "REGRESSION"
            regressions += verdict == "REGRESSION"
            rows.append((verdict, nid, s_out, a_out, s_sec, a_sec))
        elif s_out in (*FAILED, "missing") and a_out in FAILED:
            rows.append(("fails stock too", nid, s_out, a_out, s_sec, a_sec))
        elif nid in by_design and a_out == "passed":
            rows.append(("by design, but passes: drop it", nid, s_out, a_out, s_sec, a_sec))
        if (
            s
            and a
            and a_out == "passed"
            and a.seconds > SLOW_SECONDS
            and a.seconds > SLOW_FACTOR * s.seconds
        ):
            slow += 1
            rows.append(("SLOW", nid, s_out, a_out, s_sec, a_sec))
    for nid in sorted(set(by_design) - set(stock.results) - set(addon.results)):
        rows.append(("by design, not run", nid, "-", "-", "-", "-"))

    say()
    say(f"{'pass':<6} {'wall':>7}  results")
    for p in (stock, addon):
        say(f"{p.name:<6} {p.wall:>6.0f}s  {counts(p.results)} (pytest exit {p.returncode})")
    say()
    if rows:
        width = min(max(len(r[1]) for r in rows), 120)
        cols = ("stock", "addon", "stock s", "addon s")
        say(f"{'verdict':<16} {'test':<{width}} " + " ".join(f"{c:>8}" for c in cols))
        for verdict, nid, s_out, a_out, s_sec, a_sec in rows:
            if not verdict:
                say(f"{'':<16} {nid}")
                continue
            say(f"{verdict:<16} {nid:<{width}} {s_out:>8} {a_out:>8} {s_sec:>8} {a_sec:>8}")
        say()
    say(
        f"{regressions} fail only with the add-on (besides {len(expected)} by design); "
        f"{slow} markedly slower (> {SLOW_SECONDS:g} s and > {SLOW_FACTOR:g}x stock)"
    )
    summary = {
        "stock": {"wall": stock.wall, "counts": counts(stock.results)},
        "addon": {"wall": addon.wall, "counts": counts(addon.results)},
        "rows": rows,
    }
    (CACHE / "results" / "summary.json").write_text(json.dumps(summary, indent=1), "utf-8")
    return 1 if regressions or slow else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--in-place",
        action="store_true",
        help="install the test requirements into the running environment, not a cached venv",
    )
    parser.add_argument("-n", "--workers", type=int, default=0, help="pytest-xdist workers")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="per test, seconds")
    parser.add_argument("--files", nargs="+", help="Scrapy test files (default: TEST_FILES)")
    parser.add_argument(
        "--only", choices=("stock", "addon"), help="run one pass, reuse the other's last results"
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    args = parser.parse_args(argv)

    CACHE.mkdir(exist_ok=True)
    # Like .pytest_cache: the cache dir ignores itself, so nothing in it is ever committed.
    (CACHE / ".gitignore").write_text("# created by tests/scrapy_suite/run.py\n*\n", "utf-8")
    version = scrapy_version(sys.executable)
    sdist = fetch_sdist(version)
    python = prepare_env(sdist, version, args.in_place)
    files = list(args.files or TEST_FILES)
    missing = [f for f in files if not (sdist / f).exists()]
    if missing:
        sys.exit(f"not in Scrapy {version}'s sdist: {missing}")
    say(f"Scrapy {version} suite in {sdist}, Python {python}")

    passes: dict[str, Pass] = {}
    for name in ("stock", "addon"):
        if args.only and args.only != name:
            junit = CACHE / "results" / f"{name}.xml"
            passes[name] = Pass(name, parse_junit(junit, sdist), 0.0, 0, junit.with_suffix(".log"))
            continue
        passes[name] = run_pass(name, python, sdist, files, args)

    addon_log = passes["addon"].log.read_text(encoding="utf-8", errors="replace")
    header = next((ln for ln in addon_log.splitlines() if ln.startswith(HEADER_PREFIX)), None)
    if header is None:
        say(f"the add-on pass never reported the plugin in effect: see {passes['addon'].log}")
        return 1
    say(header)
    return compare(passes["stock"], passes["addon"], read_by_design())


if __name__ == "__main__":
    sys.exit(main())
