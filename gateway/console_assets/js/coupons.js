// Coupon templates with their stats, pause and resume, and compensation issuance (to listed users or to a
// sale's buyers hit by a system failure), all through the coupon admin API.

import { serviceAdmin } from "./api.js";
import { announce, h, problemBox, show } from "./dom.js";

const coupon = (method, path, options) => serviceAdmin("coupon", method, path, options);
// Templates carry no currency: amounts are shown as the API's minor units in major form (1000 -> 10.00).
const amount = (minor) => (Number(minor) / 100).toFixed(2);

function value(template) {
  if (template.kind === "percent_off") return `${template.percent_bp / 100} %`;
  if (template.kind === "tiered") return template.tiers.map((t) => `${amount(t.off)} off ${amount(t.spend)}`).join(", ");
  return amount(template.amount_off);
}

async function toggle(template, box) {
  const action = template.state === "paused" ? "resume" : "pause";
  try {
    await coupon("POST", `/templates/${template.id}/${action}`);
  } catch (problem) {
    box.textContent = `${problem.detail} (${problem.code})`;
    return;
  }
  await couponsPage();
  announce(`Template ${template.id}: ${action} done`);
}

function row(template, stats, box) {
  const label = template.state === "paused" ? "Resume" : "Pause";
  const button = h("button", { type: "button", "data-template-id": template.id }, `${label} ${template.name}`);
  button.addEventListener("click", () => toggle(template, box));
  const s = stats || {};
  return h(
    "tr",
    { "data-template-id": template.id },
    h("td", { class: "number" }, template.id),
    h("th", { scope: "row" }, template.name),
    h("td", {}, template.kind),
    h("td", {}, value(template)),
    h("td", {}, h("span", { class: `state state-${template.state === "paused" ? "paused" : "live"}` }, template.state)),
    h("td", { class: "number" }, `${s.claimed ?? "—"} of ${template.total_quantity}`),
    h("td", { class: "number" }, s.locked ?? "—"),
    h("td", { class: "number" }, s.used ?? "—"),
    h("td", { class: "number" }, s.discount_given === undefined ? "—" : amount(s.discount_given)),
    h("td", {}, button),
  );
}

function field(id, label, control, hint) {
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null);
}

function compensationForm(templates) {
  const box = problemBox("comp-problem");
  const select = h("select", { id: "comp-template" }, templates.map((t) => h("option", { value: t.id }, `${t.id}: ${t.name}`)));
  const users = h("textarea", { id: "comp-users", rows: 3, "aria-describedby": "comp-users-hint" });
  const sale = h("input", { id: "comp-sale", type: "number", "aria-describedby": "comp-sale-hint" });
  const reason = h("input", { id: "comp-reason", autocomplete: "off" });
  const form = h(
    "form",
    { class: "sale-form", novalidate: true, "aria-labelledby": "comp-title" },
    field("comp-template", "Template", select),
    field("comp-users", "User ids", users, "One per line or comma-separated; or leave empty and give a sale"),
    field("comp-sale", "Or every buyer of sale", sale, "Buyers whose order a system failure cancelled"),
    field("comp-reason", "Reason", reason),
    h("div", { class: "form-buttons" }, h("button", { type: "submit", class: "primary" }, "Issue compensation")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    box.textContent = "";
    const ids = users.value.split(/[\s,]+/).filter(Boolean);
    const body = { template_id: Number(select.value), reason: reason.value };
    if (ids.length) body.user_ids = ids;
    if (sale.value !== "") body.sale_id = Number(sale.value);
    try {
      const issued = await coupon("POST", "/compensation", { body });
      announce(`${issued.length} compensation coupons issued`);
      box.textContent = "";
      form.reset();
    } catch (problem) {
      box.textContent = `${problem.detail} (${problem.code})`;
      box.focus();
    }
  });
  return [h("h2", { id: "comp-title" }, "Compensation"), box, form];
}

/** The coupon templates page. */
export async function couponsPage() {
  const box = problemBox("coupons-problem");
  let templates;
  try {
    templates = await coupon("GET", "/templates");
  } catch (problem) {
    show(h("h1", {}, "Coupons"), box);
    box.textContent = `${problem.detail} (${problem.code})`;
    return;
  }
  const stats = await Promise.all(templates.map((t) => coupon("GET", `/templates/${t.id}/stats`).catch(() => null)));
  const head = ["ID", "Name", "Kind", "Value", "State", "Claimed", "Locked", "Used", "Discount given", "Action"];
  const table = h(
    "table",
    { id: "templates-table" },
    h("caption", { class: "visually-hidden" }, "Coupon templates with their stats"),
    h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, templates.map((t, i) => row(t, stats[i], box))),
  );
  show(
    h("h1", {}, "Coupons"),
    box,
    templates.length ? table : h("p", {}, "No templates yet."),
    ...(templates.length ? compensationForm(templates) : []),
  );
}
