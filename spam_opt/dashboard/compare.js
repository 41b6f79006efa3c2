// The comparison page's behaviour. Each section's curves come as JSON (compare.py) and are drawn here, one
// plotly chart per panel, from the page's controls: x axis (step, tokens, time), EMA smoothing, a group's
// seeds as mean and min..max band (or each seed), a filter on names and settings, the legend's hidden runs,
// and a step range shared by the panels of a section (a zoom in one zooms all). Tables sort on a click on a
// header, show one row per run or per group, and export as CSV; each run's detail plot is drawn only when its
// <details> is first opened (twenty heat maps drawn at load would make the page slow).
"use strict";

const X_TITLES = {step: "step", tokens: "tokens seen", time: "wall-clock time (s)"};
const state = {x: "step", smoothing: 0, bands: true, seeds: false, filter: ""};
const sections = [];
const SAVED = "spam-dashboard:" + location.pathname + ":view";

// The view (controls, zoom) survives a reload of the page (--watch re-renders it every few seconds).
function saveView() {
  try {
    sessionStorage.setItem(SAVED, JSON.stringify({state, ranges: sections.map((s) => s.range)}));
  } catch (e) { /* not kept */ }
}

function savedView() {
  try { return JSON.parse(sessionStorage.getItem(SAVED)) || {}; } catch (e) { return {}; }
}

// -- numbers ---------------------------------------------------------------------------------------------

function decodeSteps(code) {
  if (Array.isArray(code)) return code;
  return Array.from({length: code.count}, (_, i) => code.start + i * code.stride);
}

// TensorBoard's smoothing: an exponential moving average, debiased so that it starts at the first value.
function ema(values, weight) {
  if (weight <= 0) return values.slice();
  let last = 0, count = 0;
  return values.map((v) => {
    if (!Number.isFinite(v)) return v;
    last = last * weight + (1 - weight) * v;
    count += 1;
    return last / (1 - Math.pow(weight, count));
  });
}

// The value at `step` of a series known at `steps`: linear between known points, extended along the
// nearest segment outside them.
function interpolate(steps, values, step) {
  const n = steps.length;
  if (n === 1) return steps[0] ? values[0] * step / steps[0] : values[0];
  let hi = 1;
  while (hi < n - 1 && steps[hi] < step) hi += 1;
  const lo = hi - 1, span = steps[hi] - steps[lo];
  return span ? values[lo] + (values[hi] - values[lo]) * (step - steps[lo]) / span : values[lo];
}

// x of each step on the chosen axis; null when the run does not tell (no tokens or time known).
function toX(run, steps) {
  if (state.x === "step") return steps;
  const clock = run.clocks[state.x];
  if (!clock) return null;
  if (clock.perStep) return steps.map((s) => s * clock.perStep);
  const [cs, cv] = [decodeSteps(clock[0]), clock[1]];
  return steps.map((s) => interpolate(cs, cv, s));
}

// The points of (x, ys) inside `range` (one more each side, so lines reach the edges), merged into at most
// `max` bins of consecutive points; per bin: its last x and, per series, `reduce` of its values.
function binned(x, ys, range, max, reducers) {
  let from = 0, to = x.length;
  if (range) {
    while (from < x.length && x[from] < range[0]) from += 1;
    while (to > 0 && x[to - 1] > range[1]) to -= 1;
    from = Math.max(from - 1, 0);
    to = Math.min(to + 1, x.length);
  }
  const count = Math.max(to - from, 0), width = Math.max(Math.ceil(count / max), 1);
  const outX = [], outYs = ys.map(() => []);
  for (let start = from; start < to; start += width) {
    const end = Math.min(start + width, to);
    outX.push(x[end - 1]);
    ys.forEach((y, k) => {
      const part = y.slice(start, end).filter(Number.isFinite);
      const r = reducers[k];
      outYs[k].push(!part.length ? null : r === "max" ? Math.max(...part) : r === "min" ? Math.min(...part)
        : part[part.length - 1]);
    });
  }
  return [outX, outYs];
}

// -- what a section draws -----------------------------------------------------------------------------------

function matchesFilter(run) {
  const words = state.filter.trim().toLowerCase().split(/\s+/).filter(Boolean);
  return words.every((word) => {
    const eq = word.indexOf("=");
    if (eq > 0) {
      const key = word.slice(0, eq), want = word.slice(eq + 1);
      const have = Object.entries(run.config).find(([k]) => k.toLowerCase() === key);
      if (!have) return false;
      const v = String(have[1]).toLowerCase();
      return v === want || (want !== "" && !Number.isNaN(Number(want)) && Number(v) === Number(want));
    }
    return [run.name, run.group, ...Object.values(run.config)].some((t) => String(t).toLowerCase().includes(word));
  });
}

