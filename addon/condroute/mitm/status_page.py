"""The status page's HTML, CSS and JavaScript, as string constants (no package data to install).

The page is a shell: everything on it is drawn by the script from ``/api/status`` (fetched at once
and every ``REFRESH_MS``), with ``textContent`` only, never ``innerHTML``: route names, reasons and
URLs come from rules files and requests and are never read as markup. ``CSP`` allows exactly this
script and this style sheet (by hash), and fetches from the page's own origin, nothing else.
Each route and backend has its state and a button that flips it: a JSON ``POST /api/switch``
(switch_api.py), then the page is drawn again; "back to the file" drops every run-time switch.
"""
from __future__ import annotations

import base64
import hashlib

REFRESH_MS = 2000

CSS = """
:root { color-scheme: light; --fg: #1d2330; --mute: #5b6475; --line: #dde2ea; --bg: #f5f7fa;
        --card: #fff; --accent: #2456c7; --ok: #1a7f37; --bad: #c62828; --warn: #b26a00; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
       background: var(--bg); }
header { background: #16213e; color: #fff; padding: 14px 24px; }
header h1 { margin: 0; font-size: 20px; font-weight: 600; }
header h1 span { color: #8fb3ff; font-weight: 400; }
header p { margin: 4px 0 0; color: #c9d3e6; }
main { padding: 16px 24px 40px; max-width: 1400px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; margin: 0 0 16px;
          padding: 12px 16px; }
h2 { font-size: 15px; margin: 0 0 8px; }
h2 small { color: var(--mute); font-weight: 400; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 10px 4px 0; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--mute); font-weight: 500; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
td.hits, th.hits { text-align: right; font-variant-numeric: tabular-nums; width: 6em; }
tr.route td { font-weight: 600; background: #eef3fc; }
tr.backend td:first-child { padding-left: 22px; }
tr.other td { color: var(--mute); font-style: italic; }
td.bar { width: 30%; }
.bar i { display: block; height: 10px; border-radius: 3px; background: var(--accent); min-width: 1px; }
.mono, td.url { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12.5px;
                word-break: break-all; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
         color: #fff; background: var(--mute); }
.badge.up, .badge.routed { background: var(--ok); }
.badge.down, .badge.unavailable, .badge.bad_request, .badge.error { background: var(--bad); }
.badge.retrying, .badge.respond, .badge.no_match { background: var(--warn); }
.badge.passthrough, .badge.unknown { background: #7a8496; }
.alert { border: 1px solid #f1b2b2; background: #fdecec; color: #7d1616; border-radius: 8px; padding: 10px 14px;
         margin: 0 0 16px; }
.alert pre { margin: 6px 0 0; white-space: pre-wrap; font-size: 12.5px; }
.note { color: var(--mute); }
.skipped { color: var(--mute); font-size: 12px; }
section.recent td:first-child, section.recent td.mono { white-space: nowrap; }
section.recent td.url { max-width: 36ch; }
tr.off td { color: var(--mute); }
tr.off td:first-child { text-decoration: line-through; }
td.state { white-space: nowrap; font-weight: 400; }
td.state span { margin-right: 8px; font-size: 12px; }
td.state span.switched-off, td.state span.switched-on { color: var(--warn); font-weight: 600; }
button.switch, button.reset { font: inherit; font-size: 12px; padding: 1px 8px; border-radius: 4px; cursor: pointer;
                              border: 1px solid var(--line); background: #fff; color: var(--accent); }
button.switch:disabled { opacity: .5; cursor: default; }
h2 button.reset { margin-left: 12px; }
"""

