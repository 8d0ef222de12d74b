"""The admin listener's status page: one HTML document with its CSS and its script, and nothing else.

Owns: the page that `GET /` answers and the headers it goes with. The page reads `GET /status` (the
admin listener's JSON of every pool and backend, `dispatcher.net.admin`) every second without
reloading itself, works out each backend's redirects per second from successive readings of its
`redirects` counter on the dispatcher's own clock (`clock`), and changes a backend only through
`POST /backends/<name>/state`, the route curl uses.
Rules:
- No external asset: no font, no CDN, no image; it works on an air-gapped host. The CSS and the
  script are inline, and the Content-Security-Policy lets run only these two, by their SHA-256
  hashes (CSP Level 2 hash sources), fetch only from the admin listener itself, and nothing frame it.
- Every string from the server (a backend's name, URL, a check's reason and detail) reaches the
  DOM as `textContent`, never as markup: a backend named `<img onerror=...>` is shown, not run.
- The token: the buttons show only when the dispatcher has an admin token and the operator has
  given it in the page's field. The page keeps it in `sessionStorage` (this tab only, gone when the
  tab closes; never in a URL, a cookie or the history) and sends it as `Authorization: Bearer` with
  state changes only. The server checks it there, where a refusal is logged; a refused token (401)
  is forgotten and the field comes back. With no token configured the page is read-only: the API
  takes state changes without a token then (loopback, or `--admin-insecure`), but a page that
  anyone passing a screen can click is not the place to offer them.
Imports only `core.reply`: the page is static, the figures come from `admin`.
"""

from __future__ import annotations

import base64
import hashlib

from dispatcher.core.reply import Reply

# How often the page reads /status: Prometheus' fastest common scrape interval, and the dispatcher's
# health checks run every 2 s by default, so a second shows every change within one check.
REFRESH_MS = 1000
# Redirects per second are averaged over the readings of the last few seconds: one second of
# counting jumps with every burst, as `rate()` over a single scrape interval would.
RATE_WINDOW_SECONDS = 5

STYLE = """
:root { color-scheme: light dark; --fg: #1d2125; --muted: #5f6b76; --bg: #fbfbfc; --line: #d9dde1;
  --up: #16794c; --down: #b3261e; --draining: #9a6700; --maint: #56606b; --panel: #f1f3f5; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6e8ea; --muted: #9aa5af; --bg: #15181b; --line: #343a40; --up: #3fb97d;
    --down: #f2766d; --draining: #e3b341; --maint: #a0a9b2; --panel: #1f2327; }
}
[hidden] { display: none !important; }
body { margin: 0 auto; padding: 1rem 1.5rem; max-width: 90rem; font: 14px/1.45 system-ui, sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 0.5rem 1.25rem; }
h1 { font-size: 1.35rem; margin: 0; }
h2 { font-size: 1.1rem; margin: 1.5rem 0 0.25rem; }
.muted, .url, .summary, #updated { color: var(--muted); }
.url { font-size: 0.85em; display: block; }
.badge { padding: 0.1rem 0.55rem; border-radius: 1rem; font-weight: 600; margin: 0; }
.badge.ready { color: var(--up); border: 1px solid var(--up); }
.badge.unready { color: var(--down); border: 1px solid var(--down); }
#updated.stale { color: var(--down); font-weight: 600; }
#admin { margin: 0.75rem 0; padding: 0.5rem 0.75rem; background: var(--panel); border-radius: 0.4rem; }
#admin p, #admin form { margin: 0.2rem 0; }
#message.error { color: var(--down); font-weight: 600; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 0.35rem 0.6rem; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-weight: 600; white-space: nowrap; border-bottom-width: 2px; }
td.number, th.number { text-align: right; white-space: nowrap; }
.state { font-weight: 700; }
.state.up { color: var(--up); } .state.down { color: var(--down); }
.state.draining { color: var(--draining); } .state.maint { color: var(--maint); }
.check.fail { color: var(--down); }
.check .detail { color: var(--muted); display: block; font-size: 0.85em; overflow-wrap: anywhere; }
td.actions { white-space: nowrap; }
button { font: inherit; padding: 0.1rem 0.6rem; margin: 0 0.15rem 0.15rem 0; cursor: pointer; }
button:disabled { cursor: default; opacity: 0.45; }
input { font: inherit; padding: 0.1rem 0.3rem; }
"""