function visibleRuns(section) {
  return section.data.runs.filter((r) => matchesFilter(r) && !section.hidden.has(r.group));
}

// A group's seeds on their common steps (each seed's last value at or before each step): mean, min, max.
function aggregate(members, key, smoothing) {
  const series = members.map((r) => {
    const [code, values] = r.curves[key];
    return [decodeSteps(code), ema(values, smoothing)];
  });
  const first = Math.max(...series.map(([s]) => s[0])), last = Math.min(...series.map(([s]) => s[s.length - 1]));
  const steps = [...new Set(series.flatMap(([s]) => s))].filter((s) => s >= first && s <= last).sort((a, b) => a - b);
  const at = series.map(() => 0);
  const mean = [], low = [], high = [];
  for (const step of steps) {
    const values = series.map(([s, v], k) => {
      while (at[k] + 1 < s.length && s[at[k] + 1] <= step) at[k] += 1;
      return v[at[k]];
    }).filter(Number.isFinite);
    mean.push(values.length ? values.reduce((a, b) => a + b, 0) / values.length : null);
    low.push(values.length ? Math.min(...values) : null);
    high.push(values.length ? Math.max(...values) : null);
  }
  return {steps, mean, low, high};
}

// A "#rrggbb" colour made see-through (a band's fill: the curves inside it stay visible).
function translucent(colour, alpha) {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(colour);
  return m ? `rgba(${parseInt(m[1], 16)},${parseInt(m[2], 16)},${parseInt(m[3], 16)},${alpha})` : colour;
}

function hover(name) {
  return `${name.replace(/</g, "&lt;")}: %{y:.5g}<extra></extra>`;
}

function line(name, colour, dash, x, y, extra) {
  return Object.assign({type: "scatter", mode: "lines", name, x, y, hovertemplate: hover(name), meta: "run",
    line: {color: colour, dash, width: 1.5}}, extra);
}

// The traces of one curve: smoothed over a faint raw one when smoothing is on. `reduce` bins the raw curve.
function curveTraces(name, colour, dash, x, raw, section, extra) {
  const max = section.data.maxPoints, range = section.range;
  if (state.smoothing <= 0) {
    const [bx, [by]] = binned(x, [raw], range, max, ["max"]);
    return [line(name, colour, dash, bx, by, extra)];
  }
  const [bx, [byRaw, bySmooth]] = binned(x, [raw, ema(raw, state.smoothing)], range, max, ["max", "last"]);
  return [line(name, colour, dash, bx, byRaw, {opacity: 0.25, hoverinfo: "skip", hovertemplate: null,
    meta: "raw"}), line(name, colour, dash, bx, bySmooth, Object.assign({}, extra, {meta: "smoothed"}))];
}

function groupTraces(group, members, key, section, points) {
  const colour = members[0].colour, max = section.data.maxPoints, range = section.range;
  const agg = aggregate(members, key, state.smoothing);
  const xs = members.map((r) => toX(r, agg.steps));
  if (xs.some((x) => x === null)) return null;
  const x = agg.steps.map((_, i) => xs.reduce((a, xr) => a + xr[i], 0) / xs.length);
  const ys = [agg.high, agg.low, agg.mean];
  const reducers = ["max", "min", state.smoothing > 0 ? "last" : "max"];
  if (state.smoothing > 0) {
    ys.push(aggregate(members, key, 0).mean);
    reducers.push("max");
  }
  const [bx, [high, low, mean, rawMean]] = binned(x, ys, range, max, reducers);
  const name = `${group} (mean of ${members.length})`;
  const traces = [
    {type: "scatter", mode: "lines", x: bx, y: high, line: {width: 0, color: colour}, hoverinfo: "skip",
      name: `${group} max`, meta: "band-high", legendgroup: group},
    {type: "scatter", mode: "lines", x: bx, y: low, line: {width: 0, color: colour}, fill: "tonexty",
      fillcolor: translucent(colour, 0.25), hoverinfo: "skip", name: `${group} min`, meta: "band-low", legendgroup: group},
  ];
  if (rawMean) {
    traces.push(line(name, colour, "solid", bx, rawMean, {opacity: 0.25, hoverinfo: "skip", hovertemplate: null,
      meta: "raw"}));
  }
  traces.push(line(name, colour, "solid", bx, mean, Object.assign({meta: "mean", line: {color: colour, width: 2.5}},
    points)));
  return traces;
}

