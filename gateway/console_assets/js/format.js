// Money from integer minor units, UTC times and countdowns, the way the API means them.

function currencyDigits(currency) {
  try {
    return new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions().maximumFractionDigits;
  } catch {
    return 2;
  }
}

/** 9900 USD -> "$99.00": the API's integer minor units in the currency's own number of decimals. */
export function money(minor, currency) {
  const digits = currencyDigits(currency);
  const major = Number(minor) / 10 ** digits;
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(major);
  } catch {
    return `${major.toFixed(digits)} ${currency}`;
  }
}

/** Minor units as the amount an operator types: 9900 USD -> "99.00". */
export function moneyInput(minor, currency) {
  const digits = currencyDigits(currency);
  if (digits === 0) return String(minor);
  const text = String(minor).padStart(digits + 1, "0");
  return `${text.slice(0, -digits)}.${text.slice(-digits)}`;
}

/** "99.5" USD -> 9950, parsed as text (no floating point); null when it is not an amount in that currency. */
export function parseMoney(text, currency) {
  const digits = currencyDigits(currency);
  const match = /^\s*(\d+)(?:[.,](\d*))?\s*$/.exec(text);
  if (!match || (match[2] || "").length > digits) return null;
  const fraction = (match[2] || "").padEnd(digits, "0");
  return Number(match[1] + fraction);
}

/** An ISO time as "2026-12-07 22:46:03 UTC". */
export function utc(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

/** An ISO time as the value of a datetime-local input read as UTC ("2026-12-07T22:46"). */
export function utcInput(iso) {
  return iso ? new Date(iso).toISOString().slice(0, 16) : "";
}

/** A datetime-local value read as UTC, as ISO 8601 for the API; "" stays "" (the API says it is missing). */
export function fromUtcInput(value) {
  return value ? `${value.length === 16 ? value + ":00" : value}Z` : "";
}

function span(ms) {
  let s = Math.max(0, Math.round(ms / 1000));
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const hh = String(Math.floor(s / 3600)).padStart(2, "0");
  const mm = String(Math.floor((s % 3600) / 60)).padStart(2, "0");
  const ss = String(s % 60).padStart(2, "0");
  return `${d ? d + "d " : ""}${hh}:${mm}:${ss}`;
}

/** "starts in 01:02:03", "ends in 00:10:00" or "ended", at `now` (ms, the server's clock). */
export function countdown(sale, now) {
  const starts = Date.parse(sale.starts_at);
  const ends = Date.parse(sale.ends_at);
  if (sale.state === "ended" || now >= ends) return "ended";
  if (now < starts) return `starts in ${span(starts - now)}`;
  return `ends in ${span(ends - now)}`;
}

let clockOffset = 0;

/** Align countdowns with the server's clock (a storefront answer's `server_time`). */
export function syncClock(serverTime) {
  const at = Date.parse(serverTime);
  if (!Number.isNaN(at)) clockOffset = at - Date.now();
}

export function serverNow() {
  return Date.now() + clockOffset;
}
