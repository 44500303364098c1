"""Test support for services built on platform-db.

`platform_db.testing` is a pytest plugin (``pytest -p platform_db.testing``) that proves
tenant isolation for every tenant-owned table: see platform_db.testing.plugin.
`platform_db.testing.scratch` makes throw-away databases and logins without pytest (the
benchmarks use it), so the plugin is loaded here only where pytest is installed.
"""

from importlib.util import find_spec

if find_spec("pytest") is not None:
    from platform_db.testing.plugin import *  # noqa: F403 - the plugin's fixtures and API
    from platform_db.testing.plugin import __all__  # noqa: F401
