// The sales list: state, window with a live countdown, remaining of quantity, price.

import { admin, storefrontSales } from "./api.js";
import { announce, h, problemBox, show } from "./dom.js";
import { countdown, money, serverNow, syncClock, utc } from "./format.js";

// The newest sales shown; older ones are reached by their id (#/sales/{id}).
const LIST_LIMIT = 200;
let ticker = null;

/** Stop the countdown of a page that is no longer shown. */
export function stopTicking() {
  if (ticker !== null) clearInterval(ticker);
  ticker = null;
}

/** The storefront's live view by sale id (live and upcoming sales only): state and remaining stock now. */
async function liveById() {
  try {
    const views = await storefrontSales();
    if (views.length) syncClock(views[0].server_time);
    return new Map(views.map((v) => [v.id, v]));
  } catch {
    return new Map();
  }
}

function row(record, live) {
  const view = live.get(record.id);
  // The live view knows a window that opened or closed since the record last changed.
  const sale = view ? { ...record, state: view.state } : record;
  const cell = h("td", { class: "countdown" }, countdown(sale, serverNow()));
  cell.dataset.starts = sale.starts_at;
  cell.dataset.ends = sale.ends_at;
  cell.dataset.state = sale.state;
  const left = view ? view.remaining : sale.state === "draft" ? sale.quantity : "—";
  return h(
    "tr",
    { "data-sale-id": sale.id },
    h("td", { class: "number" }, sale.id),
    h("th", { scope: "row" }, h("a", { href: `#/sales/${sale.id}` }, sale.title)),
    h("td", {}, h("span", { class: `state state-${sale.state}` }, sale.state)),
    h("td", {}, utc(sale.starts_at)),
    h("td", {}, utc(sale.ends_at)),
    cell,
    h("td", { class: "number remaining" }, left),
    h("td", { class: "number" }, sale.quantity),
    h("td", { class: "number price" }, money(sale.price, sale.currency)),
  );
}

function tick() {
  for (const cell of document.querySelectorAll("td.countdown")) {
    const sale = { starts_at: cell.dataset.starts, ends_at: cell.dataset.ends, state: cell.dataset.state };
    cell.textContent = countdown(sale, serverNow());
  }
}

/** The list of every sale, newest first. */
export async function salesPage() {
  const box = problemBox("sales-problem");
  const reload = () => salesPage().then(() => announce("Sales refreshed"));
  const refresh = h("button", { type: "button", onclick: reload }, "Refresh");
  show(h("h1", {}, "Sales"), h("div", { class: "actions" }, h("a", { href: "#/sales/new" }, "New sale"), refresh), box);
  let sales;
  try {
    sales = await admin("GET", `/sales?limit=${LIST_LIMIT}`);
  } catch (problem) {
    box.textContent = problem.detail;
    return;
  }
  const live = await liveById();
  const head = ["ID", "Title", "State", "Starts (UTC)", "Ends (UTC)", "Countdown", "Remaining", "Quantity", "Price"];
  const table = h(
    "table",
    { id: "sales-table" },
    h("caption", { class: "visually-hidden" }, "Sales, newest first"),
    h("thead", {}, h("tr", {}, head.map((title) => h("th", { scope: "col" }, title)))),
    h("tbody", {}, sales.map((sale) => row(sale, live))),
  );
  document.getElementById("main").append(sales.length ? table : h("p", {}, "No sales yet."));
  stopTicking();
  ticker = setInterval(tick, 1000);
}
