"""Scrapy's own test suite, run stock and with the add-on forced on (see run.py)."""
