// A succeeded job's results: per size its parameters, quality before and after, time and peak memory,
// with a one-click download of its checkpoint; the curve and per-layer pictures; the model card; every
// artifact with its size and sha256.

import { getBlob, getText, getJson } from "./api.js";
import { bytes, count, figure, h, imageFrom, replaceContent, save, seconds, table } from "./dom.js";
import { renderMarkdown } from "./markdown.js";

const PICTURES = [
  ["curve.png", "Quality against parameters kept, a point per size"],
  ["layers.png", "Kept attention groups and MLP channels per layer, a line per size"],
];

function artifactPath(jobId, name) {
  return `v1/jobs/${jobId}/artifacts/${name.split("/").map(encodeURIComponent).join("/")}`;
}

// the sizes the job made, as rows: a job of several sizes lists them in its metrics, one folder each
function sizesOf(job) {
  const metrics = job.metrics ?? {};
  if (Array.isArray(metrics.sizes)) {
    return metrics.sizes.map((size) => ({
      sparsity: size.sparsity,
      folder: size.dir,
      parameters: size.params_after,
      quality: size.perplexity ?? size.embedding_cosine,
      figure: size.perplexity ? "perplexity" : "embedding cosine",
      seconds: size.seconds,
    }));
  }
  const quality = metrics.perplexity ?? metrics.embedding_cosine;
  return [{
    sparsity: job.request.sparsity,
    folder: null,
    parameters: metrics.params?.total_after,
    quality,
    figure: metrics.perplexity ? "perplexity" : "embedding cosine",
    seconds: metrics.total_s,
  }];
}

function peak(byStage) {
  const values = Object.values(byStage ?? {});
  return values.length ? Math.max(...values) : null;
}

async function peakMemory(job, size, names) {
  const reportName = size.folder ? `${size.folder}/pruning_report.json` : "pruning_report.json";
  if (!names.has(reportName)) return "–";
  const report = JSON.parse(await getText(artifactPath(job.id, reportName)));
  const host = peak(report.peak_host_rss_bytes);
  const gpu = peak(report.peak_gpu_bytes);
  return [host ? `${bytes(host)} host` : null, gpu ? `${bytes(gpu)} GPU` : null].filter(Boolean).join(", ") || "–";
}

function downloadButton(job, size) {
  const label = size.folder ? `Download ${size.folder}` : "Download checkpoint";
  const button = h("button", { type: "button", class: "download", "data-size": size.folder ?? "" }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "Downloading…";
    try {
      const blob = await getBlob(`v1/jobs/${job.id}/checkpoint.tar`, size.folder ? { size: size.folder } : {});
      save(blob, `${job.id}${size.folder ? `-${size.folder}` : ""}.tar`);
      button.textContent = label;
    } catch (error) {
      button.textContent = `${label} (failed: ${error.message})`;
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

async function summary(job, names) {
  const rows = sizesOf(job);
  const memory = await Promise.all(rows.map((size) => peakMemory(job, size, names)));
  const quality = rows[0]?.figure ?? "quality";
  const body = rows.map((size, index) => [
    `${Math.round(size.sparsity * 1000) / 10}%`,
    count(size.parameters),
    figure(size.quality?.before),
    figure(size.quality?.after),
    seconds(size.seconds),
    memory[index],
    downloadButton(job, size),
  ]);
  return [
    h("h2", {}, "Sizes"),
    h("div", { id: "summary" },
      table(["Size", "Parameters", `${quality} before`, `${quality} after`, "Time", "Peak memory", "Checkpoint"], body)),
  ];
}

async function pictures(job, names) {
  const shown = [];
  for (const [name, caption] of PICTURES) {
    if (!names.has(name)) continue;
    const image = await imageFrom(await getBlob(artifactPath(job.id, name)), caption);
    image.id = name.replace(".png", "-image");
    shown.push(h("figure", {}, image, h("figcaption", {}, caption)));
  }
  return shown.length ? [h("h2", {}, "Pictures"), h("div", { class: "pictures" }, shown)] : [];
}

function modelCards(job, names) {
  const cards = sizesOf(job)
    .map((size) => ({ size, name: size.folder ? `${size.folder}/README.md` : "README.md" }))
    .filter(({ name }) => names.has(name));
  if (!cards.length) return [];
  const shown = h("div", { id: "model-card" });
  const show = async (name) => {
    for (const tab of tabs.querySelectorAll("button")) tab.setAttribute("aria-pressed", String(tab.dataset.name === name));
    replaceContent(shown, renderMarkdown(await getText(artifactPath(job.id, name))));
  };
  const tabs = h("div", { class: "tabs", role: "group", "aria-label": "Model card of size" },
    cards.length > 1 ? cards.map(({ size, name }) => h("button", { type: "button", class: "quiet", "data-name": name, onclick: () => show(name) }, size.folder)) : []);
  show(cards[0].name);
  return [h("h2", {}, "Model card"), tabs, shown];
}

function artifactTable(artifacts) {
  const rows = artifacts.map((artifact) => [
    artifact.name,
    h("span", { title: `${artifact.bytes} bytes` }, bytes(artifact.bytes)),
    h("code", { class: "hash", title: artifact.sha256 }, artifact.sha256),
  ]);
  return [h("h2", {}, "Artifacts"), h("div", { id: "artifacts" }, table(["Name", "Size", "sha256"], rows))];
}

export async function resultsOf(job, root) {
  const artifacts = (await getJson(`v1/jobs/${job.id}/artifacts`)).data;
  const names = new Set(artifacts.map((artifact) => artifact.name));
  replaceContent(root, h("p", { class: "muted" }, "Loading the results…"));
  const parts = [...(await summary(job, names)), ...(await pictures(job, names)), ...modelCards(job, names), ...artifactTable(artifacts)];
  replaceContent(root, parts);
}
