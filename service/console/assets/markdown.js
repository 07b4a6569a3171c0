// The model card's Markdown as elements: headings, paragraphs, lists, tables, code blocks and inline
// code, bold and links. Everything is text content, so nothing in a card can run or load; a link is
// shown as a link and fetched only if the user follows it.

import { h } from "./dom.js";

const INLINE = /(`[^`]+`|\*\*[^*]+\*\*|\[[^\]]+\]\([^)\s]+\))/;

function inline(text) {
  return text
    .split(INLINE)
    .filter((part) => part !== "")
    .map((part) => {
      if (part.startsWith("`") && part.endsWith("`")) return h("code", {}, part.slice(1, -1));
      if (part.startsWith("**") && part.endsWith("**")) return h("strong", {}, part.slice(2, -2));
      const link = part.match(/^\[([^\]]+)\]\(([^)\s]+)\)$/);
      if (link && /^https?:\/\//.test(link[2])) {
        return h("a", { href: link[2], rel: "noopener noreferrer", target: "_blank" }, link[1]);
      }
      return link ? link[1] : part;
    });
}

function cells(line) {
  return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((cell) => cell.trim());
}

function frontMatter(lines) {
  if (lines[0] !== "---") return [null, lines];
  const end = lines.indexOf("---", 1);
  if (end < 0) return [null, lines];
  const block = h("details", { class: "front-matter" }, h("summary", {}, "Hub metadata"),
    h("pre", {}, lines.slice(1, end).join("\n")));
  return [block, lines.slice(end + 1)];
}

function codeBlock(lines, start) {
  let end = start + 1;
  while (end < lines.length && !lines[end].startsWith("```")) end += 1;
  return [h("pre", {}, h("code", {}, lines.slice(start + 1, end).join("\n"))), end + 1];
}

function tableBlock(lines, start) {
  let end = start;
  while (end < lines.length && lines[end].trim().startsWith("|")) end += 1;
  const [head, , ...body] = lines.slice(start, end);
  const element = h(
    "div",
    { class: "scroll" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, cells(head).map((cell) => h("th", { scope: "col" }, inline(cell))))),
      h("tbody", {}, body.map((row) => h("tr", {}, cells(row).map((cell) => h("td", {}, inline(cell)))))),
    ),
  );
  return [element, end];
}

function listBlock(lines, start) {
  const items = [];
  let end = start;
  while (end < lines.length && /^\s*[-*] /.test(lines[end])) {
    items.push(h("li", {}, inline(lines[end].replace(/^\s*[-*] /, ""))));
    end += 1;
  }
  return [h("ul", {}, items), end];
}

function paragraph(lines, start) {
  let end = start;
  while (end < lines.length && lines[end].trim() && !/^(#|```|\||\s*[-*] )/.test(lines[end])) end += 1;
  return [h("p", {}, inline(lines.slice(start, end).join(" "))), end];
}

export function renderMarkdown(text) {
  const [metadata, lines] = frontMatter(text.replace(/\r\n/g, "\n").split("\n"));
  const blocks = metadata ? [metadata] : [];
  let index = 0;
  while (index < lines.length) {
    const line = lines[index];
    const heading = line.match(/^(#{1,6}) (.*)$/);
    let block = null;
    if (!line.trim()) index += 1;
    else if (heading) {
      // the page's own headings come first: a card's start one level below them
      block = h(`h${Math.min(6, heading[1].length + 2)}`, {}, inline(heading[2]));
      index += 1;
    } else if (line.startsWith("```")) [block, index] = codeBlock(lines, index);
    else if (line.trim().startsWith("|")) [block, index] = tableBlock(lines, index);
    else if (/^\s*[-*] /.test(line)) [block, index] = listBlock(lines, index);
    else [block, index] = paragraph(lines, index);
    if (block) blocks.push(block);
  }
  return h("div", { class: "card" }, blocks);
}
