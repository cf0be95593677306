"""Cluster mode: several workers (processes, machines) on one crawl, with Redis as the
shared frontier. Turned on by ``ASYNCFETCH_REDIS_URL`` with the add-on; see the README's
"Cluster mode"."""
