// Building elements from data without innerHTML: every text the API returns is set as text, never as markup.

/** An element with attributes (`on*` functions become listeners) and children (strings become text). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace the page's content with `nodes` and move focus to its heading, as a page change does. */
export function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
  const heading = main.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus();
  }
}

/** Say something to screen-reader users through the polite live region. */
export function announce(message) {
  const region = document.getElementById("status");
  region.textContent = "";
  // A fresh text node in a later task: the same message twice in a row is still read out.
  setTimeout(() => {
    region.textContent = message;
  }, 50);
}

/** A paragraph that shows a problem and is read out at once when its text changes. */
export function problemBox(id) {
  return h("p", { id, class: "problem", role: "alert" });
}
