// A job's page: its state and stage timeline, polled from the job and its events while it runs; when it
// has succeeded, the sizes it made (results.js). Cancel and delete ask first.

import { getJson, postJson, remove, ApiError } from "./api.js";
import { badge, confirmAction, firstLine, h, progressBar, replaceContent, seconds, sizes, table, when } from "./dom.js";
import { resultsOf } from "./results.js";

const ACTIVE = new Set(["queued", "running", "cancelling"]);
const POLL_MS = 1000;

function header(job, actions) {
  const request = job.request;
  return [
    h("div", { class: "title" }, h("h1", {}, "Job ", h("code", {}, job.id)), badge(job.status)),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Model"), h("dd", {}, request.model + (request.revision ? ` @ ${request.revision}` : "")),
      h("dt", {}, "Sizes"), h("dd", {}, sizes(request.sparsity)),
      h("dt", {}, "Budget"), h("dd", {}, `${request.budget}${request.recover !== "none" ? `, recovery ${request.recover}` : ""}`),
      h("dt", {}, "Export"), h("dd", {}, `${request.export_format}${request.uniform ? ", uniform widths" : ""}`),
      h("dt", {}, "Created"), h("dd", {}, when(job.created_at)),
      h("dt", {}, "Started"), h("dd", {}, when(job.started_at)),
      h("dt", {}, "Finished"), h("dd", {}, when(job.finished_at)),
    ),
    actions,
  ];
}

function actions(job, refresh) {
  const cancel = async () => {
    if (!(await confirmAction(`Cancel job ${job.id}? Its work so far is lost.`, "Cancel job"))) return;
    await postJson(`v1/jobs/${job.id}/cancel`);
    refresh();
  };
  const erase = async () => {
    if (!(await confirmAction(`Delete job ${job.id} and every file it made?`, "Delete job"))) return;
    await remove(`v1/jobs/${job.id}`);
    location.hash = "#/jobs";
  };
  return h(
    "div",
    { class: "actions" },
    job.status === "queued" || job.status === "running"
      ? h("button", { type: "button", id: "cancel-job", class: "danger", onclick: cancel }, "Cancel job")
      : null,
    ACTIVE.has(job.status) ? null : h("button", { type: "button", id: "delete-job", class: "danger", onclick: erase }, "Delete job"),
  );
}

function progress(job) {
  if (job.status === "queued") return h("p", { class: "muted" }, "Queued: waiting for a worker.");
  if (job.status === "failed") {
    return h("p", { class: "error failure", role: "alert" },
      `Failed (${job.error?.code ?? "unknown"}): ${firstLine(job.error?.message) || "no reason was recorded"}`);
  }
  if (job.status === "cancelled") return h("p", { class: "muted" }, "Cancelled.");
  if (job.status === "succeeded") return null;
  const { stage, fraction, eta_s: eta, round, rounds } = job.progress;
  const parts = [stage ?? job.status, rounds ? `round ${round} of ${rounds}` : null, eta !== null && eta !== undefined ? `about ${seconds(eta)} left` : null];
  return h("div", { class: "overall" }, progressBar(fraction, "job progress"),
    // rounded down: a running job never reads 100%
    h("span", { id: "progress-text" }, `${Math.floor((fraction ?? 0) * 100)}% · ${parts.filter(Boolean).join(" · ")}`));
}

