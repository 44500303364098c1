"""The `platform-db` command line.

Human-readable output by default, `--json` for machines; progress goes to stderr.
Connection settings come from the environment (DATABASE_URL, ...): a password is never
taken as an argument (it would show in `ps`) and never printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.exc import DBAPIError, OperationalError

from platform_db.session.settings import (
    ConfigurationError,
    Settings,
    database_url_from_env,
    redact,
)

EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2


def _settings() -> Settings:
    """The POSTGRES_* settings a service reads (Settings.from_env), validated the same way."""
    if database_url_from_env() is None:
        raise ConfigurationError(
            "DATABASE_URL is not set: point it at the database, e.g. "
            "postgresql://postgres@127.0.0.1:5432/platform"
        )
    return Settings.from_env()


def _admin_engine(*, settings_as_alerts: bool = False, read_only: bool = False) -> Any:
    """One connection at a time, no statement timeout; the main pool's connect and lock
    timeouts (POSTGRES_CONNECT_TIMEOUT, POSTGRES_LOCK_TIMEOUT).

    `settings_as_alerts`: `doctor` reports bad POSTGRES_* values as alerts of its report
    (check_environment) instead of stopping; it connects with the default timeouts then.
    `read_only`: read-only transactions (doctor's), which a standby accepts too.
    """
    from sqlalchemy.pool import NullPool  # noqa: PLC0415

    from platform_db.session.engines import (  # noqa: PLC0415
        DEFAULT_CONNECT_TIMEOUT_MS,
        DEFAULT_LOCK_TIMEOUT_MS,
        make_engine,
    )

    try:
        settings = _settings()
        url = settings.database_url
        connect_timeout_ms = settings.main.connect_timeout_ms
        lock_timeout_ms = settings.main.lock_timeout_ms
    except ConfigurationError:
        found = database_url_from_env() if settings_as_alerts else None
        if found is None:
            raise
        url, connect_timeout_ms, lock_timeout_ms = (
            found,
            DEFAULT_CONNECT_TIMEOUT_MS,
            DEFAULT_LOCK_TIMEOUT_MS,
        )
    return make_engine(
        url,
        application_name="platform-db:cli",
        poolclass=NullPool,
        statement_timeout_ms=0,
        idle_in_transaction_timeout_ms=0,
        lock_timeout_ms=lock_timeout_ms,
        connect_timeout_ms=connect_timeout_ms,
        read_only=read_only,
    )


def _migration_lock_timeout() -> str:
    """PLATFORM_DB_MIGRATION_LOCK_TIMEOUT and _LOCK_WAIT, checked before anything runs."""
    from alembic.util.exc import CommandError  # noqa: PLC0415

    from platform_db.migration.locking import migration_lock_wait  # noqa: PLC0415
    from platform_db.migration.operations import migration_lock_timeout  # noqa: PLC0415

    try:
        migration_lock_wait()
        return migration_lock_timeout()
    except (ValueError, CommandError) as exc:
        raise ConfigurationError(str(exc)) from None


def _one_line(message: str) -> str:
    """`invalid settings:` and its indented problems, as one line."""
    head, *rest = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return f"{head} {'; '.join(rest)}" if rest else head


def _emit_json(data: Any, out: TextIO = sys.stdout) -> None:
    json.dump(data, out, indent=2, default=str)
    out.write("\n")


def _progress(message: str) -> None:
    print(f"platform-db: {message}", file=sys.stderr, flush=True)  # noqa: T201


def _cmd_demo(args: argparse.Namespace) -> int:
    from platform_db.demo import run_demo  # noqa: PLC0415 - keep `--help` fast

    return run_demo(Path(args.data_dir))


def _alembic(args: argparse.Namespace, action: str) -> int:
    from alembic import command  # noqa: PLC0415
    from alembic.util.exc import CommandError  # noqa: PLC0415

    from platform_db.migration import runner as migrations  # noqa: PLC0415
    from platform_db.migration.downgrade_guard import DESTROY_DATA_ATTRIBUTE  # noqa: PLC0415

    _settings()
    _migration_lock_timeout()
    cfg = migrations.alembic_config()
    cfg.attributes["platform_db_command"] = action
    cfg.attributes[DESTROY_DATA_ATTRIBUTE] = bool(getattr(args, "destroy_data", False))
    try:
        if args.sql:  # offline: the SQL on stdout is the whole output
            getattr(command, action)(cfg, args.revision, sql=True)
            return EXIT_OK
        engine = _admin_engine()
        try:
            before = _current_heads(engine)
            getattr(command, action)(cfg, args.revision)
            # What the run found under the migration lock: a concurrent deploy may have
            # applied everything while this one waited.
            before = cfg.attributes.get("platform_db_heads_before", before)
            after = _current_heads(engine)
            database = redact(engine.url)
        finally:
            engine.dispose()
    except CommandError as exc:
        # A refused downgrade (it names the tables and their rows), a migration lock
        # waited for too long, an unknown revision: Alembic's message, no traceback.
        print(f"platform-db: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_UNHEALTHY
    _print_applied(cfg, action, before, after, database)
    return EXIT_OK


def _current_heads(engine: Any) -> tuple[str, ...]:
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    with engine.connect() as conn:
        return tuple(MigrationContext.configure(conn).get_current_heads())


def _print_applied(
    cfg: Any, action: str, before: tuple[str, ...], after: tuple[str, ...], database: str
) -> None:
    """What `upgrade` applied or `downgrade` reverted, oldest first for an upgrade."""
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    script = ScriptDirectory.from_config(cfg)
    upper, lower = (after, before) if action == "upgrade" else (before, after)
    steps = list(script.iterate_revisions(upper or "base", lower or "base"))
    if action == "upgrade":
        steps.reverse()
    now = ", ".join(after) or "base (no revision)"
    if set(after) == set(script.get_heads()):
        now += " (head)"
    verb = "applied" if action == "upgrade" else "reverted"
    if not steps:
        state = f"already at head {', '.join(after)}" if now.endswith("(head)") else f"at {now}"
        print(f"{database}: {state}, nothing {verb}")  # noqa: T201
        return
    print(f"{database}: {verb} {len(steps)} revision(s)")  # noqa: T201
    for rev in steps:
        summary = (rev.doc or "").strip().splitlines()
        print(f"  {rev.revision}  {summary[0] if summary else ''}")  # noqa: T201
    print(f"now at {now}")  # noqa: T201


def _cmd_check(args: argparse.Namespace) -> int:
    from alembic.util.exc import AutogenerateDiffsDetected, CommandError  # noqa: PLC0415

    from platform_db.migration import runner as migrations  # noqa: PLC0415

    engine = _admin_engine()
    drift: list[str] = []
    try:
        with engine.connect() as conn:
            try:
                migrations.check(conn)
            except AutogenerateDiffsDetected as exc:
                drift = [str(d) for d in getattr(exc, "diffs", [])] or [str(exc)]
            except CommandError as exc:
                print(f"platform-db: {exc} (run `platform-db upgrade` first)", file=sys.stderr)  # noqa: T201
                return EXIT_UNHEALTHY
            finally:
                conn.rollback()
    finally:
        engine.dispose()
    if args.json:
        _emit_json({"drift": drift, "clean": not drift})
    elif drift:
        print("the database differs from platform-db's definitions:")  # noqa: T201
        for line in drift:
            print(f"  {line}")  # noqa: T201
    else:
        print("no drift: the database holds platform-db's schema as defined")  # noqa: T201
    return EXIT_UNHEALTHY if drift else EXIT_OK


def _cmd_upgrade(args: argparse.Namespace) -> int:
    return _alembic(args, "upgrade")


def _cmd_downgrade(args: argparse.Namespace) -> int:
    return _alembic(args, "downgrade")


def _cmd_current(args: argparse.Namespace) -> int:
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    from platform_db.migration import runner as migrations  # noqa: PLC0415

    engine = _admin_engine()
    script = ScriptDirectory.from_config(migrations.alembic_config())
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_heads()
    heads = script.get_heads()
    data = {
        "database": redact(engine.url),
        "current": list(current),
        "heads": list(heads),
        "up_to_date": set(current) == set(heads),
    }
    engine.dispose()
    if args.json:
        _emit_json(data)
    else:
        state = "up to date" if data["up_to_date"] else f"behind: head is {', '.join(heads)}"
        print(f"{data['database']}: {', '.join(current) or 'empty (no revision)'} ({state})")  # noqa: T201
    return EXIT_OK if data["up_to_date"] else EXIT_UNHEALTHY


def _print_doctor(report: Any, out: TextIO) -> None:
    from platform_db.textfmt import write_table  # noqa: PLC0415

    out.write(f"platform-db doctor: {report.headline}\n")
    out.write(f"  PostgreSQL {report.server_version}\n")
    ext = report.extensions
    out.write(
        "  pg_stat_statements: "
        + ("in use" if ext["pg_stat_statements_usable"] else "NOT in use (slow-query checks off)")
        + f"; pg_cron: {'installed' if ext['pg_cron_installed'] else 'not installed'}\n\n"
    )
    out.write(f"Alerts ({len(report.alerts)})\n")
    if report.alerts:
        write_table(
            out,
            ["severity", "metric", "subject", "value", "threshold", "detail"],
            [
                [
                    a["severity"],
                    a["metric"],
                    a["subject"] or "",
                    a["value"] or "",
                    a["threshold"] or "",
                    a["detail"],
                ]
                for a in sorted(report.alerts, key=lambda a: -_sev(a["severity"]))
            ],
        )
    else:
        out.write("  none\n")
    out.write("\nCache hit ratios\n")
    write_table(
        out,
        ["kind", "hits", "reads", "ratio"],
        [[c["kind"], c["hits"], c["reads"], c["ratio"] or "n/a"] for c in report.cache_hit],
    )
    if report.slow_queries:
        out.write("\nSlow queries (mean over 100 ms)\n")
        write_table(
            out,
            ["mean ms", "calls", "query"],
            [[q["mean_ms"], q["calls"], q["query"]] for q in report.slow_queries],
        )
    usage = ", ".join(f"{k} {v}" for k, v in sorted(report.index_usage.items())) or "no indexes"
    shards = " (summed over the shards on the workers)" if report.citus is not None else ""
    out.write(f"\nIndex usage{shards}: {usage}\n")
    if report.unused_indexes:
        write_table(
            out,
            ["unused index", "table", "bytes"],
            [[u["index"], u["table"], u["bytes"]] for u in report.unused_indexes],
        )
    if report.bloat:
        out.write("\nDead rows (top 10)\n")
        write_table(
            out,
            ["table", "live", "dead", "ratio", "last vacuum"],
            [
                [
                    b["table"],
                    b["live_rows"],
                    b["dead_rows"],
                    b["dead_ratio"],
                    b["last_vacuum"] or "never",
                ]
                for b in report.bloat
            ],
        )
    p = report.partitions
    out.write(
        f"\nPartitions of form_submissions: {p['monthly']} monthly, {p['months_ahead']} ahead "
        f"(last {p['last_month']}), {p['default_rows']} rows in the default partition, "
        f"RLS forced on all: {'yes' if p['rls_forced_everywhere'] else 'NO'}\n"
    )
    if report.materialized_views:
        out.write("\nMaterialized views\n")
        keys = list(report.materialized_views[0].keys())
        write_table(out, keys, [[m[k] for k in keys] for m in report.materialized_views])
    if report.citus is not None:
        out.write("\nCitus nodes (shards and bytes of distributed tables; tenants and rows as of ")
        out.write("the dashboards' last refresh)\n")
        write_table(
            out,
            ["node", "shards", "bytes", "share", "tenants", "rows"],
            [
                [n["node"], n["shards"], n["bytes"], n["share"], n["tenants"], n["rows"]]
                for n in report.citus["nodes"]
            ],
        )
        if report.citus["largest_tenants"]:
            out.write("\nLargest tenants\n")
            write_table(
                out,
                ["tenant", "subdomain", "rows", "share", "node"],
                [
                    [t["tenant_id"], t["subdomain"], t["rows"], t["share"], t["node"] or "?"]
                    for t in report.citus["largest_tenants"]
                ],
            )
    _print_replication(report.replication, out)
    out.write("\nServer settings\n")
    write_table(
        out,
        ["setting", "current", "status", "recommendation"],
        [[s.name, s.current, s.status, s.recommendation] for s in report.settings],
    )
    verdict = "healthy" if report.healthy else f"attention needed ({report.worst_severity})"
    out.write(f"\n{verdict}\n")


def _print_replication(replication: dict[str, Any], out: TextIO) -> None:
    from platform_db.textfmt import write_table  # noqa: PLC0415

    def ms(value: Any) -> str:
        return "n/a" if value is None else f"{value:,.0f} ms"

    role = replication.get("role")
    if role == "standby":
        s = replication["standby"]
        out.write(
            f"\nReplication: this server is a standby: {ms(s['lag_ms'])} behind, "
            f"receiving WAL: {'yes' if s['receiving'] else 'NO'}, replay paused: "
            f"{'yes' if s['replay_paused'] else 'no'}\n"
        )
    elif role == "primary":
        standbys = replication.get("standbys", [])
        out.write(f"\nReplication: primary, {len(standbys)} standby(s) streaming from it\n")
        if standbys:
            write_table(
                out,
                ["standby", "state", "replay lag", "bytes behind", "slot"],
                [
                    [
                        r["application_name"] or r["client_addr"],
                        r["state"],
                        ms(r["replay_lag_ms"]),
                        r["replay_bytes_behind"],
                        r["slot_name"] or "",
                    ]
                    for r in standbys
                ],
            )
        inactive = [x for x in replication.get("slots", []) if not x["active"]]
        if inactive:
            write_table(
                out,
                ["inactive slot", "WAL kept (bytes)"],
                [[x["slot_name"], x["retained_bytes"]] for x in inactive],
            )
    replica = replication.get("replica")
    if replica is not None:
        if not replica.get("reachable"):
            out.write(f"Replica {replica['url']}: cannot be reached ({replica['error']})\n")
        elif not replica["in_recovery"]:
            out.write(f"Replica {replica['url']}: NOT in recovery (a primary)\n")
        else:
            out.write(
                f"Replica {replica['url']}: {ms(replica['lag_ms'])} behind (measured there), "
                f"receiving WAL: {'yes' if replica['receiving'] else 'NO'}, "
                f"hot_standby_feedback = {replica['hot_standby_feedback']}, "
                f"max_standby_streaming_delay = {replica['max_standby_streaming_delay']}\n"
            )


def _sev(severity: str) -> int:
    from platform_db.maintenance import SEVERITY_ORDER  # noqa: PLC0415

    return SEVERITY_ORDER.get(severity, 0)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from platform_db.maintenance.health import (  # noqa: PLC0415
        DoctorCannotRun,
        check_environment,
        doctor,
    )

    max_lag_ms = _max_replica_lag_ms(args)
    # Read-only: doctor writes nothing, and so runs on a standby as well.
    engine = _admin_engine(settings_as_alerts=True, read_only=True)
    try:
        with engine.connect() as conn:
            report = doctor(conn, max_replica_lag_ms=max_lag_ms)
    except DoctorCannotRun as exc:
        if args.json:
            _emit_json({"healthy": False, "headline": str(exc)})
        print(f"platform-db doctor: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_UNHEALTHY
    finally:
        engine.dispose()
    report.alerts.extend(check_environment(os.environ))
    _add_replica_end(report, max_lag_ms)
    if args.json:
        _emit_json(report.as_dict())
    else:
        _print_doctor(report, sys.stdout)
    return EXIT_OK if report.healthy else EXIT_UNHEALTHY


def _max_replica_lag_ms(args: argparse.Namespace) -> float:
    """doctor's replication-lag threshold: --max-replica-lag-ms, else the lag the analytics
    pool accepts (POSTGRES_REPLICA_MAX_LAG_MS), else 30 s."""
    from platform_db.maintenance.replication import DEFAULT_MAX_LAG_MS  # noqa: PLC0415

    if args.max_replica_lag_ms is not None:
        if args.max_replica_lag_ms < 0:
            raise ConfigurationError("--max-replica-lag-ms must be 0 or more")
        return float(args.max_replica_lag_ms)
    raw = os.environ.get("POSTGRES_REPLICA_MAX_LAG_MS", "").strip()
    return float(raw) if raw.isdigit() else DEFAULT_MAX_LAG_MS  # else: an environment alert


def _add_replica_end(report: Any, max_lag_ms: float) -> None:
    """The analytics pool's replica (POSTGRES_REPLICA_URL) as it sees itself: lag, WAL."""
    from platform_db.maintenance.replication import replica_end  # noqa: PLC0415
    from platform_db.session.settings import parse_database_url  # noqa: PLC0415

    raw = os.environ.get("POSTGRES_REPLICA_URL", "").strip()
    if not raw:
        return
    try:
        url = parse_database_url(raw, name="POSTGRES_REPLICA_URL")
    except ConfigurationError:
        return  # check_environment reported it
    state, alerts = replica_end(url, max_lag_ms=max_lag_ms)
    report.replication["replica"] = state
    report.alerts.extend(alerts)


def _cmd_maintain(args: argparse.Namespace) -> int:
    from platform_db.maintenance import MaintenanceRefused, maintain  # noqa: PLC0415
    from platform_db.migration.operations import migration_lock_timeout  # noqa: PLC0415

    try:
        lock_timeout = migration_lock_timeout()
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    engine = _admin_engine()
    try:
        steps = maintain(
            engine,
            months_ahead=args.months_ahead,
            retention_months=args.retention_months,
            drop_retired=args.drop,
            metrics_retention_days=args.metrics_retention_days,
            lock_timeout=lock_timeout,
            progress=None if args.quiet else _progress,
        )
    except MaintenanceRefused as exc:
        if args.json:
            _emit_json({"refused": str(exc)})
        print(f"platform-db: maintain: refused: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_UNHEALTHY
    finally:
        engine.dispose()
    if args.json:
        _emit_json(
            [
                {
                    "step": s.name,
                    "seconds": s.seconds,
                    "result": s.result,
                    "skipped": s.skipped,
                    "error": s.error,
                    "timed_out": s.timed_out,
                }
                for s in steps
            ]
        )
    else:
        for s in steps:
            if s.error is not None:
                detail = f"FAILED: {s.error}"
            elif s.skipped:
                detail = f"skipped: {s.skipped}"
            else:
                detail = _summarise(s.result)
            print(f"{s.name:<34} {s.seconds:7.2f} s  {detail}")  # noqa: T201
    failed = [s for s in steps if s.failed]
    for s in failed:
        # One line per failed step on stderr, also with --json and --quiet (cron mails it).
        print(f"platform-db: maintain: step failed: {s.name}: {s.error}", file=sys.stderr)  # noqa: T201
    return EXIT_UNHEALTHY if failed else EXIT_OK


def _cmd_distribute(args: argparse.Namespace) -> int:
    from platform_db.maintenance.distribute import DistributeError, distribute  # noqa: PLC0415

    engine = _admin_engine()
    try:
        report = distribute(
            engine, shard_count=args.shard_count, progress=None if args.quiet else _progress
        )
    except DistributeError as exc:
        if args.json:
            _emit_json({"distributed": False, "error": str(exc)})
        print(f"platform-db: distribute: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_UNHEALTHY
    finally:
        engine.dispose()
    if args.json:
        _emit_json(report.as_dict())
    else:
        state = "distributed" if report.changed else "already distributed, nothing changed"
        print(f"{report.database}: {state} over {len(report.workers)} workers")  # noqa: T201
        if args.quiet:  # otherwise each step was shown as it ran
            for what, outcome in report.steps:
                print(f"  {what}: {outcome}")  # noqa: T201
    if report.refresh_login is not None:
        print(f"platform-db: distribute: {report.refresh_login}", file=sys.stderr)  # noqa: T201
        return EXIT_UNHEALTHY
    return EXIT_OK


def _cmd_tenant_key(args: argparse.Namespace) -> int:
    from platform_db.maintenance.tenant_keys import run  # noqa: PLC0415
    from platform_db.session.seal import TenantKeyError  # noqa: PLC0415

    engine = _admin_engine()
    try:
        lines = run(engine, args.action, key_id=args.key_id, off=args.off, grace=args.grace)
    except TenantKeyError as exc:
        print(f"platform-db: tenant-key {args.action}: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_UNHEALTHY
    finally:
        engine.dispose()
    for line in lines:
        print(line)  # noqa: T201
    return EXIT_OK


def _cmd_bench_audit(args: argparse.Namespace) -> int:
    from platform_db.bench.audit import markdown, run  # noqa: PLC0415

    url = database_url_from_env()
    if url is None:
        raise ConfigurationError("DATABASE_URL is not set")
    report = run(url, rows=args.rows, rounds=args.rounds, out=None if args.json else sys.stderr)
    if args.json:
        _emit_json(report)
    else:
        print(markdown(report))  # noqa: T201
        print(  # noqa: T201
            f"\naudit_log: {report['audit_rows']} rows, "
            f"{report['audit_bytes_per_row']} bytes per row with its indexes "
            f"(PostgreSQL {report['server_version']})"
        )
    return EXIT_OK


def _summarise(result: Any) -> str:
    if isinstance(result, list):
        if not result:
            return "nothing to do"
        if len(result) == 1 and len(result[0]) == 1:
            return f"{next(iter(result[0].keys()))}: {next(iter(result[0].values()))}"
        return "; ".join(", ".join(f"{k}={v}" for k, v in r.items()) for r in result)
    return "done"


# --- import-mongo (MongoDB / Payload migration; implementation in platform_db.importer) ---

EXIT_REJECTS = 3  # balanced, but some documents were rejected (see the rejects file)


def _cmd_import_mongo(args: argparse.Namespace) -> int:
    import psycopg  # noqa: PLC0415 - keep `--help` fast

    from platform_db.importer import (  # noqa: PLC0415
        ImportOptions,
        ImportSetupError,
        MappingError,
        Mode,
        load_mapping,
        run_import,
    )

    try:
        mapping = load_mapping(Path(args.mapping) if args.mapping else None)
    except MappingError as exc:
        raise ConfigurationError(str(exc)) from None
    if args.show_mapping:
        _emit_json(mapping.as_dict())
        return EXIT_OK
    if args.directory is None:
        raise ConfigurationError("import-mongo needs the directory of the mongoexport files")
    url = database_url_from_env()
    if url is None:
        raise ConfigurationError("DATABASE_URL is not set: point it at the target database")
    mode = Mode.DRY_RUN if args.dry_run else Mode.VERIFY if args.verify else Mode.IMPORT
    dates = _import_date_window(args.earliest_date, args.latest_date)
    options = ImportOptions(
        directory=Path(args.directory),
        mapping=mapping,
        mode=mode,
        rejects_path=Path(args.rejects),
        role=args.role,
        progress=not args.quiet,
        only=tuple(n for part in args.only for n in part.split(",") if n),
        dates=dates,
    )
    try:
        report = run_import(url, options)
    except ImportSetupError as exc:
        raise ConfigurationError(str(exc)) from None
    except psycopg.Error as exc:
        print(f"platform-db: database error: {str(exc).strip()}", file=sys.stderr)  # noqa: T201
        return EXIT_UNHEALTHY
    if args.json:
        _emit_json(report.as_dict())
    else:
        report.write_text(sys.stdout)
    if not report.balanced:
        return EXIT_UNHEALTHY
    if not report.complete and not args.allow_partial:
        for line in report.incomplete:  # also with --json: the reason, where cron mails it
            print(f"platform-db: import-mongo: incomplete export: {line}", file=sys.stderr)  # noqa: T201
        return EXIT_UNHEALTHY
    return EXIT_REJECTS if report.rejected else EXIT_OK


def _import_date_window(earliest: str | None, latest: str | None) -> Any:
    import datetime as dt  # noqa: PLC0415

    from platform_db.importer.convert import DateWindow  # noqa: PLC0415

    window = DateWindow.default()

    def day(value: str, option: str) -> dt.datetime:
        try:
            parsed = dt.date.fromisoformat(value.strip())
        except ValueError:
            raise ConfigurationError(
                f"{option} must be a date like 1990-01-01, not {value!r}"
            ) from None
        return dt.datetime(parsed.year, parsed.month, parsed.day, tzinfo=dt.UTC)

    low = day(earliest, "--earliest-date") if earliest else window.earliest
    high = day(latest, "--latest-date") if latest else window.latest
    if low >= high:
        raise ConfigurationError("--earliest-date must be before --latest-date")
    return DateWindow(low, high)


def _add_import_mongo(sub: Any) -> None:
    p = sub.add_parser(
        "import-mongo",
        help="import mongoexport files (Payload CMS on MongoDB) into the tenant tables",
        description="Reads one mongoexport file per collection from DIR (JSON lines or "
        "--jsonArray, relaxed or canonical Extended JSON, optionally .gz), checks every "
        "document, loads each collection in one transaction (COPY into staging, then an "
        "upsert: re-running is safe) and verifies the result per collection and tenant. "
        "Run it as a superuser, or a platform_admin member with --role platform_admin. "
        "Exit status: 0 balanced, 3 balanced with rejected documents, 1 not balanced, "
        "failed or incomplete (a collection file missing or empty, or every document of a "
        "collection rejected; see --allow-partial), 2 bad usage. See docs/MIGRATION.md.",
    )
    p.add_argument("directory", nargs="?", help="the directory of <collection>.json files")
    p.add_argument("--mapping", help="a mapping file (JSON or .toml) over the Payload defaults")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="check everything, write nothing")
    mode.add_argument(
        "--verify",
        action="store_true",
        help="write nothing; compare the dump with what the tables hold (after an import)",
    )
    p.add_argument(
        "--rejects",
        default="import-mongo-rejects.jsonl",
        help="where rejected documents go, one JSON object a line (import-mongo-rejects.jsonl)",
    )
    p.add_argument("--role", help="SET ROLE to this role first (e.g. platform_admin)")
    p.add_argument(
        "--only", action="append", default=[], help="only these collections (comma-separated)"
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="a deliberately partial export: a missing or empty collection file, or a "
        "collection whose every document was rejected, is reported but does not make the "
        "exit status 1",
    )
    p.add_argument(
        "--earliest-date",
        help="dates before this day are rejects (1990-01-01)",
    )
    p.add_argument(
        "--latest-date",
        help="dates after this day are rejects (default: 10 years from today)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument(
        "--show-mapping", action="store_true", help="print the effective mapping as JSON and exit"
    )
    p.set_defaults(func=_cmd_import_mongo)


# --- end import-mongo -------------------------------------------------------------------
# --- seed and bench (issue 8): the benchmark harness, platform_db.bench ------------------


def _bench_url() -> Any:
    url = database_url_from_env()
    if url is None:
        raise ConfigurationError(
            "DATABASE_URL is not set: point it at the benchmark database as a superuser, e.g. "
            "postgresql://postgres@127.0.0.1:5432/platform_bench"
        )
    return url


def _create_database_if_missing(url: Any) -> None:
    import psycopg  # noqa: PLC0415
    from psycopg import sql  # noqa: PLC0415

    from platform_db.bench.seed import conninfo  # noqa: PLC0415

    with psycopg.connect(conninfo(url.set(database="postgres")), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone():
            return
        _progress(f"creating database {url.database} ...")
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))


def _cmd_seed(args: argparse.Namespace) -> int:
    import datetime as dt  # noqa: PLC0415

    from platform_db.bench.runner import BenchError, require_loopback  # noqa: PLC0415
    from platform_db.bench.seed import SeedConfig, SeedError, run_seed  # noqa: PLC0415

    url = _bench_url()
    try:
        require_loopback(url)
        config = SeedConfig(
            tenants=args.tenants,
            rows_per_tenant=args.rows_per_tenant,
            months=args.months,
            seed=args.seed,
            as_of=dt.date.fromisoformat(args.as_of)
            if args.as_of
            else dt.datetime.now(dt.UTC).date(),
        )
        if args.create_database:
            _create_database_if_missing(url)
        result = run_seed(
            url,
            config,
            replace=args.replace,
            verify=not args.no_verify,
            progress=None if args.quiet else _progress,
        )
    except (SeedError, BenchError, ValueError) as exc:
        print(f"platform-db: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    if args.json:
        _emit_json(result.as_dict())
    else:
        rows = ", ".join(f"{k} {v:,}" for k, v in result.rows.items())
        print(  # noqa: T201
            f"seeded {result.database}: {result.total_rows:,} rows ({rows}); "
            f"{result.partitions} partitions; tenant sizes {result.smallest_tenant_rows:,} / "
            f"{result.median_tenant_rows:,} / {result.largest_tenant_rows:,} rows "
            f"(smallest / median / largest); {result.database_bytes / 1024**3:.2f} GiB; "
            f"loaded in {result.load_seconds:.0f} s ({result.rows_per_second:,.0f} rows/s), "
            f"{result.total_seconds:.0f} s in all"
        )
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from platform_db.bench.baseline import BaselineConfig  # noqa: PLC0415
    from platform_db.bench.report import compare_text, render_html, render_text  # noqa: PLC0415
    from platform_db.bench.runner import BenchConfig, BenchError, run_bench  # noqa: PLC0415
    from platform_db.bench.workload import mix_from_text  # noqa: PLC0415
    from platform_db.session.settings import parse_database_url  # noqa: PLC0415

    if args.compare:
        reports = []
        for path in args.compare:
            try:
                reports.append(json.loads(Path(path).read_text()))
            except (OSError, ValueError) as exc:
                print(f"platform-db: cannot read report {path}: {exc}", file=sys.stderr)  # noqa: T201
                return EXIT_USAGE
        try:
            text = compare_text(reports[0], reports[1])
        except (KeyError, TypeError) as exc:
            print(  # noqa: T201
                f"platform-db: not a report of platform-db bench (missing {exc})", file=sys.stderr
            )
            return EXIT_USAGE
        print(text, end="")  # noqa: T201
        return EXIT_OK
    url = _bench_url()
    try:
        config = BenchConfig(
            clients=args.clients,
            duration_s=args.duration,
            warmup_s=args.warmup,
            processes=args.processes,
            mix=mix_from_text(args.mix),
            seed=args.seed,
            pgbench=not args.no_pgbench,
            pgbench_scale=args.pgbench_scale,
            keep_pgbench_database=args.keep_pgbench_database,
            explain=not args.no_explain,
            pgbouncer_clients=args.pgbouncer_clients,
            gc_freeze=not args.no_gc_freeze,
            app_url=parse_database_url(args.app_url, name="--app-url") if args.app_url else None,
            label=args.label,
            first_tenants=args.first_tenants,
            rate=args.rate,
            baseline=_baseline_wanted(args),
            baseline_only=args.baseline_only,
            baseline_config=BaselineConfig(
                rounds=args.baseline_rounds,
                duration_s=args.baseline_duration,
                class_duration_s=args.baseline_class_duration,
                warmup_s=args.baseline_warmup,
                classes=not args.no_baseline_classes,
                variants=tuple(v.strip().upper() for v in args.baseline_variants.split(",")),
            ),
        )
        if args.replica:
            return _bench_replica(args, url, config)
        report = run_bench(url, config, progress=None if args.quiet else _progress)
    except (BenchError, ValueError) as exc:
        print(f"platform-db: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.html:
        Path(args.html).write_text(render_html(report))
    if args.json:
        _emit_json(report)
    else:
        print(render_text(report), end="")  # noqa: T201
    return EXIT_OK


def _bench_replica(args: argparse.Namespace, url: Any, config: Any) -> int:
    """`bench --replica`: the dashboard and range classes on POSTGRES_REPLICA_URL's
    standby, next to the primary-only run (platform_db.bench.replica)."""
    from platform_db.bench.replica import render_replica_text, run_replica_bench  # noqa: PLC0415

    replica = database_url_from_env("POSTGRES_REPLICA_URL")
    if replica is None:
        raise ConfigurationError(
            "bench --replica needs POSTGRES_REPLICA_URL: a streaming replica of DATABASE_URL's "
            "server, e.g. postgresql://postgres@127.0.0.1:5433/platform_bench"
        )
    if args.html:
        raise ConfigurationError("bench --replica writes text and JSON only (no --html)")
    report = run_replica_bench(url, replica, config, progress=None if args.quiet else _progress)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.json:
        _emit_json(report)
    else:
        print(render_replica_text(report), end="")  # noqa: T201
    return EXIT_OK


def _baseline_wanted(args: argparse.Namespace) -> bool:
    if args.baseline and args.no_baseline:
        raise ValueError("--baseline and --no-baseline contradict each other")
    return not args.no_baseline


def _add_bench_commands(sub: Any) -> None:
    from platform_db.bench.seed import (  # noqa: PLC0415
        DEFAULT_MONTHS,
        DEFAULT_ROWS_PER_TENANT,
        DEFAULT_SEED,
        DEFAULT_TENANTS,
    )

    seed = sub.add_parser(
        "seed",
        help="fill a database with a realistic platform for the benchmark (COPY, fast)",
        description="Migrates DATABASE_URL's database to head if needed, then loads tenants "
        "of skewed sizes with users, pages, forms, leads and months of form submissions. "
        "Deterministic for a given --seed and --as-of. Needs a superuser; loopback only.",
    )
    seed.add_argument("--tenants", type=int, default=DEFAULT_TENANTS, help="tenants (1000)")
    seed.add_argument(
        "--rows-per-tenant",
        type=int,
        default=DEFAULT_ROWS_PER_TENANT,
        help=f"mean rows per tenant; sizes are log-normal around it ({DEFAULT_ROWS_PER_TENANT})",
    )
    seed.add_argument("--months", type=int, default=DEFAULT_MONTHS, help="months of history (36)")
    seed.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (42)")
    seed.add_argument("--as-of", help="the last day of history, YYYY-MM-DD (today, UTC)")
    seed.add_argument("--replace", action="store_true", help="empty the tenant tables first")
    seed.add_argument(
        "--create-database", action="store_true", help="create DATABASE_URL's database if missing"
    )
    seed.add_argument(
        "--no-verify", action="store_true", help="skip the set-based foreign-key check"
    )
    seed.add_argument("--json", action="store_true", help="print the result as JSON")
    seed.add_argument("--quiet", action="store_true", help="no progress on stderr")
    seed.set_defaults(func=_cmd_seed)

    bench = sub.add_parser(
        "bench",
        help="run the mixed workload through the package's pools and sessions, pgbench, "
        "and the baseline comparison with plain SQLAlchemy and raw asyncpg",
        description="Measures throughput, p50/p95/p99 per query class, connection acquisition, "
        "cache hit ratio and index-scan share, then runs pgbench (select-only and the same "
        "SQL with and without the tenant transaction and RLS) for comparison, then, by "
        "default, the baseline: the same drawn requests through the package (A), plain "
        "SQLAlchemy with explicit tenant filters on a login that bypasses RLS (B), raw "
        "asyncpg with the package's SQL and round trips (C) and raw asyncpg with an "
        "explicit filter and no transaction (D), in interleaved rounds, reporting the "
        "ratios A/B and A/C of client CPU, server CPU per request and throughput (JSON: "
        "baseline.ratios). DATABASE_URL names a superuser of a seeded database on this "
        "machine.",
    )
    bench.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    bench.add_argument("--duration", type=int, default=60, help="measured seconds per phase (60)")
    bench.add_argument("--warmup", type=int, default=10, help="warm-up seconds per phase (10)")
    bench.add_argument(
        "--processes", type=int, default=1, help="client processes sharing the clients (1)"
    )
    bench.add_argument("--mix", help="class weights, e.g. page_search=20,lead_update=0")
    bench.add_argument("--seed", type=int, default=1, help="random seed of the requests (1)")
    bench.add_argument("--no-pgbench", action="store_true", help="skip the pgbench phases")
    bench.add_argument(
        "--pgbench-scale", type=int, default=10, help="scale of pgbench's select-only database"
    )
    bench.add_argument(
        "--keep-pgbench-database",
        action="store_true",
        help="keep pgbench's own database (<db>_pgbench) for the next run",
    )
    bench.add_argument("--no-explain", action="store_true", help="skip the EXPLAIN step")
    bench.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="do not gc.freeze() the clients' start-up heap (shows the collector's pauses)",
    )
    bench.add_argument(
        "--pgbouncer-clients",
        type=int,
        default=0,
        help="also run the RLS pgbench variant with this many client connections through "
        "a throw-away PgBouncer in transaction mode (0: skip)",
    )
    bench.add_argument(
        "--app-url",
        help="URL of the platform_app login to measure with (default: the harness "
        "creates platform_bench_app with a fresh password)",
    )
    bench.add_argument(
        "--first-tenants",
        type=int,
        metavar="N",
        help="draw requests only over the tenants a seed of N tenants creates, so that runs "
        "on a small and a large seed measure the same tenants (the scaling run)",
    )
    bench.add_argument(
        "--rate",
        type=float,
        metavar="R",
        help="open loop: R requests per second in all, at Poisson times, latency counted "
        "from when each was due (pgbench gets -R R); default: closed loop, as fast as "
        "the clients go",
    )
    bench.add_argument(
        "--replica",
        action="store_true",
        help="run the workload twice, primary only and with POSTGRES_REPLICA_URL's standby "
        "serving the dashboard and date-range classes, and report both with the replication "
        "lag during each (no pgbench, no EXPLAIN)",
    )
    bench.add_argument(
        "--baseline",
        action="store_true",
        help="run the baseline comparison (A package, B plain SQLAlchemy, C/D raw asyncpg); "
        "it runs by default, this flag only says so",
    )
    bench.add_argument("--no-baseline", action="store_true", help="skip the baseline comparison")
    bench.add_argument(
        "--baseline-only",
        action="store_true",
        help="run only the baseline comparison (and EXPLAIN): no main workload, no pgbench",
    )
    bench.add_argument(
        "--baseline-rounds", type=int, default=5, help="interleaved baseline rounds (5)"
    )
    bench.add_argument(
        "--baseline-duration",
        type=float,
        default=10.0,
        help="measured seconds of each variant on the mixed workload per round (10)",
    )
    bench.add_argument(
        "--baseline-class-duration",
        type=float,
        default=4.0,
        help="measured seconds of each variant on each class alone per round (4)",
    )
    bench.add_argument(
        "--baseline-warmup", type=float, default=2.0, help="warm-up seconds per baseline phase (2)"
    )
    bench.add_argument(
        "--baseline-variants",
        default="A,B,C,D",
        help="which variants run (A and at least one other of B, C, D and U, the package "
        "unsealed: what sealing costs; default A,B,C,D)",
    )
    bench.add_argument(
        "--no-baseline-classes",
        action="store_true",
        help="baseline on the mixed workload only (no per-class ratios)",
    )
    bench.add_argument("--label", help="a name for this run in the report")
    bench.add_argument("--out", help="also write the JSON report to this file")
    bench.add_argument("--html", help="write a self-contained HTML report with charts")
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.add_argument("--quiet", action="store_true", help="no progress on stderr")
    bench.add_argument(
        "--compare",
        nargs=2,
        metavar=("A.json", "B.json"),
        help="print two saved reports side by side (the scaling run) and exit",
    )
    bench.set_defaults(func=_cmd_bench)


# --- end of seed and bench ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="platform-db",
        description="Schema, tenancy and operations tooling of the platform's PostgreSQL. "
        "Connection settings come from DATABASE_URL and the POSTGRES_* variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    doctor = sub.add_parser(
        "doctor",
        help="health report: alerts, slow queries, indexes, bloat, cache, partitions, settings",
        description="Exit status 0 when healthy (no warning or critical alert), 1 otherwise.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument(
        "--max-replica-lag-ms",
        type=int,
        default=None,
        metavar="MS",
        help="raise replication_lag when a standby (seen from DATABASE_URL's primary) or "
        "the replica of POSTGRES_REPLICA_URL (seen from itself) is further behind "
        "(default: POSTGRES_REPLICA_MAX_LAG_MS, else 30000)",
    )
    doctor.set_defaults(func=_cmd_doctor)

    maintain = sub.add_parser(
        "maintain",
        help="run the maintenance jobs once (what pg_cron would schedule)",
        description="Creates partitions ahead (moving rows out of the default partition), "
        "optionally retires old ones, refreshes materialized views, snapshots and prunes "
        "performance metrics. Run it as a superuser, e.g. daily from cron.",
    )
    maintain.add_argument(
        "--months-ahead", type=int, default=3, help="partitions to keep ahead (3)"
    )
    maintain.add_argument(
        "--retention-months",
        type=int,
        default=None,
        help="detach monthly partitions that ended more than this many months ago",
    )
    maintain.add_argument(
        "--drop", action="store_true", help="drop retired partitions instead of detaching"
    )
    maintain.add_argument(
        "--metrics-retention-days",
        type=int,
        default=30,
        help="keep performance metrics this long (30)",
    )
    maintain.add_argument("--json", action="store_true", help="print the results as JSON")
    maintain.add_argument("--quiet", action="store_true", help="no progress on stderr")
    maintain.set_defaults(func=_cmd_maintain)

    distribute = sub.add_parser(
        "distribute",
        help="distribute a migrated database over a Citus cluster (run on the coordinator)",
        description="Makes tenants a reference table and every tenant table a table "
        "distributed by tenant_id, all co-located (foreign keys between them kept), sets "
        "the database settings the package needs on Citus and lets platform_admin log in "
        "to the workers (the dashboards' refresh). One transaction; re-runnable: a table "
        "added by a later revision is distributed by the next run. Needs a superuser "
        "and a database at head. Exit status 0 when done, 1 when it cannot (the reason on "
        "stderr). See docs/SCALING.md.",
    )
    distribute.add_argument(
        "--shard-count",
        type=int,
        default=None,
        help="shards per table when nothing is distributed yet (default: citus.shard_count)",
    )
    distribute.add_argument("--json", action="store_true", help="print the result as JSON")
    distribute.add_argument("--quiet", action="store_true", help="no progress on stderr")
    distribute.set_defaults(func=_cmd_distribute)

    tenant_key = sub.add_parser(
        "tenant-key",
        help="the keys of the tenant seal: create, list, fingerprint, rotate, retire, enforce",
        description="The tenant policies take a tenant only with a seal made with a key "
        "the database holds (docs/SECURITY.md). create: a new key, stored and printed once "
        "as PLATFORM_DB_TENANT_KEY=... for the services; add: store the key in "
        "PLATFORM_DB_TENANT_KEY; list; fingerprint: of PLATFORM_DB_TENANT_KEY, and whether "
        "the database knows it; rotate: a new key, the others valid for --grace more; "
        "retire KEY_ID; enforce [--off]: refuse (take) unsealed tenants; sync: copy keys and "
        "settings to the Citus workers again (after adding one); unbound [--off]: "
        "take (refuse) seals not bound to a server process (PgBouncer in transaction mode). "
        "Needs DATABASE_URL of the database's owner or a superuser.",
    )
    tenant_key.add_argument(
        "action",
        choices=(
            "create",
            "add",
            "list",
            "fingerprint",
            "rotate",
            "retire",
            "enforce",
            "unbound",
            "sync",
        ),
    )
    tenant_key.add_argument("key_id", nargs="?", help="the key's id (create, rotate, retire)")
    tenant_key.add_argument("--off", action="store_true", help="enforce/unbound: turn it off")
    tenant_key.add_argument(
        "--grace", default="24h", help="rotate: how long the other keys stay valid (24h)"
    )
    tenant_key.set_defaults(func=_cmd_tenant_key)

    for name, helptext, default in (
        ("upgrade", "apply the packaged revisions up to REVISION (head)", "head"),
        ("downgrade", "revert the packaged revisions down to REVISION", None),
    ):
        p = sub.add_parser(name, help=helptext)
        if default is None:
            p.add_argument("revision", help="target revision, e.g. -1 or base")
        else:
            p.add_argument("revision", nargs="?", default=default)
        p.add_argument("--sql", action="store_true", help="print the SQL instead of running it")
        if name == "downgrade":
            p.add_argument(
                "--destroy-data",
                action="store_true",
                help="drop tables that hold rows (the audit trail included); without it a "
                "downgrade that would drop any refuses, naming them and their row counts",
            )
        p.set_defaults(func=_cmd_upgrade if name == "upgrade" else _cmd_downgrade)

    # --- audit trail (issue 7) ---
    bench_audit = sub.add_parser(
        "bench-audit",
        help="measure what the audit trigger costs on writes (a scratch database)",
        description="Needs DATABASE_URL of a superuser: creates and drops a scratch database "
        "and a login on that server. Results go to docs/PERFORMANCE.md by hand.",
    )
    bench_audit.add_argument("--rows", type=int, default=2000, help="rows per workload (2000)")
    bench_audit.add_argument(
        "--rounds", type=int, default=20, help="alternating rounds per workload (20)"
    )
    bench_audit.add_argument("--json", action="store_true", help="print the results as JSON")
    bench_audit.set_defaults(func=_cmd_bench_audit)
    # --- end audit trail ---

    current = sub.add_parser("current", help="the database's revision and whether it is at head")
    current.add_argument("--json", action="store_true")
    current.set_defaults(func=_cmd_current)

    check = sub.add_parser(
        "check",
        help="alembic check for platform-db's own objects: exit 1 and list what drifted",
        description="Compares the database with the installed platform-db's models and "
        "definitions (RLS, policies, grants, triggers, functions, views, jobs); a service's "
        "tables are not its business. Runs in a transaction that is rolled back.",
    )
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_cmd_check)

    _add_import_mongo(sub)
    _add_bench_commands(sub)  # seed, bench (issue 8)
    return parser


def _bound_libpq_connections() -> None:
    """Every libpq connection this process opens gives up after POSTGRES_CONNECT_TIMEOUT.

    The package's engines take it from the settings; import-mongo, seed and bench also
    open psycopg connections of their own, which libpq bounds by PGCONNECT_TIMEOUT
    (whole seconds, at least 2, as for the engines). An explicit PGCONNECT_TIMEOUT wins.
    """
    raw = os.environ.get("POSTGRES_CONNECT_TIMEOUT", "5000").strip()
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigurationError(
            f"POSTGRES_CONNECT_TIMEOUT must be a whole number of milliseconds above 0, not {raw!r}"
        )
    os.environ.setdefault("PGCONNECT_TIMEOUT", str(max(2, -(-int(raw) // 1000))))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        _bound_libpq_connections()
        code: int = args.func(args)
    except ConfigurationError as exc:
        print(f"platform-db: {_one_line(str(exc))}", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    except (OperationalError, DBAPIError) as exc:
        # The driver's message, never the URL (which may hold a password).
        print(f"platform-db: database error: {str(exc.orig).strip()}", file=sys.stderr)  # noqa: T201
        return EXIT_UNHEALTHY
    return code


if __name__ == "__main__":
    sys.exit(main())