function markerTraces(run, key, section) {
  const traces = [];
  if (key === "loss" && run.spikes) {
    const [steps, y, text] = run.spikes;
    const x = toX(run, steps);
    traces.push({type: "scatter", mode: "markers", x, y, text: text.map((t) => `${run.name}<br>${t}`),
      hoverinfo: "text", name: `${run.name} spikes`, meta: "spikes",
      marker: {symbol: "x", size: 8, color: run.colour}});
  }
  if (key === "lr" && run.resets) {
    const [steps, y] = run.resets;
    traces.push({type: "scatter", mode: "markers", x: toX(run, steps), y, name: `${run.name} resets`,
      meta: "resets", hovertemplate: `${run.name}: momentum reset<extra></extra>`,
      marker: {symbol: "triangle-down", size: 8, color: run.colour}});
  }
  return traces;
}

function panelTraces(section, key) {
  const runs = visibleRuns(section).filter((r) => r.curves[key]);
  const points = key === "eval_loss" ? {mode: "lines+markers", marker: {size: 4}} : {};
  const groups = new Map();
  runs.forEach((r) => groups.set(r.group, [...(groups.get(r.group) || []), r]));
  const traces = [];
  const missing = [];
  for (const [group, members] of groups) {
    const asBand = state.bands && members.length > 1;
    if (asBand) {
      const band = groupTraces(group, members, key, section, points);
      if (band) traces.push(...band); else missing.push(group);
    }
    if (!asBand || state.seeds) {
      for (const run of members) {
        const [code, values] = run.curves[key];
        const x = toX(run, decodeSteps(code));
        if (x === null) { missing.push(run.name); continue; }
        const seed = Object.assign(asBand ? {opacity: 0.6, meta: "seed"} : {}, points);
        traces.push(...curveTraces(run.name, run.colour, run.dash, x, values, section, seed));
      }
    }
    for (const run of members) if (toX(run, [1]) !== null) traces.push(...markerTraces(run, key, section));
  }
  return [traces, [...new Set(missing)]];
}

// -- drawing ---------------------------------------------------------------------------------------------

function draw(section) {
  saveView();
  section.drawing = true;
  const notes = new Set(), drawn = [];
  for (const panel of section.panels) {
    const [traces, missing] = panelTraces(section, panel.key);
    missing.forEach((m) => notes.add(m));
    const xaxis = {title: {text: X_TITLES[state.x]}, zeroline: false};
    if (section.range) xaxis.range = section.range.slice(); else xaxis.autorange = true;
    const layout = {title: {text: panel.title, x: 0, font: {size: 14}}, height: 300, template: "plotly_white",
      margin: {l: 60, r: 20, t: 40, b: 45}, showlegend: false, hovermode: "x unified", xaxis,
      yaxis: {type: panel.log ? "log" : "linear"}, plot_bgcolor: "white"};
    drawn.push(Plotly.react(panel.div, traces, layout, {responsive: true, displaylogo: false}));
  }
  section.notice.textContent = notes.size ? `Not drawn on this x axis (no ${state.x === "tokens" ? "tokens" :
    "time"} known): ${[...notes].join(", ")}` : "";
  section.drawing = false;
  return Promise.all(drawn);
}

function onZoom(section, event) {
  if (section.drawing) return;
  let range = null;
  if (Array.isArray(event["xaxis.range"])) range = event["xaxis.range"];
  else if ("xaxis.range[0]" in event) range = [event["xaxis.range[0]"], event["xaxis.range[1]"]];
  else if (!event["xaxis.autorange"]) return;  // a change of y alone
  section.range = range && range.map(Number);
  draw(section);
}

function legend(section) {
  section.legend.replaceChildren();
  const groups = [...new Map(section.data.runs.map((r) => [r.group, r.colour])).entries()];
  for (const [group, colour] of groups) {
    const item = document.createElement("button");
    item.className = "legend-item";
    item.innerHTML = `<span class="swatch" style="background:${colour}"></span>`;
    item.append(group);
    item.title = "click: hide or show; double-click: only this";
    item.classList.toggle("off", section.hidden.has(group));
    item.addEventListener("click", () => {
      if (section.hidden.has(group)) section.hidden.delete(group); else section.hidden.add(group);
      legend(section);
      draw(section);
    });
    item.addEventListener("dblclick", () => {
      section.hidden = new Set(groups.map(([g]) => g).filter((g) => g !== group));
      legend(section);
      draw(section);
    });
    section.legend.append(item);
  }
}

