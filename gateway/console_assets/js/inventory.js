// The warehouse: a SKU's counters with restock and its low-stock threshold, the open replenishment reminders
// and the allocations still holding units for sales, all through the inventory admin API.

import { serviceAdmin } from "./api.js";
import { announce, h, problemBox, show } from "./dom.js";
import { utc } from "./format.js";

const inventory = (method, path, options) => serviceAdmin("inventory", method, path, options);

function table(id, caption, head, rows) {
  if (!rows.length) return h("p", { id }, "None.");
  return h("table", { id },
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c, i) => (i === 0 ? h("th", { scope: "row" }, c) : h("td", {}, c)))))));
}

function skuLink(sku) {
  return h("a", { href: `#/inventory/${encodeURIComponent(sku)}` }, sku);
}

function lookupForm() {
  const input = h("input", { id: "sku-code", autocomplete: "off" });
  const form = h("form", { class: "actions", novalidate: true, "aria-label": "Open a SKU" },
    h("div", { class: "field" }, h("label", { for: "sku-code" }, "SKU code"), input),
    h("button", { type: "submit" }, "Open SKU"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value.trim()) location.hash = `#/inventory/${encodeURIComponent(input.value.trim())}`;
  });
  return form;
}

/** The inventory overview: reminders waiting for a restock, open allocations, and a SKU by its code. */
export async function inventoryPage() {
  const box = problemBox("inventory-problem");
  let reminders;
  let allocations;
  try {
    [reminders, allocations] = await Promise.all([inventory("GET", "/replenishment"), inventory("GET", "/allocations")]);
  } catch (problem) {
    show(h("h1", {}, "Inventory"), box);
    box.textContent = `${problem.detail} (${problem.code})`;
    return;
  }
  show(
    h("h1", {}, "Inventory"),
    box,
    lookupForm(),
    h("h2", {}, "Replenishment reminders"),
    table("reminders-table", "SKUs below their low-stock threshold", ["SKU", "Available", "Suggested restock", "Since (UTC)", "Reminders sent"],
      reminders.map((r) => [skuLink(r.sku), r.available, r.suggested_quantity, utc(r.created_at), r.reminders_sent])),
    h("h2", {}, "Allocations to sales"),
    table("allocations-table", "Allocations still holding units", ["SKU", "Sale", "Allocated", "Sold", "Returned", "Outstanding"],
      allocations.map((a) => [skuLink(a.sku), h("a", { href: `#/sales/${a.sale_id}` }, String(a.sale_id)), a.allocated, a.sold, a.returned, a.outstanding])),
  );
}

function numberField(id, label) {
  return h("div", { class: "field" }, h("label", { for: id }, label), h("input", { id, type: "number", "aria-describedby": `${id}-error` }), h("p", { id: `${id}-error`, class: "field-error" }));
}

function showProblem(problem, box, form) {
  for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
  const first = problem.errors[0];
  const name = first ? String(first.loc[first.loc.length - 1]) : "";
  const target = form.querySelector(`[data-field="${name}"]`);
  if (target) target.textContent = first.msg;
  box.textContent = `${problem.detail} (${problem.code})`;
}

function restockForm(sku, box) {
  const form = h("form", { class: "sale-form", novalidate: true, "aria-labelledby": "restock-title" },
    numberField("restock-quantity", "Units received"),
    h("div", { class: "field" }, h("label", { for: "restock-reason" }, "Reason"), h("input", { id: "restock-reason", autocomplete: "off" })),
    h("div", { class: "form-buttons" }, h("button", { type: "submit", class: "primary" }, "Restock")));
  form.querySelector("#restock-quantity-error").dataset.field = "quantity";
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const raw = form.querySelector("#restock-quantity").value;
    const body = { quantity: raw === "" ? null : Number(raw), reason: form.querySelector("#restock-reason").value };
    try {
      await inventory("POST", `/skus/${encodeURIComponent(sku.sku)}/restock`, { body });
    } catch (problem) {
      return showProblem(problem, box, form);
    }
    await skuPage(sku.sku);
    announce(`${sku.sku}: ${raw} units added`);
  });
  return [h("h2", { id: "restock-title" }, "Restock"), form];
}

function thresholdForm(sku, box) {
  const kind = h("select", { id: "threshold-kind" },
    ["absolute", "percent"].map((k) => h("option", { value: k, selected: k === sku.threshold_kind }, k === "absolute" ? "units" : "percent of on hand")));
  const form = h("form", { class: "sale-form", novalidate: true, "aria-labelledby": "threshold-title" },
    numberField("threshold-value", "Low-stock threshold (empty: off)"),
    h("div", { class: "field" }, h("label", { for: "threshold-kind" }, "Threshold in"), kind),
    h("div", { class: "form-buttons" }, h("button", { type: "submit", class: "primary" }, "Set threshold")));
  form.querySelector("#threshold-value").value = sku.low_stock_threshold ?? "";
  form.querySelector("#threshold-value-error").dataset.field = "value";
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const raw = form.querySelector("#threshold-value").value;
    const body = { value: raw === "" ? null : Number(raw), kind: kind.value };
    try {
      await inventory("PUT", `/skus/${encodeURIComponent(sku.sku)}/threshold`, { body });
    } catch (problem) {
      return showProblem(problem, box, form);
    }
    await skuPage(sku.sku);
    announce(`${sku.sku}: threshold set`);
  });
  return [h("h2", { id: "threshold-title" }, "Low-stock threshold"), form];
}

/** One SKU: counters, its latest ledger entries, restock and threshold. */
export async function skuPage(code) {
  const box = problemBox("sku-problem");
  let sku;
  try {
    sku = await inventory("GET", `/skus/${encodeURIComponent(code)}`);
  } catch (problem) {
    show(h("h1", {}, `SKU ${code}`), box, h("a", { href: "#/inventory" }, "Back to the inventory"));
    box.textContent = `${problem.detail} (${problem.code})`;
    return;
  }
  const facts = [
    ["On hand", sku.on_hand], ["Available", h("span", { id: "sku-available" }, String(sku.available))],
    ["Allocated to sales", sku.allocated], ["Held by checkouts", sku.held], ["Sold", sku.sold],
    ["Low-stock threshold", sku.low_stock_threshold === null ? "off" : `${sku.low_stock_threshold} (${sku.threshold_kind})${sku.alert_armed ? "" : ", alerted"}`],
  ];
  show(
    h("h1", {}, `SKU ${sku.sku}: ${sku.name}`),
    box,
    h("dl", { class: "facts" }, facts.map(([t, v]) => [h("dt", {}, t), h("dd", {}, v)])),
    ...restockForm(sku, box),
    ...thresholdForm(sku, box),
    h("h2", {}, "Latest ledger entries"),
    table("ledger-table", "Ledger, newest first", ["At (UTC)", "Kind", "Units", "Available after", "By", "Reason"],
      sku.ledger.map((e) => [utc(e.at), e.kind, e.quantity, e.available_after, e.actor, e.reason || ""])),
    h("a", { href: "#/inventory" }, "Back to the inventory"),
  );
}
