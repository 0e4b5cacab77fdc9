// The live view of one sale, drawn from the gateway's push channel only: one EventSource per page, opened
// with a short-lived ticket (EventSource cannot send the token), a new ticket after any drop.

import { admin, call } from "./api.js";
import { announce, h, problemBox, show } from "./dom.js";
import { money } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const POINTS = 60; // a minute of sparkline at one snapshot a second
const RECONNECT_MS = 3000;
const ALERT_LABELS = {
  "stock.low": (a) => `Low stock: ${a.remaining} left (threshold ${a.threshold})${a.paused ? ", sale paused" : ""}`,
  "sale.sold_out": () => "Sold out",
  "reconciliation.drift": (a) => `Drift: ${a.drift ?? ""} units between the counters and the record`,
};

let current = null; // { source, timer, sale } of the page on screen

/** Close the stream of a page that is no longer shown. */
export function stopLive() {
  if (current === null) return;
  current.closed = true;
  if (current.source) current.source.close();
  clearTimeout(current.timer);
  current = null;
}

function sparkline(id, label) {
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("class", "spark-line");
  line.setAttribute("points", "");
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("id", id);
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", `0 0 ${POINTS} 20`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  svg.append(line);
  return svg;
}

function drawSpark(svg, values) {
  const top = Math.max(1, ...values);
  const points = values.map((v, i) => `${i + POINTS - values.length},${(20 - (v / top) * 18 - 1).toFixed(1)}`);
  svg.firstChild.setAttribute("points", points.join(" "));
}

function number(id, value) {
  return h("dd", { id }, value);
}

function numbersPanel() {
  const rows = [
    ["Remaining", number("live-remaining", "…")],
    ["Reserved, unpaid", number("live-reserved", "…")],
    ["Sold (paid)", number("live-sold", "…")],
    ["Accepted purchases/s", h("dd", {}, h("span", { id: "live-pps" }, "…"), sparkline("spark-pps", "Purchases per second, last minute"))],
    ["Orders/s", h("dd", {}, h("span", { id: "live-ops" }, "…"), sparkline("spark-ops", "Orders per second, last minute"))],
    ["GMV", number("live-gmv", "…")],
    ["Payment success", number("live-pay", "…")],
  ];
  return h("dl", { class: "facts live-numbers" }, rows.map(([term, value]) => [h("dt", {}, term), value]));
}

function section(id, title, ...content) {
  return h("section", { "aria-labelledby": id, class: "live-part" }, h("h2", { id }, title), ...content);
}

function setText(id, text) {
  const el = document.getElementById(id);
  if (el && el.textContent !== String(text)) el.textContent = String(text);
}

function rate(value) {
  return value === null || value === undefined ? "—" : value.toFixed(1);
}

function drawFunnel(stats, orders) {
  const attempts = stats ? Object.values(stats.attempts).reduce((a, b) => a + b, 0) : null;
  const steps = [
    ["Attempts", attempts],
    ["Accepted", stats ? stats.attempts.ok : null],
    ["Orders", orders ? orders.orders : null],
    ["Paid", orders ? orders.paid : null],
  ];
  const list = document.getElementById("live-funnel");
  list.replaceChildren(...steps.map(([name, n]) => h("li", {}, `${name}: ${n === null ? "—" : n}`)));
}

function drawRefusals(stats) {
  const list = document.getElementById("live-refusals");
  const refused = stats ? Object.entries(stats.attempts).filter(([code, n]) => code !== "ok" && n > 0) : [];
  if (!refused.length) {
    list.replaceChildren(h("li", {}, stats ? "none" : "—"));
    return;
  }
  list.replaceChildren(...refused.map(([code, n]) => h("li", {}, h("code", {}, code.toUpperCase()), `: ${n}`)));
}

function alertText(alert) {
  const label = ALERT_LABELS[alert.type];
  return label ? label(alert) : alert.type;
}

function drawAlerts(alerts, state) {
  const feed = document.getElementById("live-alerts");
  for (const alert of alerts) {
    if (state.alertIds.has(alert.stream_id)) continue;
    state.alertIds.add(alert.stream_id);
    const ms = alert.at_ms || Number(String(alert.stream_id).split("-")[0]);
    const when = new Date(ms).toISOString().slice(11, 19) + " UTC";
    if (feed.firstChild && feed.firstChild.dataset.empty) feed.replaceChildren();
    feed.append(h("li", { "data-type": alert.type }, h("time", {}, when), " ", alertText(alert)));
  }
}

function drawReconciliation(report) {
  if (!report) return setText("live-recon", "not checked yet");
  if (report.error) return setText("live-recon", `unavailable: ${report.error}`);
  const checked = `checked ${String(report.checked_at).slice(11, 19)} UTC`;
  const problems = report.problems && report.problems.length ? `; ${report.problems.join("; ")}` : "";
  const status = report.balanced ? "in balance" : `drift of ${report.drift} units`;
  setText("live-recon", `${status} (${checked})${problems}`);
}

function drawUpstreams(replicas) {
  const body = document.getElementById("live-upstreams");
  body.replaceChildren(
    ...replicas.map((r) =>
      h(
        "tr",
        {},
        h("td", {}, r.pool),
        h("th", { scope: "row" }, r.url),
        h("td", {}, r.tier),
        h("td", { class: "number" }, `${r.available_in} of ${r.workers}`),
        h("td", { class: "number" }, r.unhealthy_in),
        h("td", { class: "number" }, r.ejected_in),
        h("td", { class: "number" }, r.breaker_open_in),
      ),
    ),
  );
}

