// The playground page: a Slack-like workspace fed by /playground/stream (protocol.md, issue 10).
"use strict";

const Playground = (() => {
  const { h, render, mrkdwn, plain } = Blocks;
  const PLAYGROUND = "C0PLAYGRND";
  const TEAM = "C0TEAMNEWS";
  const BOT = "U0CLONEBOT";
  const CHANNELS = [
    { id: PLAYGROUND, name: "playground" },
    { id: TEAM, name: "team" },
  ];
  const HINT = [
    ["/clone demo demo-copy", "clone demo now"],
    ["/clone", "open the clone form"],
    ["/env list", "your environments"],
    ["/env help", "every command"],
  ];

  const state = {
    users: [],
    user: null, // the selected user's id
    pane: PLAYGROUND, // what the main pane shows: the channel, or "home" (the app's Home tab)
    messages: new Map(CHANNELS.map((c) => [c.id, new Map()])), // channel -> ts -> message
    views: [], // the open modals, oldest first: {view_id, user, view}
    homes: new Map(), // user -> Home tab view
    post: postJson,
    localTs: 0,
  };
  const $ = (id) => document.getElementById(id);

  // --- start ---------------------------------------------------------------------------------
  async function start(options = {}) {
    if (options.post) state.post = options.post;
    buildPage();
    state.users = options.users || (await getJson("/playground/users")) || [];
    const asked = new URLSearchParams(location.search).get("user") || sessionStorage.getItem("playground-user");
    state.user = (state.users.find((u) => u.id === asked) || state.users[0] || {}).id || null;
    fillUserSwitcher();
    if (options.events) options.events.forEach(handle);
    else connect();
    loadLinks(options.links);
    renderAll();
  }

  function connect() {
    const stream = new EventSource("/playground/stream");
    stream.onmessage = (event) => handle(JSON.parse(event.data));
    stream.onopen = () => {
      // a reconnect replays the whole state: start from nothing
      state.messages.forEach((byTs) => byTs.clear());
      state.views = [];
      renderAll();
      setStatus("");
    };
    stream.onerror = () => setStatus("Disconnected from the playground; reconnecting…");
  }

  async function getJson(url) {
    try {
      const answer = await fetch(url);
      return answer.ok ? await answer.json() : null;
    } catch {
      return null;
    }
  }

  async function postJson(url, body) {
    try {
      const answer = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      return await answer.json();
    } catch (error) {
      return { ok: false, error: `the playground did not answer (${error.message})` };
    }
  }

  // --- events from the server ----------------------------------------------------------------
  function handle(event) {
    if (event.kind === "message") putMessage(event);
    else if (event.kind === "delete") removeMessage(event);
    else if (event.kind === "view") putView(event);
    else if (event.kind === "view_closed") closeView(event.view_id);
    else if (event.kind === "home") {
      state.homes.set(event.user, event.view);
      if (state.pane === "home" && event.user === state.user) renderMain();
    }
  }

  function putMessage(message) {
    if (!state.messages.has(message.channel)) state.messages.set(message.channel, new Map());
    state.messages.get(message.channel).set(message.ts, message); // an update keeps its place
    const list = listFor(message.channel);
    if (!list) return;
    const old = list.querySelector(`[data-ts="${CSS.escape(message.ts)}"]`);
    const node = visible(message) ? messageNode(message) : null;
    if (old && node) old.replaceWith(node);
    else if (old) old.remove();
    else if (node) appendScrolled(list, node);
    if (message.channel === TEAM && !old) loadLinks();
  }

  function removeMessage({ channel, ts }) {
    const byTs = state.messages.get(channel);
    if (byTs) byTs.delete(ts);
    const list = listFor(channel);
    const old = list && list.querySelector(`[data-ts="${CSS.escape(ts)}"]`);
    if (old) old.remove();
  }

  function listFor(channel) {
    if (channel === TEAM) return $("team-messages");
    if (channel === PLAYGROUND && state.pane === PLAYGROUND) return $("messages");
    if (channel === state.user && state.pane === "home") return $("messages");
    return null;
  }

  const visible = (message) => !message.ephemeral_to || message.ephemeral_to === state.user;

  function appendScrolled(list, node) {
    const scroller = list.closest(".scroller");
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
    list.append(node);
    if (atBottom) scroller.scrollTop = scroller.scrollHeight;
  }

  // --- messages ------------------------------------------------------------------------------
  function messageNode(message) {
    const bot = message.user === BOT || !message.user;
    const name = bot ? "clonebot" : userName(message.user);
    const blocks = message.blocks && message.blocks.length ? message.blocks : null;
    const ctx = context({ channel: message.channel, message_ts: message.ts, view_id: null });
    return h(
      "div",
      { class: `message${message.ephemeral_to ? " ephemeral" : ""}`, "data-ts": message.ts, "data-channel": message.channel },
      message.ephemeral_to ? h("div", { class: "only-you" }, "Only visible to you") : null,
      h("div", { class: "message-row" },
        h("div", { class: `avatar${bot ? " bot" : ""}` }, bot ? "cb" : name.slice(0, 1).toUpperCase()),
        h("div", { class: "message-body" },
          h("div", { class: "message-meta" }, h("span", { class: "sender" }, name), bot ? h("span", { class: "app-badge" }, "APP") : null, h("span", { class: "time" }, timeOf(message.ts))),
          blocks ? h("div", { class: "blocks" }, render(blocks, ctx)) : h("div", { class: "blocks" }, mrkdwn(message.text, ctx)),
        ),
      ),
    );
  }

  function timeOf(ts) {
    const date = new Date(Number(String(ts).split(".")[0]) * 1000);
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function userName(id) {
    if (id === BOT) return "clonebot";
    const user = state.users.find((u) => u.id === id);
    return user ? user.name : id;
  }

  function channelName(id) {
    const channel = CHANNELS.find((c) => c.id === id);
    return channel ? channel.name : id;
  }

  // What the renderer needs to know of this page, and where a click goes.
  function context(where) {
    return {
      userName, channelName, confirm,
      users: state.users,
      channels: CHANNELS,
      inView: Boolean(where.view_id),
      state: {},
      onAction(action) {
        const body = { user: state.user, channel: where.channel || null, message_ts: where.message_ts || null, view_id: where.view_id || null, action };
        if (where.view_id) body.state = { values: readValues(this.state) };
        send("/playground/action", body);
      },
    };
  }

  function readValues(inputs) {
    const values = {};
    for (const [blockId, actions] of Object.entries(inputs)) {
      values[blockId] = {};
      for (const [actionId, read] of Object.entries(actions)) values[blockId][actionId] = read();
    }
    return values;
  }

  async function send(url, body) {
    const answer = await state.post(url, body);
    if (answer && answer.ok === false) localNotice(answer.error || "that did not work");
    return answer;
  }

  // An answer of the playground itself (not the bot's), shown like Slackbot's.
  function localNotice(text) {
    state.localTs += 1;
    const ts = `${Math.floor(Date.now() / 1000)}.local${state.localTs}`;
    putMessage({ kind: "message", channel: PLAYGROUND, ts, user: BOT, text: `:warning: ${text}`, blocks: [], ephemeral_to: state.user, local: true });
  }

  // --- confirm dialogs -----------------------------------------------------------------------
  function confirm(dialog, onConfirm) {
    const ctx = context({});
    const close = () => overlay.remove();
    const danger = dialog.style === "danger";
    const overlay = h("div", { class: "overlay confirm-overlay" },
      h("div", { class: "dialog confirm-dialog", role: "dialog" },
        h("div", { class: "dialog-title" }, plain(dialog.title) || "Are you sure?"),
        h("div", { class: "dialog-body" }, Blocks.textObject(dialog.text, ctx)),
        h("div", { class: "dialog-footer" },
          h("button", { type: "button", class: "sk-button confirm-deny", onclick: close }, plain(dialog.deny) || "Cancel"),
          h("button", { type: "button", class: `sk-button ${danger ? "danger" : "primary"} confirm-ok`, onclick: () => { close(); onConfirm(); } }, plain(dialog.confirm) || "Confirm"),
        ),
      ),
    );
    overlay.addEventListener("keydown", (event) => event.key === "Escape" && close());
    document.body.append(overlay);
    overlay.querySelector(".confirm-ok").focus();
  }

  // --- modals --------------------------------------------------------------------------------
  function putView({ view_id, user, view, how }) {
    const at = state.views.findIndex((v) => v.view_id === view_id);
    // "update" replaces the view in place; "open" and "push" stack it on the user's others
    if (at >= 0) state.views[at] = { view_id, user, view, how };
    else state.views.push({ view_id, user, view, how });
    renderModal();
  }

  function closeView(viewId) {
    state.views = state.views.filter((v) => v.view_id !== viewId);
    renderModal();
  }

  const topView = () => [...state.views].reverse().find((v) => v.user === state.user);

  // Rebuilt only when the user's top view changed: a rebuild would lose what was typed in it.
  function renderModal() {
    const top = topView();
    if (top === state.shownView) return;
    state.shownView = top;
    const root = $("modal-root");
    root.replaceChildren();
    if (!top) return;
    const { view } = top;
    const ctx = context({ view_id: top.view_id, channel: null });
    const cancel = () => {
      closeView(top.view_id);
      send("/playground/close", { user: state.user, view_id: top.view_id });
    };
    const submit = async (event) => {
      event.target.disabled = true;
      const answer = await send("/playground/submit", { user: state.user, view_id: top.view_id, values: readValues(ctx.state) });
      event.target.disabled = false;
      if (answer && answer.ok !== false) afterSubmit(top, answer);
    };
    root.append(
      h("div", { class: "overlay modal-overlay", onkeydown: (event) => event.key === "Escape" && cancel() },
        h("div", { class: "dialog modal", role: "dialog", "data-view-id": top.view_id, "data-callback-id": view.callback_id || "" },
          h("div", { class: "modal-header" },
            h("div", { class: "modal-title" }, plain(view.title)),
            h("button", { type: "button", class: "modal-x", title: "Close", onclick: cancel }, "✕")),
          h("div", { class: "modal-body" }, h("div", { class: "modal-errors" }), render(view.blocks, ctx)),
          h("div", { class: "modal-footer" },
            h("button", { type: "button", class: "sk-button modal-close", onclick: cancel }, plain(view.close) || "Cancel"),
            view.submit ? h("button", { type: "button", class: "sk-button primary modal-submit", onclick: submit }, plain(view.submit)) : null),
        ),
      ),
    );
  }

  function afterSubmit(top, answer) {
    const action = answer.response_action;
    if (action === "errors") return showErrors(top.view_id, answer.errors || {});
    if (action === "update" && answer.view) return putView({ ...top, view: answer.view });
    if (action === "push" && answer.view) return putView({ view_id: answer.view.id || `${top.view_id}+`, user: top.user, view: answer.view });
    if (action === "clear") state.views = state.views.filter((v) => v.user !== top.user);
    closeView(top.view_id); // a plain ack closes the view, as in Slack
  }

  // Each message in red under its input block; one for a block the modal lacks goes on top.
  function showErrors(viewId, errors) {
    const modal = document.querySelector(`.modal[data-view-id="${CSS.escape(viewId)}"]`);
    if (!modal) return;
    modal.querySelectorAll(".input-error").forEach((node) => node.remove());
    modal.querySelectorAll(".has-error").forEach((node) => node.classList.remove("has-error"));
    for (const [blockId, text] of Object.entries(errors)) {
      const block = modal.querySelector(`.block[data-block-id="${CSS.escape(blockId)}"]`);
      const error = h("div", { class: "input-error", "data-error-for": blockId }, String(text));
      if (block) {
        block.classList.add("has-error");
        block.append(error);
      } else modal.querySelector(".modal-errors").append(error);
    }
  }

  // --- page ----------------------------------------------------------------------------------
  function buildPage() {
    const app = h("div", { class: "workspace" },
      h("nav", { class: "sidebar" },
        h("div", { class: "workspace-name" }, "clonebot playground"),
        h("label", { class: "switcher" }, h("span", {}, "You are"), h("select", { id: "user-switcher", onchange: switchUser })),
        h("div", { class: "nav-section" }, "Channels"),
        CHANNELS.map((c) => h("a", { href: "#", class: "nav-item", "data-pane": c.id, onclick: (e) => choosePane(e, c.id) }, h("span", { class: "hash" }, "#"), c.name)),
        h("div", { class: "nav-section" }, "Apps"),
        h("a", { href: "#", class: "nav-item", "data-pane": "home", onclick: (e) => choosePane(e, "home") }, h("span", { class: "app-dot" }), "clonebot"),
        h("div", { class: "nav-section" }, "Sites"),
        h("div", { id: "links", class: "links" }, h("div", { class: "nav-note" }, "…")),
      ),
      h("main", { class: "pane main-pane" },
        h("header", { class: "pane-header" }, h("div", { id: "pane-title", class: "pane-title" }), h("div", { id: "pane-topic", class: "pane-topic" })),
        h("div", { id: "status", class: "status", hidden: true }),
        h("div", { class: "scroller" }, h("div", { id: "home" }), h("div", { id: "messages", class: "message-list" })),
        h("form", { id: "composer-form", class: "composer", onsubmit: sendCommand },
          h("div", { class: "composer-box" },
            h("input", { id: "composer", type: "text", autocomplete: "off", spellcheck: "false", placeholder: "Message #playground — type /clone or /env" }),
            h("button", { id: "send", type: "submit", class: "send", title: "Send" }, "➤")),
          h("div", { class: "composer-hint" }, "Try ", HINT.map(([cmd, what]) => h("button", { type: "button", class: "hint", title: what, onclick: () => fillComposer(cmd) }, cmd)))),
      ),
      h("aside", { class: "pane team-pane", id: "team-pane" },
        h("header", { class: "pane-header" }, h("div", { class: "pane-title" }, "# team"), h("div", { class: "pane-topic" }, "The team's notifications")),
        h("div", { class: "scroller" }, h("div", { id: "team-messages", class: "message-list" }))),
      h("div", { id: "modal-root" }),
    );
    document.body.replaceChildren(app);
  }

  function fillUserSwitcher() {
    const select = $("user-switcher");
    select.replaceChildren(...state.users.map((u) => h("option", { value: u.id, "data-role": u.role }, `${u.name} · ${u.role}`)));
    select.value = state.user || "";
  }

  function switchUser(event) {
    state.user = event.target.value;
    sessionStorage.setItem("playground-user", state.user);
    renderAll();
    openHome();
  }

  function choosePane(event, pane) {
    event.preventDefault();
    if (pane === TEAM) {
      $("team-pane").scrollIntoView({ behavior: "smooth" });
      $("team-pane").classList.add("flash");
      setTimeout(() => $("team-pane").classList.remove("flash"), 800);
      return;
    }
    state.pane = pane;
    renderAll();
    openHome();
  }

  // as Slack does when a user opens the app's Home tab: the bot publishes it (app_home_opened)
  function openHome() {
    if (state.pane === "home") send("/playground/home", { user: state.user });
  }

  function fillComposer(text) {
    $("composer").value = text;
    $("composer").focus();
  }

  async function sendCommand(event) {
    event.preventDefault();
    const text = $("composer").value.trim();
    if (!text) return;
    if (!text.startsWith("/")) return localNotice("Only commands work here: type /clone or /env help.");
    $("composer").value = "";
    const answer = await send("/playground/command", { user: state.user, channel: PLAYGROUND, text });
    if (answer && answer.ok === false && !$("composer").value) $("composer").value = text;
  }

  function setStatus(text) {
    $("status").textContent = text;
    $("status").hidden = !text;
  }

  function renderAll() {
    renderMain();
    renderList($("team-messages"), TEAM);
    renderModal();
  }

  function renderMain() {
    const home = state.pane === "home";
    document.querySelectorAll(".nav-item").forEach((n) => n.classList.toggle("active", n.dataset.pane === state.pane));
    $("pane-title").textContent = home ? "clonebot" : "# playground";
    $("pane-topic").textContent = home ? `Home of ${userName(state.user)}, and clonebot's direct messages` : "Type /clone demo demo-copy to clone the demo environment";
    $("composer-form").hidden = home;
    const view = home && state.homes.get(state.user);
    const homeBlocks = view ? render(view.blocks, context({ view_id: null })) : [h("div", { class: "pane-topic" }, "clonebot's Home tab shows here once clonebot has published it.")];
    $("home").replaceChildren(...(home ? [h("div", { class: "home-view" }, homeBlocks)] : []));
    renderList($("messages"), home ? state.user : PLAYGROUND);
  }

  function renderList(list, channel) {
    const byTs = state.messages.get(channel) || new Map();
    list.replaceChildren(...[...byTs.values()].filter(visible).map(messageNode));
    const scroller = list.closest(".scroller");
    scroller.scrollTop = scroller.scrollHeight;
  }

  // --- links to the environments' sites ------------------------------------------------------
  let linksTimer = null;
  function loadLinks(fixed) {
    if (fixed) return showLinks(fixed);
    if (state.post !== postJson) return; // a fixture has no server to ask
    clearTimeout(linksTimer);
    linksTimer = setTimeout(async () => showLinks(await getJson("/playground/links")), 500);
  }

  function showLinks(links) {
    const root = $("links");
    const envs = (links && links.environments) || [];
    if (!envs.length) return root.replaceChildren(h("div", { class: "nav-note" }, "No site yet"));
    root.replaceChildren(
      ...envs.map((env) =>
        h("div", { class: "site", "data-env": env.name },
          siteLink(env.url, env.name),
          (env.domains || []).map((d) => siteLink(`http://${d}${portOf(links.router)}/`, d, "domain")))),
    );
  }

  function siteLink(url, text, cls = "") {
    const safe = Blocks.safeUrl(url);
    return safe ? h("a", { class: `site-link ${cls}`, href: safe, target: "_blank", rel: "noopener noreferrer" }, text) : h("span", {}, text);
  }

  function portOf(router) {
    try {
      const port = new URL(router).port;
      return port ? `:${port}` : "";
    } catch {
      return "";
    }
  }

  return { start, handle, showErrors, state };
})();
