"""An open-loop HTTP load generator (asyncio, raw HTTP/1.1 keep-alive): requests are sent on a
fixed schedule whatever the server's speed, and each latency is measured from the request's
scheduled time to the end of its response, so a slow server cannot hide queueing
(no coordinated omission). Run by bench_serve.py in its own process:

    python benchmarks/loadgen.py PORT OUT < SPEC_JSON  ->  the results, as JSON, in the file OUT

SPEC: {"seconds": 30, "get_rate": 200, "users": [...], "post_rate": 0, "post_size": 100,
       "items": [...], "probe_items": [...], "k": 10, "probe_every": 10,
       "post_wait": "visible"}
post_wait durable: POST /events?wait=durable, answered once journaled (202); a probe's
freshness then counts from that answer through its commit (GET /events/{sequence}) to reads.
Bounded in count and time; talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path

TIMEOUT = 30.0  # seconds a request may take before it counts as failed


class Pool:
    def __init__(self, port: int, limit: int = 512):
        self.port, self.limit, self.idle, self.open = port, limit, [], 0

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """One request; a kept-alive connection that the server closed meanwhile (idle
        timeout) is replaced once, as HTTP clients do."""
        reused = bool(self.idle)
        try:
            return await asyncio.wait_for(self._request(method, path, body), TIMEOUT)
        except (asyncio.IncompleteReadError, ConnectionError):
            if not reused:
                raise
            self.open -= 1
            return await asyncio.wait_for(self._request(method, path, body, fresh=True),
                                          TIMEOUT)

    async def _request(self, method: str, path: str, body: bytes, fresh: bool = False
                       ) -> tuple[int, bytes]:
        if self.idle and not fresh:
            reader, writer = self.idle.pop()
        else:
            if self.open >= self.limit:
                raise RuntimeError("connection limit reached: the server is far behind")
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.open += 1
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n\r\n")
        writer.write(head.encode() + body)
        header = await reader.readuntil(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        length = 0
        for line in header.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        data = await reader.readexactly(length)
        self.idle.append((reader, writer))
        return status, data


async def main(port: int, spec: dict) -> dict:
    now = time.perf_counter  # uvloop's loop.time() has millisecond resolution
    pool = Pool(port)
    rng = random.Random(spec.get("seed", 1))
    seconds = spec["seconds"]
    get_lat, post_lat, fresh_lat, errors, statuses_seen = [], [], [], [0], []
    posted = [0]
    # model freshness: (answered, the server's last event id then) of each probe POST, until
    # a refresh's lists include it (/health's watermark reaches the id)
    folding, model_lat = [], []

    async def get(scheduled: float, user: str):
        status, _ = await pool.request("GET", f"/recommend/{user}?k={spec.get('k', 10)}")
        get_lat.append(now() - scheduled)
        errors[0] += status != 200
        if status != 200:
            statuses_seen.append(status)

    async def post(scheduled: float, n: int):
        probe = f"probe-{n}-{rng.random():.6f}"
        item = rng.choice(spec.get("probe_items") or spec["items"])
        events = [{"user_id": probe, "item_id": item, "event_type": "purchase",
                   "ts": "2026-11-30T12:00:00"}]
        events += [{"user_id": rng.choice(spec["users"]), "item_id": rng.choice(spec["items"]),
                    "event_type": rng.choice(["view", "view", "click", "cart"]),
                    "ts": "2026-11-30T12:00:00"} for _ in range(spec["post_size"] - 1)]
        durable = spec.get("post_wait", "visible") == "durable"
        status, data = await pool.request(
            "POST", "/events?wait=durable" if durable else "/events", json.dumps(events).encode())
        answered = now()
        post_lat.append(answered - scheduled)
        if status != (202 if durable else 200):
            errors[0] += 1
            statuses_seen.append(status)
            return
        # journaled events are committed later: counted here, and by the server's last event
        # id in bench_serve's figure of events/s
        posted[0] += spec["post_size"] if durable else json.loads(data)["accepted"]
        if n % spec.get("probe_every", 10):
            return
        if durable:  # the body's commit, before the watermark it must reach is known
            await pool.request("GET", f"/events/{json.loads(data)['sequence']}?timeout=30")
        status, data = await pool.request("GET", "/health")
        if status == 200:
            folding.append((answered, json.loads(data)["last_event_id"]))
        # freshness, on every probe_every-th POST (probing each one would double the read
        # load): the probe user's purchase must show in the next read
        while True:
            status, data = await pool.request("GET", f"/recommend/{probe}?k=1&strategy=item")
            if b"because you bought" in data or now() - answered > 5:
                fresh_lat.append(now() - answered)
                break

    tasks = []
    start = now() + 0.2
    schedule = [(start + i / spec["get_rate"], "get", i)
                for i in range(int(spec["get_rate"] * seconds))] if spec["get_rate"] else []
    if spec.get("post_rate"):
        schedule += [(start + i / spec["post_rate"], "post", i)
                     for i in range(int(spec["post_rate"] * seconds))]
    schedule.sort()
    loop = asyncio.get_running_loop()
    late = []

    def launch(when, kind, n):
        late.append(now() - when)
        if kind == "get":
            tasks.append(asyncio.ensure_future(get(when, rng.choice(spec["users"]))))
        else:
            tasks.append(asyncio.ensure_future(post(when, n)))

    def scheduler():
        # the event loop's timers have millisecond resolution (uvloop, and epoll timeouts),
        # which would add up to 1 ms of client lateness to every request; a thread sleeps to
        # each send time precisely and wakes the loop (a few tens of microseconds)
        for when, kind, n in schedule:
            delay = when - now()
            if delay > 0:
                time.sleep(delay)
            loop.call_soon_threadsafe(launch, when, kind, n)

    sending = [True]

    async def watch_model():
        """Poll /health every 100 ms; a probe is in the model once the watermark reaches it
        (after the load, wait up to model_wait seconds for the last ones)."""
        deadline = None
        while folding or sending[0]:
            if not sending[0]:
                deadline = deadline or now() + spec.get("model_wait", 60)
                if now() > deadline:
                    break
            await asyncio.sleep(0.1)
            status, data = await pool.request("GET", "/health")
            if status != 200:
                continue
            watermark = json.loads(data)["watermark"] or 0
            for probe in [f for f in folding if f[1] <= watermark]:
                model_lat.append(now() - probe[0])
                folding.remove(probe)

    watcher = asyncio.ensure_future(watch_model()) if spec.get("post_rate") else None
    wall = time.perf_counter()
    await loop.run_in_executor(None, scheduler)
    await asyncio.sleep(0)  # the last launch callbacks
    results = await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - wall
    sending[0] = False
    if watcher is not None:
        await watcher
    failures = [r for r in results if isinstance(r, BaseException)]
    statuses = sorted(set(statuses_seen))
    return {"get_ms": [x * 1000 for x in get_lat], "post_ms": [x * 1000 for x in post_lat],
            "fresh_ms": [x * 1000 for x in fresh_lat], "errors": errors[0] + len(failures),
            "model_ms": [x * 1000 for x in model_lat], "model_unfolded": len(folding),
            "late_ms": [x * 1000 for x in late],
            "failure": repr(failures[0]) if failures else None, "statuses": statuses,
            "events": posted[0],
            "seconds": wall, "connections": pool.open}


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = json.dumps(asyncio.run(main(int(sys.argv[1]), json.loads(sys.stdin.read()))))
    # a file, not stdout: the event loop may leave stdout non-blocking, and a pipe then takes
    # only its first 128 KiB of a large result
    Path(sys.argv[2]).write_text(result)
