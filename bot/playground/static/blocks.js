// Block Kit as Slack shows it, built from DOM nodes and text nodes only: message text echoes
// what users typed, so nothing from a message is ever parsed as HTML.
"use strict";

const Blocks = (() => {
  // --- small DOM helpers -------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function safeUrl(url) {
    // only web links: a javascript: or data: URL from a message must never become a link
    try {
      const parsed = new URL(url);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch {
      return null;
    }
  }

  const unescape = (text) => text.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");

  // --- mrkdwn --------------------------------------------------------------------------------
  // Links, mentions and inline code become placeholders (private-use characters) first, so
  // *bold* may wrap them; the placeholders are put back as elements when text nodes are made.
  const MARK = 0xe000;
  const STYLES = { "*": "b", _: "i", "~": "s" };
  const FORMAT = /(^|[^\w*_~])([*_~])(?=\S)([^\n]*?\S)\2(?![\w])/;

  function mrkdwn(text, ctx) {
    const root = h("div", { class: "mrkdwn" });
    const tokens = [];
    const hold = (node) => String.fromCharCode(MARK + tokens.push(node) - 1);
    let source = String(text || "").replace(/[\ue000-\uf8ff]/g, "\ufffd");
    source = source.replace(/```([\s\S]*?)```/g, (_, code) => hold(h("pre", { class: "code-block" }, unescape(code.replace(/^\n/, "")))));
    source = source.replace(/`([^`\n]+)`/g, (_, code) => hold(h("code", {}, unescape(code))));
    source = source.replace(/<([^<>\n]+)>/g, (_, inner) => hold(special(inner, ctx)));
    let quote = null;
    source.split("\n").forEach((line, index, lines) => {
      const quoted = /^(&gt;|>) ?/.exec(line);
      if (quoted) {
        quote = quote || root.appendChild(h("blockquote"));
        quote.append(...inline(unescape(line.slice(quoted[0].length)), tokens), h("br"));
        return;
      }
      quote = null;
      root.append(...inline(unescape(line), tokens));
      if (index < lines.length - 1) root.append(h("br"));
    });
    return root;
  }

  function inline(text, tokens) {
    const match = FORMAT.exec(text);
    if (!match) return placeholders(text, tokens);
    const start = match.index + match[1].length;
    const end = match.index + match[0].length;
    const styled = h(STYLES[match[2]], {}, inline(match[3], tokens));
    return [...placeholders(text.slice(0, start), tokens), styled, ...inline(text.slice(end), tokens)];
  }

  function placeholders(text, tokens) {
    const out = [];
    let plain = "";
    for (const char of text) {
      const index = char.charCodeAt(0) - MARK;
      if (index >= 0 && index < tokens.length) {
        if (plain) out.push(document.createTextNode(plain));
        out.push(tokens[index].cloneNode(true));
        plain = "";
      } else plain += char;
    }
    if (plain) out.push(document.createTextNode(plain));
    return out;
  }

  function special(inner, ctx) {
    const [target, label] = splitOnce(inner, "|");
    if (target.startsWith("@")) {
      return h("span", { class: "mention" }, "@" + (label || ctx.userName(target.slice(1))));
    }
    if (target.startsWith("#")) {
      return h("span", { class: "mention" }, "#" + (label || ctx.channelName(target.slice(1))));
    }
    if (target.startsWith("!")) return h("span", { class: "mention" }, "@" + (label || target.slice(1).split("^")[0]));
    const url = safeUrl(unescape(target));
    const shown = unescape(label || target);
    if (!url) return document.createTextNode(shown);
    return h("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, shown);
  }

  function splitOnce(text, separator) {
    const at = text.indexOf(separator);
    return at < 0 ? [text, ""] : [text.slice(0, at), text.slice(at + 1)];
  }

  function textObject(object, ctx) {
    if (!object) return h("span");
    if (object.type === "mrkdwn") return mrkdwn(object.text, ctx);
    return h("span", { class: "plain" }, object.text || "");
  }

  const plain = (object) => (object && object.text) || "";

  // --- blocks --------------------------------------------------------------------------------
  // ctx: {userName(id), channelName(id), users, channels, inView, onAction(action, block, el),
  //       state: {block_id: {action_id: () => value}} filled by the inputs rendered}
  function render(blocks, ctx) {
    return (blocks || []).map((block, index) => {
      const blockId = block.block_id || `b${index}`;
      const render = RENDERERS[block.type] || unsupported;
      const node = render({ ...block, block_id: blockId }, ctx);
      node.classList.add("block", `block-${block.type}`);
      node.dataset.blockId = blockId;
      return node;
    });
  }

  const RENDERERS = {
    header: (block) => h("div", {}, plain(block.text)),
    divider: () => h("hr"),
    image: (block) => h("figure", {}, block.title ? h("figcaption", {}, plain(block.title)) : null, image(block)),
    context: (block, ctx) =>
      h("div", {}, (block.elements || []).map((el) => (el.type === "image" ? image(el) : textObject(el, ctx)))),
    actions: (block, ctx) => h("div", {}, (block.elements || []).map((el) => element(el, block, ctx))),
    section: (block, ctx) =>
      h(
        "div",
        {},
        h(
          "div",
          { class: "section-main" },
          block.text ? textObject(block.text, ctx) : null,
          block.fields ? h("div", { class: "fields" }, block.fields.map((f) => textObject(f, ctx))) : null,
        ),
        block.accessory ? h("div", { class: "accessory" }, element(block.accessory, block, ctx)) : null,
      ),
    input: (block, ctx) =>
      h(
        "div",
        {},
        h("label", { class: "input-label" }, plain(block.label), block.optional ? h("span", { class: "optional" }, " (optional)") : null),
        element(block.element, block, ctx),
        block.hint ? h("div", { class: "input-hint" }, plain(block.hint)) : null,
      ),
  };

  function unsupported(block) {
    return h("div", { class: "unsupported" }, `(a ${block.type} block, not shown here)`);
  }

  function image(el) {
    const url = safeUrl(el.image_url || "");
    return url ? h("img", { src: url, alt: el.alt_text || "", title: el.alt_text || "" }) : h("span", {}, el.alt_text || "");
  }

  // --- elements ------------------------------------------------------------------------------
  // In an input block an element only holds state (read at submit); elsewhere a change is an
  // action, sent at once as Slack does.
  function element(el, block, ctx) {
    const make = ELEMENTS[el.type];
    if (!make) return h("span", { class: "unsupported" }, `(${el.type})`);
    const node = make(el, ctx, (fields) => fire(el, block, ctx, fields));
    node.dataset.actionId = el.action_id || "";
    if (block.type === "input" || (ctx.inView && STATEFUL.has(el.type))) {
      const slot = (ctx.state[block.block_id] = ctx.state[block.block_id] || {});
      slot[el.action_id] = () => ({ type: el.type, ...node.readValue() });
    }
    return node;
  }

  const STATEFUL = new Set(["static_select", "multi_static_select", "checkboxes", "radio_buttons", "users_select", "conversations_select", "channels_select"]);

  function fire(el, block, ctx, fields) {
    if (block.type === "input" && !el.dispatch_action) return;
    ctx.onAction({ action_id: el.action_id, block_id: block.block_id, type: el.type, ...fields }, el);
  }

  const ELEMENTS = {
    button: (el, ctx, send) => {
      const cls = `sk-button ${el.style || ""}`.trim();
      const url = el.url ? safeUrl(el.url) : null;
      const click = (event) => {
        if (el.confirm) {
          event.preventDefault();
          ctx.confirm(el.confirm, () => {
            if (url) window.open(url, "_blank", "noopener");
            send({ value: el.value });
          });
        } else send({ value: el.value });
      };
      if (url) return h("a", { class: cls, href: url, target: "_blank", rel: "noopener noreferrer", onclick: click }, plain(el.text));
      return h("button", { type: "button", class: cls, onclick: click }, plain(el.text));
    },
    static_select: (el, ctx, send) => select(el, optionsOf(el), el.initial_option, (option) => send({ selected_option: option })),
    users_select: (el, ctx, send) =>
      select(el, ctx.users.map((u) => option(u.id, u.name)), el.initial_user && option(el.initial_user), (o) => send({ selected_user: o && o.value }), "selected_user"),
    conversations_select: (el, ctx, send) =>
      select(el, ctx.channels.map((c) => option(c.id, "#" + c.name)), el.initial_conversation && option(el.initial_conversation), (o) => send({ selected_conversation: o && o.value }), "selected_conversation"),
    channels_select: (el, ctx, send) =>
      select(el, ctx.channels.map((c) => option(c.id, "#" + c.name)), el.initial_channel && option(el.initial_channel), (o) => send({ selected_channel: o && o.value }), "selected_channel"),
    overflow: (el, ctx, send) => {
      const menu = h("div", { class: "overflow-menu", hidden: true });
      const toggle = () => (menu.hidden = !menu.hidden);
      for (const o of el.options || []) {
        menu.append(h("button", { type: "button", class: "overflow-option", "data-value": o.value, onclick: () => { toggle(); send({ selected_option: o }); } }, plain(o.text)));
      }
      return h("div", { class: "overflow" }, h("button", { type: "button", class: "sk-button overflow-button", title: "More actions", onclick: toggle }, "⋯"), menu);
    },
    multi_static_select: (el, ctx, send) => {
      const options = optionsOf(el);
      const chosen = new Set((el.initial_options || []).map((o) => o.value));
      const node = h("select", { multiple: true, class: "sk-select multi" }, options.map((o, i) => h("option", { value: i, selected: chosen.has(o.value) }, plain(o.text))));
      const read = () => options.filter((o, i) => node.options[i].selected);
      node.addEventListener("change", () => send({ selected_options: read() }));
      node.readValue = () => ({ selected_options: read() });
      return node;
    },
    checkboxes: (el, ctx, send) => choices(el, ctx, "checkbox", send),
    radio_buttons: (el, ctx, send) => choices(el, ctx, "radio", send),
    plain_text_input: (el) => {
      const attrs = { class: "sk-input", maxlength: el.max_length, placeholder: plain(el.placeholder) || null };
      const node = el.multiline ? h("textarea", { ...attrs, rows: 4 }) : h("input", { ...attrs, type: "text" });
      node.value = el.initial_value || "";
      node.readValue = () => ({ value: node.value === "" ? null : node.value });
      return node;
    },
    number_input: (el) => {
      const node = h("input", { class: "sk-input", type: "number", min: el.min_value, max: el.max_value, step: el.is_decimal_allowed ? "any" : "1" });
      node.value = el.initial_value || "";
      node.readValue = () => ({ value: node.value === "" ? null : node.value });
      return node;
    },
  };

  function option(value, text) {
    return { text: { type: "plain_text", text: text || value }, value };
  }

  function optionsOf(el) {
    if (el.option_groups) return el.option_groups.flatMap((group) => group.options || []);
    return el.options || [];
  }

  // A native select keeps the page small; options are matched back to their objects by index.
  function select(el, options, initial, onChange, key = "selected_option") {
    const fallback = { users_select: "Select a user", conversations_select: "Select a channel", channels_select: "Select a channel" }[el.type];
    const node = h("select", { class: "sk-select" }, h("option", { value: "" }, plain(el.placeholder) || fallback || "Select an item"));
    const groups = el.option_groups || [{ options }];
    let index = 0;
    for (const group of groups) {
      const items = (group.options || []).map((o) => h("option", { value: index++ }, plain(o.text)));
      node.append(...(group.label ? [h("optgroup", { label: plain(group.label) }, items)] : items));
    }
    const chosen = () => (node.value === "" ? null : options[Number(node.value)]);
    const start = initial ? options.findIndex((o) => o.value === initial.value) : -1;
    node.value = start >= 0 ? String(start) : "";
    node.addEventListener("change", () => onChange(chosen()));
    node.readValue = () => ({ [key]: key === "selected_option" ? chosen() : chosen() && chosen().value });
    return node;
  }

  function choices(el, ctx, kind, send) {
    const initial = new Set([...(el.initial_options || []), el.initial_option].filter(Boolean).map((o) => o.value));
    const name = `${kind}-${el.action_id}-${Math.random().toString(36).slice(2)}`;
    const inputs = [];
    const node = h(
      "div",
      { class: `choices ${kind}` },
      (el.options || []).map((o) => {
        const input = h("input", { type: kind, name, value: o.value, checked: initial.has(o.value) });
        inputs.push(input);
        return h("label", { class: "choice" }, input, h("span", {}, textObject(o.text, ctx), o.description ? h("span", { class: "description" }, plain(o.description)) : null));
      }),
    );
    const picked = () => (el.options || []).filter((o, i) => inputs[i].checked);
    node.readValue = () => (kind === "radio" ? { selected_option: picked()[0] || null } : { selected_options: picked() });
    node.addEventListener("change", () => send(node.readValue()));
    return node;
  }

  return { h, mrkdwn, render, safeUrl, textObject, plain };
})();
