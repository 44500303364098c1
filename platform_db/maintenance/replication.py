"""Streaming replication as `doctor` reports it: lag from both ends, slots, alerts.

From the server doctor examines (DATABASE_URL): on a primary, every standby streaming
from it (`pg_stat_replication`: state, write/flush/replay lag, bytes not yet replayed)
and every replication slot (an inactive slot keeps WAL on the primary's disk for ever);
on a standby, its own replay state. From the analytics pool's replica
(POSTGRES_REPLICA_URL): whether it is in recovery, whether it receives WAL, and its lag
measured there: zero when everything received is replayed, else the age of the last
replayed transaction (`now() - pg_last_xact_replay_timestamp()`).

Alerts: `replication_lag` (warning) when a lag from either end exceeds the threshold
(`platform-db doctor --max-replica-lag-ms`, default POSTGRES_REPLICA_MAX_LAG_MS, else
30000); `replication` (warning) for a standby that does not stream or a replica that
receives no WAL; `replication_slot` (warning) for an inactive slot that holds more than
1 GiB of WAL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from platform_db.session.replica import LAG_SQL

DEFAULT_MAX_LAG_MS = 30_000
SLOT_RETAINED_ALERT_BYTES = 1024**3

_STANDBYS = """
SELECT r.application_name, r.client_addr::text AS client_addr, r.state, r.sync_state,
       s.slot_name,
       pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint AS replay_bytes_behind,
       round((extract(epoch FROM r.write_lag) * 1000)::numeric, 1) AS write_lag_ms,
       round((extract(epoch FROM r.flush_lag) * 1000)::numeric, 1) AS flush_lag_ms,
       round((extract(epoch FROM r.replay_lag) * 1000)::numeric, 1) AS replay_lag_ms,
       r.reply_time
FROM pg_stat_replication r
LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid
ORDER BY r.application_name, r.pid
"""

_SLOTS = """
SELECT slot_name, slot_type, active, wal_status,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes
FROM pg_replication_slots
ORDER BY slot_name
"""

_STANDBY_STATE = f"""
SELECT lag.in_recovery, round(lag.lag_ms::numeric, 1) AS lag_ms,
       pg_last_wal_receive_lsn()::text AS receive_lsn,
       pg_last_wal_replay_lsn()::text AS replay_lsn,
       pg_last_xact_replay_timestamp() AS last_replayed_at,
       pg_is_wal_replay_paused() AS replay_paused,
       EXISTS (SELECT FROM pg_stat_wal_receiver WHERE pid IS NOT NULL) AS receiving,
       (SELECT status FROM pg_stat_wal_receiver) AS receiver_status,
       current_setting('hot_standby_feedback') AS hot_standby_feedback,
       current_setting('max_standby_streaming_delay') AS max_standby_streaming_delay
