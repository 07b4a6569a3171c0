// Building the page from data: elements are made with text content only (never HTML from a response),
// and the figures are formatted one way everywhere.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

export function replaceContent(element, ...children) {
  element.replaceChildren();
  for (const child of children.flat()) if (child) element.append(child);
}

export function bytes(count) {
  if (count === undefined || count === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

export function count(value) {
  if (value === undefined || value === null) return "–";
  if (value >= 1e9) return `${(value / 1e9).toFixed(2)} B`;
  if (value >= 1e6) return `${(value / 1e6).toFixed(2)} M`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(1)} k`;
  return String(value);
}

export function seconds(value) {
  if (value === undefined || value === null || !Number.isFinite(value)) return "–";
  if (value < 60) return `${value.toFixed(value < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(value / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(value % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return h("time", { datetime: iso, title: date.toISOString() }, date.toLocaleString());
}

export function figure(value) {
  return value === undefined || value === null ? "–" : Number(value).toPrecision(5);
}

export function sizes(sparsity) {
  const list = Array.isArray(sparsity) ? sparsity : [sparsity];
  return list.map((size) => `${Math.round(size * 1000) / 10}%`).join(", ");
}

export function badge(status) {
  return h("span", { class: `badge ${status}` }, status);
}

export function progressBar(fraction, label) {
  const value = Math.max(0, Math.min(1, fraction ?? 0));
  return h("progress", { max: "1", value: String(value), "aria-label": label }, `${Math.floor(value * 100)}%`);
}

export function firstLine(message) {
  return (message ?? "").split("\n")[0];
}

// a confirmation in the page's own dialog; resolves true when the user confirms
export function confirmAction(text, action) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  const ok = document.getElementById("confirm-ok");
  ok.textContent = action;
  return new Promise((resolve) => {
    const close = (answer) => () => {
      dialog.close();
      resolve(answer);
    };
    ok.onclick = close(true);
    document.getElementById("confirm-no").onclick = close(false);
    dialog.oncancel = close(false);
    dialog.showModal();
  });
}

export function table(headings, rows, caption) {
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headings.map((heading) => h("th", { scope: "col" }, heading)))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell))))),
    ),
  );
}

// a blob shown as an image: as a data: URL, the one image source besides this server the page allows
export function imageFrom(blob, alt) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(h("img", { src: reader.result, alt }));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// a blob saved as a file by the browser
export function save(blob, name) {
  const link = h("a", { href: URL.createObjectURL(blob), download: name, hidden: true });
  document.body.append(link);
  link.click();
  setTimeout(() => {
    URL.revokeObjectURL(link.href);
    link.remove();
  }, 1000);
}
