"""An embedded PostgreSQL (the `pgserver` wheel) for demos and tests without a server.

Only imported when DATABASE_URL / TEST_DATABASE_URL is unset; install the `embedded`
extra to get it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url


class EmbeddedServerError(RuntimeError):
    pass


def start_embedded(data_dir: Path, *, keep_running: bool = True) -> tuple[URL, Any]:
    """Start (or reuse) a server whose data lives in `data_dir`; return its URL and handle.

    With `keep_running`, the server outlives this process (the next run reuses it);
    otherwise it stops when the handle is cleaned up or the process exits.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless.
            warnings.simplefilter("ignore")
            import pgserver  # noqa: PLC0415 - optional dependency, imported on demand
    except ImportError as exc:
        raise EmbeddedServerError(
            "DATABASE_URL is unset and the embedded server is not installed: "
            "pip install 'platform-db[embedded]', or set DATABASE_URL"
        ) from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    mode = None if keep_running else "stop"
    server = pgserver.get_server(data_dir, cleanup_mode=mode)  # type: ignore[attr-defined]
    return make_url(server.get_uri()), server
