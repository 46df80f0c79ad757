"""The dashboard page served at ``/``: one self-contained HTML file.

Users may be offline, so the page loads nothing from elsewhere: inline CSS, inline JavaScript
and SVG charts drawn by hand. It fetches ``/v1/profile`` once and ``/v1/audit`` on every refresh
(sending the API key kept in ``localStorage`` when the user saved one) and shows recent verdicts,
the score distribution against the profile's threshold, the layer x head calibration heatmap
and the calibration figures. User text is only ever inserted with ``textContent``, never parsed
as HTML, so logged statements cannot inject script into a reviewer's browser.

Kept as a Python string rather than a package data file so a plain wheel install serves it.
"""

from __future__ import annotations

__all__ = ["DASHBOARD_HTML"]

DASHBOARD_HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>qkscore audit</title>
<link rel="icon" href="data:,">
<style>
  :root { --bg:#f5f6f8; --card:#fff; --ink:#1d2430; --muted:#667085; --line:#e3e6eb;
          --valid:#1a7f4b; --invalid:#c0392b; --accent:#e67e22; --blue:#1f5fa8; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
         background:var(--bg); color:var(--ink); }
  header { background:#1d2430; color:#fff; padding:10px 18px; display:flex; gap:18px;
           align-items:center; flex-wrap:wrap; }
  header h1 { font-size:17px; margin:0; font-weight:600; }
  header .meta { color:#c9d1dc; font-size:13px; }
  header .key { margin-left:auto; display:flex; gap:6px; align-items:center; }
  input, select, button, textarea { font:inherit; }
  input, select, textarea { border:1px solid var(--line); border-radius:4px; padding:4px 6px;
                            background:#fff; color:var(--ink); }
  button { border:1px solid var(--blue); background:var(--blue); color:#fff; border-radius:4px;
           padding:4px 10px; cursor:pointer; }
  button.secondary { background:#fff; color:var(--blue); }
  main { padding:14px 18px; display:grid; gap:14px;
         grid-template-columns: minmax(360px,1.2fr) minmax(320px,1fr) minmax(280px,0.9fr); }
  .card { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:12px; }
  .card h2 { font-size:14px; margin:0 0 8px; }
  .wide { grid-column: 1 / -1; }
  .filters { display:flex; gap:10px; flex-wrap:wrap; align-items:end; }
  .filters label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); }
  #status { font-size:12px; color:var(--muted); margin-left:auto; }
  #status.error { color:var(--invalid); font-weight:600; }
  table { border-collapse:collapse; width:100%; }
  th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line);
           vertical-align:top; }
  th { font-size:12px; color:var(--muted); font-weight:600; }
  td.num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
  td.text { max-width:560px; }
  .badge { display:inline-block; border-radius:10px; padding:1px 8px; font-size:12px;
           color:#fff; font-weight:600; }
  .badge.valid { background:var(--valid); } .badge.invalid { background:var(--invalid); }
  .muted { color:var(--muted); }
  .flag { color:var(--accent); font-weight:600; }
  dl { display:grid; grid-template-columns:auto 1fr; gap:3px 12px; margin:0; }
  dt { color:var(--muted); } dd { margin:0; font-variant-numeric: tabular-nums; }
  svg text { font:11px system-ui,sans-serif; fill:#445; }
  .try { display:grid; grid-template-columns: 1fr 1fr auto; gap:8px; align-items:start; }
  .try textarea { width:100%; height:54px; }
  #try-result { font-size:13px; }
  .steps { margin:2px 0 0; padding-left:18px; font-size:12px; }
  .steps li.bad { color:var(--invalid); font-weight:600; }
</style>
</head>
<body>
<header>
  <h1>qkscore audit</h1>
  <span class="meta" id="profile-meta">loading profile…</span>
  <span class="key">
    <input id="api-key" type="password" placeholder="API key (if the server needs one)" size="26">
    <button id="save-key" class="secondary" type="button">Save key</button>
  </span>
</header>
<main>
  <section class="card wide">
    <div class="filters">
      <label>Verdict
        <select id="f-verdict"><option value="">all</option><option value="valid">valid</option>
        <option value="invalid">invalid</option></select></label>
      <label>Kind
        <select id="f-kind"><option value="">all</option><option value="check">check</option>
        <option value="chain">chain</option></select></label>
      <label>From <input id="f-since" type="datetime-local"></label>
      <label>To <input id="f-until" type="datetime-local"></label>
      <label>Rows <input id="f-limit" type="number" min="1" max="1000" value="200"
        style="width:80px"></label>
      <button id="apply" type="button">Apply</button>
      <label style="flex-direction:row;gap:4px;align-items:center">
        <input id="auto" type="checkbox" checked> auto-refresh</label>
      <span id="status">loading…</span>
    </div>
  </section>
  <section class="card">
    <h2>Score distribution <span class="muted" id="hist-note"></span></h2>
    <svg id="histogram" width="100%" viewBox="0 0 460 230" role="img"
      aria-label="histogram of QK scores against the threshold"></svg>
  </section>
  <section class="card">
    <h2>Head map <span class="muted" id="heat-note"></span></h2>
    <svg id="heatmap" width="100%" viewBox="0 0 400 300" role="img"
      aria-label="calibration accuracy per layer and head"></svg>
  </section>
  <section class="card">
    <h2>Calibration</h2>
    <dl id="calibration"></dl>
    <h2 style="margin-top:10px">Top heads</h2>
    <table id="ranking"><thead><tr><th>head</th><th>sign</th><th>acc.</th><th>AUROC</th>
    </tr></thead><tbody></tbody></table>
  </section>
  <section class="card wide">
    <h2>Try a statement</h2>
    <form class="try" id="try">
      <textarea id="try-context" placeholder="Context (premises)"></textarea>
      <textarea id="try-statement" placeholder="Statement to judge"></textarea>
      <button type="submit">Check</button>
    </form>
    <div id="try-result"></div>
  </section>
  <section class="card wide">
    <h2>Recent verdicts <span class="muted" id="count"></span></h2>
    <table id="verdicts">
      <thead><tr><th>time</th><th>kind</th><th>statement</th><th>verdict</th>
      <th>P(valid)</th><th>margin</th><th>model says</th><th>disagree</th><th>ms</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
</main>
<script>
"use strict";
const KEY = "qkscore_api_key";
const SVGNS = "http://www.w3.org/2000/svg";
const $ = (sel) => document.querySelector(sel);
let profile = null;
let timer = null;

function el(tag, attrs, parent, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVGNS, tag.slice(4))
                                      : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (parent) parent.appendChild(node);
  return node;
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
function fmt(x, digits) {
  return (x === null || x === undefined || Number.isNaN(x)) ? "–" : Number(x).toFixed(digits);
}
function setStatus(text, error) {
  const s = $("#status"); s.textContent = text; s.className = error ? "error" : "";
}
async function api(path, options) {
  const opts = options || {};
  const headers = Object.assign({}, opts.headers || {});
  const key = localStorage.getItem(KEY);
  if (key) headers["X-API-Key"] = key;
  const resp = await fetch(path, Object.assign({}, opts, { headers }));
  let body = null;
  try { body = await resp.json(); } catch (e) { body = {}; }
  if (!resp.ok) throw new Error((body && body.error) || ("HTTP " + resp.status));
  return body;
}

// ---- profile -------------------------------------------------------------------------------
function renderProfile() {
  const p = profile;
  const headThreshold = p.head_threshold ?? p.threshold;
  $("#profile-meta").textContent = `${p.model} · reader ${p.reader || "head"} · best head ` +
    `${p.head} (sign ${p.sign > 0 ? "+" : "−"}, threshold ${fmt(headThreshold, 3)})` +
    ` · profile ${p.digest}`;
  const dl = $("#calibration"); clear(dl);
  const c = p.calibration || {};
  const rows = [
    ["data", p.data], ["items", c.size], ["label counts", JSON.stringify(c.label_counts || {})],
    ["metric", c.metric], ["accuracy", fmt(c.accuracy, 3)],
    ["balanced acc.", fmt(c.balanced_accuracy, 3)], ["AUROC", fmt(c.auroc, 3)],
    ["template", p.template], ["calibrated on", p.unit === "step" ? "chain steps" : "answers"],
    ["deepest layer", p.deepest_layer],
    ["ensemble", p.ensemble ? `${p.ensemble.k} heads (${p.ensemble.method})` : "none"],
    ["created", p.created],
  ];
  for (const [k, v] of rows) { el("dt", {}, dl, k); el("dd", {}, dl, v === undefined ? "–" : v); }
  for (const w of (c.warnings || [])) {
    el("dt", {}, dl, "warning"); el("dd", { class: "flag" }, dl, w);
  }
  if (p.step_warning) {
    el("dt", {}, dl, "chain steps"); el("dd", { class: "flag" }, dl, p.step_warning);
  }
  const tb = $("#ranking tbody"); clear(tb);
  for (const r of (p.ranking || []).slice(0, 8)) {
    const tr = el("tr", {}, tb);
    el("td", {}, tr, r.name); el("td", {}, tr, r.sign > 0 ? "+1" : "−1");
    el("td", { class: "num" }, tr, fmt(r.accuracy, 3));
    el("td", { class: "num" }, tr, fmt(r.auroc, 3));
  }
}

function shade(t) {  // 0..1 -> light to dark blue (the lightest still stands out from white)
  const a = [214, 228, 242], b = [8, 48, 107];
  const m = a.map((v, i) => Math.round(v + (b[i] - v) * Math.max(0, Math.min(1, t))));
  return `rgb(${m[0]},${m[1]},${m[2]})`;
}

function renderHeatmap() {
  const svg = $("#heatmap"); clear(svg);
  const acc = (profile.heatmap || {}).accuracy || [];
  const nL = acc.length, nH = nL ? acc[0].length : 0;
  if (!nL) { el("svg:text", { x: 10, y: 20 }, svg, "no heatmap in this profile"); return; }
  const finite = acc.flat().filter((v) => v !== null && Number.isFinite(v));
  const lo = Math.min(...finite), hi = Math.max(...finite);
  const left = 34, top = 34, legendH = 52;
  const cw = Math.max(4, Math.min(26, Math.floor((400 - left - 8) / nH)));
  const ch = Math.max(4, Math.min(16, Math.floor((300 - top - legendH) / nL)));
  const W = Math.max(left + cw * nH + 8, 280), H = top + ch * nL + legendH;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const chosen = /^L(\d+)H(\d+)$/.exec(profile.head || "");
  const ens = new Set(((profile.ensemble || {}).heads) || []);
  el("svg:text", { x: left, y: 12 }, svg, "head →   (rows: layers)");
  for (let h = 0; h < nH; h += Math.max(1, Math.ceil(nH / 10))) {
    el("svg:text", { x: left + h * cw + cw / 2, y: top - 3, "text-anchor": "middle" }, svg, h);
  }
  for (let l = 0; l < nL; l++) {
    if (l % Math.max(1, Math.ceil(nL / 12)) === 0) {
      el("svg:text", { x: left - 4, y: top + l * ch + ch - 2, "text-anchor": "end" }, svg, "L" + l);
    }
    for (let h = 0; h < nH; h++) {
      const v = acc[l][h];
      const ok = v !== null && Number.isFinite(v);
      const rect = el("svg:rect", {
        x: left + h * cw, y: top + l * ch, width: cw - 1, height: ch - 1,
        fill: ok ? shade(hi > lo ? (v - lo) / (hi - lo) : 1) : "#ddd", class: "cell",
      }, svg);
      el("svg:title", {}, rect, `L${l}H${h}: accuracy ${ok ? v.toFixed(3) : "n/a"}`);
      if (ens.has(`L${l}H${h}`)) {
        el("svg:circle", { cx: left + h * cw + cw / 2 - 0.5, cy: top + l * ch + ch / 2 - 0.5,
                           r: Math.max(1.5, Math.min(cw, ch) / 5), fill: "#e67e22" }, svg);
      }
    }
  }
  if (chosen) {
    const l = +chosen[1], h = +chosen[2];
    el("svg:rect", { x: left + h * cw - 1.5, y: top + l * ch - 1.5, width: cw + 2, height: ch + 2,
                     fill: "none", stroke: "#e67e22", "stroke-width": 2.5, class: "chosen" }, svg);
  }
  const ly = top + ch * nL + 12;
  for (let i = 0; i < 60; i++) {
    el("svg:rect", { x: left + i * 2, y: ly, width: 2, height: 9, fill: shade(i / 59) }, svg);
  }
  el("svg:text", { x: left, y: ly + 21 }, svg, fmt(lo, 2));
  el("svg:text", { x: left + 120, y: ly + 21, "text-anchor": "end" }, svg, fmt(hi, 2));
  el("svg:text", { x: left + 128, y: ly + 9 }, svg, "calibration accuracy");
  el("svg:rect", { x: left, y: ly + 28, width: 9, height: 9, fill: "none",
                   stroke: "#e67e22", "stroke-width": 2 }, svg);
  el("svg:text", { x: left + 14, y: ly + 36 }, svg, "chosen head");
  el("svg:circle", { cx: left + 98, cy: ly + 32.5, r: 3, fill: "#e67e22" }, svg);
  el("svg:text", { x: left + 105, y: ly + 36 }, svg, "ensemble head");
  $("#heat-note").textContent = `${nL} layers × ${nH} heads`;
}

// ---- audit log -----------------------------------------------------------------------------
function query() {
  const qs = new URLSearchParams();
  const v = $("#f-verdict").value, k = $("#f-kind").value;
  if (v) qs.set("verdict", v);
  if (k) qs.set("kind", k);
  for (const [id, name] of [["#f-since", "since"], ["#f-until", "until"]]) {
    const t = $(id).value;
    if (t) qs.set(name, new Date(t).toISOString());
  }
  const n = parseInt($("#f-limit").value, 10);
  qs.set("limit", String(Number.isFinite(n) ? Math.min(1000, Math.max(1, n)) : 200));
  return qs.toString();
}

function scoresOf(rows) {
  const out = [];
  for (const r of rows) {
    const res = r.result || {};
    if (r.kind === "chain") {
      for (const s of (res.steps || [])) if (s.score !== null) out.push(s.score);
    } else if (res.score !== null && res.score !== undefined) {
      out.push(res.score);
    }
  }
  return out;
}

function renderHistogram(rows) {
  const svg = $("#histogram"); clear(svg);
  const W = 460, H = 230, m = { l: 36, r: 10, t: 14, b: 36 };
  const values = scoresOf(rows);
  const thr = profile ? profile.threshold : 0;
  $("#hist-note").textContent = `${values.length} scores`;
  if (!values.length) {
    el("svg:text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, svg, "no verdicts yet");
    return;
  }
  let lo = Math.min(thr, ...values), hi = Math.max(thr, ...values);
  if (hi - lo < 1e-6) { lo -= 1; hi += 1; }
  const pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
  const nb = Math.min(30, Math.max(8, Math.ceil(Math.sqrt(values.length) * 2)));
  const width = (hi - lo) / nb;
  const valid = new Array(nb).fill(0), invalid = new Array(nb).fill(0);
  for (const v of values) {
    const b = Math.min(nb - 1, Math.floor((v - lo) / width));
    if (v > thr) valid[b]++; else invalid[b]++;
  }
  const maxc = Math.max(...valid.map((v, i) => v + invalid[i]));
  const x = (v) => m.l + (v - lo) / (hi - lo) * (W - m.l - m.r);
  const y = (c) => H - m.b - c / maxc * (H - m.t - m.b);
  el("svg:line", { x1: m.l, y1: H - m.b, x2: W - m.r, y2: H - m.b, stroke: "#99a" }, svg);
  el("svg:line", { x1: m.l, y1: m.t, x2: m.l, y2: H - m.b, stroke: "#99a" }, svg);
  for (let b = 0; b < nb; b++) {
    const x0 = x(lo + b * width) + 0.5, w = Math.max(1, x(lo + (b + 1) * width) - x0 - 1);
    if (invalid[b]) {
      const r = el("svg:rect", { x: x0, y: y(invalid[b]), width: w,
        height: H - m.b - y(invalid[b]), fill: "#c0392b", class: "bar invalid" }, svg);
      el("svg:title", {}, r, `${invalid[b]} invalid`);
    }
    if (valid[b]) {
      const r = el("svg:rect", { x: x0, y: y(invalid[b] + valid[b]), width: w,
        height: y(invalid[b]) - y(invalid[b] + valid[b]), fill: "#1a7f4b",
        class: "bar valid" }, svg);
      el("svg:title", {}, r, `${valid[b]} valid`);
    }
  }
  const tx = x(thr);
  el("svg:line", { x1: tx, y1: m.t - 4, x2: tx, y2: H - m.b, stroke: "#e67e22",
                   "stroke-width": 2, "stroke-dasharray": "5 3", class: "threshold" }, svg);
  const right = tx > (W + m.l) / 2;
  el("svg:text", { x: right ? tx - 4 : tx + 4, y: m.t + 6, "text-anchor": right ? "end" : "start" },
     svg, `threshold ${fmt(thr, 2)}`);
  for (let i = 0; i <= 4; i++) {
    const v = lo + (hi - lo) * i / 4;
    el("svg:line", { x1: x(v), y1: H - m.b, x2: x(v), y2: H - m.b + 4, stroke: "#99a" }, svg);
    el("svg:text", { x: x(v), y: H - m.b + 15,
                     "text-anchor": i === 0 ? "start" : (i === 4 ? "end" : "middle") },
       svg, fmt(v, 1));
  }
  el("svg:text", { x: (W + m.l) / 2, y: H - 6, "text-anchor": "middle" }, svg,
     (profile && profile.reader && profile.reader !== "head" ? `${profile.reader} reader log-odds`
       : "signed QK score") + "  (right of the threshold: valid)");
  el("svg:text", { x: m.l - 4, y: m.t + 4, "text-anchor": "end" }, svg, maxc);
  el("svg:text", { x: m.l - 4, y: H - m.b, "text-anchor": "end" }, svg, 0);
}

function statementCell(td, r) {
  if (r.kind === "check") {
    if (r.statement === null) {
      el("span", { class: "muted" }, td, `(text not stored · ${r.input_hash.slice(0, 10)})`);
    } else {
      el("span", { class: "statement" }, td, r.statement);
    }
    return;
  }
  const res = r.result || {};
  const n = res.n_steps || (res.steps || []).length;
  const ff = res.first_failure;
  el("span", {}, td, `chain of ${n} steps · ` +
     (ff === null || ff === undefined ? "all steps valid" : `first failure at step ${ff}`));
  if (res.warning) el("div", { class: "flag step-warning" }, td, res.warning);
  const steps = r.steps || [];
  if (steps.length) {
    const ol = el("ol", { class: "steps", start: "0" }, td);
    steps.forEach((s, i) => {
      const ok = ((res.steps || [])[i] || {}).valid;
      el("li", { class: ok === false ? "bad" : "" }, ol, s);
    });
  }
}

function renderTable(rows) {
  const tb = $("#verdicts tbody"); clear(tb);
  if (!rows.length) {
    const tr = el("tr", {}, tb); el("td", { colspan: 9, class: "muted" }, tr, "no verdicts yet");
  }
  for (const r of rows) {
    const tr = el("tr", { "data-verdict": r.verdict, "data-id": r.id }, tb);
    el("td", { class: "num" }, tr, new Date(r.ts * 1000).toLocaleString());
    el("td", {}, tr, r.kind);
    statementCell(el("td", { class: "text" }, tr), r);
    const vd = el("td", {}, tr);
    el("span", { class: "badge " + r.verdict }, vd, r.verdict);
    el("td", { class: "num" }, tr, fmt(r.probability, 3));
    el("td", { class: "num" }, tr, fmt(r.margin, 2));
    el("td", {}, tr, r.model_answer === null ? "–" : (r.model_answer ? "True" : "False"));
    el("td", { class: r.disagree ? "flag" : "" }, tr,
       r.disagree === null ? "–" : (r.disagree ? "yes" : "no"));
    el("td", { class: "num" }, tr, fmt(r.latency_ms, 0));
  }
}

async function refresh() {
  try {
    if (!profile) {
      profile = await api("/v1/profile");
      renderProfile(); renderHeatmap();
    }
    const page = await api("/v1/audit?" + query());
    renderTable(page.items);
    renderHistogram(page.items);
    $("#count").textContent = `(${page.items.length} shown of ${page.total})`;
    setStatus("updated " + new Date().toLocaleTimeString(), false);
  } catch (err) {
    setStatus(String(err.message || err), true);
  }
}

function schedule() {
  if (timer) clearInterval(timer);
  timer = $("#auto").checked ? setInterval(refresh, 5000) : null;
}

$("#api-key").value = localStorage.getItem(KEY) || "";
$("#save-key").addEventListener("click", () => {
  const v = $("#api-key").value.trim();
  if (v) localStorage.setItem(KEY, v); else localStorage.removeItem(KEY);
  profile = null; refresh();
});
$("#apply").addEventListener("click", refresh);
for (const id of ["#f-verdict", "#f-kind", "#f-since", "#f-until"]) {
  $(id).addEventListener("change", refresh);
}
$("#auto").addEventListener("change", schedule);
$("#try").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("#try-result"); clear(out);
  el("span", { class: "muted" }, out, "judging…");
  try {
    const v = await api("/v1/check", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ context: $("#try-context").value,
                             statement: $("#try-statement").value }),
    });
    clear(out);
    el("span", { class: "badge " + v.verdict }, out, v.verdict);
    el("span", {}, out, `  P(valid) ${fmt(v.probability, 3)} · margin ${fmt(v.margin, 2)}` +
       (v.model_answer === null ? "" : ` · model says ${v.model_answer ? "True" : "False"}`) +
       ` · ${fmt(v.latency_ms, 0)} ms`);
    refresh();
  } catch (err) {
    clear(out); el("span", { class: "flag" }, out, String(err.message || err));
  }
});
refresh();
schedule();
</script>
</body>
</html>
"""
