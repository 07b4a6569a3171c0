// The submit form: a model the server has (GET /v1/models), the files uploaded with a progress bar, the
// settings as the API names them. The server's settings model validates them: a 422 is shown beside
// the field it names.

import { getJson, postJson, upload, ApiError } from "./api.js";
import { count, h, replaceContent } from "./dom.js";

const FILES = ["calibration_file", "eval_file", "recovery_file"];
const uploaded = new Map(); // a file chosen again after a refusal is not sent twice

function field(name, label, control, help) {
  control.id = control.id || `field-${name}`;
  control.name = name;
  control.setAttribute("aria-describedby", `${control.id}-help ${control.id}-error`);
  return h(
    "div",
    { class: "field", "data-field": name },
    h("label", { for: control.id }, label),
    control,
    h("p", { id: `${control.id}-help`, class: "muted" }, help ?? ""),
    h("p", { id: `${control.id}-error`, class: "error", role: "alert" }),
  );
}

function choice(options, selected) {
  return h("select", {}, options.map(([value, text]) => h("option", { value, selected: value === selected }, text)));
}

function modelOption(model) {
  const name = model.revision ? `${model.id} @ ${model.revision.slice(0, 12)}` : model.id;
  const about = [model.family ?? model.model_type ?? "unknown family", model.parameters ? `${count(model.parameters)} parameters` : null]
    .filter(Boolean)
    .join(", ");
  return h(
    "option",
    { value: model.id, "data-revision": model.revision ?? "", disabled: !model.supported, title: model.reason ?? "" },
    `${name} (${about})${model.supported ? "" : " — not supported"}`,
  );
}

function fileField(name, label, help) {
  const input = h("input", { type: "file", accept: ".jsonl,.txt" });
  const bar = h("progress", { max: "1", value: "0", hidden: true, "aria-label": `${label} upload` });
  const wrapper = field(name, label, input, help);
  wrapper.append(bar);
  return wrapper;
}

// The job request's choices as this server's settings model states them (its OpenAPI schema, served
// to every caller), so the form offers what the server accepts, its registries' formats and methods
// included, and nothing here repeats them; a schema that cannot be read fails the view as a failed
// models list does.
const CHOICE_FIELDS = ["budget", "export_format", "recover"];
const LABELS = { hf: "hf (transformers)", gguf: "gguf (llama.cpp)" };

async function requestChoices() {
  const properties = (await getJson("openapi.json")).components.schemas.JobCreate.properties;
  return Object.fromEntries(CHOICE_FIELDS.map((name) => [name, properties[name].enum]));
}

function choiceOf(values, selected) {
  return choice(values.map((value) => [value, LABELS[value] ?? value]), selected);
}

function form(models, choices) {
  const supported = models.find((model) => model.supported);
  const modelSelect = h("select", {}, models.map(modelOption));
  if (supported) modelSelect.value = supported.id;
  return h(
    "form",
    { id: "submit-form", novalidate: true },
    h("p", { id: "form-error", class: "error", role: "alert" }),
    field("model", "Model", modelSelect, models.length ? "From the server's models dir and Hugging Face cache." : "The server has no models."),
    fileField("calibration_file", "Calibration text", ".jsonl (a text field per line) or .txt"),
    fileField("eval_file", "Held-out text (optional)", "Default: the calibration file's sequences after the ones scored."),
    fileField("recovery_file", "Recovery text (optional)", "What the recovery trains on; needs a recovery."),
    field("sparsity", "Sparsities", h("input", { type: "text", value: "0.3", inputmode: "decimal" }),
      "Fractions of the prunable parameters to remove: one, or several separated by commas (a checkpoint each)."),
    field("budget", "Budget", choiceOf(choices.budget, "auto"),
      "Scoring effort; auto: standard on a GPU, fast on a CPU."),
    field("uniform", "Layout", choice([["false", "per-layer widths"], ["true", "uniform widths"]], "false"),
      "Uniform removes the same number of units from every layer."),
    field("export_format", "Export format", choiceOf(choices.export_format, "hf")),
    field("recover", "Recovery", choiceOf(choices.recover, "none")),
    field("advanced", "More settings (JSON)", h("textarea", { rows: "3", spellcheck: "false", placeholder: '{"seq_len": 128, "time_limit": "10m"}' }),
      "Any other setting of the API's job request, by its name."),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Submit job")),
  );
}

// one key per submission, so a retried request never makes a second job (crypto.randomUUID needs a
// secure context; a server reached over plain HTTP by name is not one)
function requestId() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (byte) => byte.toString(16).padStart(2, "0")).join("");
}

