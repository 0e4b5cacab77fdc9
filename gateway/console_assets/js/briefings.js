// The periodic briefings of live sales (services/flashsale/briefings.py): one row per sale and period,
// with the figures and the anomalies the alert webhooks got.

import { admin } from "./api.js";
import { h, problemBox, show } from "./dom.js";
import { money, utc } from "./format.js";

function percent(rate) {
  return rate === null || rate === undefined ? "—" : `${Math.round(rate * 100)} %`;
}

function estimate(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  return seconds < 120 ? `${seconds} s` : `${Math.round(seconds / 60)} min`;
}

function row(briefing) {
  const b = briefing.body;
  const orders = b.orders || {};
  const anomalies = (b.anomalies || []).map((a) => h("li", { "data-code": a.code }, h("strong", {}, a.code), ": ", a.message));
  return h(
    "tr",
    { "data-sale": String(briefing.sale_id) },
    h("td", {}, utc(briefing.at)),
    h("th", { scope: "row" }, h("a", { href: `#/sales/${briefing.sale_id}` }, `${b.title || "Sale"} (${briefing.sale_id})`)),
    h("td", {}, `${b.stock.remaining} of ${b.stock.quantity} left, ${b.stock.reserved} reserved, ${b.stock.sold} sold`),
    h("td", {}, b.orders ? `${orders.orders} orders, ${orders.paid} paid, ${money(orders.gmv, b.currency)}` : "—"),
    h("td", {}, percent(orders.payment_success_rate)),
    h("td", {}, estimate(b.sell_out_in_seconds)),
    h("td", {}, anomalies.length ? h("ul", { class: "anomalies" }, anomalies) : h("span", { class: "muted" }, "none")),
  );
}

/** The latest briefings of every live sale, newest first. */
export async function briefingsPage() {
  const box = problemBox("briefings-problem");
  show(h("h1", {}, "Briefings"), h("p", { class: "muted" }, "Each live sale, every briefing interval from its start."), box);
  let briefings;
  try {
    briefings = await admin("GET", "/briefings?limit=200");
  } catch (problem) {
    box.textContent = `${problem.detail} (${problem.code})`;
    return;
  }
  if (!briefings.length) {
    document.getElementById("main").append(h("p", {}, "No briefing yet: the first comes one interval after a sale opens."));
    return;
  }
  const head = ["When (UTC)", "Sale", "Stock", "Orders", "Payment success", "Sells out in", "Anomalies"];
  document.getElementById("main").append(
    h(
      "table",
      { id: "briefings-table" },
      h("caption", { class: "visually-hidden" }, "Briefings, newest first"),
      h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, briefings.map(row)),
    ),
  );
}
