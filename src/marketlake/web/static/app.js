// MarketLake dashboard: plain ES module, no build step. Charts by TradingView's
// lightweight-charts (served from the npm package, see web/package.json).
const API = "/api/v1";
const TIMEFRAMES = ["1m", "5m", "15m", "1h", "4h", "1d", "1w"];
const TF_SECONDS = { m: 60, h: 3600, d: 86400, w: 604800 };
const WINDOW_BARS = 5000;           // bars per window loaded from the API
const PAGE_LIMIT = 5000;            // page size when following next_cursor
const LC = window.LightweightCharts;

const state = {
  symbol: null, timeframe: "1h", instruments: [], bars: [], chart: null, candles: null,
  volume: null, markers: null, loadingOlder: false, exhausted: false, live: null,
  alertsSource: null, replay: null, compare: null, compareSeries: new Map(), bt: null,
  btSeries: null, lastLiveAt: null,
};
// A small window into the app for the browser tests and the benchmark.
window.__ml = { state, timings: {} };

const $ = (id) => document.getElementById(id);
const fmt = (x, d = 2) => (x == null || Number.isNaN(x) ? "–" :
  Number(x).toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: d }));
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const tfSeconds = (tf) => { const m = /^(\d+)(mo|m|h|d|w)$/.exec(tf); return m ? Number(m[1]) * (TF_SECONDS[m[2]] || 2592000) : 3600; };
const toSec = (iso) => Math.floor(Date.parse(iso) / 1000);

class ApiError extends Error {
  constructor(status, problem) { super(problem.detail || problem.title || `HTTP ${status}`); this.status = status; this.problem = problem; }
}