// -- tables ----------------------------------------------------------------------------------------------

function sortTable(table, th, column) {
  const direction = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
  table.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", direction);
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const key = (row) => row.cells[column].dataset.sort;
  const numeric = rows.every((r) => key(r) === "" || !Number.isNaN(Number(key(r))));
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");  // missing values last, either way
    const order = numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, {numeric: true});
    return direction === "ascending" ? order : -order;
  });
  rows.forEach((r) => body.appendChild(r));
}

function sortable(table) {
  table.querySelectorAll("th").forEach((th, column) => {
    th.addEventListener("click", () => sortTable(table, th, column));
  });
}

function significant(v, digits) {
  return Number(v.toPrecision(digits)).toLocaleString("en-US", {maximumFractionDigits: 12});
}

// One row per group of the visible runs: numbers as mean ± sample standard deviation (n - 1) over the runs
// that have them, with n; text columns as their distinct values.
function groupTable(section) {
  const headers = Array.from(section.table.tHead.rows[0].cells).map((c) => c.textContent);
  const groupColumn = headers.indexOf("group");
  const rows = Array.from(section.table.tBodies[0].rows).filter((r) => !r.hidden);
  const groups = new Map();
  rows.forEach((r) => {
    const g = groupColumn >= 0 ? r.cells[groupColumn].textContent : r.cells[0].textContent;
    groups.set(g, [...(groups.get(g) || []), r]);
  });
  const columns = headers.map((h, j) => j).filter((j) => j !== 0 && j !== groupColumn);
  const head = "<tr><th>group</th><th>runs</th>" + columns.map((j) => `<th>${headers[j]}</th>`).join("") + "</tr>";
  const body = [...groups.entries()].map(([group, members]) => {
    const colour = members[0].cells[0].querySelector(".swatch").style.background;
    const cells = columns.map((j) => {
      const keys = members.map((r) => r.cells[j].dataset.sort).filter((k) => k !== "" && k !== undefined);
      if (keys.length && keys.every((k) => !Number.isNaN(Number(k)))) {
        const v = keys.map(Number), n = v.length, mean = v.reduce((a, b) => a + b, 0) / n;
        const std = n > 1 ? Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1)) : null;
        const text = `${significant(mean, 5)}` + (std === null ? "" : ` ± ${significant(std, 2)}`) + ` (n=${n})`;
        return `<td data-sort="${mean}" data-std="${std === null ? "" : std}" data-n="${n}">${text}</td>`;
      }
      const texts = [...new Set(members.map((r) => r.cells[j].textContent))];
      const text = texts.join(" / ").replace(/&/g, "&amp;").replace(/</g, "&lt;");
      return `<td data-sort="${texts.length === 1 && keys.length ? text : ""}">${text}</td>`;
    });
    const name = group.replace(/&/g, "&amp;").replace(/</g, "&lt;");
    return `<tr><td data-sort="${name}"><span class="swatch" style="background:${colour}"></span>${name}</td>` +
      `<td data-sort="${members.length}">${members.length}</td>${cells.join("")}</tr>`;
  });
  section.grouped.innerHTML = `<thead>${head}</thead><tbody>${body.join("")}</tbody>`;
  sortable(section.grouped);
}

function applyFilter(section) {
  Array.from(section.table.tBodies[0].rows).forEach((row) => {
    const run = section.data.runs[Number(row.dataset.run)];
    row.hidden = !matchesFilter(run);
  });
  groupTable(section);
}

