// Create a sale, or edit one before it goes live; the API's validation is shown next to each field.

import { admin } from "./api.js";
import { announce, h, problemBox, show } from "./dom.js";
import { fromUtcInput, moneyInput, parseMoney, utcInput } from "./format.js";

// name, label, input attributes, hint; `createOnly` fields cannot change after creation.
const FIELDS = [
  { name: "sku", label: "SKU", attrs: { autocomplete: "off" }, createOnly: true, hint: "e.g. SKU-PHONE-1" },
  { name: "title", label: "Title", attrs: { autocomplete: "off" } },
  {
    name: "currency",
    label: "Currency",
    attrs: { value: "USD", maxlength: 3 },
    createOnly: true,
    hint: "ISO 4217, e.g. USD",
  },
  { name: "price", label: "Sale price", attrs: { inputmode: "decimal" }, money: true, hint: "e.g. 99.00" },
  { name: "original_price", label: "Original price", attrs: { inputmode: "decimal" }, money: true },
  { name: "quantity", label: "Quantity (units)", attrs: { type: "number" }, integer: true },
  { name: "per_user_limit", label: "Limit per buyer", attrs: { type: "number", value: 1 }, integer: true },
  { name: "starts_at", label: "Starts (UTC)", attrs: { type: "datetime-local" }, time: true },
  { name: "ends_at", label: "Ends (UTC)", attrs: { type: "datetime-local" }, time: true },
  {
    name: "low_stock_threshold_pct",
    label: "Low-stock alert at (%)",
    attrs: { type: "number", value: 10 },
    integer: true,
  },
  {
    name: "low_stock_policy",
    label: "At low stock",
    options: [
      ["alert", "Alert"],
      ["alert_and_pause", "Alert and pause the sale"],
    ],
  },
];
const NAMES = FIELDS.map((f) => f.name);

function control(field, sale) {
  const id = `f-${field.name}`;
  const described = [field.hint ? `${id}-hint` : null, `${id}-error`].filter(Boolean).join(" ");
  let input;
  if (field.options) {
    input = h("select", { id, name: field.name, "aria-describedby": described },
      field.options.map(([value, label]) => h("option", { value }, label)));
  } else {
    input = h("input", { id, name: field.name, "aria-describedby": described, ...field.attrs });
  }
  if (sale) {
    const value = sale[field.name];
    if (field.money) input.value = moneyInput(value, sale.currency);
    else if (field.time) input.value = utcInput(value);
    else input.value = String(value);
  }
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, field.label),
    input,
    field.hint ? h("p", { id: `${id}-hint`, class: "hint" }, field.hint) : null,
    h("p", { id: `${id}-error`, class: "field-error" }),
  );
}

/** The body to send: every field for a create, only what changed for an edit; money as minor units. */
function readForm(form, sale, fields) {
  const body = {};
  const local = {};
  const currency = sale ? sale.currency : form.elements.currency.value.trim();
  for (const field of fields) {
    const raw = form.elements[field.name].value;
    let value = raw.trim();
    if (field.money) {
      value = parseMoney(raw, currency);
      if (value === null) local[field.name] = `Enter an amount like 99.00 (${currency || "currency"})`;
    } else if (field.integer) {
      value = raw === "" ? null : Number(raw);
    } else if (field.time) {
      value = fromUtcInput(raw);
    }
    const before = sale ? sale[field.name] : undefined;
    // Times are shown to the minute: an untouched time field must not move the sale by its seconds.
    const unchanged = sale && (field.time ? raw === utcInput(before) : value === before);
    // An empty field is left out: the API says which required ones are missing.
    if (!unchanged && value !== null && value !== "") body[field.name] = value;
  }
  return { body, local };
}

/** Field errors of a problem: its `errors[].loc`, or a field its message starts with ("ends_at must be ..."). */
export function fieldErrors(problem) {
  const found = {};
  for (const err of problem.errors) {
    const name = err.loc.filter((part) => part !== "body")[0];
    const message = err.msg.replace(/^Value error, /, "");
    const target = NAMES.includes(name) ? name : NAMES.find((n) => message.startsWith(`${n} `));
    if (target && !found[target]) found[target] = message;
  }
  if (!problem.errors.length) {
    const target = NAMES.find((n) => problem.detail.startsWith(`${n} `));
    if (target) found[target] = problem.detail;
  }
  return found;
}

function markErrors(form, errors, box, summary) {
  for (const name of NAMES) {
    const input = form.elements[name];
    if (!input) continue;
    const message = errors[name] || "";
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
    document.getElementById(`f-${name}-error`).textContent = message;
  }
  box.textContent = summary;
  const first = NAMES.find((n) => errors[n] && form.elements[n]);
  if (first) form.elements[first].focus();
}

async function submit(form, sale, fields, box, button) {
  const { body, local } = readForm(form, sale, fields);
  if (Object.keys(local).length) {
    markErrors(form, local, box, "Some fields need attention: nothing was saved");
    return;
  }
  if (sale && !Object.keys(body).length) {
    markErrors(form, {}, box, "Nothing changed");
    return;
  }
  button.disabled = true;
  try {
    const saved = sale ? await admin("PATCH", `/sales/${sale.id}`, { body }) : await admin("POST", "/sales", { body });
    announce(sale ? `Sale ${saved.id} saved` : `Sale ${saved.id} created`);
    location.hash = `#/sales/${saved.id}`;
  } catch (problem) {
    const errors = fieldErrors(problem);
    const count = Object.keys(errors).length;
    const what = count ? problem.detail : `${problem.detail} (${problem.code})`;
    const summary = `${what} — nothing was saved`;
    markErrors(form, errors, box, summary);
  } finally {
    button.disabled = false;
  }
}

/** The create form (no `sale`) or the edit form of a draft or scheduled sale. */
export function saleFormPage(sale) {
  const fields = FIELDS.filter((f) => !(sale && f.createOnly));
  const box = problemBox("form-problem");
  const button = h("button", { type: "submit", class: "primary" }, sale ? "Save changes" : "Create sale");
  const form = h(
    "form",
    { class: "sale-form", novalidate: true, "aria-describedby": "form-problem" },
    fields.map((f) => control(f, sale)),
    h("div", { class: "form-buttons" }, button, h("a", { href: sale ? `#/sales/${sale.id}` : "#/sales" }, "Cancel")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit(form, sale, fields, box, button);
  });
  const title = sale ? `Edit sale ${sale.id}: ${sale.title}` : "New sale";
  const note = sale
    ? "Only draft and scheduled sales change; SKU and currency are fixed."
    : "The sale is created in draft.";
  show(h("h1", {}, title), h("p", { class: "hint" }, note), box, form);
}
