"""The `platform-db` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from platform_db.settings import ConfigurationError


def _cmd_demo(args: argparse.Namespace) -> int:
    from platform_db.demo import run_demo  # noqa: PLC0415 - keep `--help` fast

    return run_demo(Path(args.data_dir))


def _cmd_upgrade(args: argparse.Namespace) -> int:
    from alembic import command  # noqa: PLC0415
    from platform_db.migrations import alembic_config  # noqa: PLC0415

    if not os.environ.get("DATABASE_URL"):
        raise ConfigurationError("DATABASE_URL is not set")
    command.upgrade(alembic_config(), args.revision)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="platform-db",
        description="Schema, tenancy and operations tooling of the platform's PostgreSQL.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="migrate a database, create sample tenants and print what exists",
        description="Uses DATABASE_URL when set, else starts an embedded PostgreSQL.",
    )
    demo.add_argument(
        "--data-dir",
        default=os.environ.get("PLATFORM_DB_DATA_DIR", ".pgdata"),
        help="data directory of the embedded server (default: .pgdata)",
    )
    demo.set_defaults(func=_cmd_demo)

    upgrade = sub.add_parser("upgrade", help="run `alembic upgrade` on DATABASE_URL")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(func=_cmd_upgrade)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigurationError as exc:
        print(f"platform-db: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
