"""Benchmark harness for scrapy-asyncfetch (not part of the test suite).

Run ``python -m benchmarks.run --help`` from the repository root; see
``benchmarks/README.md``.
"""
