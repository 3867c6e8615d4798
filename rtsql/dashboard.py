"""The dashboard of ``rtsql serve``: a read-only web page at ``/`` (``/ui/``) and the JSON it
reads (``/ui/api/...``).

The page is static HTML, CSS and JavaScript shipped in the wheel (``rtsql/ui/``: no build
step, no CDN). It draws what the server already knows: the overview from the serving state,
the service's counters and the ``/metrics`` histogram; a user's and an item's recommendations
from the same routes applications call (``/recommend``, ``/similar-items``, ...), so the page
shows exactly their answers; the feedback charts from ``feedback.report``; the settings and
the A/B shares from the database. Every data call is a GET: nothing on the page changes
data. With a token, the page asks for it once (``/ui/login``) and keeps a cookie derived from
it that authorizes GET requests only (see ``rtsql.server``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time
from importlib import resources

import numpy as np

from . import allocation, feedback, settings
from .errors import InvalidSetting
from .sqlutil import clean_id

COOKIE = "rtsql_ui"
HISTORY_ROWS = 20  # a user's most recent items on the user view
SAMPLE_USERS, SAMPLE_ITEMS = 5, 5  # where the overview suggests to start
ARRIVAL_MINUTES = 30  # the overview's events-per-minute chart
ASSETS = {"index.html": "text/html; charset=utf-8", "login.html": "text/html; charset=utf-8",
          "app.js": "text/javascript; charset=utf-8", "login.js": "text/javascript; charset=utf-8",
          "app.css": "text/css; charset=utf-8"}
PUBLIC_ASSETS = ("login.html", "login.js", "app.css")  # served without the token: no data


def asset(name: str) -> bytes:
    """One file of the page, from the installed package."""
    return resources.files("rtsql").joinpath("ui", name).read_bytes()


def session_value(token: str) -> str:
    """The cookie that stands for the token on the page (not the token itself)."""
    return hmac.new(token.encode(), b"rtsql dashboard session", hashlib.sha256).hexdigest()


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: ``buckets`` are (upper bound, cumulative count)
    with +Inf last; linear interpolation inside the bucket that holds the rank; the highest
    finite bound when the rank falls in +Inf. None without observations."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(cumulative - below, 1e-12)
        lower, below = bound, cumulative
    return lower


def route_buckets(registry, metric: str, route: str) -> list[tuple[float, float]]:
    """The cumulative buckets of one route's latency histogram in ``registry``."""
    found = []
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == f"{metric}_bucket" and sample.labels.get("route") == route:
                found.append((float(sample.labels["le"]), sample.value))
    return sorted(found)


