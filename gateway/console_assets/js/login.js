// Sign in with an admin bearer token (any token the gateway accepts), or a dev token where the gateway mints them.

import { admin, call, signIn, signOut } from "./api.js";
import { announce, h, problemBox, show } from "./dom.js";

async function devTokensOn() {
  try {
    const resp = await fetch("config.json", { headers: { Accept: "application/json" } });
    return resp.ok && (await resp.json()).dev_tokens === true;
  } catch {
    return false;
  }
}

/** Keep the token only once the admin API accepts it; a refusal shows the API's own message. */
async function tryToken(value, box, done) {
  signIn(value);
  try {
    await admin("GET", "/sales?limit=1");
  } catch (problem) {
    signOut();
    // A 401/403 has already brought the login form back with the message; anything else is shown here.
    if (problem.status !== 401 && problem.status !== 403) box.textContent = problem.detail;
    return;
  }
  announce("Signed in");
  done();
}

function tokenForm(box, done) {
  const input = h("textarea", { id: "login-token", rows: 4, required: true, autocomplete: "off", spellcheck: "false" });
  return h(
    "form",
    {
      "aria-labelledby": "login-token-title",
      onsubmit: (event) => {
        event.preventDefault();
        const value = input.value.trim();
        if (!value) {
          box.textContent = "Paste a bearer token first";
          input.focus();
          return;
        }
        tryToken(value, box, done);
      },
    },
    h("h2", { id: "login-token-title" }, "Bearer token"),
    h("label", { for: "login-token" }, "Admin bearer token (from your identity provider)"),
    input,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
}

function devTokenForm(box, done) {
  const input = h("input", { id: "dev-user", value: "ops", autocomplete: "username", required: true });
  return h(
    "form",
    {
      "aria-labelledby": "dev-token-title",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          const minted = await call("POST", "/api/auth/token", {
            body: { user_id: input.value.trim(), roles: ["admin"] },
            bearer: null,
          });
          await tryToken(minted.access_token, box, done);
        } catch (problem) {
          box.textContent = problem.detail;
        }
      },
    },
    h("h2", { id: "dev-token-title" }, "Dev token"),
    h("p", { class: "hint" }, "This gateway mints tokens for local use (GATEWAY_DEV_TOKENS is on)."),
    h("label", { for: "dev-user" }, "Your user id"),
    input,
    h("button", { type: "submit" }, "Sign in with a dev admin token"),
  );
}

/** The login page; `message` is the problem that brought the user here, if any. */
export async function loginPage(message, done) {
  const box = problemBox("login-problem");
  const forms = [tokenForm(box, done)];
  if (await devTokensOn()) forms.push(devTokenForm(box, done));
  show(h("section", { class: "login" }, h("h1", {}, "Sign in"), box, ...forms));
  if (message) box.textContent = message;
}
