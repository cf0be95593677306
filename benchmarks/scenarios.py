"""The benchmark scenarios: which runners run, at which concurrency, on how many pages.

A scenario shares one server configuration (latency); its cells are run interleaved,
round after round, by ``benchmarks.run``.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.latency import LatencySpec
from benchmarks.runners import RUNNERS

SCENARIO_NAMES = ("sweep", "seed", "cpu", "memory", "targets", "main-job")

DEFAULT_PAGES = {
    "sweep": 5_000,
    "seed": 1_000,
    "cpu": 5_000,
    "memory": 100_000,
    "targets": 5_000,
    # Issue 12 measured the pages job on 8,000 URLs.
    "main-job": 8_000,
}
DEFAULT_SWEEP_C = (10, 50, 100, 200, 500)
DEFAULT_C = 100
# The pages job (runner 9) beside the minimal spider with the add-on (runner 7).
MAIN_JOB_C = (100, 500)
# The sync loop fetches one page per latency period: more pages only cost time.
DEFAULT_SYNC_PAGES = 200


@dataclass(frozen=True)
class Cell:
    """One measured configuration: a runner at concurrency C on N pages."""

    runner: str  # RunnerSpec.key
    concurrency: int
    pages: int

    def limit(self, latency: LatencySpec) -> float | None:
        """Physical limit in pages/s: ``min(N, C) / mean latency`` (None at zero latency)."""
        if latency.mean <= 0:
            return None
        return min(self.pages, self.concurrency) / latency.mean


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    latency: LatencySpec
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class ScenarioOptions:
    latency: LatencySpec  # for sweep, seed and targets
    zero_latency: LatencySpec  # for cpu and memory
    pages: dict[str, int]  # per scenario
    sweep_c: tuple[int, ...]
    sync_pages: int
    runners: frozenset[str]  # keys allowed to run


def _cells(keys: str, concurrency: int, pages: int, opts: ScenarioOptions) -> list[Cell]:
    cells = []
    for key in keys:
        if key not in opts.runners:
            continue
        spec = RUNNERS[key]
        if spec.fixed_concurrency is not None:
            cells.append(Cell(key, spec.fixed_concurrency, min(pages, opts.sync_pages)))
        else:
            cells.append(Cell(key, concurrency, pages))
    return cells


def build_scenarios(names: list[str], opts: ScenarioOptions) -> list[Scenario]:
    scenarios: list[Scenario] = []
    for name in names:
        n = opts.pages[name]
        if name == "sweep":
            # The sync loop's C is always 1, so it is measured once, not at every C.
            cells = _cells("1", 1, n, opts)
            for c in opts.sweep_c:
                cells += _cells("2345678", c, n, opts)
            title = f"pages/s against concurrency C at latency {opts.latency}, N={n}"
            scenarios.append(Scenario(name, title, opts.latency, tuple(cells)))
        elif name == "seed":
            title = f"{n} pages, C={DEFAULT_C}, latency {opts.latency}, all runners"
            cells = _cells("12345678", DEFAULT_C, n, opts)
            scenarios.append(Scenario(name, title, opts.latency, tuple(cells)))
        elif name == "cpu":
            title = f"CPU per 1,000 pages: latency {opts.zero_latency}, N={n}, C={DEFAULT_C}"
            cells = _cells("345678", DEFAULT_C, n, opts)
            scenarios.append(Scenario(name, title, opts.zero_latency, tuple(cells)))
        elif name == "memory":
            title = f"peak RSS: N={n}, latency {opts.zero_latency}, C={DEFAULT_C}"
            cells = _cells("4578", DEFAULT_C, n, opts)
            scenarios.append(Scenario(name, title, opts.zero_latency, tuple(cells)))
        elif name == "targets":
            title = f"runners 4-7 at latency {opts.latency}, C={DEFAULT_C}, N={n}"
            cells = _cells("4567", DEFAULT_C, n, opts)
            scenarios.append(Scenario(name, title, opts.latency, tuple(cells)))
        elif name == "main-job":
            title = f"the pages job (9) beside runner 7: latency {opts.latency}, N={n}"
            cells = [cell for c in MAIN_JOB_C for cell in _cells("79", c, n, opts)]
            scenarios.append(Scenario(name, title, opts.latency, tuple(cells)))
        else:
            raise ValueError(f"unknown scenario {name!r}; expected one of {SCENARIO_NAMES}")
    return [s for s in scenarios if s.cells]
