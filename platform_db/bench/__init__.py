"""The benchmark harness: `platform-db seed` fills a database, `platform-db bench` measures it.

Numbers come from here, never from tests: see docs/PERFORMANCE.md for the measured ones.
"""
