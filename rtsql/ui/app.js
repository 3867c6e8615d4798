// The rtsql dashboard: plain JavaScript over the server's JSON routes (no build step, no
// libraries). Every call is a GET; the page never changes data. Text from the data is always
// set with textContent, never parsed as HTML.
"use strict";

const view = document.getElementById("view");
const statusLine = document.getElementById("status");
const REFRESH_MS = 2000;  // the overview updates itself this often
let timer = null;
let generation = 0;  // a view drawn for an older navigation must not replace the current one

// ------------------------------------------------------------------ DOM helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (name === "text") node.textContent = value;
    else if (name === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function sv(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value; else node.setAttribute(name, value);
  }
  for (const child of children.flat()) if (child) node.append(child);
  return node;
}

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

async function api(path) {
  const answer = await fetch(path, {credentials: "same-origin"});
  const body = await answer.json().catch(() => ({}));
  if (answer.status === 401) { window.location.assign("/ui/login"); }
  if (!answer.ok) throw new ApiError(body.error || answer.statusText, answer.status);
  return body;
}

// ------------------------------------------------------------------ formats

const integer = (n) => (n === null || n === undefined) ? "–" : Number(n).toLocaleString("en-US");
const decimal = (n, digits = 4) => (n === null || n === undefined) ? "–" : Number(n).toFixed(digits);
const percent = (n) => (n === null || n === undefined) ? "–" : (100 * n).toFixed(2) + "%";
const ms = (n) => (n === null || n === undefined) ? "–" : Number(n).toFixed(2) + " ms";

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 120) return seconds.toFixed(0) + " s";
  if (seconds < 7200) return (seconds / 60).toFixed(0) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function when(iso) { return iso ? iso.replace("T", " ").replace("+00:00", " UTC") : "–"; }

function metric(key, label, value, shown, sub) {
  return el("div", {class: "card metric", "data-key": key, "data-value": value ?? ""},
            el("div", {class: "label", text: label}),
            el("div", {class: "value", text: shown}),
            sub ? el("div", {class: "sub", text: sub}) : null);
}

const userLink = (id) => el("a", {href: "#/user/" + encodeURIComponent(id), text: id});
const itemLink = (id) => el("a", {href: "#/item/" + encodeURIComponent(id), text: id});

// columns: [{key, label, num, format, link}]
function table(id, columns, rows) {
  return el("table", {id},
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", {class: c.num ? "num" : null, text: c.label})))),
    el("tbody", {}, rows.map((row) => el("tr", {}, columns.map((c) => {
      const value = row[c.key];
      const content = c.link && value !== null ? c.link(value) : (c.format ? c.format(value, row) : (value ?? "–"));
      return el("td", {class: c.num ? "num" : null, "data-col": c.key}, content);
    })))));
}

// ------------------------------------------------------------------ charts (SVG)

