// Markdown to DOM nodes, for text a model wrote: nothing it writes can run, load or navigate.
//
// Every node is made with createElement and every piece of text is a text node:
// no HTML is ever parsed (no innerHTML, no DOMParser), so "<script>" is just
// eight characters.  Links are shown as inert text followed by their address
// (a model cannot make the user navigate by a click they did not intend, and a
// user copies the address when they mean to go there); images are never loaded,
// only their alt text is shown.  Supported: paragraphs, headings, emphasis,
// strong, strike-through, inline code, fenced code blocks (with a copy button),
// ordered and unordered lists, block quotes, tables and rules.

// An inline construct is looked for this far ahead only: a long line of
// unmatched openers stays linear, not quadratic.
const MAX_INLINE_SPAN = 2048;
// Block quotes nest this deep at most (">>>>>..." is text beyond).
const MAX_QUOTE_DEPTH = 8;

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]{0,32})/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const TABLE_SEPARATOR = /^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$/;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function copyText(text, button) {
  const done = (label) => {
    if (!button) return;
    const before = button.dataset.label || button.textContent;
    button.dataset.label = before;
    button.textContent = label;
    setTimeout(() => { button.textContent = before; }, 1500);
  };
  if (navigator.clipboard && navigator.clipboard.writeText) {
    navigator.clipboard.writeText(text).then(() => done("Copied"), () => done("Copy failed"));
  } else {
    done("Copy failed");
  }
}

function codeBlock(lines, language) {
  const figure = el("div", "code-block");
  const bar = el("div", "code-bar");
  bar.append(el("span", "code-lang", language || "code"));
  const copy = el("button", "copy-code", "Copy code");
  copy.type = "button";
  const text = lines.join("\n");
  copy.addEventListener("click", () => copyText(text, copy));
  bar.append(copy);
  const pre = el("pre");
  pre.tabIndex = 0; // a wide block scrolls with the keyboard too
  pre.setAttribute("aria-label", (language || "code") + " block");
  pre.append(el("code", null, text));
  figure.append(bar, pre);
  return figure;
}

// -- inline ----------------------------------------------------------------------------

function findClose(text, marker, from) {
  const end = Math.min(text.length, from + MAX_INLINE_SPAN);
  const at = text.indexOf(marker, from);
  return at !== -1 && at < end ? at : -1;
}

function isWordChar(ch) {
  return ch !== undefined && /[\p{L}\p{N}]/u.test(ch);
}