JS = """
"use strict";
(function () {
  var API = "/api/status", SWITCH = "/api/switch", EVERY = %d;
  var app = document.getElementById("app");
  var lastOk = null, switchError = null;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function add(parent) {
    for (var i = 1; i < arguments.length; i++) if (arguments[i]) parent.appendChild(arguments[i]);
    return parent;
  }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function clock(epoch) {
    if (epoch === null || epoch === undefined) return "";
    var d = new Date(epoch * 1000);
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "";
    seconds = Math.max(0, seconds);
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + " s ago";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
    return Math.floor(seconds / 3600) + " h " + Math.floor(seconds %% 3600 / 60) + " min ago";
  }
  function row(cls, cells) {
    var tr = el("tr", cls);
    cells.forEach(function (c) { tr.appendChild(c); });
    return tr;
  }
  function td(text, cls) { return el("td", cls, text); }
  function table(heads) {
    var t = el("table"), tr = el("tr");
    heads.forEach(function (h) { tr.appendChild(el("th", h[1] || "", h[0])); });
    add(t, add(el("thead"), tr));
    var body = el("tbody");
    t.appendChild(body);
    return [t, body];
  }
  function bar(hits, most) {
    var cell = el("td", "bar"), b = el("span", "bar"), i = el("i");
    i.style.width = (most ? Math.round(100 * hits / most) : 0) + "%%";
    if (!hits) i.style.display = "none";
    add(cell, add(b, i));
    return cell;
  }
  function badge(text, kind) { return el("span", "badge " + kind, text); }

  function header(s) {
    var h = el("header"), r = s.rules;
    add(h, add(el("h1", null, "condroute "), el("span", null, "status")));
    var bits = [];
    if (r.path) {
      bits.push("rules " + r.path);
      bits.push("generation " + r.generation);
      if (r.loaded_at) bits.push("loaded " + clock(r.loaded_at) + " (" + ago(s.now - r.loaded_at) + ")");
      if (r.summary) bits.push(r.summary);
    } else {
      bits.push("no rules loaded: every request passes through");
    }
    bits.push(s.decisions + " decisions counted");
    bits.push("updated " + clock(s.now));
    h.appendChild(el("p", "summary", bits.join(" \\u00b7 ")));
    return h;
  }

  // switches: what a route or backend is now, and a button that flips it (POST /api/switch)
  var STATES = {"on": "on", "switched on": "switched on (enabled: false in the file)"};
  function stateCell(x) {
    var cell = el("td", "state");
    if (!x.state) return cell;
    cell.appendChild(el("span", x.state.replace(" ", "-"), STATES[x.state] || x.off_reason || x.state));
    var b = el("button", "switch", x.enabled ? "turn off" : "turn on");
    b.type = "button";
    b.dataset.switch = x.switch;
    b.addEventListener("click", function () { b.disabled = true; post({name: x.switch, enabled: !x.enabled}); });
    cell.appendChild(b);
    return cell;
  }
  function post(body) {
    fetch(SWITCH, {method: "POST", cache: "no-store", headers: {"Content-Type": "application/json"},
                   body: JSON.stringify(body)})
      .then(function (r) {
        return r.json().then(function (j) { if (!r.ok) throw new Error(j.error || "HTTP " + r.status); return j; });
      })
      .then(function () { switchError = null; }, function (e) { switchError = "Could not switch: " + e.message; })
      .then(load);
  }

  function routes(s) {
    var sec = el("section", "routes");
    var h = add(el("h2", null, "Routes "), el("small", null, "requests decided per route and backend"));
    var sw = s.switches || [];
    if (sw.length) {
      h.appendChild(el("small", null, " \u00b7 " + sw.length + " run-time switch" + (sw.length > 1 ? "es" : "") +
                                      " (not written to the file)"));
      var reset = el("button", "reset", "back to the file");
      reset.type = "button";
      reset.addEventListener("click", function () { reset.disabled = true; post({reset: true}); });
      h.appendChild(reset);
    }
    sec.appendChild(h);
    if (!s.routes.length) { sec.appendChild(el("p", "note", "No routes.")); return sec; }
    var most = 0;
    s.routes.forEach(function (r) { r.backends.forEach(function (b) { most = Math.max(most, b.hits); }); });
    var t = table([["route / backend"], ["serves"], ["hits", "hits"], [""], ["state"]]);
    s.routes.forEach(function (r) {
      var tr = row("route" + (r.enabled === false ? " off" : ""), [td(r.name),
                             td(r.origin || (r.line ? "line " + r.line : "")), td(r.hits, "hits"), td(""), stateCell(r)]);
      tr.dataset.route = r.name;
      t[1].appendChild(tr);
      r.backends.forEach(function (b) {
        var br = row("backend" + (b.enabled === false ? " off" : ""), [td(b.name), td(b.target || "", "url"),
                                 td(b.hits, "hits"), bar(b.hits, most), stateCell(b)]);
        br.dataset.route = r.name;
        br.dataset.backend = b.name;
        t[1].appendChild(br);
      });
      if (r.unserved) {
        t[1].appendChild(row("backend other", [td("no backend served"), td("no match, unavailable or refused"),
                                              td(r.unserved, "hits"), td(""), td("")]));
      }
    });
    sw.forEach(function (x) {
      if (!x.in_rules) t[1].appendChild(row("other", [td(x.name), td("switched " + (x.enabled ? "on" : "off") +
                                                      ", not in the rules now"), td(""), td(""), td("")]));
    });
    var pt = row("other", [td("no route: passthrough"), td(""), td(s.passthrough, "hits"), td(""), td("")]);
    pt.dataset.route = "";
    t[1].appendChild(pt);
    return add(sec, t[0]);
  }

  function upstreams(s) {
    var sec = el("section", "upstreams");
    add(sec, add(el("h2", null, "Upstreams "),
                 el("small", null, "passive health: cool-down " + s.cooldown + " s after a refused connection")));
    if (!s.upstreams.length) { sec.appendChild(el("p", "note", "No upstreams.")); return sec; }
    var t = table([["upstream"], ["url"], ["state"], ["detail"]]);
    s.upstreams.forEach(function (u) {
      var detail = "";
      if (u.state === "down") detail = u.error + "; passed over for " + u.cooldown_left.toFixed(1) + " s more";
      else if (u.state === "retrying") detail = u.error + " " + ago(u.failed_ago) + "; cool-down over, the next request tries it";
      else if (u.state === "up") detail = u.connections ? u.connections + " open connection" + (u.connections > 1 ? "s" : "")
                                                        : "connected " + ago(u.ok_ago);
      else detail = "no connection seen yet";
      var tr = row("", [td(u.name), td(u.url, "url"), add(el("td"), badge(u.state, u.state)), td(detail)]);
      tr.dataset.upstream = u.name;
      t[1].appendChild(tr);
    });
    return add(sec, t[0]);
  }

  function mirrored(s) {   // copies sent to mirror upstreams (shown once a mirror was drawn)
    var ms = (s.mirrors && s.mirrors.upstreams) || [];
    if (!ms.length) return null;
    var sec = el("section", "mirrors");
    add(sec, add(el("h2", null, "Mirrored "), el("small", null, "copies of requests; their answers are dropped")));
    var t = table([["mirror"], ["url"], ["sent", "hits"], ["failed", "hits"], ["dropped", "hits"], ["under way", "hits"]]);
    ms.forEach(function (m) {
      var tr = row(m.failing ? "failing" : "", [td(m.name), td(m.url, "url"), td(m.sent, "hits"), td(m.failed, "hits"),
                                                td(m.dropped, "hits"), td(m.in_flight, "hits")]);
      tr.dataset.mirror = m.name;
      t[1].appendChild(tr);
    });
    return add(sec, t[0]);
  }

  function recent(s) {
    var sec = el("section", "recent");
    add(sec, add(el("h2", null, "Recent decisions "), el("small", null, "the last " + s.recent_max + ", newest first")));
    if (!s.recent.length) { sec.appendChild(el("p", "note", "No requests decided yet.")); return sec; }
    var t = table([["time"], ["request"], ["outcome"], ["to"], ["reason"]]);
    s.recent.forEach(function (d) {
      var to = d.route ? d.route + (d.backend ? "/" + d.backend : "") : "";
      if (d.upstream) to += " \\u2192 " + d.upstream;
      else if (d.status) to += " \\u2192 " + d.status;
      var reason = el("td");
      reason.appendChild(el("div", null, d.reason));
      (d.skipped || []).forEach(function (k) { reason.appendChild(el("div", "skipped", "skipped " + k.backend + ": " + k.reason)); });
      (d.tries || []).forEach(function (k, i) { reason.appendChild(el("div", "skipped", "attempt " + (i + 1) + ": upstream " + k.upstream + " (" + k.address + ") " + k.reason)); });
      var tr = row("", [td(clock(d.time)), td(d.method + " " + d.url, "url"),
                        add(el("td"), badge(d.outcome, d.outcome)), td(to, "mono"), reason]);
      tr.dataset.outcome = d.outcome;
      t[1].appendChild(tr);
    });
    return add(sec, t[0]);
  }

  function render(s) {
    var body = document.createDocumentFragment();
    add(body, header(s));
    var m = el("main");
    if (switchError) m.appendChild(el("div", "alert", switchError));
    if (s.rules.error) {
      var a = el("div", "alert", "The last reload failed" + (s.rules.path ? "; generation " + s.rules.generation +
                                  " stays live" : "") + ":");
      a.appendChild(el("pre", null, s.rules.error));
      m.appendChild(a);
    }
    add(m, routes(s), upstreams(s), mirrored(s), recent(s));
    body.appendChild(m);
    while (app.firstChild) app.removeChild(app.firstChild);
    app.appendChild(body);
    app.dataset.generation = String(s.rules.generation);
    app.dataset.state = "ok";
    lastOk = s.now;
  }

  function failed(err) {
    app.dataset.state = "error";
    var a = document.getElementById("offline") || el("div", "alert");
    a.id = "offline";
    a.textContent = "Cannot read " + API + ": " + err + (lastOk ? " (showing " + clock(lastOk) + ")" : "");
    if (!a.parentNode) app.insertBefore(a, app.firstChild);
  }

  function load() {
    return fetch(API, {cache: "no-store"})
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (s) { render(s); }, failed);
  }
  function refresh() { load().then(function () { setTimeout(refresh, EVERY); }); }
  refresh();
})();
""" % REFRESH_MS

PAGE_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>condroute status</title>
<link rel="icon" href="data:,">
<style>{css}</style>
</head>
<body>
<div id="app" data-state="loading"></div>
<noscript><p>This page is drawn by JavaScript. The same data as JSON: <a href="/api/status">/api/status</a></p></noscript>
<script>{js}</script>
</body>
</html>
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


PAGE: bytes = PAGE_TEMPLATE.format(css=CSS, js=JS).encode("utf-8")

# exactly this script and style sheet; fetches to the page's own origin only; no frames, forms, plugins
CSP = (f"default-src 'none'; script-src {_hash(JS)}; style-src {_hash(CSS)}; connect-src 'self'; "
       "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
