"""The feedback loop: impressions (what was shown), attribution of clicks and purchases to
them, a per-strategy / per-variant / per-day report, and A/B variant assignment.

Impressions are their own table, not events: they must not weigh in the interaction matrix.
Attribution is the ``impression_outcomes`` view (last-touch ASOF join within
``attribution_window_hours``), so BI tools get the same numbers as ``rtsql report``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import allocation
from . import settings as settings_mod
from .errors import BadEventFile, InputPathError, InvalidSetting
from .ingest import detect_format
from .sqlutil import add_new_ids, quote_identifier, scalar, transaction, trim_id


def load_impressions(con, path: str | os.PathLike) -> dict[str, int]:
    """Load an impressions file (CSV, JSON-lines, Parquet) with user_id, item_id, ts, strategy
    and optional variant, rec_id, rank. Rows without user, item, time or strategy go to
    ``rejects``. Unknown ids get keys, as in event ingest."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputPathError(f"{path} does not exist or is not a file")
    fmt, _ = detect_format(path)
    reader = {"csv": "read_csv(?, header = true, all_varchar = true)",
              "jsonl": "read_json(?, format = 'newline_delimited')",
              "parquet": "read_parquet(?)"}[fmt]
    try:
        names = [r[0] for r in con.execute(f"describe select * from {reader}", [str(path)]).fetchall()]
    except Exception as exc:  # duckdb raises many kinds for unreadable input
        raise BadEventFile(f"cannot read impressions {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in ("user_id", "item_id", "ts", "strategy") if c not in names]
    if missing:
        raise BadEventFile(f"impressions file {path} lacks column(s) {', '.join(missing)}")
    return _load_impressions(con, reader, [str(path)], names, str(path),
                             1 if fmt == "csv" else 0)


IMPRESSION_FIELDS = ("user_id", "item_id", "ts", "strategy", "variant", "rec_id", "rank")


def load_impression_rows(con, rows: list[dict], source: str) -> dict[str, int]:
    """Impressions given as objects (``POST /impressions``): the same checks and rejects as
    a file; ``source`` names the batch in ``rejects`` and lines count from 1."""
    import pyarrow as pa

    table = pa.table({name: pa.array([None if not isinstance(r, dict) or r.get(name) is None
                                      else str(r[name]) for r in rows], pa.string())
                      for name in IMPRESSION_FIELDS})
    con.register("_rtsql_imp_rows", table)
    try:
        return _load_impressions(con, "_rtsql_imp_rows", [], list(IMPRESSION_FIELDS), source, 0)
    finally:
        con.unregister("_rtsql_imp_rows")


def _load_impressions(con, reader: str, reader_params: list, names: list[str], source: str,
                      line_offset: int) -> dict[str, int]:
    def col(name: str) -> str:
        return f"cast(r.{quote_identifier(name)} as VARCHAR)" if name in names else "NULL"

    with transaction(con):
        con.execute(f"""
            create or replace temp table _rtsql_imp as
            select row_number() over () + ? as line, {trim_id(col('user_id'))} as user_id,
                   {trim_id(col('item_id'))} as item_id, {col('ts')} as ts_text,
                   coalesce(timezone('UTC', try_cast({col('ts')} as TIMESTAMPTZ)),
                            try(make_timestamp(try_cast(try_cast({col('ts')} as DOUBLE) * 1e6
                                                        as BIGINT)))) as ts,
                   trim({col('strategy')}) as strategy, {col('variant')} as variant,
                   {col('rec_id')} as rec_id, try_cast({col('rank')} as INTEGER) as rank,
                   to_json(r)::VARCHAR as raw
            from {reader} r""", [line_offset, *reader_params])
        bad = """(user_id is null or user_id = '' or item_id is null or item_id = ''
                  or ts is null or strategy is null or strategy = '')"""
        rejected = scalar(con, f"select count(*) from _rtsql_imp where {bad}")
        con.execute(f"""insert into rejects select NULL, ?, line, raw,
                        'impression without user_id, item_id, strategy or a valid ts',
                        now()::TIMESTAMP from _rtsql_imp where {bad}""", [source])
        for column in ("user_id", "item_id"):
            add_new_ids(con, "_rtsql_imp", column, f"not {bad}")
        loaded = scalar(con, f"select count(*) from _rtsql_imp where not {bad}")
        con.execute(f"""insert into impressions
                        select u.user_key, i.item_key, p.ts, p.strategy, p.variant, p.rec_id,
                               p.rank, ?, p.line
                        from _rtsql_imp p join users u using (user_id) join items i using (item_id)
                        where not {bad}""", [source])
        con.execute("drop table _rtsql_imp")
    return {"loaded": loaded, "rejected": rejected}


def report(con, since: str | None = None, by: tuple[str, ...] = ("day", "strategy"),
           source: str = "impression_outcomes"):
    """Impressions, clicks, CTR, purchases and conversion, grouped by day/strategy/variant;
    grouped by variant, also each rate's 95% credible interval (allocation.posterior).
    ``source``: the view, or a table of its rows made once for several reports."""
    allowed = {"day": "cast(ts as DATE)", "strategy": "strategy",
               "variant": "coalesce(variant, '(none)')"}
    if not by or any(b not in allowed for b in by):
        raise InvalidSetting(f"--by takes {', '.join(allowed)}")
    if since is not None:
        try:
            since = settings_mod.timestamp(since)
        except ValueError:
            raise InvalidSetting(f"--since takes an ISO date or time such as 2026-11-01, got "
                                 f"{since!r}") from None
    keys = ", ".join(f"{allowed[b]} as {b}" for b in by)
    cur = con.execute(f"""
        select {keys}, count(*) as impressions, count(*) filter (where clicked) as clicks,
               round(count(*) filter (where clicked) / count(*), 4) as ctr,
               count(*) filter (where purchased) as purchases,
               round(count(*) filter (where purchased) / count(*), 4) as conversion
        from {source}
        where ? is null or ts >= cast(? as TIMESTAMP)
        group by all order by all""", [since, since])
    columns, rows = [d[0] for d in cur.description], cur.fetchall()
    if "variant" in by and rows:  # comparing variants: each rate with its uncertainty
        n = np.array([r[columns.index("impressions")] for r in rows])
        extra = []
        for successes in ("clicks", "purchases"):
            _, low, high = allocation.posterior(
                n, np.array([r[columns.index(successes)] for r in rows]))
            extra += [np.round(low, 4), np.round(high, 4)]
        rows = [(*row, *(float(e[i]) for e in extra)) for i, row in enumerate(rows)]
        columns += ["ctr_low", "ctr_high", "conversion_low", "conversion_high"]
    return columns, rows


def plot_svg(columns, rows, path: str | os.PathLike, value: str = "ctr") -> Path:
    """A small line chart of ``value`` per day, one line per strategy (or variant): an SVG file
    for people who would rather look than read. No plotting library needed."""
    path = Path(path)
    if "day" not in columns:
        raise InvalidSetting("the plot needs rows by day: use --by day with --plot")
    series_key = next((c for c in ("strategy", "variant") if c in columns), None)
    di, vi = columns.index("day"), columns.index(value)
    days = sorted({r[di] for r in rows})
    series: dict[str, dict] = {}
    for r in rows:
        name = str(r[columns.index(series_key)]) if series_key else value
        series.setdefault(name, {})[r[di]] = float(r[vi] or 0)
    width, height, pad = 640, 320, 48
    top = max([v for s in series.values() for v in s.values()] + [1e-9])
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]

    def xy(day_index, v):
        x = pad + (width - 2 * pad) * (day_index / max(len(days) - 1, 1))
        y = height - pad - (height - 2 * pad) * (v / top)
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{pad}" y="20" font-size="14">{value} per day</text>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#888"/>',
             f'<text x="4" y="{pad + 4}">{top:.3f}</text>',
             f'<text x="4" y="{height - pad}">0</text>']
    for n, day in enumerate(days):
        if n in (0, len(days) - 1) or len(days) <= 8:
            x = xy(n, 0).split(",")[0]
            parts.append(f'<text x="{x}" y="{height - pad + 16}" text-anchor="middle">{day}</text>')
    for k, (name, values) in enumerate(sorted(series.items())):
        color = colors[k % len(colors)]
        points = " ".join(xy(n, values.get(day, 0.0)) for n, day in enumerate(days))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        parts.append(f'<text x="{width - pad + 4}" y="{pad + 14 * k}" fill="{color}">{name}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")
    return path


# --------------------------------------------------------------------------- A/B variants

def set_variants(con, shares: dict[str, float], variant_settings: dict[str, dict]) -> None:
    """Replace the A/B variants: name -> share (summing to 1) and serving-setting overrides."""
    for name, share in shares.items():
        if not (0 < share <= 1):  # also refuses nan and inf
            raise InvalidSetting(f"variant {name}: share must be a number in (0, 1], got {share}")
    total = sum(shares.values())
    if shares and abs(total - 1.0) > 1e-9:
        raise InvalidSetting(f"variant shares must add up to 1, they add up to {total}")
    for name, overrides in variant_settings.items():
        for setting, value in overrides.items():
            if setting not in settings_mod.SERVING_SETTINGS:
                raise InvalidSetting(f"variant {name}: {setting} is not a serving setting "
                                     f"({', '.join(settings_mod.SERVING_SETTINGS)})")
            settings_mod.parse(setting, value)
    with transaction(con):
        con.execute("delete from ab_variants")
        if shares:
            con.executemany("insert into ab_variants values (?, ?, ?)",
                            [[n, s, json.dumps(variant_settings.get(n, {}))]
                             for n, s in shares.items()])
            allocation.record_manual(con, shares)
        # the users of a variant that keeps its share keep their variant
        allocation.move_buckets(con, allocation.read_buckets(con),
                                allocation.bucket_counts(shares))


def set_variants_from_options(con, shares: list[str], overrides: list[str]) -> None:
    """``rtsql variants --set NAME=SHARE ... --setting NAME.SETTING=VALUE ...``."""
    parsed: dict[str, float] = {}
    for name, share in settings_mod.assignments(shares, "--set", "NAME=SHARE"):
        try:
            parsed[name] = float(share)
        except ValueError:
            raise InvalidSetting(f"--set {name}={share}: a share is a number in (0, 1]") from None
    by_variant: dict[str, dict] = {}
    for key, value in settings_mod.assignments(overrides, "--setting", "NAME.SETTING=VALUE"):
        name, dot, setting = key.partition(".")
        if not dot or name not in parsed:
            raise InvalidSetting(f"--setting {key}={value}: use NAME.SETTING=VALUE for a variant "
                                 "given with --set")
        by_variant.setdefault(name, {})[setting] = value
    set_variants(con, parsed, by_variant)


def variants(con) -> list[tuple]:
    """(name, share, settings JSON) of every variant, by name."""
    return [(n, share, json.dumps(json.loads(st))) for n, share, st in con.execute(
        "select name, share, settings from ab_variants order by name").fetchall()]
