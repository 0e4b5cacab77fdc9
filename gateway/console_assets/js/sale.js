// One sale: its record and live numbers, the actions its state allows, and the typed confirmation for stop.

import { admin } from "./api.js";
import { announce, h, problemBox, show } from "./dom.js";
import { countdown, money, serverNow, utc } from "./format.js";

// The admin transitions by the state they start from (services/flashsale/lifecycle.py is the authority).
const ACTIONS = {
  draft: ["schedule", "start", "stop"],
  scheduled: ["start", "stop"],
  live: ["pause", "stop"],
  paused: ["resume", "stop"],
  ended: [],
};
const EDITABLE = new Set(["draft", "scheduled"]);
const RESTOCKABLE = new Set(["draft", "scheduled", "live", "paused"]);
const LABELS = { schedule: "Schedule", start: "Start now", pause: "Pause", resume: "Resume", stop: "Stop sale…" };

function facts(sale, stats) {
  const rows = [
    ["State", h("span", { class: `state state-${stats.state}`, id: "sale-state" }, stats.state)],
    ["SKU", sale.sku],
    ["Price", `${money(sale.price, sale.currency)} (was ${money(sale.original_price, sale.currency)})`],
    ["Window", `${utc(sale.starts_at)} to ${utc(sale.ends_at)}`],
    ["Countdown", countdown({ ...sale, state: stats.state }, serverNow())],
    ["Remaining", h("span", { id: "sale-remaining" }, `${stats.remaining} of ${stats.quantity}`)],
    ["Reserved, unpaid", stats.reserved],
    ["Sold", stats.sold],
    ["Limit per buyer", sale.per_user_limit],
    ["Low-stock alert", `${sale.low_stock_threshold_pct} % (${sale.low_stock_policy})`],
  ];
  return h("dl", { class: "facts" }, rows.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

/** Run an admin action; on success the page is drawn again from the API's new answer. */
async function act(sale, action, box) {
  try {
    await admin("POST", `/sales/${sale.id}/${action}`);
  } catch (problem) {
    box.textContent = `${problem.detail} (${problem.code})`;
    return false;
  }
  await salePage(sale.id);
  announce(`Sale ${sale.id}: ${action} done`);
  return true;
}

/** Step two of stop: a modal that names the sale and wants its title typed before it acts. */
function stopDialog(sale, opener, box) {
  const input = h("input", { id: "confirm-name", autocomplete: "off", "aria-describedby": "confirm-error" });
  const error = h("p", { id: "confirm-error", class: "field-error", role: "alert" });
  const dialog = h(
    "dialog",
    { "aria-labelledby": "confirm-title", "aria-describedby": "confirm-what" },
    h("h2", { id: "confirm-title" }, `Stop sale ${sale.id}: ${sale.title}?`),
    h("p", { id: "confirm-what" }, "Stopping ends the sale for good: nobody can buy, and it cannot be resumed."),
    h("form", { method: "dialog", id: "confirm-form" },
      h("div", { class: "field" },
        h("label", { for: "confirm-name" }, `Type the sale's title, ${sale.title}, to confirm`),
        input,
        error),
      h("div", { class: "actions" },
        h("button", { type: "submit", class: "danger", id: "confirm-stop" }, `Stop ${sale.title}`),
        h("button", { type: "button", value: "cancel", onclick: () => dialog.close() }, "Cancel"))),
  );
  dialog.querySelector("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (input.value.trim() !== sale.title) {
      error.textContent = "That is not the sale's title: the sale was not stopped";
      input.focus();
      return;
    }
    dialog.close();
    await act(sale, "stop", box);
  });
  // Back to the button that opened it (the page redraw after a stop focuses the heading instead).
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (opener.isConnected) opener.focus();
  });
  document.body.append(dialog);
  dialog.showModal();
  input.focus();
}

function restockForm(sale, box) {
  const input = h("input", { id: "restock-units", type: "number", "aria-describedby": "restock-error" });
  const error = h("p", { id: "restock-error", class: "field-error" });
  const form = h(
    "form",
    { class: "actions", novalidate: true, "aria-labelledby": "restock-title" },
    h("h2", { id: "restock-title", class: "visually-hidden" }, "Restock"),
    h("div", { class: "field" }, h("label", { for: "restock-units" }, "Units to add"), input, error),
    h("button", { type: "submit" }, "Restock"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const units = input.value === "" ? null : Number(input.value);
      await admin("POST", `/sales/${sale.id}/stock`, { body: { units } });
    } catch (problem) {
      const first = problem.errors[0];
      error.textContent = first ? first.msg : problem.detail;
      input.setAttribute("aria-invalid", "true");
      box.textContent = `${problem.detail} (${problem.code})`;
      input.focus();
      return;
    }
    await salePage(sale.id);
    announce(`Sale ${sale.id}: ${input.value} units added`);
  });
  return form;
}

function actionButtons(sale, state, box) {
  const buttons = ACTIONS[state].map((action) => {
    const danger = action === "stop";
    const kind = danger ? "danger" : "primary";
    const button = h("button", { type: "button", class: kind, "data-action": action }, LABELS[action]);
    button.addEventListener("click", () => (danger ? stopDialog(sale, button, box) : act(sale, action, box)));
    return button;
  });
  if (EDITABLE.has(state)) buttons.push(h("a", { href: `#/sales/${sale.id}/edit` }, "Edit"));
  buttons.push(h("a", { href: `#/sales/${sale.id}/live` }, "Live view"));
  buttons.push(h("a", { href: `#/sales/${sale.id}/audit` }, "Audit log"));
  return h("div", { class: "actions", role: "group", "aria-label": "Actions" }, buttons);
}

/** The detail page of one sale. */
export async function salePage(id) {
  const box = problemBox("sale-problem");
  let sale;
  let stats;
  try {
    [sale, stats] = await Promise.all([admin("GET", `/sales/${id}`), admin("GET", `/sales/${id}/stats`)]);
  } catch (problem) {
    show(h("h1", {}, `Sale ${id}`), box);
    box.textContent = `${problem.detail} (${problem.code})`;
    return;
  }
  const heading = h("h1", {}, `Sale ${sale.id}: ${sale.title}`);
  const parts = [heading, box, facts(sale, stats), actionButtons(sale, stats.state, box)];
  if (RESTOCKABLE.has(stats.state)) parts.push(restockForm(sale, box));
  show(...parts);
}

/** The sale record, for the edit form. */
export function loadSale(id) {
  return admin("GET", `/sales/${id}`);
}

export { EDITABLE };