// An API key (needed for writes such as running a backtest) from the URL fragment
// (`#key=...`, as `marketlake demo` prints it) or from an earlier visit.
function apiKey() {
  const match = /(?:^#|&)key=([^&]+)/.exec(location.hash);
  if (match) {
    localStorage.setItem("marketlake.key", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);
  }
  return localStorage.getItem("marketlake.key");
}

async function api(path, options = {}) {
  let response;
  const key = state.key;
  const auth = key ? { Authorization: `Bearer ${key}` } : {};
  try {
    response = await fetch(API + path, { ...options, headers: { Accept: "application/json", ...auth, ...(options.headers || {}) } });
  } catch (err) {
    throw new ApiError(0, { detail: `the API is not reachable (${err.message}); is \`marketlake serve\` running?` });
  }
  if (response.status === 204) return null;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function banner(message) {
  const el = $("banner");
  if (!message) { el.hidden = true; el.textContent = ""; return; }
  el.hidden = false; el.textContent = message;
}

function setConn(text, cls) { const el = $("conn"); el.textContent = text; el.className = `conn ${cls || ""}`; }

// ---------------------------------------------------------------- instruments and search

async function loadInstruments() {
  state.instruments = await api("/instruments");
  $("symbols").innerHTML = state.instruments.map((i) => `<option value="${esc(i.symbol)}">${esc(i.name || i.asset_class)}</option>`).join("");
  return state.instruments;
}

function buildTimeframes() {
  $("timeframes").innerHTML = TIMEFRAMES.map((tf) => `<button type="button" role="radio" aria-checked="${tf === state.timeframe}" data-tf="${tf}">${tf}</button>`).join("");
  $("timeframes").addEventListener("click", (e) => {
    const tf = e.target.dataset && e.target.dataset.tf;
    if (tf && tf !== state.timeframe) selectTimeframe(tf);
  });
  $("timeframes").addEventListener("keydown", (e) => {
    if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
    const i = TIMEFRAMES.indexOf(state.timeframe) + (e.key === "ArrowRight" ? 1 : -1);
    if (i >= 0 && i < TIMEFRAMES.length) { selectTimeframe(TIMEFRAMES[i]); document.querySelector(`[data-tf="${TIMEFRAMES[i]}"]`).focus(); }
  });
}

async function selectTimeframe(tf) {
  state.timeframe = tf;
  document.querySelectorAll("#timeframes button").forEach((b) => b.setAttribute("aria-checked", String(b.dataset.tf === tf)));
  const t0 = performance.now();
  await showSymbol(state.symbol);
  window.__ml.timings.timeframeSwitchMs = performance.now() - t0;
}

// ---------------------------------------------------------------- the main chart

function ensureChart() {
  if (state.chart) return;
  const el = $("chart");
  state.chart = LC.createChart(el, {
    autoSize: true,
    layout: { background: { color: "transparent" }, textColor: "#d8dee6", panes: { separatorColor: "#26303b" } },
    grid: { vertLines: { color: "#1e252d" }, horzLines: { color: "#1e252d" } },
    timeScale: { timeVisible: true, secondsVisible: false, borderColor: "#26303b" },
    rightPriceScale: { borderColor: "#26303b" },
    crosshair: { mode: 0 },
  });
  state.candles = state.chart.addSeries(LC.CandlestickSeries, { upColor: "#26a69a", downColor: "#ef5350", wickUpColor: "#26a69a", wickDownColor: "#ef5350", borderVisible: false });
  state.volume = state.chart.addSeries(LC.HistogramSeries, { priceFormat: { type: "volume" }, color: "#3b4a5a" }, 1);
  state.chart.panes()[1] && state.chart.panes()[1].setHeight(90);
  state.markers = LC.createSeriesMarkers(state.candles, []);
  state.chart.timeScale().subscribeVisibleLogicalRangeChange((range) => {
    if (range && range.from < 5 && !state.loadingOlder && !state.exhausted) loadOlder();
  });
  el.addEventListener("keydown", (e) => {
    const ts = state.chart.timeScale(); const pos = ts.scrollPosition();
    if (e.key === "ArrowLeft") ts.scrollToPosition(pos - 10, false);
    else if (e.key === "ArrowRight") ts.scrollToPosition(pos + 10, false);
    else if (e.key === "+" || e.key === "-") {
      const r = ts.getVisibleLogicalRange(); if (!r) return;
      const span = (r.to - r.from) * (e.key === "+" ? 0.4 : -0.5);
      ts.setVisibleLogicalRange({ from: r.from + span / 2, to: r.to - span / 2 });
    } else return;
    e.preventDefault();
  });
}

const candle = (b) => ({ time: toSec(b.ts), open: b.open, high: b.high, low: b.low, close: b.close });
const volumeBar = (b) => ({ time: toSec(b.ts), value: b.volume, color: b.close >= b.open ? "rgba(38,166,154,.45)" : "rgba(239,83,80,.45)" });

// Follows next_cursor through [start, end) and returns every bar, oldest first.
async function fetchBars(symbol, tf, start, end) {
  const out = [];
  let cursor = null;
  do {
    const q = new URLSearchParams({ timeframe: tf, limit: String(PAGE_LIMIT) });
    if (start) q.set("start", start);
    if (end) q.set("end", end);
    if (cursor) q.set("cursor", cursor);
    const page = await api(`/bars/${encodeURIComponent(symbol)}?${q}`);
    for (const b of page.bars) out.push(b);
    cursor = page.next_cursor;
  } while (cursor);
  return out;
}

async function latestBar(symbol, tf) {
  try { return await api(`/bars/${encodeURIComponent(symbol)}/latest?timeframe=${tf}`); } catch (err) {
    if (err.status === 404) return null; throw err;
  }
}

function windowStart(endIso, tf) { return new Date(Date.parse(endIso) - WINDOW_BARS * tfSeconds(tf) * 1000).toISOString(); }

async function showSymbol(symbol) {
  if (!symbol) return;
  const t0 = performance.now();
  state.symbol = symbol.toUpperCase();
  ensureChart();
  $("chart-title").textContent = `${state.symbol} · ${state.timeframe}`;
  $("symbol-input").value = state.symbol;
  history.replaceState(null, "", `#${state.symbol}/${state.timeframe}`);
  banner(null);
  try {
    const known = state.instruments.find((i) => i.symbol === state.symbol);
    if (!known) {
      showEmpty(`Unknown symbol <b>${esc(state.symbol)}</b>. Pick one from the search box, or ingest it: <code>marketlake ingest synthetic ${esc(state.symbol)} --timeframe 1m --period 30d</code>`);
      return;
    }
    const pre = state.prefetch && state.prefetch.symbol === state.symbol && state.prefetch.tf === state.timeframe ? state.prefetch.last : null;
    state.prefetch = null;
    const last = (pre && await pre) || await latestBar(state.symbol, state.timeframe) || await latestBar(state.symbol, "1m");
    if (!last) { showEmpty(`No bars stored for ${esc(state.symbol)} yet. Load some with <code>marketlake ingest synthetic ${esc(state.symbol)} --period 30d -t 1m</code>.`); return; }
    const end = new Date(Date.parse(last.ts) + tfSeconds(state.timeframe) * 1000).toISOString();
    const bars = await fetchBars(state.symbol, state.timeframe, windowStart(end, state.timeframe), end);
    if (!bars.length) {
      showEmpty(`No ${state.timeframe} bars for ${esc(state.symbol)}. Roll them up with <code>marketlake aggregate ${esc(state.symbol)} --from 1m --to ${state.timeframe}</code> or pick another timeframe.`);
      return;
    }
    state.bars = bars; state.exhausted = false;
    drawBars();
    state.chart.timeScale().fitContent();
    $("chart-info").textContent = `${bars.length.toLocaleString()} bars`;
    updateKpis();
    await nextFrame();
    window.__ml.timings.chartDrawnMs = performance.now() - t0;
    window.__ml.timings.chartDrawnAt = performance.now();  // since navigation started
    loadQuality();
    loadCompare();
  } catch (err) { apiFailed(err); }
}

function drawBars() {
  $("chart-empty").hidden = true; $("chart").hidden = false;
  state.candles.setData(state.bars.map(candle));
  state.volume.setData(state.bars.map(volumeBar));
  $("chart").dataset.candles = String(state.bars.length);
}

function showEmpty(html) {
  state.bars = []; $("chart").dataset.candles = "0";
  if (state.candles) { state.candles.setData([]); state.volume.setData([]); }
  $("chart").hidden = true; const el = $("chart-empty"); el.hidden = false; el.innerHTML = html;
  updateKpis();
}

async function loadOlder() {
  if (!state.bars.length) return;
  state.loadingOlder = true;
  try {
    const end = state.bars[0].ts;
    const older = await fetchBars(state.symbol, state.timeframe, windowStart(end, state.timeframe), end);
    if (!older.length) { state.exhausted = true; return; }
    state.bars = older.concat(state.bars);
    const range = state.chart.timeScale().getVisibleLogicalRange();
    drawBars();
    if (range) state.chart.timeScale().setVisibleLogicalRange({ from: range.from + older.length, to: range.to + older.length });
    $("chart-info").textContent = `${state.bars.length.toLocaleString()} bars`;
  } catch (err) { apiFailed(err); } finally { state.loadingOlder = false; }
}

function nextFrame() { return new Promise((r) => requestAnimationFrame(() => r())); }

function apiFailed(err) {
  const status = err.status ? ` (HTTP ${err.status})` : "";
  banner(`${err.message}${status}`);
}

// ---------------------------------------------------------------- KPIs

function kpisFromBars(bars) {
  if (!bars.length) return {};
  const closes = bars.map((b) => b.close);
  const last = closes[closes.length - 1];
  let peak = -Infinity, mdd = 0, sum = 0, sum2 = 0, n = 0;
  for (let i = 0; i < closes.length; i++) {
    peak = Math.max(peak, closes[i]); mdd = Math.min(mdd, closes[i] / peak - 1);
    if (i) { const r = Math.log(closes[i] / closes[i - 1]); sum += r; sum2 += r * r; n++; }
  }
  const perYear = (365 * 86400) / tfSeconds(state.timeframe);
  const vol = n > 1 ? Math.sqrt((sum2 - (sum * sum) / n) / (n - 1)) * Math.sqrt(perYear) : null;
  return { last, change: last / closes[0] - 1, vol, mdd, volume: bars.reduce((a, b) => a + b.volume, 0) };
}

function updateKpis(extra = {}) {
  const k = { ...kpisFromBars(state.bars), ...state.kpiExtra, ...extra };
  state.kpiExtra = { ...state.kpiExtra, ...extra };
  const cls = (x) => (x == null ? "" : x >= 0 ? "up" : "down");
  const cards = [
    ["Last price", fmt(k.last, 2), "", "kpi-last"],
    ["Change", k.change == null ? "–" : `${fmt(k.change * 100)} %`, cls(k.change), "kpi-change"],
    ["Volatility (ann.)", k.vol == null ? "–" : `${fmt(k.vol * 100, 1)} %`, "", "kpi-vol"],
    ["Max drawdown", k.mdd == null ? "–" : `${fmt(k.mdd * 100, 1)} %`, k.mdd ? "down" : "", "kpi-mdd"],
    ["Volume", fmt(k.volume, 0), "", "kpi-volume"],
    ["Quality score", k.quality == null ? "–" : `${fmt(k.quality * 100, 1)} %`, "", "kpi-quality"],
  ];
  $("kpis").innerHTML = cards.map(([label, value, c, id]) => `<div class="kpi"><div class="label">${label}</div><div class="value ${c}" id="${id}">${value}</div></div>`).join("");
}

// ---------------------------------------------------------------- quality

async function loadQuality() {
  const table = $("quality");
  try {
    const reports = await api(`/quality/reports?symbol=${encodeURIComponent(state.symbol)}&limit=1`);
    const list = Array.isArray(reports) ? reports : reports.reports || [];
    if (!list.length) { table.innerHTML = `<tr><td>No quality report yet: run <code>marketlake validate ${esc(state.symbol)}</code>.</td></tr>`; return; }
    const report = await api(`/quality/reports/${encodeURIComponent(list[0].id)}`);
    const findings = (report.findings || []).filter((f) => f.symbol === state.symbol);
    const score = report.summary && report.summary.scores ? report.summary.scores[state.symbol] : undefined;
    if (score != null) updateKpis({ quality: typeof score === "object" ? score.score : score });
    $("quality-state").textContent = `report ${list[0].id}: ${findings.length} findings`;
    table.innerHTML = "<tr><th>Rule</th><th>Severity</th><th>When</th><th>Message</th></tr>" + findings.slice(0, 50).map((f) =>
      `<tr><td>${esc(f.rule)}</td><td>${esc(f.severity)}</td><td>${esc(f.ts || "")}</td><td>${esc(f.message)}</td></tr>`).join("");
    const markers = findings.filter((f) => f.ts && f.timeframe === state.timeframe).slice(0, 200).map((f) => ({
      time: toSec(f.ts), position: "aboveBar", color: f.severity === "error" ? "#ef5350" : "#f5a623", shape: "circle", text: f.rule,
    }));
    state.markers.setMarkers(markers.sort((a, b) => a.time - b.time));
  } catch (err) {
    table.innerHTML = `<tr><td>Quality reports unavailable: ${esc(err.message)}</td></tr>`;
  }
}

// ---------------------------------------------------------------- comparison

function loadCompare() {
  const pick = $("compare-pick");
  if (!pick.childElementCount) {
    pick.innerHTML = state.instruments.slice(0, 12).map((i, n) =>
      `<label><input type="checkbox" value="${esc(i.symbol)}" ${n < 3 ? "checked" : ""}> ${esc(i.symbol)}</label>`).join("");
    pick.addEventListener("change", drawCompare);
  }
  drawCompare();
}

const PALETTE = ["#4f9dff", "#f5a623", "#26a69a", "#ef5350", "#b57bff", "#e0e05a", "#5ad1e0"];

async function drawCompare() {
  if (!state.compare) {
    state.compare = LC.createChart($("compare-chart"), { autoSize: true, layout: { background: { color: "transparent" }, textColor: "#d8dee6" }, grid: { vertLines: { visible: false }, horzLines: { color: "#1e252d" } }, timeScale: { timeVisible: true } });
  }
  const picked = [...document.querySelectorAll("#compare-pick input:checked")].map((i) => i.value);
  for (const [sym, series] of state.compareSeries) if (!picked.includes(sym)) { state.compare.removeSeries(series); state.compareSeries.delete(sym); }
  const tf = "1h";
  await Promise.all(picked.map(async (sym, n) => {
    try {
      const last = await latestBar(sym, tf); if (!last) return;
      const bars = await fetchBars(sym, tf, windowStart(last.ts, tf), null);
      if (!bars.length) return;
      const base = bars[0].close;
      let series = state.compareSeries.get(sym);
      if (!series) { series = state.compare.addSeries(LC.LineSeries, { color: PALETTE[n % PALETTE.length], lineWidth: 2, title: sym }); state.compareSeries.set(sym, series); }
      series.setData(bars.map((b) => ({ time: toSec(b.ts), value: (100 * b.close) / base })));
    } catch (err) { apiFailed(err); }
  }));
  state.compare.timeScale().fitContent();
}

// ---------------------------------------------------------------- live prices (SSE)

function toggleLive(on) {
  if (state.live) { state.live.close(); state.live = null; }
  if (!on) { setConn("idle"); return; }
  connectLive();
}

function connectLive() {
  const src = new EventSource(`${API}/stream/live?symbols=${encodeURIComponent(state.symbol)}`);
  state.live = src;
  setConn("connecting…");
  src.onopen = () => setConn("live", "ok");
  src.onerror = () => setConn("reconnecting…", "bad");  // EventSource retries by itself
  src.addEventListener("trades", (e) => applyLive("trades", JSON.parse(e.data), performance.now()));
  src.addEventListener("bar", (e) => applyLive("bar", JSON.parse(e.data), performance.now()));
}

// Live and replay events as a list of updates {ts, price|open/high/low/close, size|volume, final}.
function liveUpdates(kind, payload) {
  if (kind === "trades") return (payload.trades || []).map((t) => ({ ts: t.ts, price: t.price, size: t.size }));
  if (payload.bars) return payload.bars.map((b) => ({ ...b, final: payload.final }));
  if (payload.bar) return [{ ts: payload.ts, ...payload.bar, final: true }];
  return [];
}

function applyLive(kind, payload, receivedAt = performance.now()) {
  if (payload.symbol && payload.symbol !== state.symbol) return;
  if (!state.candles) return;
  const tfSec = tfSeconds(state.timeframe);
  let changed = false;
  for (const u of liveUpdates(kind, payload)) {
    const price = u.price != null ? u.price : u.close;
    if (price == null) continue;
    const t = Math.floor(toSec(u.ts) / tfSec) * tfSec;
    const last = state.bars[state.bars.length - 1];
    const exact = u.open != null && tfSeconds("1m") === tfSec;
    if (last && toSec(last.ts) === t) {
      if (exact) Object.assign(last, { open: u.open, high: u.high, low: u.low, close: u.close, volume: u.volume });
      else {
        last.high = Math.max(last.high, u.high != null ? u.high : price);
        last.low = Math.min(last.low, u.low != null ? u.low : price);
        last.close = price;
        if (u.size != null) last.volume += u.size; else if (u.final && u.volume != null) last.volume += u.volume;
      }
    } else if (!last || t > toSec(last.ts)) {
      state.bars.push({ ts: new Date(t * 1000).toISOString(), open: u.open != null ? u.open : price,
        high: u.high != null ? u.high : price, low: u.low != null ? u.low : price, close: price,
        volume: u.volume != null ? u.volume : u.size || 0 });
    } else continue;
    changed = true;
  }
  if (!changed) return;
  const bar = state.bars[state.bars.length - 1];
  state.candles.update(candle(bar));
  state.volume.update(volumeBar(bar));
  $("chart").dataset.candles = String(state.bars.length);
  updateKpis();
  const timings = window.__ml.timings;
  timings.lastLivePrice = bar.close;
  timings.lastLiveAt = performance.now();
  // On screen: the chart paints in the next animation frame, so this callback runs after it.
  requestAnimationFrame(() => {
    timings.lastLivePaintedAt = performance.now();
    timings.liveUpdateMs = timings.lastLivePaintedAt - receivedAt;
  });
}

// ---------------------------------------------------------------- alerts

async function loadAlerts() {
  try {
    const alerts = await api("/alerts?limit=50");
    const list = Array.isArray(alerts) ? alerts : alerts.alerts || [];
    $("alert-log").innerHTML = list.map(alertItem).join("") || "<li class=\"muted\">No alerts yet.</li>";
    const rules = await api("/alerts/rules");
    const rl = Array.isArray(rules) ? rules : rules.rules || [];
    $("alert-rules").innerHTML = rl.map(ruleItem).join("") || "<li class=\"muted\">No rules: add some in config/alert_rules.yml or POST /api/v1/alerts/rules.</li>";
  } catch (err) {
    $("alert-log").innerHTML = `<li class="muted">Alerts unavailable: ${esc(err.message)}</li>`;
  }
  connectAlerts();
}

function ruleItem(r) {
  const rest = Object.entries(r).filter(([k]) => !["id", "symbol", "kind", "source"].includes(k)).map(([k, v]) => `${k}=${v}`).join(" ");
  return `<li><b>${esc(r.id || "")}</b> ${esc(r.symbol || "*")} ${esc(r.kind || "")} <span class="muted">${esc(rest)}</span></li>`;
}

function alertItem(a, fresh) {
  const when = a.ts ? new Date(a.ts).toISOString().replace("T", " ").slice(0, 19) : "";
  return `<li class="${fresh ? "new" : ""}" data-alert-id="${esc(a.id || "")}"><b>${esc(a.symbol || "")}</b> ${esc(a.message || a.kind || "")} <span class="muted">${when}</span></li>`;
}

function connectAlerts() {
  if (state.alertsSource) return;
  const src = new EventSource(`${API}/alerts/stream`);
  state.alertsSource = src;
  src.onopen = () => { $("alerts-state").textContent = "live"; };
  src.onerror = () => { $("alerts-state").textContent = "reconnecting…"; };
  const onAlert = (e) => {
    const a = JSON.parse(e.data);
    const log = $("alert-log");
    if (log.querySelector(".muted")) log.innerHTML = "";
    if (a.id && log.querySelector(`[data-alert-id="${CSS.escape(a.id)}"]`)) return;
    log.insertAdjacentHTML("afterbegin", alertItem(a, true));
  };
  src.addEventListener("alert", onAlert);
  state.onAlert = onAlert;
}

// ---------------------------------------------------------------- portfolio

async function loadPortfolio() {
  const el = $("portfolio");
  try {
    const p = await api("/portfolio");
    const positions = p.positions || [];
    if (!positions.length) { el.innerHTML = "<p class=\"muted\">No positions: describe them in config/portfolio.yml.</p>"; return; }
    el.innerHTML = `<table class="stats" id="portfolio-table"><tr><th>Symbol</th><th>Qty</th><th>Value</th><th>P&amp;L</th></tr>${positions.map((x) =>
      `<tr><td>${esc(x.symbol)}</td><td>${fmt(x.quantity, 4)}</td><td>${fmt(x.market_value)}</td><td class="${x.unrealized_pnl >= 0 ? "up" : "down"}">${fmt(x.unrealized_pnl)}</td></tr>`).join("")}
      <tr><th>Total</th><th></th><th>${fmt(p.market_value != null ? p.market_value : p.total_market_value)}</th><th>${fmt(p.unrealized_pnl != null ? p.unrealized_pnl : p.total_unrealized_pnl)}</th></tr></table>`;
  } catch (err) { el.innerHTML = `<p class="muted">Portfolio unavailable: ${esc(err.message)}</p>`; }
}

// ---------------------------------------------------------------- replay

function startReplay(e) {
  e.preventDefault();
  if (state.replay) { state.replay.close(); state.replay = null; }
  const startInput = $("replay-start").value;
  const start = startInput ? new Date(startInput + "Z").toISOString() : (state.bars[Math.max(0, state.bars.length - 300)] || {}).ts;
  if (!start) { banner("Pick a symbol with stored bars before replaying."); return; }
  const q = new URLSearchParams({ timeframe: state.timeframe, start, speed: $("replay-speed").value });
  state.bars = [];
  state.candles.setData([]); state.volume.setData([]);
  const src = new EventSource(`${API}/replay/${encodeURIComponent(state.symbol)}?${q}`);
  state.replay = src; state.replayPaused = false;
  $("replay-state").textContent = "playing"; $("replay-pause").disabled = false;
  state.replayQueue = [];
  src.addEventListener("bar", (ev) => {
    const payload = JSON.parse(ev.data);
    if (state.replayPaused) state.replayQueue.push(payload); else applyLive("bar", payload);
  });
  src.addEventListener("alert", (ev) => state.onAlert && state.onAlert(ev));
  src.addEventListener("end", () => { src.close(); $("replay-state").textContent = "finished"; $("replay-pause").disabled = true; });
  src.onerror = () => { $("replay-state").textContent = "stopped"; };
}

function pauseReplay() {
  state.replayPaused = !state.replayPaused;
  if (!state.replayPaused) { for (const p of state.replayQueue.splice(0)) applyLive("bar", p); }
  $("replay-pause").textContent = state.replayPaused ? "Resume" : "Pause";
  $("replay-state").textContent = state.replayPaused ? "paused" : "playing";
}

// ---------------------------------------------------------------- backtests

function parseParams(text) {
  const params = {};
  for (const part of text.split(/[\s,]+/).filter(Boolean)) {
    const [k, v] = part.split("=");
    if (!k || v === undefined) throw new Error(`parameter "${part}" must look like name=value`);
    params[k] = Number.isNaN(Number(v)) ? v : Number(v);
  }
  return params;
}

const PORTFOLIO_STRATEGIES = ["equal_weight", "inverse_volatility", "momentum_top_n", "fixed_mix"];

async function runBacktest(e) {
  e.preventDefault();
  let params;
  try { params = parseParams($("bt-params").value); } catch (err) { banner(err.message); return; }
  $("bt-state").textContent = "running…";
  try {
    const listed = $("bt-symbols").value.split(/[\s,]+/).map((s) => s.trim().toUpperCase()).filter(Boolean);
    const symbols = listed.length ? listed : [state.symbol];
    const strategy = $("bt-strategy").value;
    const portfolio = PORTFOLIO_STRATEGIES.includes(strategy) || symbols.length > 1;
    if (PORTFOLIO_STRATEGIES.includes(strategy) && $("bt-params").value.trim() === "fast=10 slow=30") params = {};
    const body = { strategy, symbols, timeframe: state.timeframe, params };
    if (portfolio) Object.assign(body, { kind: "portfolio", rebalance: "monthly", fractional: true });
    if (state.bars.length) { body.start = state.bars[0].ts; body.end = new Date(toSec(state.bars[state.bars.length - 1].ts) * 1000 + tfSeconds(state.timeframe) * 1000).toISOString(); }
    let result;
    try {
      result = await api("/backtests", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    } catch (err) {
      if (err.status === 401 || err.status === 403) throw new ApiError(err.status, { detail: "Running a backtest stores its result, so it needs an API key with the write scope: create one with `marketlake keys create dashboard --scope read,write` and open the dashboard as /#key=<the key>" });
      throw err;
    }
    for (let i = 0; i < 120 && result.status && !["succeeded", "failed", "done", "finished"].includes(result.status); i++) {
      await new Promise((r) => setTimeout(r, 250));
      result = await api(`/backtests/${encodeURIComponent(result.id)}`);
    }
    if (result.status === "failed") throw new ApiError(422, { detail: result.error || "backtest failed" });
    drawBacktest(result);
    $("bt-state").textContent = `run ${result.id || ""}`;
  } catch (err) { $("bt-state").textContent = "failed"; apiFailed(err); }
}

function drawBacktest(result) {
  if (!state.bt) {
    state.bt = LC.createChart($("bt-chart"), { autoSize: true, layout: { background: { color: "transparent" }, textColor: "#d8dee6" }, grid: { vertLines: { visible: false }, horzLines: { color: "#1e252d" } }, timeScale: { timeVisible: true } });
    state.btSeries = state.bt.addSeries(LC.AreaSeries, { lineColor: "#4f9dff", topColor: "rgba(79,157,255,.3)", bottomColor: "rgba(79,157,255,0)" });
  }
  const points = (result.equity || []).map(([ts, value]) => ({ time: toSec(ts), value }));
  $("bt-hint").hidden = true;
  state.btSeries.setData(points);
  state.bt.timeScale().fitContent();
  $("bt-chart").dataset.points = String(points.length);
  const stats = result.stats || {};
  $("bt-stats").innerHTML = Object.entries(stats).filter(([, v]) => typeof v !== "object").map(([k, v]) => `<tr><td>${esc(k.replace(/_/g, " "))}</td><td>${typeof v === "number" ? fmt(v, 4) : esc(v)}</td></tr>`).join("");
  const weights = stats.weights || null;
  $("bt-weights").hidden = !weights;
  $("bt-weights").innerHTML = weights ? `<tr><th>symbol</th><th>final weight</th></tr>` + Object.entries(weights).map(([s, w]) => `<tr><td>${esc(s)}</td><td>${fmt(w * 100, 2)} %</td></tr>`).join("") : "";
  const trades = result.trades || [];
  const marks = [];
  for (const t of trades) {
    if (t.entry_time) marks.push({ time: toSec(t.entry_time), position: "belowBar", color: "#26a69a", shape: "arrowUp", text: "buy" });
    if (t.exit_time) marks.push({ time: toSec(t.exit_time), position: "aboveBar", color: "#ef5350", shape: "arrowDown", text: "sell" });
  }
  state.markers.setMarkers(marks.sort((a, b) => a.time - b.time).slice(0, 500));
}

// ---------------------------------------------------------------- start-up

// `#key=…&symbol=BTCUSDT&live=1` (as `marketlake demo` prints it when it streams): the
// symbol to show and whether to turn Live on; read before apiKey() clears the fragment.
function linkOptions() {
  const symbol = /(?:^#|&)symbol=([A-Za-z0-9._\-]+)/.exec(location.hash);
  return { symbol: symbol ? symbol[1].toUpperCase() : null, live: /(?:^#|&)live=1(?:&|$)/.test(location.hash) };
}

async function main() {
  const link = linkOptions();
  state.key = apiKey();
  if (!LC) { banner("The chart library is missing: run `make install` (it copies lightweight-charts into the package)."); return; }
  buildTimeframes();
  updateKpis();
  $("search").addEventListener("submit", (e) => { e.preventDefault(); const s = $("symbol-input").value.trim(); if (s) showSymbol(s); });
  $("live-toggle").addEventListener("change", (e) => toggleLive(e.target.checked));
  $("replay-form").addEventListener("submit", startReplay);
  $("replay-pause").addEventListener("click", pauseReplay);
  $("bt-form").addEventListener("submit", runBacktest);
  const [pathSymbol, hashTf] = decodeURIComponent(location.hash.slice(1)).split("/");
  const hashSymbol = link.symbol || pathSymbol;
  if (hashTf && TIMEFRAMES.includes(hashTf)) { state.timeframe = hashTf; buildTimeframesState(); }
  // Ask for the newest bar of the linked symbol while the instrument list loads.
  if (hashSymbol) state.prefetch = { symbol: hashSymbol.toUpperCase(), tf: state.timeframe, last: latestBar(hashSymbol.toUpperCase(), state.timeframe).catch(() => null) };
  let instruments;
  try { instruments = await loadInstruments(); } catch (err) { apiFailed(err); showEmpty("The API did not answer; start it with <code>marketlake serve</code> and reload."); return; }
  if (!instruments.length) {
    showEmpty("The store is empty. Load demo data with <code>marketlake demo</code> or <code>marketlake ingest synthetic AAPL --timeframe 1m --period 30d</code>, then reload.");
  } else {
    await showSymbol(hashSymbol || instruments[0].symbol);
    if (link.live) { $("live-toggle").checked = true; toggleLive(true); }
  }
  // The side panels load after the main chart is on screen.
  loadAlerts(); loadPortfolio();
}

function buildTimeframesState() {
  document.querySelectorAll("#timeframes button").forEach((b) => b.setAttribute("aria-checked", String(b.dataset.tf === state.timeframe)));
}

main();
