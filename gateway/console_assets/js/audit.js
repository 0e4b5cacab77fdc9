// A sale's audit log: who did what and when, with the fields each change moved from before to after.

import { admin } from "./api.js";
import { h, problemBox, show } from "./dom.js";
import { utc } from "./format.js";

// What the API audits when an admin only looks (services/flashsale/admin.py): hidden unless asked for.
const READS = new Set(["list", "get", "stats", "alerts", "audit"]);
// Bookkeeping fields every change moves: not what the operator changed.
const NOISE = new Set(["updated_at"]);

function asText(value) {
  if (value === null || value === undefined) return "—";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

/** The fields that differ between before and after, as "field: old → new" items. */
function changes(entry) {
  const before = entry.before || {};
  const after = entry.after || {};
  const names = [...new Set([...Object.keys(before), ...Object.keys(after)])].filter((n) => !NOISE.has(n));
  const moved = names.filter((n) => JSON.stringify(before[n]) !== JSON.stringify(after[n]));
  if (!moved.length) return h("span", { class: "muted" }, entry.before || entry.after ? "no field changed" : "—");
  return h(
    "ul",
    { class: "changes" },
    moved.map((n) => {
      const from = entry.before ? `${asText(before[n])} → ` : "";
      return h("li", {}, h("code", {}, n), ": ", from, asText(after[n]));
    }),
  );
}

function table(entries) {
  const head = ["When (UTC)", "Who", "Action", "Before → after", "Request id"];
  return h(
    "table",
    { id: "audit-table" },
    h("caption", { class: "visually-hidden" }, "Audit log, newest first"),
    h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
    h(
      "tbody",
      {},
      entries.map((e) =>
        h(
          "tr",
          { "data-action": e.action },
          h("td", {}, utc(e.at)),
          h("td", { class: "actor" }, e.actor),
          h("th", { scope: "row", class: "action" }, e.action),
          h("td", {}, changes(e)),
          h("td", { class: "muted" }, e.request_id || "—"),
        ),
      ),
    ),
  );
}

/** The audit log page of one sale; `withReads` also lists the audited reads. */
export async function auditPage(id, withReads = false) {
  const box = problemBox("audit-problem");
  const toggle = h("input", { type: "checkbox", id: "audit-reads", checked: withReads });
  toggle.addEventListener("change", () => auditPage(id, toggle.checked));
  show(
    h("h1", {}, `Audit log of sale ${id}`),
    h("div", { class: "actions" },
      h("a", { href: `#/sales/${id}` }, "Back to the sale"),
      h("span", {}, toggle, " ", h("label", { for: "audit-reads" }, "Also show reads (who looked)"))),
    box,
  );
  let entries;
  try {
    entries = await admin("GET", `/audit?sale_id=${encodeURIComponent(id)}&limit=500`);
  } catch (problem) {
    box.textContent = `${problem.detail} (${problem.code})`;
    return;
  }
  const shown = withReads ? entries : entries.filter((e) => !READS.has(e.action));
  document.getElementById("main").append(shown.length ? table(shown) : h("p", {}, "Nothing recorded yet."));
  if (withReads) toggle.focus();
}