// series: [{name, values: [number | null per x]}]; labels: one per x
function lineChart(series, labels, {format = (v) => v, height = 220, step = false} = {}) {
  const width = 640, pad = {l: 56, r: 12, t: 10, b: 26};
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  const top = (Math.max(...all, 0) || 0.01) * 1.1;  // all zero: an axis up to 1%
  const x = (i) => pad.l + (width - pad.l - pad.r) * (labels.length > 1 ? i / (labels.length - 1) : 0.5);
  const y = (v) => height - pad.b - (height - pad.t - pad.b) * (v / top);
  const chart = sv("svg", {class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img"});
  for (const f of [0, 0.5, 1]) {
    chart.append(sv("line", {class: "grid", x1: pad.l, x2: width - pad.r, y1: y(top * f / 1.1), y2: y(top * f / 1.1)}));
    chart.append(sv("text", {x: 4, y: y(top * f / 1.1) + 4, text: format(top * f / 1.1)}));
  }
  chart.append(sv("line", {class: "axis", x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b}));
  const every = Math.max(1, Math.ceil(labels.length / 8));
  labels.forEach((label, i) => {
    if (i % every === 0 || i === labels.length - 1) {
      const anchor = labels.length > 1 && i === 0 ? "start"
        : (labels.length > 1 && i === labels.length - 1 ? "end" : "middle");
      chart.append(sv("text", {x: x(i), y: height - 8, "text-anchor": anchor, text: label}));
    }
  });
  series.forEach((s, k) => {
    const points = [];
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      if (step && points.length) points.push(`${x(i).toFixed(1)},${points[points.length - 1].split(",")[1]}`);
      points.push(`${x(i).toFixed(1)},${y(v).toFixed(1)}`);
    });
    const line = sv("polyline", {class: `line c${k % 6}`, points: points.join(" ")});
    line.append(sv("title", {text: s.name}));
    chart.append(line);
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      const dot = sv("circle", {cx: x(i), cy: y(v), r: 2.5, class: `c${k % 6}`});
      dot.append(sv("title", {text: `${s.name} ${labels[i]}: ${format(v)}`}));
      chart.append(dot);
    });
  });
  return chart;
}

function legend(names) {
  return el("div", {class: "legend"}, names.map((n, k) => el("span", {}, el("i", {class: `c${k % 6}`}), n)));
}

