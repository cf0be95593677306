"""Parsing of per-response latency specifications shared by the server and the orchestrator.

The server needs a sampler; the orchestrator needs the mean, to compute the physical
limit ``min(N, C) / mean latency`` that every pages/s figure is compared with.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

_KINDS = ("fixed", "exp", "uniform", "normal")


@dataclass(frozen=True)
class LatencySpec:
    """A latency distribution in seconds, written ``kind:param[:param]``.

    * ``fixed:0.1``       every response waits 0.1 s
    * ``exp:0.1``         exponential with mean 0.1 s
    * ``uniform:0.05:0.15``
    * ``normal:0.1:0.02`` mean 0.1 s, standard deviation 0.02 s, clipped at 0
    """

    kind: str
    params: tuple[float, ...]

    @classmethod
    def parse(cls, text: str) -> LatencySpec:
        kind, _, rest = text.partition(":")
        if not rest:  # a bare number means fixed latency
            return cls("fixed", (float(kind),))
        if kind not in _KINDS:
            raise ValueError(f"unknown latency kind {kind!r}; expected one of {_KINDS}")
        params = tuple(float(p) for p in rest.split(":"))
        expected = {"fixed": 1, "exp": 1, "uniform": 2, "normal": 2}[kind]
        if len(params) != expected:
            raise ValueError(f"{kind} latency takes {expected} parameter(s), got {text!r}")
        if any(p < 0 for p in params):
            raise ValueError(f"latency parameters must be >= 0: {text!r}")
        return cls(kind, params)

    @property
    def mean(self) -> float:
        if self.kind == "uniform":
            return (self.params[0] + self.params[1]) / 2
        # fixed, exp and (approximately, ignoring the clip at 0) normal
        return self.params[0]

    def __str__(self) -> str:
        return ":".join([self.kind, *(f"{p:g}" for p in self.params)])

    def sampler(self, seed: int | None = None) -> Callable[[], float]:
        """Return a zero-argument function drawing one latency in seconds."""
        rng = random.Random(seed)
        p = self.params
        if self.kind == "fixed":
            value = p[0]
            return lambda: value
        if self.kind == "exp":
            if p[0] == 0:
                return lambda: 0.0
            rate = 1.0 / p[0]
            return lambda: rng.expovariate(rate)
        if self.kind == "uniform":
            return lambda: rng.uniform(p[0], p[1])
        return lambda: max(0.0, rng.gauss(p[0], p[1]))
