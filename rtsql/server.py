"""``rtsql serve``: the HTTP API, a thin shell over ``rtsql.service.Service``.

FastAPI for routing, validation and the OpenAPI page at ``/docs``; uvicorn runs it. Reads are
answered on the event loop straight from the in-memory state (a few hundred microseconds, no
SQL); writes wait for the writer thread's commit without blocking the loop. Safe by default:
binds 127.0.0.1, a bearer token (``--token`` or RTSQL_TOKEN) guards every route but
``/health``, bodies and ``k`` are bounded, and bad input gets a 4xx JSON error naming the
field, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from http.cookies import CookieError, SimpleCookie
from typing import Annotated, Callable
from urllib.parse import parse_qsl

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response

from . import dashboard
from .errors import InvalidSetting, RtsqlError, UnknownItem, UnknownUser
from .recommend import check_variant as _check_variant
from .service import Service
from .sqlutil import clean_id
from .vocabulary import (
    DEFAULT_K,
    DEFAULT_METHOD,
    DEFAULT_STRATEGY,
    MAX_K,
    SIMILAR_METHODS,
    STRATEGIES,
)

MAX_BODY_BYTES = 16 << 20
TOKEN_ENV = "RTSQL_TOKEN"
_FAST, _FAST_ROUTE = "/recommend/", "/recommend/{user_id}"  # the fast path's route
_FAST_SINGLE = {"k", "category", "strategy", "variant"}  # its parameters besides exclude
_WHOLE = re.compile(r"[1-9][0-9]{0,3}")  # a k the route accepts as it is
LATENCY_METRIC = "rtsql_http_request_seconds"

Strategy = Enum("Strategy", {name: name for name in STRATEGIES}, type=str)
DEFAULT = Strategy(DEFAULT_STRATEGY)


Method = Enum("Method", {name: name for name in SIMILAR_METHODS}, type=str)
DEFAULT_BY = Method(DEFAULT_METHOD)


K = Annotated[int, Query(ge=1, le=MAX_K, description="how many rows")]
Ids = Annotated[list[str] | None, Query()]


class Ack(str, Enum):
    """When POST /events answers."""
    visible = "visible"  # committed: the next read sees the events
    durable = "durable"  # journaled on disk: committed with the writer's next group


def _dumps(payload) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _json(payload, status: int = 200) -> Response:
    return Response(_dumps(payload), status_code=status, media_type="application/json")


def _error(status: int, message: str, field: str | None = None) -> Response:
    return _json({"error": message, **({"field": field} if field else {})}, status)


def _rows(rows) -> list[dict]:
    return [dict(zip(rows.columns, row)) for row in rows.rows]


class Metrics:
    """The Prometheus registry of one app: request counts and latency by route, and gauges
    read from the service when /metrics is scraped."""

    def __init__(self, service: Service):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter("rtsql_http_requests", "HTTP requests", ["route", "status"],
                                registry=registry)
        self.latency = Histogram(LATENCY_METRIC, "HTTP request latency", ["route"],
                                 buckets=(.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5,
                                          1, 5), registry=registry)
        gauges = [
            ("rtsql_events_ingested", "events accepted through HTTP",
             lambda: service.counters["events"]),
            ("rtsql_rejects", "rows rejected through HTTP (events and impressions)",
             lambda: service.counters["rejects"]),
            ("rtsql_refresh_lag_seconds", "age of the oldest write not yet in a refresh",
             service.refresh_lag),
            ("rtsql_last_refresh_timestamp_seconds", "when the last refresh was loaded",
             lambda: service.last_refresh or 0),
            ("rtsql_last_publish_seconds", "how long the last snapshot publish took",
             lambda: service.refresh_stats()["publish_seconds"]),
            ("rtsql_pending_events", "events served from the overlay, not yet refreshed",
             lambda: service.health()["pending_events"]),
            ("rtsql_journaled_bodies", "bodies answered by POST /events?wait=durable, not yet "
             "committed", lambda: service.journal.unapplied()),
            ("rtsql_model_age_seconds", "the served item lists hold every event committed "
             "more than this long ago (since the start of the refresh they come from)",
             service.model_age),
        ]
        for name, doc, read in gauges:
            Gauge(name, doc, registry=registry).set_function(read)
        refreshes = Gauge("rtsql_refreshes", "refreshes by this process, by kind", ["kind"],
                          registry=registry)
        durations = Gauge("rtsql_last_refresh_seconds", "duration of the last refresh of each "
                          "kind", ["kind"], registry=registry)
        for kind in ("full", "incremental", "none"):
            refreshes.labels(kind).set_function(
                lambda kind=kind: service.refresh_stats()["counts"].get(kind, 0))
            durations.labels(kind).set_function(
                lambda kind=kind: service.refresh_stats()["seconds"].get(kind, 0.0))

    def observe(self, route: str, status: int, seconds: float | None = None) -> None:
        self.requests.labels(route, str(status)).inc()
        if seconds is not None:
            self.latency.labels(route).observe(seconds)

    def recommend_buckets(self) -> list[tuple[float, float]]:
        """GET /recommend's latency histogram (the dashboard's quantiles)."""
        return dashboard.route_buckets(self.registry, LATENCY_METRIC, _FAST_ROUTE)


class Auth:
    """Who may call what: with a token, every route but /health and the login page's own
    files needs ``Authorization: Bearer TOKEN``; a GET or HEAD may show the dashboard's
    cookie instead (derived from the token; it never authorizes a write)."""

    def __init__(self, token: str | None):
        self.expected = f"Bearer {token}".encode() if token else None
        self.session = dashboard.session_value(token).encode() if token else None
        self.public = {"/health", "/ui/login",
                       *(f"/ui/{name}" for name in dashboard.PUBLIC_ASSETS)}

    def allows(self, scope) -> bool:
        if self.expected is None or scope["path"] in self.public:
            return True
        headers = dict(scope["headers"])
        if hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            return True
        if scope["method"] not in ("GET", "HEAD") or b"cookie" not in headers:
            return False
        cookies = SimpleCookie()
        try:
            cookies.load(headers[b"cookie"].decode("latin-1"))
        except CookieError:
            return False
        given = cookies.get(dashboard.COOKIE)
        return given is not None and hmac.compare_digest(given.value.encode(), self.session)

    @staticmethod
    def refusal(scope) -> Response:
        """A page the browser navigates to goes to the login page; anything else gets 401."""
        if scope["method"] == "GET" and dashboard.is_page(scope["path"]):
            return RedirectResponse("/ui/login", 303)
        return _error(401, "missing or wrong bearer token: send 'Authorization: Bearer TOKEN'",
                      "Authorization")


class Guard:
    """Auth, warm-up, the fast path and metrics as plain ASGI (cheaper than a
    BaseHTTPMiddleware per request)."""

    def __init__(self, inner, *, service: Service, auth: Auth, metrics: Metrics,
                 fast: Callable[[dict], bytes | None]):
        self.inner, self.service, self.auth, self.metrics, self.fast = (
            inner, service, auth, metrics, fast)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        path = scope["path"]
        if not self.auth.allows(scope):
            response = self.auth.refusal(scope)
            await response(scope, receive, send_wrapper)
            self.metrics.observe("unauthorized", response.status_code)
            return
        # while warming up, the page and its own data load; the scorer's routes wait
        if not self.service.ready.is_set() and path not in ("/metrics", "/") \
                and not path.startswith("/ui"):
            response = _json({"status": "warming up",
                              "error": "the server is loading its compiled scorer (the first "
                                       "start after an install compiles it, up to half a "
                                       "minute): retry shortly"}, 503)
            response.headers["Retry-After"] = "2"
            await response(scope, receive, send_wrapper)
            self.metrics.observe("warming up", 503)
            return
        body = self.fast(scope) if path.startswith(_FAST) else None
        if body is not None:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(body)).encode()),
                                    (b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            self.metrics.observe(_FAST_ROUTE, 200, time.perf_counter() - start)
            return
        try:
            await self.inner(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            self.metrics.observe(getattr(route, "path", "unmatched"), status[0],
                                 time.perf_counter() - start)


def fast_recommend(scope, recommend_body) -> bytes | None:
    """GET /recommend/{user_id} without FastAPI's parameter machinery (a third of the route's
    cost), for requests whose parameters are all plainly valid. Anything else (a bad or
    repeated parameter, an unknown one, a refused variant) returns None and goes to the
    FastAPI route, which validates it and answers with its errors; the answer of a valid
    request is the route's, byte for byte (tests/test_server.py)."""
    user_id = scope["path"][len(_FAST):]
    if scope["method"] != "GET" or not user_id or "/" in user_id:
        return None
    single, exclude = {}, []
    for name, value in parse_qsl(scope["query_string"].decode("latin-1"),
                                 keep_blank_values=True):
        if name == "exclude":
            exclude.append(value)
        elif name in _FAST_SINGLE and name not in single:
            single[name] = value
        else:
            return None
    k = single.get("k", str(DEFAULT_K))
    strategy = single.get("strategy", DEFAULT_STRATEGY)
    if not _WHOLE.fullmatch(k) or int(k) > MAX_K or strategy not in STRATEGIES:
        return None
    try:
        return recommend_body(user_id, int(k), single.get("category"), exclude or None,
                              strategy, single.get("variant"))
    except RtsqlError:
        return None


