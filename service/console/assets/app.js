// The console: sign-in, then three views chosen by the URL's fragment (#/jobs, #/submit, #/jobs/<id>).
// The fragment holds view names and job ids only; the key stays in session storage.

import { keyRequired, session, whenUnauthorized, getJson, ApiError } from "./api.js";
import { h, replaceContent } from "./dom.js";
import { jobsView } from "./jobs.js";
import { submitView } from "./submit.js";
import { jobView } from "./job.js";

const main = document.getElementById("main");
const signOut = document.getElementById("sign-out");
let leaveView = () => {};
let signedIn = false;
// each view shown counts up: a view whose rendering ends after another was shown stops its own polling
let shown = 0;

function route() {
  const path = location.hash.replace(/^#/, "") || "/jobs";
  const job = path.match(/^\/jobs\/([A-Za-z0-9_-]+)$/);
  if (job) return { name: "job", render: (root) => jobView(root, job[1]) };
  if (path === "/submit") return { name: "submit", render: submitView };
  return { name: "jobs", render: jobsView };
}

function markNavigation(name) {
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function show() {
  leaveView();
  leaveView = () => {};
  const mine = ++shown;
  if (!signedIn) return;
  const view = route();
  markNavigation(view.name);
  const root = h("div", { class: "view" });
  replaceContent(main, root);
  try {
    const leave = (await view.render(root)) || (() => {});
    if (mine === shown) leaveView = leave;
    else leave();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) {
      replaceContent(root, h("p", { class: "error", role: "alert" }, `The console failed: ${error.message}`));
    }
  }
}

function signInForm(message) {
  signedIn = false;
  shown += 1;
  leaveView();
  leaveView = () => {};
  signOut.hidden = true;
  const input = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": "api-key-help api-key-error",
  });
  const error = h("p", { id: "api-key-error", class: "error", role: "alert" }, message ?? "");
  const form = h(
    "form",
    { class: "sign-in", onsubmit: (event) => signIn(event, input, error) },
    h("h1", {}, "Sign in"),
    h("label", { for: "api-key" }, "API key"),
    input,
    h("p", { id: "api-key-help", class: "muted" },
      "Kept in this tab only (session storage) and sent as the Authorization header; closing the tab forgets it."),
    error,
    h("button", { type: "submit" }, "Sign in"),
  );
  replaceContent(main, form);
  input.focus();
}

async function signIn(event, input, error) {
  event.preventDefault();
  session.remember(input.value.trim());
  try {
    await getJson("v1/jobs", { limit: 1 });
  } catch (failure) {
    session.forget();
    error.textContent = failure.status === 401 ? "This key is not accepted by the server." : failure.message;
    input.focus();
    return;
  }
  enter(true);
}

function enter(withKey) {
  signedIn = true;
  signOut.hidden = !withKey;
  show();
}

async function start() {
  whenUnauthorized(() => {
    if (!signedIn) return; // a key being tried at sign-in says so there
    session.forget();
    signInForm("The server no longer accepts this key; sign in again.");
  });
  signOut.addEventListener("click", () => {
    session.forget();
    signInForm("Signed out.");
  });
  window.addEventListener("hashchange", show);
  // a stored key that still works, or a server that asks for none, goes straight in
  if (!(await keyRequired())) {
    enter(Boolean(session.key()));
    return;
  }
  session.forget();
  signInForm();
}

start();
