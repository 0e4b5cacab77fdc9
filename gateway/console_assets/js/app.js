// The console's shell: the hash routes, who is signed in, and the way back to the login form.

import { signOut, token, tokenSubject, whenSignedOut } from "./api.js";
import { h, problemBox, show } from "./dom.js";
import { loginPage } from "./login.js";
import { auditPage } from "./audit.js";
import { briefingsPage } from "./briefings.js";
import { livePage, stopLive } from "./live.js";
import { couponsPage } from "./coupons.js";
import { inventoryPage, skuPage } from "./inventory.js";
import { orderPage, ordersPage } from "./orders.js";
import { EDITABLE, loadSale, salePage } from "./sale.js";
import { saleFormPage } from "./saleform.js";
import { salesPage, stopTicking } from "./sales.js";

function signedInChrome(on) {
  document.getElementById("nav").hidden = !on;
  document.getElementById("who").hidden = !on;
  document.getElementById("who-name").textContent = on ? `Signed in as ${tokenSubject() || "admin"}` : "";
}

async function editPage(id) {
  let sale;
  try {
    sale = await loadSale(id);
  } catch (problem) {
    const box = problemBox("edit-problem");
    show(h("h1", {}, `Edit sale ${id}`), box);
    box.textContent = problem.detail;
    return;
  }
  if (!EDITABLE.has(sale.state)) {
    const back = h("a", { href: `#/sales/${id}` }, "Back");
    show(h("h1", {}, `Sale ${id} can no longer be edited`), h("p", {}, `It is ${sale.state}.`), back);
    return;
  }
  saleFormPage(sale);
}

/** Draw the page the hash names; without a token, the login form. */
async function route(message) {
  stopTicking();
  stopLive();
  if (!token()) {
    signedInChrome(false);
    // Signed in: the page the address asked for (a deep link survives the login), else the sales.
    await loginPage(message, () => route());
    return;
  }
  signedInChrome(true);
  const path = location.hash.replace(/^#/, "") || "/sales";
  let match;
  if (path === "/sales") await salesPage();
  else if (path === "/sales/new") saleFormPage(null);
  else if ((match = /^\/sales\/(\d+)$/.exec(path))) await salePage(match[1]);
  else if ((match = /^\/sales\/(\d+)\/edit$/.exec(path))) await editPage(match[1]);
  else if ((match = /^\/sales\/(\d+)\/audit$/.exec(path))) await auditPage(match[1]);
  else if ((match = /^\/sales\/(\d+)\/live$/.exec(path))) await livePage(match[1]);
  else if (path === "/briefings") await briefingsPage();
  else if (path === "/coupons") await couponsPage();
  else if (path === "/inventory") await inventoryPage();
  else if ((match = /^\/inventory\/(.+)$/.exec(path))) await skuPage(decodeURIComponent(match[1]));
  else if ((match = /^\/orders(?:\?(.*))?$/.exec(path))) await ordersPage(match[1]);
  else if ((match = /^\/orders\/([^/?]+)$/.exec(path))) await orderPage(decodeURIComponent(match[1]));
  else show(h("h1", {}, "Not found"), h("a", { href: "#/sales" }, "Go to the sales"));
}

whenSignedOut((problem) => route(problem.detail));
window.addEventListener("hashchange", () => route());
document.getElementById("sign-out").addEventListener("click", () => {
  signOut();
  route("Signed out");
});
route();