function csvField(text) {
  const t = text === "–" ? "" : text;
  return /[",\n]/.test(t) ? `"${t.replace(/"/g, '""')}"` : t;
}

// The table as shown (visible rows, in their order, cells as their text; "–" as empty) in CSV.
function tableCsv(table) {
  const rows = [table.tHead.rows[0], ...Array.from(table.tBodies[0].rows).filter((r) => !r.hidden)];
  return rows.map((r) => Array.from(r.cells).map((c) => csvField(c.textContent.trim())).join(",")).join("\n") + "\n";
}

function saveFile(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], {type}));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// -- set up ----------------------------------------------------------------------------------------------

function panelHead(section, panel) {
  const head = document.createElement("div");
  head.className = "panel-head";
  const log = document.createElement("label");
  log.innerHTML = `<input type="checkbox" class="log-y"${panel.log ? " checked" : ""}> log scale`;
  log.querySelector("input").addEventListener("change", (e) => { panel.log = e.target.checked; draw(section); });
  const png = document.createElement("button");
  png.className = "png";
  png.textContent = "PNG";
  png.title = "save this panel as a PNG";
  png.addEventListener("click", () => Plotly.downloadImage(panel.div, {format: "png", filename: panel.key,
    width: panel.div.clientWidth, height: 300}));
  head.append(log, png);
  return head;
}

function setUp(element, number) {
  const data = JSON.parse(element.querySelector("script.section-data").textContent);
  const section = {data, range: (saved.ranges || [])[number] || null, hidden: new Set(), drawing: false, panels: [],
    table: element.querySelector("table.runs.per-run"), grouped: element.querySelector("table.runs.per-group"),
    legend: element.querySelector(".legend"), notice: element.querySelector(".notice")};
  const holder = element.querySelector(".panels");
  for (const p of data.panels) {
    const box = document.createElement("div");
    box.className = "panel";
    const div = document.createElement("div");
    div.className = "panel-plot";
    div.dataset.key = p.key;
    const panel = {key: p.key, title: p.title, log: p.log, div};
    box.append(panelHead(section, panel), div);
    holder.append(box);
    section.panels.push(panel);
  }
  sortable(section.table);
  const perGroup = element.querySelector("input.per-group");
  perGroup.addEventListener("change", () => {
    section.table.hidden = perGroup.checked;
    section.grouped.hidden = !perGroup.checked;
  });
  element.querySelector("button.csv").addEventListener("click", () => {
    const table = perGroup.checked ? section.grouped : section.table;
    saveFile(`comparison-${number}${perGroup.checked ? "-groups" : ""}.csv`, tableCsv(table), "text/csv");
  });
  legend(section);
  applyFilter(section);
  section.ready = draw(section);
  for (const panel of section.panels) panel.div.on("plotly_relayout", (e) => onZoom(section, e));
  sections.push(section);
}

function redrawAll() {
  sections.forEach(draw);
}

function setUpControls() {
  const $ = (id) => document.getElementById(id);
  Object.assign(state, saved.state || {});
  $("x-axis").value = state.x;
  $("smoothing").value = state.smoothing;
  $("smoothing-value").textContent = state.smoothing.toFixed(2);
  $("bands").checked = state.bands;
  $("seeds").checked = state.seeds;
  $("filter").value = state.filter;
  $("x-axis").addEventListener("change", (e) => {
    state.x = e.target.value;
    sections.forEach((s) => { s.range = null; });
    redrawAll();
  });
  $("smoothing").addEventListener("input", (e) => {
    state.smoothing = Number(e.target.value);
    $("smoothing-value").textContent = state.smoothing.toFixed(2);
    redrawAll();
  });
  $("bands").addEventListener("change", (e) => { state.bands = e.target.checked; redrawAll(); });
  $("seeds").addEventListener("change", (e) => { state.seeds = e.target.checked; redrawAll(); });
  $("filter").addEventListener("input", (e) => {
    state.filter = e.target.value;
    sections.forEach((s) => { applyFilter(s); draw(s); });
  });
  $("reset-zoom").addEventListener("click", () => {
    sections.forEach((s) => { s.range = null; });
    redrawAll();
  });
}

const saved = savedView();  // read before the first drawing saves the view again
setUpControls();
document.querySelectorAll("section.compare").forEach((element, number) => setUp(element, number));
// When every panel is drawn and answers the controls (benchmarks/dashboard_size.py times it).
window.dashboardReady = Promise.all(sections.map((s) => s.ready))
  .then(() => performance.mark("spam-dashboard-ready"));

function drawDetail(details) {
  const target = details.querySelector(".detail-plot");
  if (!target || target.dataset.drawn) return;
  const figure = JSON.parse(details.querySelector("script.detail-figure").textContent);
  Plotly.newPlot(target, figure.data, figure.layout, {responsive: true});
  target.dataset.drawn = "1";
}

// Opened runs stay open when --watch reloads the page (sessionStorage may be refused for file:// pages).
function remember(key, open) {
  try {
    if (open) sessionStorage.setItem(key, "1"); else sessionStorage.removeItem(key);
  } catch (e) { /* not remembered */ }
}

function remembered(key) {
  try { return sessionStorage.getItem(key) === "1"; } catch (e) { return false; }
}

document.querySelectorAll("details.run-detail").forEach((details) => {
  const key = "spam-dashboard:" + location.pathname + "#" + details.id;
  details.addEventListener("toggle", () => {
    if (details.open) drawDetail(details);
    remember(key, details.open);
  });
  if (remembered(key)) details.open = true;
});
