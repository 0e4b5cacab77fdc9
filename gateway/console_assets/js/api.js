// The console's only way to the platform: the flashsale admin API through the gateway, with the admin's token.

const TOKEN_KEY = "console.token";
const FLASHSALE = "/api/flashsale";

/** An API answer that was not 2xx, with the problem+json fields of its body. */
export class ApiProblem extends Error {
  constructor(status, body) {
    super(body.detail || body.title || `HTTP ${status}`);
    this.status = status;
    this.code = body.code || "HTTP_ERROR";
    this.detail = this.message;
    this.errors = Array.isArray(body.errors) ? body.errors : [];
  }
}

let onSignedOut = () => {};

/** Who to call when the API refuses the token (401, 403): the app sends the user back to the login form. */
export function whenSignedOut(callback) {
  onSignedOut = callback;
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function signIn(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** The subject of the token, read for display only (the gateway is the one that verifies it). */
export function tokenSubject(value = token()) {
  try {
    const part = value.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part));
    return typeof claims.sub === "string" ? claims.sub : null;
  } catch {
    return null;
  }
}

function idempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "console-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function parse(resp) {
  const text = await resp.text();
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    return { detail: text.slice(0, 200) };
  }
}

/** Call the gateway; resolves to the JSON body, rejects with an ApiProblem. */
export async function call(method, path, { body, bearer = token(), keyed = false } = {}) {
  const headers = { Accept: "application/json" };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  // A retried click (or the gateway retrying on another replica) gets the first answer, not a second change.
  if (keyed) headers["Idempotency-Key"] = idempotencyKey();
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiProblem(0, { code: "NETWORK_ERROR", detail: "The gateway did not answer; check the connection" });
  }
  const data = await parse(resp);
  if (resp.ok) return data;
  const problem = new ApiProblem(resp.status, data);
  if (resp.status === 401 || resp.status === 403) {
    signOut();
    onSignedOut(problem);
  }
  throw problem;
}

/** The flashsale admin API: `admin("GET", "/sales")` is GET /api/flashsale/admin/sales. */
export function admin(method, path, options = {}) {
  return call(method, `${FLASHSALE}/admin${path}`, { keyed: method === "POST", ...options });
}

/** The storefront's view of live and upcoming sales: remaining stock and the server's clock. */
export function storefrontSales() {
  return call("GET", `${FLASHSALE}/sales`, { bearer: null });
}

/** Another service's admin API through the gateway: `serviceAdmin("order", "GET", "/orders")`. */
export function serviceAdmin(service, method, path, options = {}) {
  return call(method, `/api/${service}/admin${path}`, { keyed: method === "POST", ...options });
}
