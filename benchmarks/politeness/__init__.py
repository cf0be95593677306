"""The politeness benchmark: crawls of impolite-to-crawl local sites, variant by variant.

Run ``python -m benchmarks.politeness --help`` from the repository root; see
``benchmarks/README.md``.
"""