function draw(snapshot, state) {
  const { stats, orders, rates } = snapshot;
  setText("live-remaining", stats ? stats.remaining : "—");
  setText("live-reserved", stats ? stats.reserved : "—");
  setText("live-sold", stats ? stats.sold : "—");
  setText("live-pps", rate(rates.purchases_per_second));
  setText("live-ops", rate(rates.orders_per_second));
  for (const [key, values] of [["purchases_per_second", state.pps], ["orders_per_second", state.ops]]) {
    values.push(rates[key] || 0);
    if (values.length > POINTS) values.shift();
  }
  drawSpark(document.getElementById("spark-pps"), state.pps);
  drawSpark(document.getElementById("spark-ops"), state.ops);
  setText("live-gmv", orders ? money(orders.gmv, state.sale.currency) : `— (${snapshot.orders_error})`);
  const success = orders ? orders.payment_success_rate : null;
  setText("live-pay", success === null || success === undefined ? "—" : `${(success * 100).toFixed(1)} %`);
  drawFunnel(stats, orders);
  drawRefusals(stats);
  drawAlerts(snapshot.alerts, state);
  drawReconciliation(snapshot.reconciliation);
  drawUpstreams(snapshot.upstreams);
  const at = new Date(snapshot.at * 1000).toISOString().slice(11, 19);
  setText("live-connection", `Live, updated ${at} UTC${snapshot.stats_error ? `; ${snapshot.stats_error}` : ""}`);
}

async function connect(state) {
  if (state.closed) return;
  let ticket;
  try {
    ticket = await call("POST", "/console/live/tickets", { body: { sale_id: state.sale.id } });
  } catch (problem) {
    setText("live-connection", `Not connected: ${problem.detail}; retrying`);
    state.timer = setTimeout(() => connect(state), RECONNECT_MS);
    return;
  }
  if (state.closed) return;
  const source = new EventSource(ticket.url);
  state.source = source;
  source.addEventListener("snapshot", (event) => draw(JSON.parse(event.data), state));
  const again = (why) => {
    source.close();
    if (state.closed) return;
    setText("live-connection", `${why}; reconnecting`);
    state.timer = setTimeout(() => connect(state), RECONNECT_MS);
  };
  source.addEventListener("close", () => again("The gateway closed the stream"));
  // A ticket is good once: any drop gets a new one rather than EventSource's own retry with the old one.
  source.addEventListener("error", () => again("The stream dropped"));
}

function repairDialog(sale, opener, box) {
  const dialog = h(
    "dialog",
    { "aria-labelledby": "repair-title", "aria-describedby": "repair-what" },
    h("h2", { id: "repair-title" }, `Repair sale ${sale.id}'s counters?`),
    h("p", { id: "repair-what" }, "Remaining, reserved, sold and buyers' counts are rebuilt from the order record; reservations in flight are kept. The repair is audited."),
    h("form", { method: "dialog" },
      h("div", { class: "actions" },
        h("button", { type: "submit", class: "danger", id: "confirm-repair" }, "Repair from the record"),
        h("button", { type: "button", onclick: () => dialog.close() }, "Cancel"))),
  );
  dialog.querySelector("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    dialog.close();
    try {
      const report = await admin("POST", `/sales/${sale.id}/reconciliation/repair`);
      drawReconciliation(report);
      announce(`Sale ${sale.id}: counters repaired`);
    } catch (problem) {
      box.textContent = `${problem.detail} (${problem.code})`;
    }
  });
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (opener.isConnected) opener.focus();
  });
  document.body.append(dialog);
  dialog.showModal();
  dialog.querySelector("#confirm-repair").focus();
}

/** The live page of one sale. */
export async function livePage(id) {
  stopLive();
  const box = problemBox("live-problem");
  let sale;
  try {
    sale = await admin("GET", `/sales/${id}`);
  } catch (problem) {
    show(h("h1", {}, `Live: sale ${id}`), box);
    box.textContent = `${problem.detail} (${problem.code})`;
    return;
  }
  const repair = h("button", { type: "button", id: "repair" }, "Repair counters…");
  repair.addEventListener("click", () => repairDialog(sale, repair, box));
  const head = ["Pool", "Replica", "Tier", "Available in", "Unhealthy in", "Ejected in", "Breaker open in"];
  show(
    h("h1", {}, `Live: ${sale.title}`),
    h("p", { id: "live-connection", class: "muted" }, "Connecting…"),
    box,
    h("div", { class: "actions" }, h("a", { href: `#/sales/${sale.id}` }, "Back to the sale")),
    numbersPanel(),
    section("funnel-title", "Funnel", h("ol", { id: "live-funnel", class: "funnel" })),
    section("refusals-title", "Refusals by code", h("ul", { id: "live-refusals" })),
    section("alerts-title", "Alerts",
      h("ol", { id: "live-alerts", role: "log", "aria-live": "polite", "aria-label": "Alerts" },
        h("li", { "data-empty": "1" }, "No alerts yet"))),
    section("recon-title", "Reconciliation", h("p", { id: "live-recon" }, "not checked yet"), repair),
    section("upstreams-title", "Upstream health",
      h("table", {},
        h("caption", { class: "visually-hidden" }, "Each replica as the gateway's workers see it"),
        h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", { id: "live-upstreams" }))),
  );
  current = { sale, source: null, timer: null, closed: false, pps: [], ops: [], alertIds: new Set() };
  connect(current);
}