function clearErrors(formElement) {
  for (const error of formElement.querySelectorAll(".error")) error.textContent = "";
  for (const wrapper of formElement.querySelectorAll(".field")) wrapper.classList.remove("invalid");
}

function showError(formElement, name, message) {
  const wrapper = formElement.querySelector(`.field[data-field="${name}"]`);
  const target = wrapper ? wrapper.querySelector(".error") : formElement.querySelector("#form-error");
  target.textContent = target.textContent ? `${target.textContent} ${message}` : message;
  if (wrapper) wrapper.classList.add("invalid");
}

// the API's refusal beside each field it names: loc ["body", field, ...]; a setting given in the JSON box
// is shown there
function showRefusal(formElement, error, advancedKeys) {
  if (!Array.isArray(error.detail)) {
    showError(formElement, null, typeof error.detail === "string" ? error.detail : error.message);
    return;
  }
  const named = new Set();
  for (const item of error.detail) {
    const [where, name] = item.loc ?? [];
    // a value no branch of a union takes is refused by each: the first refusal says enough
    if (where === "body" && name && named.has(name)) continue;
    named.add(name);
    const message = item.msg ?? String(item);
    if (where === "body" && name && formElement.querySelector(`.field[data-field="${name}"]`) && !advancedKeys.has(name)) {
      showError(formElement, name, message);
    } else if (where === "body" && advancedKeys.has(name)) showError(formElement, "advanced", `${name}: ${message}`);
    else showError(formElement, null, message);
  }
  formElement.querySelector(".field.invalid select, .field.invalid input, .field.invalid textarea")?.focus();
}

function advancedSettings(formElement) {
  const text = formElement.elements.advanced.value.trim();
  if (!text) return {};
  const parsed = JSON.parse(text);
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new SyntaxError("a JSON object, please");
  return parsed;
}

async function uploadFiles(formElement) {
  const ids = {};
  for (const name of FILES) {
    const input = formElement.elements[name];
    const file = input.files[0];
    if (!file) continue;
    const identity = `${file.name}:${file.size}:${file.lastModified}`;
    if (!uploaded.has(identity)) {
      const bar = input.parentElement.querySelector("progress");
      bar.hidden = false;
      try {
        uploaded.set(identity, (await upload(file, (fraction) => (bar.value = fraction))).id);
      } catch (error) {
        if (error instanceof ApiError && Array.isArray(error.detail)) {
          showError(formElement, name, error.detail.map((item) => item.msg).join(" "));
        } else showError(formElement, name, error.message);
        return null;
      }
    }
    ids[name] = uploaded.get(identity);
  }
  return ids;
}

async function submit(event) {
  event.preventDefault();
  const formElement = event.target;
  const button = formElement.querySelector("button[type=submit]");
  clearErrors(formElement);
  let advanced;
  try {
    advanced = advancedSettings(formElement);
  } catch (error) {
    showError(formElement, "advanced", `Not valid JSON: ${error.message}`);
    return;
  }
  if (!formElement.elements.calibration_file.files[0]) {
    showError(formElement, "calibration_file", "Choose the calibration text to upload.");
    return;
  }
  button.disabled = true;
  try {
    const files = await uploadFiles(formElement);
    if (files === null) return;
    const elements = formElement.elements;
    const model = elements.model.selectedOptions[0];
    const body = {
      model: elements.model.value,
      sparsity: elements.sparsity.value,
      budget: elements.budget.value,
      uniform: elements.uniform.value === "true",
      export_format: elements.export_format.value,
      recover: elements.recover.value,
      ...files,
      ...advanced,
    };
    if (model?.dataset.revision) body.revision = model.dataset.revision;
    const job = await postJson("v1/jobs", body, { "Idempotency-Key": requestId() });
    location.hash = `#/jobs/${job.id}`;
  } catch (error) {
    if (error instanceof ApiError) showRefusal(formElement, error, new Set(Object.keys(advanced)));
    else showError(formElement, null, error.message);
  } finally {
    button.disabled = false;
  }
}

export async function submitView(root) {
  const [{ data: models }, choices] = await Promise.all([getJson("v1/models"), requestChoices()]);
  const formElement = form(models, choices);
  formElement.addEventListener("submit", submit);
  replaceContent(
    root,
    h("h1", {}, "Submit a job"),
    h("p", { class: "muted" },
      "The job's plan (expected seconds per stage) is on its page as soon as the dense model has been measured."),
    formElement,
  );
  formElement.elements.model.focus();
}