def create_app(service: Service, *, token: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The ASGI app over a started ``Service``: the guard (auth, warm-up, the fast path,
    metrics), the error answers, then the routes by concern: reads, events, the catalog and
    forget, health, the dashboard, /metrics."""
    app = FastAPI(title="rtsql", version="1",
                  description="Real-time recommendations from an rtsql database. Answers equal "
                              "the database's SQL macros (recommend(), similar_items(), ...).")
    metrics = Metrics(service)
    app.add_middleware(Guard, service=service, auth=Auth(token), metrics=metrics,
                       fast=lambda scope: fast_recommend(
                           scope, functools.partial(recommend_body, service)))
    _answer_errors(app)
    app.include_router(_read_routes(service))
    app.include_router(_event_routes(service, max_body_bytes))
    app.include_router(_catalog_routes(service, max_body_bytes))
    app.include_router(_health_route(service))
    dashboard.mount(app, service, metrics.recommend_buckets, token)
    app.include_router(_metrics_route(metrics))
    return app


def recommend_body(service: Service, user_id: str, k: int, category: str | None,
                   exclude: list | None, strategy: str, variant: str | None) -> bytes:
    """GET /recommend's JSON, for the route and the fast path alike."""
    _check_variant(service.variants(), variant, True)
    rows = service.recommend(user_id, k, exclude=exclude, category=category,
                             strategy=strategy, variant=variant)
    return _dumps({"user_id": user_id, "items": _rows(rows)})


def _answer_errors(app: FastAPI) -> None:
    """4xx JSON naming the field for bad input and refused requests; 500 without a traceback
    (the server log has it)."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error(422, f"{field}: {first.get('msg')}", field)

    @app.exception_handler(Exception)
    async def failed(request, exc: Exception):
        import logging

        logging.getLogger("rtsql.server").exception("request failed: %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the "
                           "details")

    @app.exception_handler(RtsqlError)
    async def refused(request, exc: RtsqlError):
        status = 404 if isinstance(exc, (UnknownUser, UnknownItem)) else 400
        return _error(status, str(exc), getattr(exc, "field", None))


def _read_routes(service: Service) -> APIRouter:
    """The answers from the served state (the SQL macros' equals)."""
    router = APIRouter()

    @router.get("/recommend/{user_id}", summary="Top-k items for a user, with reasons "
                "(recommend() in SQL)")
    async def recommend(user_id: str, k: K = DEFAULT_K, category: str | None = None,
                        exclude: Ids = None,
                        strategy: Strategy = DEFAULT,
                        variant: str | None = None):
        return Response(recommend_body(service, user_id, k, category, exclude, strategy.value,
                                       variant), media_type="application/json")

    @router.get("/recommend-for-items", summary="Top-k items for a session or basket "
                "(recommend_for_items() in SQL)")
    async def recommend_for_items(item: Annotated[list[str], Query(min_length=1)], k: K = DEFAULT_K,
                                  category: str | None = None,
                                  exclude: Ids = None,
                                  strategy: Strategy = DEFAULT,
                                  variant: str | None = None):
        _check_variant(service.variants(), variant, False)
        rows = service.recommend_for_items(item, k, exclude=exclude, category=category,
                                           strategy=strategy.value, variant=variant)
        return _json({"items": _rows(rows)})

    @router.get("/similar-items/{item_id}", summary="An item's neighbours (similar_items())")
    async def similar_items(item_id: str, k: K = DEFAULT_K, by: Method = DEFAULT_BY):
        return _json({"item_id": item_id,
                      "items": _rows(service.similar_items(item_id, k, by.value))})

    @router.get("/similar-users/{user_id}", summary="A user's nearest users (similar_users())")
    async def similar_users(user_id: str, k: K = DEFAULT_K):
        return _json({"user_id": user_id, "users": _rows(service.similar_users(user_id, k))})

    @router.get("/trending", summary="Trending items (trending())")
    async def trending(k: K = DEFAULT_K):
        return _json({"items": _rows(service.trending(k))})

    return router


async def _read_body(request: Request, limit: int) -> bytes | Response:
    """The body, or the 413 Response to answer instead once it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    too_large = _error(413, f"body over {limit} bytes; send smaller batches", "body")
    if declared and declared.isdigit() and int(declared) > limit:
        return too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_json(request: Request, limit: int):
    """The body as JSON, or the 4xx Response to answer instead."""
    body = await _read_body(request, limit)
    if isinstance(body, Response):
        return body
    try:
        return json.loads(body)
    except ValueError as exc:
        return _error(400, f"the body is not JSON: {exc}", "body")
    except RecursionError:
        return _error(400, "the body nests thousands of levels deep", "body")


def _body_outcome(result) -> dict:
    return {"accepted": result.ingested, "rejected": len(result.rejects),
            "rejects": [{"line": line, "reason": reason} for line, reason in result.rejects]}


def _event_routes(service: Service, max_body_bytes: int) -> APIRouter:
    """Events and impressions: each waits for the writer's commit (or the journal) without
    blocking the event loop."""
    router = APIRouter()
    # durable POSTs are journaled one at a time on a thread of their own: an append that waits
    # for the backlog (journal.BACKLOG_BODIES) holds no thread of the default executor, which
    # the dashboard's SQL reads use, and the JSON split competes for the GIL from one thread
    journaling = ThreadPoolExecutor(1, thread_name_prefix="rtsql-journal")

    @router.post("/events", summary="Add events: a JSON array of objects, or JSON lines",
                 description="Fields user_id, item_id, event_type, ts (ISO-8601 or epoch "
                             "seconds), value. The same validation, weights and rejects as "
                             "`rtsql ingest`. wait=visible (default): answered once committed, "
                             "with the rejects; the next read sees them. wait=durable: answered "
                             "(202) once journaled on disk, with the body's sequence; committed "
                             "with the writer's next group; GET /events/{sequence} waits for "
                             "that and gives the rejects.")
    async def events(request: Request, wait: Annotated[Ack, Query()] = Ack.visible):
        body = await _read_body(request, max_body_bytes)
        if isinstance(body, Response):
            return body
        if wait is Ack.durable:
            sequence = await asyncio.get_running_loop().run_in_executor(
                journaling, service.submit_durable, body)
            return _json({"sequence": sequence, "visible": False}, 202)
        result = await asyncio.wrap_future(service.submit_events(body))
        return _json(_body_outcome(result))

    @router.get("/events/{sequence}", summary="A journaled body's outcome (POST /events?wait="
                "durable), once its events are committed and visible to reads",
                description="Waits up to `timeout` seconds; `visible` false if it is still "
                            "queued then. A body committed long ago has no counts any more.")
    async def journaled(sequence: Annotated[int, Path(ge=1)],
                        timeout: Annotated[float, Query(ge=0, le=60)] = 10.0):
        future = service.outcome(sequence)
        if future is None:
            return _error(404, f"no body was journaled with sequence {sequence}", "sequence")
        try:
            result = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                            timeout)
        except asyncio.TimeoutError:
            return _json({"sequence": sequence, "visible": False}, 202)
        return _json({"sequence": sequence, "visible": True}
                     | (_body_outcome(result) if result is not None else {}))

    @router.post("/impressions", summary="Record what was shown: a JSON array of objects with "
                 "user_id, item_id, ts, strategy[, variant, rec_id, rank]")
    async def impressions(request: Request):
        rows = await _read_json(request, max_body_bytes)
        if isinstance(rows, Response):
            return rows
        if not isinstance(rows, list):
            return _error(400, "the body must be a JSON array of impressions", "body")
        result = await asyncio.wrap_future(service.submit_impressions(rows))
        return _json(result)

    return router


def _catalog_routes(service: Service, max_body_bytes: int) -> APIRouter:
    """The catalog, availability and forget, through the writer like events."""
    router = APIRouter()

    @router.post("/items", summary="Add or update catalog items: a JSON array of objects, JSON "
                 "lines, or CSV (Content-Type text/csv)",
                 description="Columns as `rtsql items`: item_id, title, category, tags, "
                             "description, embedding, available, available_from, "
                             "available_until, and any others as attributes. The same "
                             "validation and rejects as the file path; an availability set "
                             "here applies to every list at once.")
    async def upsert_items(request: Request):
        body = await _read_body(request, max_body_bytes)
        if isinstance(body, Response):
            return body
        fmt = "csv" if request.headers.get("content-type", "").startswith("text/csv") \
            else "jsonl"
        return _json(await asyncio.wrap_future(service.submit_items(body, fmt)))

    async def forget_answer(user_id: str) -> Response:
        result = await asyncio.wrap_future(service.submit_forget(user_id))
        return _json({"forgotten": user_id, "seconds": round(result.refresh.seconds, 3),
                      "snapshots_republished": [str(p) for p in result.republished],
                      "compact_seconds": round(result.compact_seconds, 3)})

    async def availability_answer(item_id: str, available: bool) -> Response:
        await asyncio.wrap_future(service.submit_availability(item_id, available))
        return _json({"item_id": clean_id(item_id), "available": available})

    @router.post("/items/{item_id}/hide", summary="Leave an item out of every list from now on "
                 "(sold out, withdrawn); its events still count")
    async def hide_item(item_id: Annotated[str, Path()]):
        return await availability_answer(item_id, False)

    @router.post("/items/{item_id}/show", summary="Show a hidden item again (its availability "
                 "window, if it has one, still applies)")
    async def show_item(item_id: Annotated[str, Path()]):
        return await availability_answer(item_id, True)

    @router.post("/users/{user_id}/forget", summary="Delete a user and everything derived")
    async def forget(user_id: Annotated[str, Path()]):
        return await forget_answer(user_id)

    @router.post("/forget", summary='The same, the id in the body: {"user_id": "..."} (for ids '
                 "too long for a URL)")
    async def forget_in_body(request: Request):
        body = await _read_json(request, max_body_bytes)
        if isinstance(body, Response):
            return body
        user_id = body.get("user_id") if isinstance(body, dict) else None
        if not isinstance(user_id, str) or not user_id:
            return _error(400, 'the body must be a JSON object {"user_id": "..."}', "user_id")
        return await forget_answer(user_id)

    return router


def _health_route(service: Service) -> APIRouter:
    router = APIRouter()

    @router.get("/health", summary="Liveness and counts (no token needed); 503 with the "
                "problems when the server cannot write or refresh")
    async def health():
        answer = service.health()
        return _json(answer, 503 if answer["problems"] else 200)

    return router


def _metrics_route(metrics: Metrics) -> APIRouter:
    from prometheus_client import generate_latest

    router = APIRouter()

    @router.get("/metrics", summary="Prometheus metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4")

    return router


def bind(host: str = "127.0.0.1", port: int = 8000):
    """The listening socket, bound before the database is opened, so an address in use is a
    clear error (InvalidSetting) and nothing else happens."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidSetting(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose "
                             "another --port or --host, or stop what uses it") from None
    return sock


def run(service: Service, sock, *, token: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES, log_level: str = "warning",
        on_ready: Callable[[], None] | None = None,
        log: Callable[[str], None] = lambda line: None) -> None:
    """Serve on ``sock`` (from ``bind``) until SIGINT/SIGTERM: in-flight requests finish,
    queued writes commit, the follower stops, then the process exits 0. ``on_ready`` runs
    once the service has started (the database is this process's). Requests get 503
    "warming up" until the scorer is loaded, in the background (``log`` says when)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # uvicorn re-raises a stop signal after its graceful shutdown, which would kill
            # the process before the service commits and stops: a stop signal here means a
            # clean stop and exit 0
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    # the event loop answers reads; hand it the GIL back sooner when the writer or the
    # refresh runs Python code (the default switch interval is 5 ms, a visible p99 step)
    sys.setswitchinterval(0.0005)
    service.start(warm=False)
    if on_ready is not None:
        on_ready()

    def warm() -> None:
        started = time.perf_counter()
        service.warm()
        log(f"rtsql serve: ready (scorer loaded in {time.perf_counter() - started:.1f} s)")

    threading.Thread(target=warm, name="rtsql-warm-up", daemon=True).start()
    try:
        config = uvicorn.Config(create_app(service, token=token, max_body_bytes=max_body_bytes),
                                log_level=log_level, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=30)
        Server(config).run(sockets=[sock])
    finally:
        service.stop()
