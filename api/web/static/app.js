// kbq's pages. The search works without this file; it adds Ctrl+Enter to the report box
// and runs the chat panel over POST /v1/chat. Everything the server sends is put into the
// page as text nodes (never as HTML), so a case cannot inject markup.
"use strict";

(function () {
  const report = document.getElementById("q");
  if (report) {
    report.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        report.form.requestSubmit();
      }
    });
  }
  const form = document.getElementById("chat-form");
  if (form) startChat(form);
})();

function element(tag, text, attributes) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  return node;
}

// 'zh' when Chinese characters are a real share of the letters (as kb.lexicon.detect_language).
function language(text) {
  const letters = (text.match(/\p{L}/gu) || []).length;
  const chinese = (text.match(/[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]/g) || []).length;
  return letters && chinese / letters > 0.15 ? "zh" : "en";
}

function startChat(form) {
  const log = document.getElementById("chat-log");
  const input = document.getElementById("chat-input");
  const sendButton = form.querySelector("button[type=submit]");
  const root = form.dataset.root || "";
  const KEY = "kbq.chat";  // this tab's conversation, kept while moving between pages
  let busy = false;
  let state = load();

  function load() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(KEY));
      if (saved && Array.isArray(saved.turns)) return saved;
    } catch (_) { /* storage off or unreadable: start afresh */ }
    return { session: null, turns: [] };
  }
  function save() {
    try { sessionStorage.setItem(KEY, JSON.stringify(state)); } catch (_) { /* storage off */ }
  }

  function caseLink(id) {
    return element("a", id, { href: `${root}/cases/${encodeURIComponent(id)}`, class: "case-id" });
  }

  // Plain text, with the ids of the answer's cases as links to their pages.
  function withCaseLinks(parent, text, ids) {
    if (!ids.size) {
      parent.append(text);
      return;
    }
    const names = [...ids].map((id) => id.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|");
    text.split(new RegExp(`(?<![\\w.-])(${names})(?![\\w-])`)).forEach((part, i) => {
      if (i % 2) parent.append(caseLink(part));
      else if (part) parent.append(part);
    });
  }

  // The reply is a little Markdown: paragraphs, "- " items, **bold**, `code` (a case id
  // becomes a link to its page) and web addresses.
  function inline(parent, text, ids) {
    text.split(/(\*\*[^*]+\*\*|`[^`]+`|https?:\/\/[^\s,)\]]+)/).forEach((part, i) => {
      if (i % 2 === 0) {
        if (part) withCaseLinks(parent, part, ids);
      } else if (part.startsWith("**")) {
        parent.append(element("strong", part.slice(2, -2)));
      } else if (part.startsWith("`")) {
        const code = part.slice(1, -1);
        parent.append(ids.has(code) ? caseLink(code) : element("code", code));
      } else {
        parent.append(element("a", part, { href: part, rel: "noopener noreferrer" }));
      }
    });
  }
  function markdown(text, ids) {
    const fragment = document.createDocumentFragment();
    let list = null;
    for (const block of text.split(/\n{2,}/)) {
      if (block.startsWith("- ")) {
        if (!list) fragment.append(list = element("ul"));
        const item = element("li");
        inline(item, block.slice(2), ids);
        list.append(item);
      } else {
        list = null;
        const paragraph = element("p");
        inline(paragraph, block, ids);
        fragment.append(paragraph);
      }
    }
    return fragment;
  }

  function draw(turn) {
    for (const old of log.querySelectorAll(".options button")) old.disabled = true;
    let node;
    if (turn.who === "user") {
      node = element("div", turn.text, { class: "msg user", lang: language(turn.text) });
    } else if (turn.who === "error") {
      node = element("div", null, { class: "msg error", lang: "en" });
      node.append(element("strong", "Error: "), turn.text);
    } else {
      const data = turn.data;
      const ids = new Set((data.cases || []).map((hit) => hit.id));
      node = element("div", null, { class: "msg bot", lang: data.language === "zh" ? "zh" : "en" });
      node.append(markdown(data.reply || "", ids));
      if (data.question && data.question.options.length) {
        const options = element("ol", null, { class: "options", "aria-label": "Answers" });
        data.question.options.forEach((option, i) => {
          const button = element("button", `${i + 1}. ${option}`, { type: "button" });
          button.addEventListener("click", () => ask(String(i + 1)));
          const item = element("li");
          item.append(button);
          options.append(item);
        });
        node.append(options);
      }
    }
    log.append(node);
    // A question or a short message: show the end; a long answer: show where it starts.
    log.scrollTop = turn.who === "bot" ? node.offsetTop - 8 : log.scrollHeight;
  }

  function add(turn) {
    state.turns.push(turn);
    save();
    draw(turn);
  }

  async function ask(text) {
    if (busy) return;
    busy = true;
    sendButton.disabled = true;
    form.setAttribute("aria-busy", "true");
    add({ who: "user", text });
    try {
      const body = { message: text };
      if (state.session) body.session_id = state.session;
      const response = await fetch(form.action, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
      });
      const data = await response.json().catch(() => null);
      if (response.ok && data) {
        state.session = data.session_id;
        add({ who: "bot", data });
      } else {
        let message = (data && data.error && data.error.message) || `the server answered ${response.status}`;
        if (response.status === 404 && state.session) {
          state.session = null;  // expired or unknown: the next message starts a new conversation
          message += " (your next message starts a new conversation)";
        }
        add({ who: "error", text: message });
      }
    } catch (error) {
      add({ who: "error", text: `no answer from the server (${error.message})` });
    } finally {
      busy = false;
      sendButton.disabled = false;
      form.removeAttribute("aria-busy");
      save();
    }
  }

  form.hidden = false;
  state.turns.forEach(draw);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || busy) return;
    input.value = "";
    ask(text).then(() => input.focus());
  });
  input.addEventListener("keydown", (event) => {
    // Enter sends; not while an input method is composing (typing Chinese), nor with Shift.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  document.getElementById("chat-new").addEventListener("click", () => {
    state = { session: null, turns: [] };
    save();
    log.replaceChildren();
    input.focus();
  });
}