FROM ({LAG_SQL}) lag
"""


def _alert(metric: str, subject: str, value: Any, threshold: Any, detail: str) -> dict[str, Any]:
    return {
        "metric": metric,
        "subject": subject,
        "value": value,
        "threshold": threshold,
        "severity": "warning",
        "detail": detail,
    }


def _plain(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row._mapping.items():
        if value is None or isinstance(value, bool | int | str):
            out[key] = value
        elif hasattr(value, "is_finite"):  # Decimal
            out[key] = float(value)
        else:
            out[key] = str(value)
    return out


def standby_state(conn: Connection) -> dict[str, Any]:
    """A standby's own view: recovery, lag (LAG_SQL's rule), positions, WAL receiver,
    the settings that trade lag against recovery conflicts. Any login may read it (the
    receiver's status needs pg_read_all_stats; None without)."""
    return _plain(conn.execute(text(_STANDBY_STATE)).one())


def server_replication(
    conn: Connection, *, max_lag_ms: float = DEFAULT_MAX_LAG_MS
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The replication of the server `conn` is on (doctor's DATABASE_URL), and its alerts."""
    alerts: list[dict[str, Any]] = []
    if conn.scalar(text("SELECT pg_is_in_recovery()")):
        state = standby_state(conn)
        alerts += _replica_alerts(state, "this server (a standby)", max_lag_ms)
        return {"role": "standby", "standby": state}, alerts
    standbys = [_plain(r) for r in conn.execute(text(_STANDBYS))]
    slots = [_plain(r) for r in conn.execute(text(_SLOTS))]
    for s in standbys:
        name = s["application_name"] or s["client_addr"] or "a standby"
        lag = s["replay_lag_ms"]
        if s["state"] != "streaming":
            alerts.append(
                _alert(
                    "replication",
                    name,
                    s["state"],
                    "streaming",
                    f"standby {name} is {s['state']}, not streaming: it is catching up or starting",
                )
            )
        if lag is not None and lag > max_lag_ms and s["replay_bytes_behind"]:
            alerts.append(
                _alert(
                    "replication_lag",
                    name,
                    lag,
                    max_lag_ms,
                    f"standby {name} replays {lag:,.0f} ms behind this primary "
                    f"({s['replay_bytes_behind']:,} bytes of WAL not replayed yet)",
                )
            )
    for slot in slots:
        retained = slot["retained_bytes"] or 0
        if not slot["active"] and retained > SLOT_RETAINED_ALERT_BYTES:
            alerts.append(
                _alert(
                    "replication_slot",
                    slot["slot_name"],
                    retained,
                    SLOT_RETAINED_ALERT_BYTES,
                    f"inactive replication slot {slot['slot_name']} keeps "
                    f"{retained / 1024**3:.1f} GiB of WAL on this server: bring its standby "
                    "back or drop it (SELECT pg_drop_replication_slot(...))",
                )
            )
    return {"role": "primary", "standbys": standbys, "slots": slots}, alerts


def _replica_alerts(state: dict[str, Any], where: str, max_lag_ms: float) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = []
    if not state["in_recovery"]:
        return alerts
    lag = state["lag_ms"]
    if lag is not None and lag > max_lag_ms:
        paused = " (replay is paused: pg_wal_replay_resume())" if state["replay_paused"] else ""
        alerts.append(
            _alert(
                "replication_lag",
                where,
                lag,
                max_lag_ms,
                f"{where} is {lag:,.0f} ms behind its primary{paused}: its last replayed "
                f"transaction committed at {state['last_replayed_at']}",
            )
        )
    if not state["receiving"]:
        alerts.append(
            _alert(
                "replication",
                where,
                None,
                None,
                f"{where} receives no WAL (no WAL receiver): its primary is down or "
                "unreachable, or primary_conninfo is wrong; it serves what it had",
            )
        )
    return alerts


def replica_end(
    url: Any, *, max_lag_ms: float = DEFAULT_MAX_LAG_MS, connect_timeout_s: int = 5
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """POSTGRES_REPLICA_URL's view of itself, and its lag alerts. Unreachable or not a
    replica: reported by check_environment (critical / warning), not again here."""
    from sqlalchemy import create_engine  # noqa: PLC0415
    from sqlalchemy.exc import DBAPIError  # noqa: PLC0415
    from sqlalchemy.pool import NullPool  # noqa: PLC0415

    from platform_db.session.replica import server_of  # noqa: PLC0415
    from platform_db.session.settings import SYNC_DRIVER, redact, with_driver  # noqa: PLC0415

    engine = create_engine(
        with_driver(url, SYNC_DRIVER),
        poolclass=NullPool,
        connect_args={"connect_timeout": connect_timeout_s, "application_name": "platform-db:cli"},
    )
    where = f"the replica {server_of(url)}"
    try:
        with engine.connect() as conn:
            state = standby_state(conn)
    except DBAPIError as exc:
        first = (str(exc.orig).strip().splitlines() or ["?"])[0]
        return {"url": redact(url), "reachable": False, "error": first}, []
    finally:
        engine.dispose()
    return {"url": redact(url), "reachable": True, **state}, _replica_alerts(
        state, where, max_lag_ms
    )


__all__ = [
    "DEFAULT_MAX_LAG_MS",
    "SLOT_RETAINED_ALERT_BYTES",
    "replica_end",
    "server_replication",
    "standby_state",
]
