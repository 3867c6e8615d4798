"""The dashboard of `rtsql serve`: its data routes against the API's own answers, its token
handling, and (the browser test) every view in headless Chromium: the numbers shown equal the
API's, the overview updates by itself, no console error, a screenshot of each view."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import urllib.parse
from pathlib import Path

import pytest

import rtsql
from rtsql import dashboard, feedback, settings

from test_server import Server, build_database

pytestmark = pytest.mark.slow

NOW = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
ASSET_BUDGET = 300 * 1024  # the page stays light: every asset it loads, in all


def at(minutes: float) -> str:
    return (NOW - dt.timedelta(minutes=minutes)).isoformat()


def impressions_and_clicks(server: Server) -> dict:
    """A week of impressions for two variants and two strategies, and clicks on some of
    them; returns the expected totals by variant: (impressions, clicks)."""
    shown, clicks, expected = [], [], {}
    for n in range(140):
        user, item = f"user-{n % 20 + 1}", f"sku-{n + 1}"
        variant, strategy = ("control", "hybrid") if n % 2 else ("trend", "trending")
        minutes = (6 - n % 7) * 1440 + 60 - n / 10  # n % 7 days ago, the later n the newer
        shown.append({"user_id": user, "item_id": item, "ts": at(minutes), "strategy": strategy,
                      "variant": variant, "rank": n % 10 + 1})
        clicked = n % 5 == 0 or (variant == "control" and n % 3 == 0)
        if clicked:
            clicks.append({"user_id": user, "item_id": item, "event_type": "click",
                           "ts": at(minutes - 10)})
        seen, hits = expected.get(variant, (0, 0))
        expected[variant] = (seen + 1, hits + clicked)
    assert server.json("POST", "/impressions", json.dumps(shown).encode())[1]["loaded"] == 140
    assert server.json("POST", "/events", json.dumps(clicks).encode())[1]["rejected"] == 0
    return expected


def metric_buckets(text: str, route: str) -> list[tuple[float, float]]:
    """The /metrics histogram of one route, parsed from the exposition text."""
    found = []
    pattern = re.compile(r'^rtsql_http_request_seconds_bucket\{le="([^"]+)",route="([^"]+)"\} (\S+)$')
    for line in text.splitlines():
        m = pattern.match(line)
        if m and m.group(2) == route:
            found.append((float(m.group(1)), float(m.group(3))))
    return sorted(found)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    path = build_database(tmp_path_factory.mktemp("dash") / "shop.duckdb")
    con = rtsql.connect(path)
    feedback.set_variants(con, {"control": 0.5, "trend": 0.5},
                          {"trend": {"weight_item_cf": "0", "weight_user_cf": "0"}})
    settings.set_value(con, "ab_auto_metric", "clicks")
    con.close()
    return path


def test_data_routes_equal_the_api(shop, tmp_path):
    path = tmp_path / "copy.duckdb"
    shutil.copy(shop, path)
    server = Server(path)
    try:
        overview = server.json("GET", "/ui/api/overview")[1]
        health = server.json("GET", "/health")[1]
        assert (overview["users"], overview["items"]) == (health["users"], health["items"])
        expected = impressions_and_clicks(server)
        after = server.json("GET", "/ui/api/overview")[1]
        clicks = sum(c for _, c in expected.values())
        assert after["events"] == overview["events"] + clicks
        assert after["impressions"] == overview["impressions"] + 140
        assert after["events_last_minute"] >= clicks  # arrivals, whatever their event time

        for _ in range(3):
            server.call("GET", "/recommend/user-1")
        after = server.json("GET", "/ui/api/overview")[1]
        status, text = server.call("GET", "/metrics")
        buckets = metric_buckets(text.decode(), "/recommend/{user_id}")
        assert after["get_latency_ms"]["count"] == buckets[-1][1] >= 3
        assert after["get_latency_ms"]["p99"] == round(
            1000 * dashboard.histogram_quantile(0.99, buckets), 3)

        totals = server.json("GET", "/ui/api/feedback?by=variant")[1]["totals"]
        rows = {r[0]: dict(zip(totals["columns"], r)) for r in totals["rows"]}
        assert {v: (r["impressions"], r["clicks"]) for v, r in rows.items()} == expected
        assert all(r["ctr_low"] < r["ctr"] < r["ctr_high"] for r in rows.values())
        assert server.json("GET", "/ui/api/feedback?by=colour")[0] == 400
        status, body = server.json("GET", "/ui/api/feedback?since=garbage")
        assert status == 400 and "ISO date" in body["error"]

        user = server.json("GET", "/ui/api/user/user-1")[1]
        # of the clicks just posted (n = 0, 20, 40, ...), n = 20's is the latest
        history = [(h["item_id"], h["event_type"]) for h in user["history"]]
        assert history[0] == ("sku-21", "click") and ("sku-1", "click") in history
        assert user["variant"] in ("control", "trend")
        assert server.json("GET", "/ui/api/user/nobody-at-all")[0] == 404

        trending = [r["item_id"] for r in server.json("GET", "/trending?k=100")[1]["items"]]
        item = server.json("GET", f"/ui/api/item/{trending[2]}")[1]
        assert item["trending_rank"] == 3 and item["catalog"]["title"]
        assert server.json("GET", "/ui/api/item/no-such-sku")[0] == 404

        view = server.json("GET", "/ui/api/settings")[1]
        assert [s["name"] for s in view["settings"]] == list(settings.SETTINGS)
        assert {v["name"]: v["share"] for v in view["variants"]} == {"control": 0.5, "trend": 0.5}
        assert view["auto_metric"] == "clicks"

        sizes = {name: len(server.call("GET", f"/ui/{name}")[1]) for name in dashboard.ASSETS}
        assert all(sizes.values()) and sum(sizes.values()) < ASSET_BUDGET
        status, page = server.call("GET", "/ui/")
        assert status == 200 and b"/ui/app.js" in page
        assert server.call("GET", "/ui/nothing.js")[0] == 404
    finally:
        assert server.stop()[0] == 0


def test_the_token_guards_the_page_and_its_cookie_only_reads(shop, tmp_path):
    import http.client

    path = tmp_path / "copy.duckdb"
    shutil.copy(shop, path)
    server = Server(path, env={"RTSQL_TOKEN": "s3cret"})

    def raw(method, target, headers=None, body=None):
        c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        c.request(method, target, body=body, headers=headers or {})
        answer = c.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()

    try:
        status, headers, _ = raw("GET", "/ui/")
        assert status == 303 and headers["location"] == "/ui/login"
        assert raw("GET", "/")[0] == 303
        assert raw("GET", "/ui/api/overview")[0] == 401
        assert raw("GET", "/ui/login")[0] == 200 and raw("GET", "/ui/app.css")[0] == 200
        assert raw("POST", "/ui/session", {"Authorization": "Bearer wrong"})[0] == 401
        status, headers, _ = raw("POST", "/ui/session", {"Authorization": "Bearer s3cret"})
        assert status == 204
        cookie = headers["set-cookie"].split(";")[0]
        assert "s3cret" not in cookie and "HttpOnly" in headers["set-cookie"]
        assert raw("GET", "/ui/", {"Cookie": cookie})[0] == 200
        assert raw("GET", "/ui/api/overview", {"Cookie": cookie})[0] == 200
        assert raw("GET", "/recommend/user-1", {"Cookie": cookie})[0] == 200
        assert raw("GET", "/ui/api/overview", {"Cookie": "rtsql_ui=forged"})[0] == 401
        # the cookie reads; it never writes
        body = json.dumps([{"user_id": "u", "item_id": "i", "event_type": "view",
                            "ts": at(1)}]).encode()
        assert raw("POST", "/events", {"Cookie": cookie}, body)[0] == 401
        assert raw("POST", "/users/user-1/forget", {"Cookie": cookie})[0] == 401
    finally:
        assert server.stop()[0] == 0


# --------------------------------------------------------------------------- the browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser(profile: Path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("RTSQL_BROWSER_REQUIRED"):
            pytest.fail("chromium and chromium-driver are missing (.ci/run installs them)")
        pytest.skip("needs Debian's chromium and chromium-driver: "
                    "apt-get install chromium chromium-driver")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=ChromeService(CHROMEDRIVER), options=options)


def test_every_view_in_a_real_browser(shop, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(os.environ.get("RTSQL_SCREENSHOTS", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "copy.duckdb"
    shutil.copy(shop, path)
    server = Server(path, "--token", "s3cret")
    auth = {"Authorization": "Bearer s3cret"}

    def api(target):
        status, body = server.json("GET", target, headers=auth)
        assert status == 200, body
        return body

    driver = browser(tmp_path / "profile")
    wait = WebDriverWait(driver, 30)

    def shown(selector):
        return wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, selector))

    def value(key):
        return driver.find_element(By.CSS_SELECTOR, f'[data-key="{key}"]').get_attribute(
            "data-value")

    def column(table, col):
        return [td.text for td in driver.find_elements(
            By.CSS_SELECTOR, f'#{table} td[data-col="{col}"]')]

    def go(fragment, ready):
        driver.get(f"{server.base}/ui/#/{fragment}")
        return shown(ready)

    try:
        wait_for_scorer(server, auth)
        expected = impressions_and_clicks_with(server, auth)
        # the refresh after the clicks moves the A/B shares (ab_auto_metric clicks)
        wait_until(lambda: any(r[3] == "auto:clicks" for r in
                               api("/ui/api/settings")["allocations"]["rows"]), server)
        for user in ("user-1", "user-2", "user-3"):
            api(f"/recommend/{user}")

        driver.get(server.base + "/ui/")
        shown("#token")[0].send_keys("s3cret")
        driver.find_element(By.CSS_SELECTOR, "#login button").click()
        shown('[data-key="events"]')
        data, health = api("/ui/api/overview"), api("/health")
        assert int(value("users")) == health["users"] and int(value("items")) == health["items"]
        assert int(value("events")) == data["events"]
        assert driver.find_element(By.CSS_SELECTOR, '[data-key="events"] .value').text == \
            f"{data['events']:,}"
        assert float(value("p99")) == data["get_latency_ms"]["p99"]
        driver.save_screenshot(str(shots / "overview.png"))
        before = int(value("events"))
        body = json.dumps([{"user_id": "user-1", "item_id": f"sku-{n}", "event_type": "view",
                            "ts": at(1)} for n in range(1, 6)]).encode()
        assert server.call("POST", "/events", body, auth)[0] == 200
        wait.until(lambda d: int(value("events")) == before + 5)  # updated by itself

        go("feedback/variant", "#totals tbody tr")
        rows = {tr.find_element(By.CSS_SELECTOR, "td").text: tr for tr in
                driver.find_elements(By.CSS_SELECTOR, "#totals tbody tr")}
        for variant, (n, clicks) in expected.items():
            cells = rows[variant].find_elements(By.CSS_SELECTOR, "td")
            assert (cells[1].text, cells[2].text) == (str(n), str(clicks))
        assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart polyline")) == 4
        driver.save_screenshot(str(shots / "feedback.png"))

        user = api("/ui/api/overview")["sample_users"][0]
        go("user", ".chips a")[0].click()  # no id: ids to start from, the first is this user
        shown("#recs tbody tr")
        assert driver.current_url.endswith("#/user/" + urllib.parse.quote(user))
        recommended = api(f"/recommend/{user}?k=10")["items"]
        assert column("recs", "item_id") == [r["item_id"] for r in recommended]
        assert column("recs", "reason") == [r["reason"] for r in recommended]
        assert column("similar-users", "user_id") == [
            u["user_id"] for u in api(f"/similar-users/{user}?k=10")["users"]]
        assert column("history", "item_id") == [
            h["item_id"] for h in api(f"/ui/api/user/{user}")["history"]]
        driver.save_screenshot(str(shots / "user.png"))

        item = api("/trending?k=1")["items"][0]["item_id"]
        go("item", ".chips a")[0].click()  # no id: trending items to start from
        shown("#similar-cf tbody tr")
        assert driver.current_url.endswith("#/item/" + urllib.parse.quote(item))
        assert column("similar-cf", "item_id") == [
            r["item_id"] for r in api(f"/similar-items/{item}?k=10&by=cf")["items"]]
        assert column("similar-content", "item_id") == [
            r["item_id"] for r in api(f"/similar-items/{item}?k=10&by=content")["items"]]
        assert driver.find_element(By.CSS_SELECTOR, '[data-fact="trending rank"]').text == "1"
        driver.save_screenshot(str(shots / "item.png"))

        go("settings", "#settings tbody tr")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#settings tbody tr")) == \
            len(settings.SETTINGS)
        shares = {v["name"]: v["share"] for v in api("/ui/api/settings")["variants"]}
        shown_shares = dict(zip(column("variants", "name"), column("variants", "share")))
        assert shown_shares == {n: f"{100 * s:.2f}%" for n, s in shares.items()}
        assert driver.find_elements(By.CSS_SELECTOR, "#evidence tbody tr")
        driver.save_screenshot(str(shots / "settings.png"))

        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        driver.quit()
        assert server.stop()[0] == 0


def wait_for_scorer(server: Server, headers: dict) -> None:
    wait_until(lambda: server.call("GET", "/trending", headers=headers)[0] == 200, server)


def wait_until(condition, server: Server, seconds: float = 60) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        assert server.proc.poll() is None, server.proc.communicate()
        time.sleep(0.2)


def impressions_and_clicks_with(server: Server, headers: dict) -> dict:
    """impressions_and_clicks through a server that wants its token."""
    class Authorized:
        def json(self, method, target, body=None):
            return server.json(method, target, body, headers)

    return impressions_and_clicks(Authorized())