function barChart(values, labels, height = 120) {
  const width = 1200, pad = {l: 48, r: 8, t: 8, b: 20};
  const top = Math.max(...values.map((v) => v ?? 0), 1);
  const slot = (width - pad.l - pad.r) / Math.max(values.length, 1);
  const chart = sv("svg", {class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img"});
  chart.append(sv("text", {x: 4, y: pad.t + 8, text: integer(top)}));
  chart.append(sv("line", {class: "axis", x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b}));
  values.forEach((v, i) => {
    const h = (height - pad.t - pad.b) * ((v ?? 0) / top);
    const bar = sv("rect", {class: "bar", x: pad.l + i * slot + 1, y: height - pad.b - h,
                            width: Math.max(slot - 2, 1), height: h});
    bar.append(sv("title", {text: `${labels[i]}: ${v === null ? "not sampled" : integer(v)}`}));
    chart.append(bar);
  });
  chart.append(sv("text", {x: pad.l, y: height - 4, text: labels[0]}));
  chart.append(sv("text", {x: width - pad.r, y: height - 4, "text-anchor": "end", text: labels[labels.length - 1]}));
  return chart;
}

// ------------------------------------------------------------------ views

async function overview(gen) {
  const d = await api("/ui/api/overview");
  if (gen !== generation) return;
  const latency = d.get_latency_ms;
  const refreshed = d.last_refresh
    ? `${d.last_refresh_kind}, ${d.last_refresh_seconds.toFixed(2)} s, at ${when(d.last_refresh)}`
    : "none since this server started";
  const minutes = d.events_per_minute.map((_, i) => `-${d.events_per_minute.length - i} min`);
  view.replaceChildren(
    el("h2", {text: "Overview"}),
    el("div", {class: "cards"},
      metric("events", "events", d.events, integer(d.events)),
      metric("users", "users", d.users, integer(d.users)),
      metric("items", "items", d.items, integer(d.items)),
      metric("events_last_minute", "events in the last minute", d.events_last_minute,
             integer(d.events_last_minute), "committed, any source"),
      metric("rejects", "rejected rows", d.rejects, integer(d.rejects)),
      metric("impressions", "impressions", d.impressions, integer(d.impressions)),
      metric("model_age_seconds", "model age", d.model_age_seconds, age(d.model_age_seconds),
             "lists hold every event older than this"),
      metric("pending_events", "events since the refresh", d.pending_events,
             integer(d.pending_events), "served at once from the overlay"),
      metric("p50", "GET /recommend p50", latency.p50, ms(latency.p50), `${integer(latency.count)} requests`),
      metric("p99", "GET /recommend p99", latency.p99, ms(latency.p99), "from the /metrics histogram"),
      metric("similarity", "item-item measure", d.similarity, d.similarity ?? "–"),
      metric("refreshes", "refreshes (full / incr.)", d.refreshes.full + d.refreshes.incremental,
             `${d.refreshes.full} / ${d.refreshes.incremental}`, refreshed)),
    el("div", {class: "card"}, el("h3", {text: "Events committed per minute (last 30 minutes)"}),
       barChart(d.events_per_minute, minutes)),
    el("div", {class: "card chips"}, el("h3", {text: "Start from"}),
       el("div", {}, "users: ", d.sample_users.map(userLink)),
       el("div", {}, "trending items: ", d.trending_items.map(itemLink))));
  statusLine.textContent = `${d.status} · updated ${when(d.as_of)}`;
  statusLine.className = d.status === "ok" ? "status" : "status bad";
  if (d.problems.length) view.prepend(el("p", {class: "error", text: d.problems.join("; ")}));
  timer = setTimeout(() => overview(gen).catch(failed(gen)), REFRESH_MS);
}

function byDay(daily, key, value) {
  const days = [...new Set(daily.rows.map((r) => r[0]))].sort();
  const names = [...new Set(daily.rows.map((r) => String(r[1])))].sort();
  const at = daily.columns.indexOf(value);
  const series = names.map((name) => ({name, values: days.map((day) => {
    const row = daily.rows.find((r) => r[0] === day && String(r[1]) === name);
    return row ? row[at] : null;
  })}));
  return {days: days.map((d) => d.slice(5)), names, series};  // MM-DD on the axis
}

async function feedbackView(gen, by = "strategy") {
  const d = await api("/ui/api/feedback?by=" + encodeURIComponent(by));
  if (gen !== generation) return;
  const pick = el("select", {id: "by", on: {change: (e) => { location.hash = "#/feedback/" + e.target.value; }}},
    ["strategy", "variant"].map((b) => el("option", b === by ? {value: b, selected: ""} : {value: b}, b)));
  const ctr = byDay(d.daily, by, "ctr"), conversion = byDay(d.daily, by, "conversion");
  const rows = d.totals.rows.map((r) => Object.fromEntries(d.totals.columns.map((c, i) => [c, r[i]])));
  const interval = (low, high) => (v, row) => row[low] === undefined ? percent(v)
    : `${percent(v)}  [${percent(row[low])} – ${percent(row[high])}]`;
  view.replaceChildren(
    el("h2", {text: "Feedback"}),
    el("form", {class: "inline"}, el("label", {for: "by", text: "by"}), pick),
    d.daily.rows.length ? el("div", {class: "grid2"},
      el("div", {class: "card"}, el("h3", {text: "CTR per day (clicks or carts per impression)"}),
         legend(ctr.names), lineChart(ctr.series, ctr.days, {format: percent})),
      el("div", {class: "card"}, el("h3", {text: "Conversion per day (purchases per impression)"}),
         legend(conversion.names), lineChart(conversion.series, conversion.days, {format: percent})))
      : el("p", {class: "muted", text: "No impressions yet: record them with POST /impressions or `rtsql impressions`."}),
    el("div", {class: "card"}, el("h3", {text: by === "variant" ? "Totals (95% credible intervals)" : "Totals"}),
      table("totals", [
        {key: by, label: by},
        {key: "impressions", label: "impressions", num: true, format: integer},
        {key: "clicks", label: "clicks", num: true, format: integer},
        {key: "ctr", label: "CTR", num: true, format: interval("ctr_low", "ctr_high")},
        {key: "purchases", label: "purchases", num: true, format: integer},
        {key: "conversion", label: "conversion", num: true, format: interval("conversion_low", "conversion_high")},
      ], rows)));
}

function lookup(kind, id, placeholder) {
  const input = el("input", {id: kind + "-id", value: id || "", placeholder, size: 32});
  return el("form", {class: "inline", on: {submit: (e) => {
    e.preventDefault();
    location.hash = `#/${kind}/` + encodeURIComponent(input.value.trim());
  }}}, input, el("button", {type: "submit", text: "Show"}));
}

// a user or item view without an id: the lookup box and a few ids to start from
async function startFrom(gen, title, kind, label, pick) {
  const d = await api("/ui/api/overview");
  if (gen !== generation) return;
  view.replaceChildren(el("h2", {text: title}), lookup(kind, "", kind + " id"),
    el("p", {class: "chips"}, label, pick(d)));
}

async function userView(gen, id) {
  if (!id) return startFrom(gen, "A user", "user", "for example: ", (d) => d.sample_users.map(userLink));
  const path = encodeURIComponent(id);
  const [user, recs, similar] = await Promise.all([
    api("/ui/api/user/" + path), api("/recommend/" + path + "?k=10"),
    api("/similar-users/" + path + "?k=10")]);
  if (gen !== generation) return;
  view.replaceChildren(
    el("h2", {text: "User " + user.user_id}), lookup("user", id, "user id"),
    el("p", {class: "muted", text: `${integer(user.items_in_history)} items in the history` +
                                    (user.variant ? ` · A/B variant ${user.variant}` : "")}),
    el("div", {class: "grid2"},
      el("div", {class: "card"}, el("h3", {text: "Recommendations (GET /recommend)"}),
        table("recs", [{key: "rank", label: "#", num: true}, {key: "item_id", label: "item", link: itemLink},
                       {key: "score", label: "score", num: true, format: (v) => decimal(v)},
                       {key: "reason", label: "why"}], recs.items)),
      el("div", {class: "card"}, el("h3", {text: "Recent history"}),
        table("history", [{key: "item_id", label: "item", link: itemLink}, {key: "title", label: "title"},
                          {key: "event_type", label: "latest event"},
                          {key: "weight", label: "weight", num: true, format: (v) => decimal(v, 2)},
                          {key: "ts", label: "when", format: when}], user.history)),
      el("div", {class: "card"}, el("h3", {text: "Similar users"}),
        table("similar-users", [{key: "rank", label: "#", num: true}, {key: "user_id", label: "user", link: userLink},
                                {key: "score", label: "score", num: true, format: (v) => decimal(v)}], similar.users))));
}

async function itemView(gen, id) {
  if (!id) return startFrom(gen, "An item", "item", "trending: ", (d) => d.trending_items.map(itemLink));
  const path = encodeURIComponent(id);
  const [item, cf, content] = await Promise.all([
    api("/ui/api/item/" + path), api("/similar-items/" + path + "?k=10&by=cf"),
    api("/similar-items/" + path + "?k=10&by=content")]);
  if (gen !== generation) return;
  const catalog = item.catalog || {};
  const facts = [["available", item.available ? "yes" : "no (hidden or outside its window)"],
                 ["popularity", integer(item.popularity) + " users"],
                 ["trending rank", item.trending_rank ?? "–"], ["first seen", when(item.first_seen)],
                 ...Object.entries(catalog).map(([k, v]) => [k, Array.isArray(v) ? v.join(", ") : (v ?? "–")])];
  const neighbours = (tableId, rows) => table(tableId, [
    {key: "rank", label: "#", num: true}, {key: "item_id", label: "item", link: itemLink},
    {key: "score", label: "score", num: true, format: (v) => decimal(v)}], rows);
  view.replaceChildren(
    el("h2", {text: "Item " + item.item_id}), lookup("item", id, "item id"),
    el("div", {class: "grid2"},
      el("div", {class: "card"}, el("h3", {text: "Catalog"}),
        el("table", {id: "facts"}, el("tbody", {}, facts.map(([k, v]) =>
          el("tr", {}, el("th", {text: k}), el("td", {"data-fact": k, text: String(v)})))))),
      el("div", {class: "card"}, el("h3", {text: "Similar by behaviour (item-item CF)"}), neighbours("similar-cf", cf.items)),
      el("div", {class: "card"}, el("h3", {text: "Similar by content"}), neighbours("similar-content", content.items))));
}

async function settingsView(gen) {
  const d = await api("/ui/api/settings");
  if (gen !== generation) return;
  const changes = d.allocations.rows.map((r) => Object.fromEntries(d.allocations.columns.map((c, i) => [c, r[i]])));
  const times = [...new Set(changes.map((c) => c.changed_at))].sort();
  const names = [...new Set(changes.map((c) => c.variant))].sort();
  // every change records every variant's share: a missing row means the variant did not exist
  const shares = names.map((name) => ({name, values: times.map((t) => {
    const row = changes.find((c) => c.changed_at === t && c.variant === name);
    return row ? row.share : null;
  })}));
  const latest = times.length ? changes.filter((c) => c.changed_at === times[times.length - 1]) : [];
  view.replaceChildren(
    el("h2", {text: "Settings and A/B variants"}),
    el("div", {class: "grid2"},
      el("div", {class: "card"}, el("h3", {text: "Variants"}),
        d.variants.length ? table("variants", [{key: "name", label: "variant"},
          {key: "share", label: "share", num: true, format: percent}, {key: "settings", label: "overrides"}], d.variants)
          : el("p", {class: "muted", text: "No variants: `rtsql variants --set control=0.5 --set new=0.5`."}),
        el("p", {class: "muted", text: d.auto_metric === "off" ? "Shares stay as set (ab_auto_metric off)."
          : `Shares follow ${d.auto_metric} per impression at each refresh (Thompson sampling, at least ${percent(d.min_share)} each).`}),
        latest.some((c) => c.impressions !== null) ? table("evidence", [
          {key: "variant", label: "variant"}, {key: "impressions", label: "impressions", num: true, format: integer},
          {key: "successes", label: "successes", num: true, format: integer},
          {key: "rate", label: "rate [95%]", num: true, format: (v, r) => `${percent(v)} [${percent(r.rate_low)} – ${percent(r.rate_high)}]`},
          {key: "p_best", label: "P(best)", num: true, format: percent}], latest) : null),
      el("div", {class: "card"}, el("h3", {text: "Shares over time"}),
        times.length ? [legend(names), lineChart(shares, times.map((t) => t.slice(5, 19).replace("T", " ")),
                                                 {format: percent, step: true})]
          : el("p", {class: "muted", text: "No change of shares recorded yet."}))),
    el("div", {class: "card"}, el("h3", {text: "Settings (read-only here: `rtsql settings NAME VALUE`)"}),
      table("settings", [{key: "name", label: "name"},
        {key: "value", label: "value", format: (v, r) => r.changed ? el("strong", {text: v}) : v},
        {key: "default", label: "default"}, {key: "help", label: "meaning"}], d.settings)));
}

// ------------------------------------------------------------------ routing

function failed(gen) {
  return (error) => {
    if (gen !== generation) return;
    view.replaceChildren(el("h2", {text: "Could not load this view"}),
      el("p", {class: "error", text: error.message}),
      error.status === 503 ? el("p", {class: "muted", text: "The server is warming up; this page retries."}) : null);
    if (error.status === 503) timer = setTimeout(route, REFRESH_MS);
  };
}

function route() {
  clearTimeout(timer);
  const gen = ++generation;
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : "";
  const current = name || "overview";
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.view === current);
  }
  const views = {overview: () => overview(gen), feedback: () => feedbackView(gen, arg || "strategy"),
                 user: () => userView(gen, arg), item: () => itemView(gen, arg),
                 settings: () => settingsView(gen)};
  (views[current] || views.overview)().catch(failed(gen));
}

window.addEventListener("hashchange", route);
route();