SCRIPT = f"""
"use strict";
const REFRESH_MS = {REFRESH_MS};
const RATE_WINDOW_SECONDS = {RATE_WINDOW_SECONDS};
const TOKEN_KEY = "dispatcher-admin-token";
const WORDS = ["drain", "maint", "ready"];
const STATES = new Set(["up", "down", "draining", "maint"]);
const COLUMNS = [
  ["Backend", ""], ["State", ""], ["Weight", "number"], ["Load", "number"],
  ["Effective load", "number"], ["Load age", "number"], ["Redirects/s", "number"],
  ["Redirects", "number"], ["Last check", ""], ["Actions", "actions"],
];
const decimals = new Intl.NumberFormat("en", {{ maximumFractionDigits: 2 }});
const whole = new Intl.NumberFormat("en", {{ maximumFractionDigits: 0 }});
const pools = new Map();  // pool name -> {{ section, summary, tbody, rows: Map(backend name -> row) }}
const readings = new Map();  // backend name -> [[clock, redirects], ...], oldest first
let tokenRequired = false;
let lastUpdate = null;

const byId = (id) => document.getElementById(id);

function element(tag, className, text) {{
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text !== undefined) made.textContent = text;
  return made;
}}

function givenToken() {{
  return sessionStorage.getItem(TOKEN_KEY);
}}

function canChange() {{
  return tokenRequired && Boolean(givenToken());
}}

function number(value) {{
  return value === null || value === undefined ? "\\u2013" : decimals.format(value);
}}

function age(seconds) {{
  if (seconds === null || seconds === undefined) return "\\u2013";
  if (seconds < 10) return seconds.toFixed(1) + " s";
  if (seconds < 120) return whole.format(seconds) + " s";
  if (seconds < 7200) return whole.format(seconds / 60) + " min";
  return whole.format(seconds / 3600) + " h";
}}

// Redirects per second over the readings of the last RATE_WINDOW_SECONDS, on the dispatcher's clock
// (not the browser's: a busy tab reads late, the counter and its time are one snapshot).
function redirectRate(name, clock, redirects) {{
  let seen = readings.get(name) || [];
  const last = seen[seen.length - 1];
  if (last && redirects < last[1]) seen = [];  // removed and added again: a new counter
  if (!last || clock > last[0]) seen.push([clock, redirects]);
  while (seen.length > 2 && seen[1][0] <= clock - RATE_WINDOW_SECONDS) seen.shift();
  readings.set(name, seen);
  const first = seen[0];
  return clock > first[0] ? (redirects - first[1]) / (clock - first[0]) : null;
}}

function clockTime(date) {{
  return date.toLocaleTimeString([], {{ hour12: false }});
}}

function say(text, isError) {{
  const message = byId("message");
  message.textContent = text;
  message.classList.toggle("error", Boolean(isError));
}}

function showAdmin() {{
  byId("read-only").hidden = tokenRequired;
  byId("token-form").hidden = !tokenRequired || Boolean(givenToken());
  byId("token-given").hidden = !canChange();
  const allowed = canChange();
  for (const pool of pools.values()) {{
    pool.actionsHeader.hidden = !allowed;
    for (const row of pool.rows.values()) row.actions.hidden = !allowed;
  }}
}}

function newPool(name) {{
  const section = element("section", "pool");
  section.dataset.pool = name;
  section.append(element("h2", "", "Pool " + name));
  const summary = element("p", "summary");
  const table = element("table");
  const head = table.createTHead().insertRow();
  for (const [title, className] of COLUMNS) {{
    const cell = element("th", className, title);
    cell.scope = "col";
    head.append(cell);
  }}
  const tbody = table.createTBody();
  section.append(summary, table);
  byId("pools").append(section);
  return {{ section, summary, tbody, actionsHeader: head.lastElementChild, rows: new Map() }};
}}

function newRow(pool, name) {{
  const tr = pool.tbody.insertRow();
  tr.dataset.backend = name;
  const cell = (className) => {{
    const made = element("td", className);
    tr.append(made);
    return made;
  }};
  const row = {{ tr, backend: cell("backend") }};
  row.name = element("strong", "name");
  row.url = element("span", "url");
  row.backend.append(row.name, row.url);
  for (const key of ["state", "weight", "load", "effective", "age", "rate", "redirects", "check"]) {{
    row[key] = cell(key === "state" || key === "check" ? key : "number " + key);
  }}
  row.actions = cell("actions");
  row.buttons = new Map();
  for (const word of WORDS) {{
    const button = element("button", word, word);
    button.type = "button";
    button.dataset.word = word;
    button.addEventListener("click", () => changeState(name, word));
    row.actions.append(button);
    row.buttons.set(word, button);
  }}
  return row;
}}

function showCheck(cell, check, ageSeconds) {{
  cell.replaceChildren();
  cell.className = "check";
  if (!check) {{
    cell.textContent = "not yet";
    return;
  }}
  cell.classList.add(check.result);
  const took = decimals.format(check.duration_seconds * 1000) + " ms";
  const said = check.result === "pass" ? "pass" : "fail: " + (check.reason || "?");
  cell.append(element("span", "result", said + " \\u00b7 " + took + " \\u00b7 " + age(ageSeconds) + " ago"));
  if (check.detail) cell.append(element("span", "detail", check.detail));
}}

function showBackend(row, backend, clock) {{
  row.name.textContent = backend.name;
  row.url.textContent = backend.url;
  row.state.textContent = backend.state;
  row.state.className = "state " + (STATES.has(backend.state) ? backend.state : "other");
  // What the one word hides: drained by the operator but down, or draining at the backend's own word.
  const hidden = backend.state === "down" && backend.operator_state === "drain" ? " (drained)"
    : backend.state === "draining" && backend.operator_state === "ready" ? " (by itself)" : "";
  if (hidden) row.state.append(element("span", "muted", hidden));
  row.weight.textContent = number(backend.weight);
  row.load.textContent = number(backend.load);
  row.effective.textContent = number(backend.effective_load);
  row.age.textContent = age(backend.load_age_seconds);
  row.rate.textContent = number(redirectRate(backend.name, clock, backend.redirects));
  row.redirects.textContent = whole.format(backend.redirects);
  showCheck(row.check, backend.last_check, backend.last_check_age_seconds);
  for (const [word, button] of row.buttons) button.disabled = backend.operator_state === word;
}}

function summarise(backends) {{
  const counts = new Map();
  for (const backend of backends) counts.set(backend.state, (counts.get(backend.state) || 0) + 1);
  const parts = [...counts].map(([state, count]) => count + " " + state);
  return backends.length + " backends" + (parts.length ? ": " + parts.join(", ") : "");
}}

function showPool(found, clock) {{
  let pool = pools.get(found.name);
  if (!pool) {{
    pool = newPool(found.name);
    pools.set(found.name, pool);
  }}
  const held = found.state === "maint" ? "in maintenance: every answer is its fallback \\u00b7 " : "";
  pool.summary.textContent = held + "policy " + found.policy + " \\u00b7 " + summarise(found.backends);
  const names = new Set();
  for (const backend of found.backends) {{
    names.add(backend.name);
    let row = pool.rows.get(backend.name);
    if (!row) {{
      row = newRow(pool, backend.name);
      pool.rows.set(backend.name, row);
    }}
    showBackend(row, backend, clock);
  }}
  for (const [name, row] of pool.rows) {{
    if (names.has(name)) continue;
    row.tr.remove();
    pool.rows.delete(name);
    readings.delete(name);
  }}
}}

function show(status) {{
  byId("version").textContent = status.version;
  const ready = byId("readiness");
  ready.textContent = status.ready.why;
  ready.className = "badge " + (status.ready.ready ? "ready" : "unready");
  tokenRequired = status.admin.token_required;
  const names = new Set();
  for (const found of status.pools) {{
    names.add(found.name);
    showPool(found, status.clock);
  }}
  for (const [name, pool] of pools) {{
    if (names.has(name)) continue;
    pool.section.remove();
    pools.delete(name);
  }}
  showAdmin();
}}

async function refresh() {{
  const updated = byId("updated");
  try {{
    const answer = await fetch("status", {{ cache: "no-store", headers: {{ accept: "application/json" }} }});
    if (!answer.ok) throw new Error("status " + answer.status);
    show(await answer.json());
    lastUpdate = new Date();
    updated.textContent = "updated " + clockTime(lastUpdate);
    updated.classList.remove("stale");
  }} catch (error) {{
    const since = lastUpdate ? " since " + clockTime(lastUpdate) : "";
    updated.textContent = "not updated" + since + ": " + error.message;
    updated.classList.add("stale");
  }}
}}

async function changeState(name, word) {{
  const token = givenToken();
  if (!token) return;
  try {{
    const answer = await fetch("backends/" + encodeURIComponent(name) + "/state", {{
      method: "POST",
      cache: "no-store",
      headers: {{ authorization: "Bearer " + token, "content-type": "text/plain" }},
      body: word,
    }});
    const text = (await answer.text()).trim();
    if (answer.status === 401) {{
      sessionStorage.removeItem(TOKEN_KEY);
      say("The dispatcher refused the token (401): give it again.", true);
    }} else if (!answer.ok) {{
      say(word + " " + name + ": " + answer.status + ", " + text, true);
    }} else {{
      say(name + ": " + word + " done, it is " + JSON.parse(text).state + " now.", false);
    }}
  }} catch (error) {{
    say(word + " " + name + ": no answer from the dispatcher (" + error.message + ")", true);
  }}
  showAdmin();
  await refresh();
}}

function giveToken(event) {{
  event.preventDefault();
  const field = byId("token");
  const token = field.value.trim();
  field.value = "";
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  say("", false);
  showAdmin();
}}

function forgetToken() {{
  sessionStorage.removeItem(TOKEN_KEY);
  say("Token forgotten.", false);
  showAdmin();
}}

async function loop() {{
  if (!document.hidden) await refresh();
  setTimeout(loop, REFRESH_MS);
}}

byId("token-form").addEventListener("submit", giveToken);
byId("forget").addEventListener("click", forgetToken);
loop();
"""

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>dispatcher status</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>dispatcher <span id="version"></span></h1>
<p id="readiness" class="badge"></p>
<p id="updated" role="status"></p>
</header>
<section id="admin">
<form id="token-form" hidden>
<label for="token">Admin token</label>
<input id="token" type="password" autocomplete="off" spellcheck="false">
<button type="submit">Use token</button>
<span class="muted">kept in this tab only, sent as <code>Authorization: Bearer</code>
with state changes</span>
</form>
<p id="token-given" hidden>Token given: state changes are on.
<button type="button" id="forget">Forget token</button></p>
<p id="read-only" hidden>No admin token is configured: this page is read-only. Set
<code>--admin-token</code> (or <code>DISPATCHER_ADMIN_TOKEN</code>) to drain and ready backends from here.</p>
<p id="message" role="status"></p>
</section>
<main id="pools"></main>
<noscript>This page needs JavaScript; the same figures are at <a href="status">/status</a>
and <a href="metrics">/metrics</a>.</noscript>
<script>{SCRIPT}</script>
</body>
</html>
"""


def _hash_source(text: str) -> str:
    """A CSP hash source: the SHA-256 of an inline element's exact text (CSP Level 2, section 4.2)."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        f"script-src {_hash_source(SCRIPT)}",
        f"style-src {_hash_source(STYLE)}",
        "connect-src 'self'",  # /status and the state changes, on this listener only
        "img-src data:",  # the empty favicon, so that the browser asks for no /favicon.ico
        "base-uri 'none'",
        "form-action 'none'",  # the token form is never submitted: the script takes its value
        "frame-ancestors 'none'",  # no other site frames the buttons (clickjacking)
    ]
)
_BODY = PAGE.encode()
_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-length", str(len(_BODY)).encode()),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),  # frame-ancestors for browsers that predate it
]


def status_page() -> Reply:
    """The page, the same bytes every time: the figures are in /status, which the page reads."""
    return Reply(200, _HEADERS, _BODY)
