// The jobs list: the key's jobs (an admin key's: every key's), newest first, a page at a time, filtered
// by state; refreshed while any of them is still running.

import { getJson } from "./api.js";
import { badge, h, progressBar, replaceContent, seconds, sizes, table, when } from "./dom.js";

const STATES = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"];
const ACTIVE = new Set(["queued", "running", "cancelling"]);
const PAGE = 20;
const REFRESH_MS = 2000;

// kept across visits, so coming back from a job finds the list as it was left
const state = { status: "", everyKey: true, pages: [null] };

function progressCell(job) {
  if (!ACTIVE.has(job.status)) return job.status === "succeeded" ? "done" : "–";
  const { stage, fraction } = job.progress;
  return h("div", { class: "progress-cell" }, progressBar(fraction, `progress of ${job.id}`),
    h("span", { class: "muted" }, stage ?? job.status));
}

function row(job) {
  return [
    h("a", { href: `#/jobs/${job.id}` }, job.id),
    job.request.model,
    sizes(job.request.sparsity),
    badge(job.status),
    progressCell(job),
    ACTIVE.has(job.status) ? seconds(job.progress.eta_s) : "–",
    when(job.created_at),
    when(job.finished_at),
  ];
}

function controls(reload) {
  const filter = h(
    "select",
    { id: "status-filter", name: "status", onchange: (event) => {
      state.status = event.target.value;
      state.pages = [null];
      reload();
    } },
    h("option", { value: "" }, "every state"),
    STATES.map((status) => h("option", { value: status, selected: status === state.status }, status)),
  );
  const everyKey = h("input", { id: "every-key", type: "checkbox", checked: state.everyKey, onchange: (event) => {
    state.everyKey = event.target.checked;
    state.pages = [null];
    reload();
  } });
  return h(
    "div",
    { class: "controls" },
    h("label", { for: "status-filter" }, "State "),
    filter,
    h("label", { class: "check" }, everyKey, " every key's jobs (admin keys)"),
    h("button", { type: "button", class: "quiet", onclick: reload }, "Refresh"),
  );
}

function pager(page, reload) {
  const older = h("button", { type: "button", class: "quiet", disabled: !page.has_more, onclick: () => {
    state.pages.push(page.next_after);
    reload();
  } }, "Older");
  const newer = h("button", { type: "button", class: "quiet", disabled: state.pages.length < 2, onclick: () => {
    state.pages.pop();
    reload();
  } }, "Newer");
  return h("div", { class: "pager" }, newer, h("span", { class: "muted" }, `page ${state.pages.length}`), older);
}

export async function jobsView(root) {
  const listing = h("div", { id: "jobs", "aria-live": "polite" });
  let timer = null;
  let left = false;
  const reload = async () => {
    clearTimeout(timer);
    if (left) return;
    const page = await getJson("v1/jobs", {
      limit: PAGE,
      status: state.status,
      all: state.everyKey ? "true" : "",
      after: state.pages[state.pages.length - 1],
    });
    const headings = ["Job", "Model", "Sizes", "State", "Progress", "ETA", "Created", "Finished"];
    replaceContent(
      listing,
      page.data.length ? table(headings, page.data.map(row)) : h("p", { class: "muted" }, "No jobs yet."),
      pager(page, reload),
    );
    if (!left && page.data.some((job) => ACTIVE.has(job.status))) timer = setTimeout(reload, REFRESH_MS);
  };
  replaceContent(
    root,
    h("div", { class: "title" }, h("h1", {}, "Jobs"), h("a", { class: "button", href: "#/submit" }, "New job")),
    controls(reload),
    listing,
  );
  await reload();
  return () => {
    left = true;
    clearTimeout(timer);
  };
}