// the stages begun (from the events), each with the time it took, then the plan's stages still to come
function timeline(job, events) {
  const stages = events.filter((event) => event.type === "stage");
  const plans = events.filter((event) => event.type === "plan");
  const plan = plans.length ? plans[plans.length - 1].data : null;
  const ended = !ACTIVE.has(job.status);
  const items = stages.filter((event) => event.data.stage !== "done").map((event, index, begun) => {
    const start = Date.parse(event.created_at);
    const next = begun[index + 1] ?? stages.find((later) => later.data.stage === "done");
    const running = !next && !ended;
    const end = next ? Date.parse(next.created_at) : ended && job.finished_at ? Date.parse(job.finished_at) : Date.now();
    const eta = job.progress.eta_s;
    const detail = running && job.progress.stage === event.data.stage
      ? [progressBar(job.progress.fraction, `${event.data.stage} progress`), eta === null || eta === undefined ? null : ` about ${seconds(eta)} left in the job`]
      : [];
    return h("li", { class: running ? "running" : "done", "data-stage": event.data.stage },
      h("span", { class: "stage" }, event.data.stage),
      h("span", { class: "muted" }, `${running ? "running, " : ""}${seconds((end - start) / 1000)}`), ...detail);
  });
  const seen = new Set(stages.map((event) => event.data.stage));
  const pending = plan && !ended ? Object.keys(plan.stage_s).filter((stage) => !seen.has(stage)) : [];
  for (const stage of pending) {
    items.push(h("li", { class: "pending", "data-stage": stage }, h("span", { class: "stage" }, stage),
      h("span", { class: "muted" }, `pending, about ${seconds(plan.stage_s[stage])}`)));
  }
  return [
    h("h2", {}, "Stages"),
    items.length ? h("ol", { class: "timeline" }, items) : h("p", { class: "muted" }, "No stage has begun yet."),
    planTable(plan, stages, job),
  ];
}

function planTable(plan, stages, job) {
  if (!plan) {
    return h("p", { class: "muted", id: "plan" },
      ACTIVE.has(job.status) ? "The plan (expected seconds per stage) comes once the dense model has been measured." : "");
  }
  const taken = {};
  stages.forEach((event, index) => {
    const next = stages[index + 1];
    const end = next ? Date.parse(next.created_at) : job.finished_at ? Date.parse(job.finished_at) : Date.now();
    taken[event.data.stage] = (taken[event.data.stage] ?? 0) + (end - Date.parse(event.created_at)) / 1000;
  });
  const rows = Object.entries(plan.stage_s).map(([stage, expected]) => [stage, seconds(expected), seconds(taken[stage])]);
  rows.push([h("strong", {}, "whole job"), seconds(plan.expected_s), seconds(job.metrics?.total_s)]);
  return h("div", { id: "plan" }, table(["Stage", "Planned", "Taken"], rows,
    `Plan${plan.budget ? ` (${plan.budget} budget)` : ""}`));
}

function warnings(events) {
  const messages = events.filter((event) => event.type === "warning").map((event) => event.data.message);
  return messages.length
    ? [h("h2", {}, "Warnings"), h("ul", { class: "warnings" }, messages.map((message) => h("li", {}, message)))]
    : [];
}

export async function jobView(root, jobId) {
  const view = { events: [], after: 0, left: false, timer: null, resultsShown: false };
  const parts = {
    header: h("div", { id: "job-header" }),
    progress: h("div", { id: "job-progress", "aria-live": "polite" }),
    timeline: h("section", { id: "timeline" }),
    warnings: h("section", { id: "warnings" }),
    results: h("section", { id: "results" }),
  };
  replaceContent(root, Object.values(parts));
  const refresh = async () => {
    clearTimeout(view.timer);
    if (view.left) return;
    const job = await getJson(`v1/jobs/${jobId}`);
    let page;
    do {
      page = await getJson(`v1/jobs/${jobId}/events`, { after: view.after, limit: 1000 });
      view.events.push(...page.data);
      view.after = page.next_after;
    } while (page.data.length === 1000);
    if (view.left) return;
    replaceContent(parts.header, header(job, actions(job, refresh)));
    replaceContent(parts.progress, progress(job));
    replaceContent(parts.timeline, timeline(job, view.events));
    replaceContent(parts.warnings, warnings(view.events));
    if (ACTIVE.has(job.status)) view.timer = setTimeout(poll, POLL_MS);
    else if (job.status === "succeeded" && !view.resultsShown) {
      view.resultsShown = true;
      await resultsOf(job, parts.results);
    }
  };
  // a request that fails while the job runs (a restarting server) is tried again, less often
  const poll = () => refresh().catch(() => {
    if (!view.left) view.timer = setTimeout(poll, POLL_MS * 5);
  });
  try {
    await refresh();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) throw error;
    replaceContent(root, h("h1", {}, "No such job"),
      h("p", {}, "This job does not exist, was deleted, or belongs to another key. ", h("a", { href: "#/jobs" }, "Back to the jobs")));
  }
  return () => {
    view.left = true;
    clearTimeout(view.timer);
  };
}