class Arrivals:
    """(time, last event id) samples: event ids are dense in commit order, so two samples
    give the events committed between them, whichever path brought them (HTTP or files)."""

    def __init__(self, limit: int = 4 * 3600):
        from collections import deque

        self.samples: "deque[tuple[float, int]]" = deque(maxlen=limit)

    def note(self, last_event_id: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if len(self.samples) >= 2 and now - self.samples[-2][0] < 1.0:
            self.samples[-1] = (now, last_event_id)  # at most two samples a second
        else:
            self.samples.append((now, last_event_id))

    def per_minute(self, now: float, minutes: int) -> list[int | None]:
        """Events committed in each of the last ``minutes`` minutes, oldest first (None
        before the first sample, which the service takes when it starts)."""
        if not self.samples:
            return [None] * minutes
        times = np.array([t for t, _ in self.samples])
        ids = np.array([e for _, e in self.samples], np.int64)
        edges = now - 60.0 * np.arange(minutes, -1, -1)
        at = np.searchsorted(times, edges, side="right") - 1  # last sample at or before
        counts = []
        for m in range(minutes):
            start, end = max(at[m], 0), at[m + 1]  # the first sample is the server's start
            counts.append(None if end < 0 else int(ids[end] - ids[start]))
        return counts


# --------------------------------------------------------------------------- the views' data

def overview(service, buckets: list[tuple[float, float]], now: float | None = None) -> dict:
    """The overview's numbers: the state's counts, the service's counters, the refreshes,
    and GET /recommend's latency quantiles from its /metrics histogram (``buckets``)."""
    now = time.time() if now is None else now
    service.arrivals.note(service.last_event_id(), now)
    with service.reading() as con:
        events, rejects, impressions = con.execute(
            "select (select count(*) from events), (select count(*) from rejects), "
            "(select count(*) from impressions)").fetchall()[0]
        measure = con.execute("select any_value(value) from model_state "
                              "where name = 'item_measure'").fetchall()[0][0]
    refreshes = service.refresh_stats()
    last = refreshes["last"]
    per_minute = service.arrivals.per_minute(now, ARRIVAL_MINUTES)
    health = service.health()
    return {
        "status": health["status"], "problems": health["problems"],
        "events": events, "users": health["users"], "items": health["items"],
        "rejects": rejects, "impressions": impressions,
        "events_last_minute": per_minute[-1],
        "events_per_minute": per_minute,
        "pending_events": health["pending_events"],
        "model_age_seconds": round(service.model_age(), 1) if service.model_as_of else None,
        "last_refresh": _iso(last[0]) if last else None,
        "last_refresh_seconds": round(last[1], 3) if last else None,
        "last_refresh_kind": last[2] if last else None,
        "refreshes": refreshes["counts"],
        "similarity": measure,
        "get_latency_ms": {"p50": _ms(histogram_quantile(0.5, buckets)),
                           "p99": _ms(histogram_quantile(0.99, buckets)),
                           "count": int(buckets[-1][1]) if buckets else 0},
        "sample_users": service.most_active_users(SAMPLE_USERS),
        "trending_items": [row[1] for row in service.trending(SAMPLE_ITEMS).rows],
        "as_of": _iso(now),
    }


def feedback_view(service, by: str, since: str | None) -> dict:
    """CTR and conversion per day by strategy or variant (the charts), and the totals by the
    same key with their intervals when by variant (the table)."""
    if by not in ("strategy", "variant"):
        raise InvalidSetting("by takes strategy or variant")
    with service.reading() as con:  # the outcomes once (the ASOF join), then two groupings
        con.execute("create temp table _rtsql_outcomes as select ts, strategy, variant, "
                    "clicked, purchased from impression_outcomes")
        daily = feedback.report(con, since, ("day", by), "_rtsql_outcomes")
        totals = feedback.report(con, since, (by,), "_rtsql_outcomes")
    return {"by": by, "daily": _table(*daily), "totals": _table(*totals)}


def user_view(service, user_id: str) -> dict:
    """A user's most recent items (the history recommend() scores, refreshed rows and the
    events since), and the A/B variant of the id."""
    found = service.recent_history(user_id, HISTORY_ROWS)
    for row in found["history"]:
        row["ts"] = _iso(row.pop("ts_us") / 1e6)
    return found


def item_view(service, item_id: str) -> dict:
    """An item's catalog row, availability, popularity and trending rank."""
    stats = service.item_stats(item_id)
    with service.reading() as con:
        cur = con.execute("select title, category, tags, description, "
                          "attributes::VARCHAR as attributes, updated_at from item_catalog "
                          "where item_key = ?", [stats["item_key"]])
        rows = cur.fetchall()
        catalog = dict(zip([d[0] for d in cur.description], rows[0])) if rows else None
        first_seen = con.execute("select first_seen from items where item_key = ?",
                                 [stats["item_key"]]).fetchall()[0][0]
    if catalog and catalog["updated_at"] is not None:
        catalog["updated_at"] = catalog["updated_at"].isoformat(timespec="seconds")
    return {"item_id": clean_id(item_id), "catalog": catalog,
            "available": stats["available"], "popularity": stats["popularity"],
            "trending_rank": stats["trending_rank"],
            "first_seen": first_seen.isoformat() if first_seen else None}


def settings_view(service) -> dict:
    """Every setting (value, default, meaning), the variants and every change of shares."""
    with service.reading() as con:
        values = settings.get_all(con)
        variants = [{"name": n, "share": s, "settings": st} for n, s, st in
                    feedback.variants(con)]
        history = _table(*allocation.history(con))
    rows = [{"name": s.name, "value": settings.text_of(values[s.name]),
             "default": settings.text_of(s.default), "changed": values[s.name] != s.default,
             "help": s.help} for s in settings.SETTINGS.values()]
    return {"settings": rows, "variants": variants, "auto_metric": values["ab_auto_metric"],
            "min_share": values["ab_min_share"], "allocations": history}


# --------------------------------------------------------------------------- helpers

def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _table(columns, rows) -> dict:
    return {"columns": columns, "rows": [[_plain(v) for v in row] for row in rows]}


def _plain(value):
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


# --------------------------------------------------------------------------- the routes

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def is_page(path: str) -> bool:
    """A path the browser navigates to (answered with a redirect to the login page when the
    token is missing, rather than a JSON 401)."""
    return path in ("/", "/ui", "/ui/") or (path.startswith("/ui/")
                                            and not path.startswith("/ui/api/"))


def mount(app, service, latency_buckets, token: str | None) -> None:
    """Add the page and its data routes to ``app`` (rtsql.server.create_app)."""
    import asyncio

    from fastapi import Query
    from fastapi.responses import JSONResponse, RedirectResponse, Response

    def page(name: str) -> Response:
        return Response(asset(name), media_type=ASSETS[name],
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP,
                                 "X-Content-Type-Options": "nosniff"})

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/ui/", 307)

    @app.get("/ui", include_in_schema=False)
    async def ui_bare():
        return RedirectResponse("/ui/", 307)

    @app.get("/ui/", include_in_schema=False)
    async def ui_index():
        return page("index.html")

    @app.get("/ui/login", include_in_schema=False)
    async def ui_login():
        return page("login.html")

    @app.get("/ui/{name}", include_in_schema=False)
    async def ui_asset(name: str):
        if name not in ASSETS:
            return JSONResponse({"error": f"no page {name!r}"}, 404)
        return page(name)

    @app.post("/ui/session", summary="Trade the bearer token for the dashboard's cookie "
              "(it authorizes GET requests only)")
    async def ui_session():
        response = Response(status_code=204)
        if token:
            response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict",
                                path="/")
        return response

    @app.get("/ui/api/overview", summary="Dashboard: counts, freshness, latency")
    async def ui_overview():
        return await asyncio.to_thread(overview, service, latency_buckets())

    @app.get("/ui/api/feedback", summary="Dashboard: CTR and conversion per day")
    async def ui_feedback(by: str = "strategy", since: str | None = Query(None)):
        return await asyncio.to_thread(feedback_view, service, by, since)

    @app.get("/ui/api/user/{user_id}", summary="Dashboard: a user's recent history")
    async def ui_user(user_id: str):
        return user_view(service, user_id)

    @app.get("/ui/api/item/{item_id}", summary="Dashboard: an item's catalog data and rank")
    async def ui_item(item_id: str):
        return await asyncio.to_thread(item_view, service, item_id)

    @app.get("/ui/api/settings", summary="Dashboard: settings, variants and their shares")
    async def ui_settings():
        return await asyncio.to_thread(settings_view, service)
