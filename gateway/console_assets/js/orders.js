// Orders by user, sale and state, one order with its payment attempts and history, cancel and refund, and the
// refund_pending queue (paid after they closed: each needs a refund), all through the order admin API.

import { serviceAdmin } from "./api.js";
import { announce, h, problemBox, show } from "./dom.js";
import { money, utc } from "./format.js";

const order = (method, path, options) => serviceAdmin("order", method, path, options);
const STATES = ["", "pending_payment", "paid", "fulfilled", "cancelled", "expired", "refunded", "refund_pending"];
const CANCELLABLE = new Set(["pending_payment"]);
const REFUNDABLE = new Set(["paid", "fulfilled", "refund_pending"]);

function query(filters) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(filters)) if (value) params.set(name, value);
  params.set("limit", "200");
  return params.toString();
}

function ordersTable(id, caption, orders) {
  if (!orders.length) return h("p", { id }, "No orders.");
  const head = ["Order", "Sale", "User", "State", "Total", "Created (UTC)"];
  return h(
    "table",
    { id },
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, orders.map((o) => h(
      "tr",
      { "data-order-id": o.id },
      h("th", { scope: "row" }, h("a", { href: `#/orders/${o.id}` }, o.id)),
      h("td", { class: "number" }, o.sale_id),
      h("td", {}, o.user_id),
      h("td", {}, h("span", { class: "state" }, o.state)),
      h("td", { class: "number" }, money(o.total, o.currency)),
      h("td", {}, utc(o.created_at)),
    ))),
  );
}

function filterForm(filters) {
  const input = (name, label, type = "text") =>
    h("div", { class: "field" }, h("label", { for: `of-${name}` }, label),
      h("input", { id: `of-${name}`, name, type, value: filters[name] || "" }));
  const state = h("select", { id: "of-state", name: "state" },
    STATES.map((s) => h("option", { value: s, selected: s === (filters.state || "") }, s || "any")));
  const form = h("form", { class: "sale-form", novalidate: true, "aria-label": "Filter orders" },
    input("user_id", "User id"), input("sale_id", "Sale id", "number"),
    h("div", { class: "field" }, h("label", { for: "of-state" }, "State"), state),
    h("div", { class: "form-buttons" }, h("button", { type: "submit", class: "primary" }, "Show orders")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form).entries());
    location.hash = `#/orders?${query(data).replace(/&?limit=200/, "")}`;
  });
  return form;
}

/** The orders page: the refund_pending queue, then the orders matching the filter in the address. */
export async function ordersPage(search) {
  const filters = Object.fromEntries(new URLSearchParams(search || "").entries());
  const box = problemBox("orders-problem");
  let pending;
  let found;
  try {
    [pending, found] = await Promise.all([
      order("GET", "/orders?state=refund_pending&limit=200"),
      order("GET", `/orders?${query(filters)}`),
    ]);
  } catch (problem) {
    show(h("h1", {}, "Orders"), box);
    box.textContent = `${problem.detail} (${problem.code})`;
    return;
  }
  show(
    h("h1", {}, "Orders"),
    box,
    h("section", { "aria-labelledby": "queue-title" },
      h("h2", { id: "queue-title" }, `Refund pending (${pending.length})`),
      h("p", { class: "hint" }, "Paid after the order closed: each is refunded by the refund job, or here."),
      ordersTable("refund-queue", "Orders waiting for a refund", pending)),
    h("section", { "aria-labelledby": "found-title" },
      h("h2", { id: "found-title" }, "Find orders"),
      filterForm(filters),
      ordersTable("orders-table", "Orders matching the filter", found)),
  );
}

async function act(detail, action, box) {
  try {
    await order("POST", `/orders/${detail.id}/${action}`);
  } catch (problem) {
    box.textContent = `${problem.detail} (${problem.code})`;
    return;
  }
  await orderPage(detail.id);
  announce(`Order ${detail.id}: ${action} done`);
}

function attemptsTable(attempts) {
  if (!attempts.length) return h("p", {}, "No payment attempts.");
  const head = ["At (UTC)", "Provider", "Outcome", "Latency", "Reference", "Error"];
  return h("table", { id: "attempts-table" },
    h("caption", { class: "visually-hidden" }, "Payment attempts"),
    h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, attempts.map((a) => h("tr", {},
      h("td", {}, utc(a.at)), h("td", {}, a.provider), h("td", {}, a.outcome),
      h("td", { class: "number" }, `${a.latency_ms} ms`), h("td", {}, a.provider_ref || "—"), h("td", {}, a.error || "—")))));
}

/** One order: its record, payment attempts and history, and the actions its state allows. */
export async function orderPage(id) {
  const box = problemBox("order-problem");
  let detail;
  try {
    detail = await order("GET", `/orders/${encodeURIComponent(id)}`);
  } catch (problem) {
    show(h("h1", {}, `Order ${id}`), box);
    box.textContent = `${problem.detail} (${problem.code})`;
    return;
  }
  const buttons = [];
  if (CANCELLABLE.has(detail.state)) buttons.push(h("button", { type: "button", class: "danger", onclick: () => act(detail, "cancel", box) }, "Cancel order"));
  if (REFUNDABLE.has(detail.state)) buttons.push(h("button", { type: "button", class: "primary", onclick: () => act(detail, "refund", box) }, "Refund order"));
  const rows = [
    ["State", h("span", { id: "order-state", class: "state" }, detail.state)],
    ["Sale", h("a", { href: `#/sales/${detail.sale_id}` }, String(detail.sale_id))],
    ["User", detail.user_id],
    ["Total", `${money(detail.total, detail.currency)} (discount ${money(detail.discount, detail.currency)})`],
    ["Created", utc(detail.created_at)],
    ["Pay by", utc(detail.deadline_at)],
  ];
  show(
    h("h1", {}, `Order ${detail.id}`),
    box,
    h("dl", { class: "facts" }, rows.map(([t, v]) => [h("dt", {}, t), h("dd", {}, v)])),
    h("div", { class: "actions", role: "group", "aria-label": "Actions" }, buttons, h("a", { href: "#/orders" }, "All orders")),
    h("h2", {}, "Payment attempts"),
    attemptsTable(detail.attempts),
    h("h2", {}, "History"),
    h("ol", { id: "order-history" }, detail.history.map((t) =>
      h("li", {}, `${utc(t.at)}: ${t.from_state} → ${t.to_state} by ${t.actor}${t.reason ? ` (${t.reason})` : ""}`))),
  );
}