// Appends the inline content of `text` to `parent`.
export function renderInline(text, parent, depth = 0) {
  let plain = "";
  const flush = () => {
    if (plain) parent.append(document.createTextNode(plain));
    plain = "";
  };
  let i = 0;
  while (i < text.length) {
    const ch = text[i];
    if (ch === "\\" && i + 1 < text.length && /[\\`*_~[\]()#!>|-]/.test(text[i + 1])) {
      plain += text[i + 1];
      i += 2;
      continue;
    }
    if (ch === "\n") {
      flush();
      parent.append(el("br"));
      i += 1;
      continue;
    }
    if (ch === "`") {
      let ticks = 1;
      while (text[i + ticks] === "`") ticks += 1;
      const marker = "`".repeat(ticks);
      const close = findClose(text, marker, i + ticks);
      if (close !== -1) {
        flush();
        parent.append(el("code", null, text.slice(i + ticks, close).replace(/^ (.+) $/, "$1")));
        i = close + ticks;
        continue;
      }
      plain += marker;
      i += ticks;
      continue;
    }
    if (depth < 6 && (ch === "*" || ch === "_" || ch === "~")) {
      const double = text[i + 1] === ch;
      const marker = double ? ch + ch : ch;
      const opensWord = ch !== "_" || !isWordChar(text[i - 1]);
      const next = text[i + marker.length];
      if ((ch !== "~" || double) && opensWord && next !== undefined && !/\s/.test(next)) {
        const close = findClose(text, marker, i + marker.length + 1);
        if (close !== -1 && !/\s/.test(text[close - 1]) && (ch !== "_" || !isWordChar(text[close + marker.length]))) {
          flush();
          const tag = ch === "~" ? "del" : double ? "strong" : "em";
          const node = el(tag);
          renderInline(text.slice(i + marker.length, close), node, depth + 1);
          parent.append(node);
          i = close + marker.length;
          continue;
        }
      }
    }
    if (ch === "[" || (ch === "!" && text[i + 1] === "[")) {
      const image = ch === "!";
      const start = i + (image ? 2 : 1);
      const closeBracket = findClose(text, "]", start);
      if (closeBracket !== -1 && text[closeBracket + 1] === "(") {
        const closeParen = findClose(text, ")", closeBracket + 2);
        if (closeParen !== -1) {
          flush();
          const label = text.slice(start, closeBracket);
          const target = text.slice(closeBracket + 2, closeParen).trim().split(/\s+/)[0] || "";
          if (image) {
            parent.append(el("span", "md-image", "[image not loaded: " + (label || "no description") + "]"));
          } else {
            const span = el("span", "md-link");
            renderInline(label, span, depth + 1);
            parent.append(span);
            if (target && target !== label) parent.append(el("span", "md-link-target", " (" + target + ")"));
          }
          i = closeParen + 1;
          continue;
        }
      }
    }
    plain += ch;
    i += 1;
  }
  flush();
}

// -- blocks ----------------------------------------------------------------------------

function splitRow(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  return row.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function table(header, rows) {
  const wrap = el("div", "table-wrap");
  wrap.tabIndex = 0;
  const node = el("table");
  const head = el("thead");
  const tr = el("tr");
  for (const cell of header) {
    const th = el("th");
    th.scope = "col";
    renderInline(cell, th);
    tr.append(th);
  }
  head.append(tr);
  const body = el("tbody");
  for (const row of rows) {
    const line = el("tr");
    for (let c = 0; c < header.length; c += 1) {
      const td = el("td");
      renderInline(row[c] || "", td);
      line.append(td);
    }
    body.append(line);
  }
  node.append(head, body);
  wrap.append(node);
  return wrap;
}

function isBlockStart(line, next) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || LIST_ITEM.test(line) || QUOTE.test(line)
    || (line.includes("|") && next !== undefined && TABLE_SEPARATOR.test(next) && next.includes("-"));
}

function renderBlocks(lines, parent, depth, headingLevel) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[1];
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(marker)) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1; // the closing fence (or the end: an unfinished block while streaming)
      parent.append(codeBlock(body, fence[2]));
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      const node = el("h" + headingLevel(heading[1].length), "md-h md-h" + heading[1].length);
      renderInline(heading[2], node);
      parent.append(node);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      parent.append(el("hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line) && depth < MAX_QUOTE_DEPTH) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) {
        inner.push(QUOTE.exec(lines[i])[1]);
        i += 1;
      }
      const quote = el("blockquote");
      renderBlocks(inner, quote, depth + 1, headingLevel);
      parent.append(quote);
      continue;
    }
    const item = LIST_ITEM.exec(line);
    if (item) {
      const ordered = /\d/.test(item[2]);
      const list = el(ordered ? "ol" : "ul");
      if (ordered) {
        const first = parseInt(item[2], 10);
        if (first !== 1 && Number.isFinite(first)) list.start = first;
      }
      while (i < lines.length) {
        const current = LIST_ITEM.exec(lines[i]);
        if (!current || /\d/.test(current[2]) !== ordered) break;
        const parts = [current[3]];
        i += 1;
        while (i < lines.length && lines[i].trim() && !LIST_ITEM.test(lines[i]) && /^\s{2,}/.test(lines[i])) {
          parts.push(lines[i].trim());
          i += 1;
        }
        const li = el("li");
        renderInline(parts.join("\n"), li);
        list.append(li);
        while (i < lines.length && !lines[i].trim() && LIST_ITEM.test(lines[i + 1] || "")) i += 1;
      }
      parent.append(list);
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_SEPARATOR.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      const header = splitRow(line);
      const rows = [];
      i += 2;
      while (i < lines.length && lines[i].includes("|") && lines[i].trim()) {
        rows.push(splitRow(lines[i]));
        i += 1;
      }
      parent.append(table(header, rows));
      continue;
    }
    const paragraph = [line];
    i += 1;
    while (i < lines.length && lines[i].trim() && !isBlockStart(lines[i], lines[i + 1])) {
      paragraph.push(lines[i]);
      i += 1;
    }
    const p = el("p");
    renderInline(paragraph.join("\n"), p);
    parent.append(p);
  }
}

// A DocumentFragment holding `text` rendered as Markdown.
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  // Model headings sit below the page's own (h1 the page, h2 each message): the levels
  // the text uses become h3, h4, ... in order, so that no level is skipped.
  const used = new Set();
  for (const line of lines) {
    const heading = HEADING.exec(line);
    if (heading) used.add(heading[1].length);
  }
  const ranks = new Map(Array.from(used).sort().map((level, rank) => [level, Math.min(6, 3 + rank)]));
  renderBlocks(lines, fragment, 0, (level) => ranks.get(level) || 6);
  return fragment;
}
