// vmrsched task pane: adds a single-use video room, or one of the user's personal rooms, to the
// meeting being composed.
// Runs inside Outlook (Office.js) or, opened in an ordinary browser, on a simulated meeting
// (preview mode). Every text comes from the integration's configuration.
"use strict";

(function () {
  const app = document.getElementById("vmr-app");
  const settings = JSON.parse(app.dataset.settings);
  const texts = settings.texts;
  const TOKEN_RE = /(PXPS|TOK):-[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}#/;
  const $ = (id) => document.getElementById(id);

  // --- debug log ---------------------------------------------------------------------------
  function log(...parts) {
    if (!settings.debug) return;
    const line = new Date().toISOString() + " " + parts.map((p) =>
      typeof p === "string" ? p : JSON.stringify(p)).join(" ");
    $("vmr-log").textContent += line + "\n";
  }

  // --- status ------------------------------------------------------------------------------
  function show(kind, heading, message) {
    const status = $("vmr-status");
    status.className = "vmr-" + kind;
    const h = $("vmr-status-heading");
    const p = $("vmr-status-message");
    h.textContent = heading;
    p.textContent = message;
    h.hidden = !heading;
    p.hidden = !message;
    if (heading) h.focus();
  }

  function uuid4() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function visibleText(html) {
    const doc = new DOMParser().parseFromString(html, "text/html");
    return (doc.body.textContent || "").replace(/[\u200b-\u200d\u2060\ufeff\u00ad]/g, "");
  }

  // --- hosts: Outlook, or the simulated meeting of preview mode ------------------------------
  function officeCall(fn) {
    return new Promise((resolve, reject) => fn((result) => {
      if (result.status === Office.AsyncResultStatus.Succeeded) resolve(result.value);
      else reject(result.error || new Error("Office call failed"));
    }));
  }

  // Entra ID token through nested app authentication (MSAL.js, served from our origin): the
  // Outlook host brokers the sign-in, no popups or redirects of our own.
  let naaClient = null;
  async function naaToken(entra) {
    if (!window.msal || !msal.createNestablePublicClientApplication) {
      throw new Error("MSAL.js is not available");
    }
    if (!naaClient) {
      naaClient = await msal.createNestablePublicClientApplication({
        auth: { clientId: entra.clientId, authority: `${entra.authority}/${entra.tenantId}` },
      });
    }
    const request = { scopes: [entra.scope] };
    try {
      return (await naaClient.acquireTokenSilent(request)).accessToken;
    } catch (e) {
      log("silent token failed, asking interactively", String(e && e.errorCode || e));
      return (await naaClient.acquireTokenPopup(request)).accessToken;
    }
  }

  function outlookHost() {
    const mailbox = Office.context.mailbox;
    const item = mailbox.item;
    return {
      name: "outlook",
      getBody: () => officeCall((cb) => item.body.getAsync(Office.CoercionType.Html, cb)),
      appendBody: async (html) => {
        const body = await officeCall((cb) => item.body.getAsync(Office.CoercionType.Html, cb));
        if (item.body.setAsync) {
          return officeCall((cb) => item.body.setAsync(body + html,
            { coercionType: Office.CoercionType.Html }, cb));
        }
        return officeCall((cb) => item.body.prependAsync(html,
          { coercionType: Office.CoercionType.Html }, cb));
      },
      setLocation: (text) => officeCall((cb) => item.location.setAsync(text, cb)),
      meeting: async () => {
        const fields = {};
        try { fields.subject = await officeCall((cb) => item.subject.getAsync(cb)); } catch (e) { log("subject", String(e)); }
        try { fields.start = (await officeCall((cb) => item.start.getAsync(cb))).toISOString(); } catch (e) { log("start", String(e)); }
        try { fields.end = (await officeCall((cb) => item.end.getAsync(cb))).toISOString(); } catch (e) { log("end", String(e)); }
        return fields;
      },
      user: () => "",
      token: async () => {
        if (settings.tokenValidation === "exchange") {
          return officeCall((cb) => mailbox.getUserIdentityTokenAsync(cb));
        }
        if (settings.tokenValidation === "entra") return naaToken(settings.entra);
        return null;
      },
    };
  }

  function previewHost() {
    $("vmr-preview").hidden = false;
    const pad = (n) => String(n).padStart(2, "0");
    const local = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
    const start = new Date(Date.now() + 24 * 3600 * 1000);
    start.setMinutes(0, 0, 0);
    $("vmr-start").value = local(start);
    $("vmr-end").value = local(new Date(start.getTime() + 30 * 60 * 1000));
    const iso = (id) => new Date($(id).value).toISOString();
    return {
      name: "preview",
      getBody: async () => $("vmr-body").innerHTML,
      appendBody: async (html) => { $("vmr-body").insertAdjacentHTML("beforeend", html); },
      setLocation: async (text) => { $("vmr-location").value = text; },
      meeting: async () => ({ subject: $("vmr-subject").value, start: iso("vmr-start"), end: iso("vmr-end") }),
      token: async () => null,
      user: () => $("vmr-user").value.trim(),
    };
  }

  // --- the single-use flow -------------------------------------------------------------------
  // A room for a meeting that cannot happen would be reserved for nothing: say so first.
  function impossible(meeting) {
    const start = Date.parse(meeting.start || "");
    const end = Date.parse(meeting.end || "");
    if (Number.isNaN(start) || Number.isNaN(end)) return null;  // the host did not say
    if (end <= start) return texts.meeting_ends_before_start_message;
    if (end <= Date.now()) return texts.meeting_in_past_message;
    return null;
  }

  async function insertPlaceholder(host) {
    const token = `TOK:-${uuid4()}#`;
    await host.appendBody(`${settings.placeholderHtml}<p>${token}</p>`);
    log("inserted placeholder", token);
    show("warning", texts.unavailable_heading, texts.unavailable_message);
  }

  async function addSingleUse(host) {
    const body = await host.getBody();
    if (TOKEN_RE.test(body) || TOKEN_RE.test(visibleText(body))) {
      log("body already holds a token");
      show("info", texts.already_assigned_heading, texts.already_assigned_message);
      return;
    }
    const meeting = await host.meeting();
    const problem = impossible(meeting);
    if (problem) {
      log("impossible meeting", problem);
      show("error", texts.error_heading, problem);
      return;
    }
    let token = null;
    try {
      token = await host.token();
    } catch (e) {
      log("token failed", String(e && (e.message || e.code) || e));
      show("error", texts.error_heading, texts.error_signing_in_message);
      return;
    }
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    let response;
    try {
      response = await fetch(settings.api, {
        method: "POST", headers, body: JSON.stringify(meeting),
        credentials: "same-origin",
      });
    } catch (e) {
      log("network error", String(e));
      await insertPlaceholder(host);
      return;
    }
    log("API answered", response.status);
    if (response.status === 503) {
      await insertPlaceholder(host);
      return;
    }
    if (response.status !== 201) {
      let detail = "";
      try { detail = (await response.json()).error.code; } catch (e) { /* not JSON */ }
      log("API error", detail);
      show("error", texts.error_heading, texts.error_inserting_single_use_message);
      return;
    }
    const vmr = await response.json();
    await host.appendBody(vmr.joining_instructions);
    await host.setLocation(vmr.alias);
    log("inserted", vmr.alias, vmr.alias_id);
    show("success", texts.success_heading, texts.success_message);
  }

  // --- personal VMRs ---------------------------------------------------------------------------
  // A session of the explicit sign-in, when the host's own token does not name the user; kept
  // until the user signs out or the service says it can no longer be refreshed.
  const SESSION_KEY = `vmrsched.session.${settings.integration}`;
  const storedSession = () => { try { return localStorage.getItem(SESSION_KEY) || ""; } catch (e) { return ""; } };
  const storeSession = (value) => {
    try { if (value) localStorage.setItem(SESSION_KEY, value); else localStorage.removeItem(SESSION_KEY); } catch (e) { log("no storage", String(e)); }
  };

  async function personalToken(host) {
    const session = storedSession();
    if (session) return session;
    return host.token();
  }

  function hidePersonal() {
    $("vmr-personal-list").hidden = true;
    $("vmr-vmrs").textContent = "";
  }

  function renderVmrs(host, vmrs) {
    const list = $("vmr-vmrs");
    list.textContent = "";
    for (const vmr of vmrs) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "vmr-vmr";
      button.textContent = vmr.name;
      if (vmr.description) button.title = vmr.description;
      button.addEventListener("click", async () => {
        button.disabled = true;
        try {
          await host.appendBody(vmr.joining_instructions);
          await host.setLocation(vmr.location);
          log("inserted personal VMR", vmr.name);
          hidePersonal();
          show("success", texts.success_heading, texts.success_message);
        } catch (e) {
          log("insert failed", String(e && (e.message || e.code) || e));
          show("error", texts.error_heading, texts.error_inserting_personal_vmr_message);
        } finally {
          button.disabled = false;
        }
      });
      li.append(button);
      list.append(li);
    }
    const session = storedSession();
    $("vmr-sign-out").hidden = !session;
    $("vmr-personal-list").hidden = false;
    $("vmr-personal-heading").focus();
  }

  async function listPersonal(host) {
    hidePersonal();
    show("info", "", "");
    let token = null;
    try {
      token = await personalToken(host);
    } catch (e) {
      log("token failed", String(e && (e.message || e.code) || e));
      if (settings.signIn) $("vmr-sign-in").hidden = false;
      show("error", texts.error_heading, texts.error_signing_in_message);
      return;
    }
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    const user = host.user();
    const url = settings.personalApi + (user ? `?user=${encodeURIComponent(user)}` : "");
    let response;
    try {
      response = await fetch(url, { headers, credentials: "same-origin" });
    } catch (e) {
      log("network error", String(e));
      show("error", texts.error_heading, texts.error_getting_personal_vmrs_message);
      return;
    }
    log("personal VMRs answered", response.status);
    if (response.status === 401) {
      if (storedSession()) storeSession("");  // signed out or expired on the service's side
      if (settings.signIn) {  // the host's token does not name the user: sign in explicitly
        const button = $("vmr-sign-in");
        button.hidden = false;
        show("info", "", "");
        button.focus();
      } else {
        show("error", texts.error_heading, texts.error_signing_in_message);
      }
      return;
    }
    if (response.status !== 200) {
      show("error", texts.error_heading, texts.error_getting_personal_vmrs_message);
      return;
    }
    const { vmrs } = await response.json();
    $("vmr-sign-in").hidden = true;
    if (!vmrs.length) {
      show("info", "", texts.no_personal_vmr_message);
      return;
    }
    renderVmrs(host, vmrs);
  }

  // The sign-in runs in an Office dialog (a browser popup in preview); its last page sends back
  // {"session", "email"} or {"error", "message"}.
  function signInDialog() {
    const url = new URL(settings.signIn, window.location.href).href;
    return new Promise((resolve, reject) => {
      const ui = window.Office && Office.context && Office.context.ui;
      if (ui && ui.displayDialogAsync) {
        ui.displayDialogAsync(url, { height: 60, width: 30, promptBeforeOpen: false }, (result) => {
          if (result.status !== Office.AsyncResultStatus.Succeeded) {
            reject(result.error);
            return;
          }
          const dialog = result.value;
          dialog.addEventHandler(Office.EventType.DialogMessageReceived, (arg) => {
            dialog.close();
            resolve(arg.message);
          });
          dialog.addEventHandler(Office.EventType.DialogEventReceived, (arg) => {
            reject(new Error(`dialog closed (${arg.error})`));
          });
        });
        return;
      }
      const popup = window.open(url, "vmrsched-sign-in", "width=520,height=640");
      if (!popup) { reject(new Error("popup blocked")); return; }
      const onMessage = (event) => {
        if (event.origin !== window.location.origin || event.source !== popup) return;
        window.removeEventListener("message", onMessage);
        resolve(event.data);
      };
      window.addEventListener("message", onMessage);
    });
  }

  async function signIn(host) {
    let result;
    try {
      result = JSON.parse(await signInDialog());
    } catch (e) {
      log("sign-in failed", String(e && (e.message || e.code) || e));
      show("error", texts.error_heading, texts.error_signing_in_message);
      return;
    }
    if (!result.session) {
      log("sign-in refused", result.error, result.message);
      show("error", texts.error_heading, texts.error_signing_in_message);
      return;
    }
    storeSession(result.session);
    log("signed in as", result.email);
    $("vmr-signed-in-as").textContent = result.email;
    $("vmr-signed-in-as").hidden = false;
    await listPersonal(host);
  }

  async function signOut(host) {
    const session = storedSession();
    storeSession("");
    hidePersonal();
    $("vmr-signed-in-as").hidden = true;
    if (session) {
      try {
        await fetch(settings.sessionApi, {
          method: "DELETE", headers: { Authorization: "Bearer " + session }, credentials: "same-origin",
        });
      } catch (e) { log("sign-out", String(e)); }
    }
    if (settings.signIn) $("vmr-sign-in").hidden = false;
    show("info", "", "");
    log("signed out", host.name);
  }

  // --- demo mode: send the simulated meeting and show the room's answers --------------------
  function renderReplies(replies) {
    const list = $("vmr-reply-list");
    list.textContent = "";
    for (const reply of replies) {
      const li = document.createElement("li");
      const title = document.createElement("p");
      title.className = "vmr-reply-title";
      title.textContent = `${reply.subject} (${reply.outcome}, ${reply.reason})`;
      const frame = document.createElement("iframe");
      frame.setAttribute("sandbox", "");
      frame.setAttribute("title", reply.subject);
      frame.srcdoc = reply.html;
      li.append(title, frame);
      list.append(li);
    }
    $("vmr-replies").hidden = replies.length === 0;
  }

  async function sendDemo(host) {
    const meeting = await host.meeting();
    meeting.body = await host.getBody();
    const response = await fetch(`${settings.demo}/send`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(meeting), credentials: "same-origin",
    });
    if (response.status !== 202) {
      log("demo send failed", response.status);
      show("error", texts.error_heading, "The meeting could not be sent.");
      return;
    }
    const { uid } = await response.json();
    log("sent", uid);
    const deadline = Date.now() + 30000;
    let seen = 0;
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 400));
      const answer = await (await fetch(`${settings.demo}/replies?uid=${encodeURIComponent(uid)}`,
        { credentials: "same-origin" })).json();
      if (answer.replies.length > seen) {
        seen = answer.replies.length;
        renderReplies(answer.replies);
      }
      const first = answer.replies.find((r) => r.outcome !== "updated");
      const waitingForUpdate = /TOK:-/.test(meeting.body) && !answer.replies.some((r) => r.outcome === "updated");
      if (first && !waitingForUpdate) return;
    }
  }

  // A button that does one thing at a time; anything unexpected shows `failure`.
  function onClick(button, failure, action) {
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await action();
      } catch (e) {
        log("unexpected", String(e));
        show("error", texts.error_heading, failure);
      } finally {
        button.disabled = false;
      }
    });
  }

  function wire(host) {
    log("host", host.name);
    $("vmr-debug").hidden = !settings.debug;
    const button = $("vmr-single-use");
    button.hidden = !settings.singleUse;
    onClick(button, texts.error_inserting_single_use_message, () => addSingleUse(host));
    if (settings.personal) {
      const personal = $("vmr-personal");
      personal.hidden = false;
      if (!settings.singleUse) personal.classList.add("vmr-primary");
      $("vmr-preview-user").hidden = !(host.name === "preview" && settings.tokenValidation === "none");
      const failure = texts.error_getting_personal_vmrs_message;
      onClick(personal, failure, () => listPersonal(host));
      onClick($("vmr-sign-in"), failure, () => signIn(host));
      onClick($("vmr-sign-out"), failure, () => signOut(host));
      $("vmr-sign-in").hidden = !settings.signIn || Boolean(storedSession()) || settings.tokenValidation === "entra";
    }
    if (host.name === "preview" && settings.demo) {
      const send = $("vmr-send");
      send.hidden = false;
      send.addEventListener("click", async () => {
        send.disabled = true;
        try { await sendDemo(host); } finally { send.disabled = false; }
      });
    }
    app.dataset.ready = host.name;
  }

  if (window.Office && Office.onReady) {
    Office.onReady((info) => wire(info && info.host ? outlookHost() : previewHost()));
  } else {
    wire(previewHost());
  }
})();
