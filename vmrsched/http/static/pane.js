// vmrsched task pane: adds a single-use video room, or one of the user's personal rooms, to the
// meeting being composed.
// Runs inside Outlook (Office.js) or, opened in an ordinary browser, on a simulated meeting
// (preview mode). Every text comes from the integration's configuration.
"use strict";

(function () {
  const app = document.getElementById("vmr-app");
  const settings = JSON.parse(app.dataset.settings);
  const texts = settings.texts;
  const $ = (id) => document.getElementById(id);
  // A text that may hold HTML, as the server sanitised it (links, emphasis, paragraphs); any
  // other message is shown as text.
  const rich = (key) => (settings.html && key in settings.html ? { html: settings.html[key] } : texts[key]);

  // --- debug log ---------------------------------------------------------------------------
  function log(...parts) {
    if (!settings.debug) return;
    const line = new Date().toISOString() + " " + parts.map((p) =>
      typeof p === "string" ? p : JSON.stringify(p)).join(" ");
    $("vmr-log").textContent += line + "\n";
  }

  // --- status ------------------------------------------------------------------------------
  // `message`: text, or {html} from `rich` (sanitised on the server)
  function show(kind, heading, message) {
    const status = $("vmr-status");
    status.className = "vmr-" + kind;
    const h = $("vmr-status-heading");
    const p = $("vmr-status-message");
    h.textContent = heading;
    const isHtml = Boolean(message) && typeof message === "object";
    if (isHtml) p.innerHTML = message.html;
    else p.textContent = message || "";
    h.hidden = !heading;
    p.hidden = !(isHtml ? message.html : message);
    if (heading) h.focus();
  }

  const core = window.vmrsched;

  function previewHost() {
    $("vmr-preview").hidden = false;
    const pad = (n) => String(n).padStart(2, "0");
    const local = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
    const start = new Date(Date.now() + 24 * 3600 * 1000);
    start.setMinutes(0, 0, 0);
    $("vmr-start").value = local(start);
    $("vmr-end").value = local(new Date(start.getTime() + 30 * 60 * 1000));
    const iso = (id) => new Date($(id).value).toISOString();
    const attendees = () => $("vmr-attendees").value.split(/[,;]/).map((a) => a.trim()).filter(Boolean)
      .map((a) => {
        const m = /^(.*)<([^>]+)>$/.exec(a);
        return m ? { displayName: m[1].trim(), emailAddress: m[2].trim() } : { displayName: a, emailAddress: a };
      });
    let remembered = null;  // the item's custom property, in Outlook
    return {
      name: "preview",
      platform: "preview",
      getBody: async () => $("vmr-body").innerHTML,
      insert: async (html) => { $("vmr-body").insertAdjacentHTML("beforeend", html); },
      setLocation: async (text) => { $("vmr-location").value = String(text).slice(0, core.MAX_LOCATION); },
      attendees: async () => attendees(),
      invite: async (room) => {
        if (attendees().some((a) => core.sameAddress(a.emailAddress, room.email))) return false;
        const list = $("vmr-attendees");
        list.value = [list.value.trim(), `${room.name} <${room.email}>`].filter(Boolean).join(", ");
        return true;
      },
      recall: async () => remembered,
      openedWith: async () => null,
      remember: async (record) => { remembered = record; },
      meeting: async () => ({ subject: $("vmr-subject").value, start: iso("vmr-start"), end: iso("vmr-end") }),
      token: async () => null,
      user: () => $("vmr-user").value.trim(),
    };
  }

  // --- the single-use flow -------------------------------------------------------------------
  // Returns how many seconds the button waits before it takes another click (a 429's Retry-After).
  async function addSingleUse(host) {
    const outcome = await core.addSingleUse(host, settings, log);
    if (outcome.kind === "already") show("info", texts.already_assigned_heading, rich("already_assigned_message"));
    else if (outcome.kind === "placeholder") show("warning", texts.unavailable_heading, rich("unavailable_message"));
    else if (outcome.kind === "error") {
      const message = outcome.key ? rich(outcome.key) : outcome.message;
      const filled = outcome.fill && typeof message === "object" ? { html: outcome.fill(message.html) }
        : outcome.fill ? outcome.fill(message) : message;
      show("error", texts.error_heading, filled);
      return outcome.seconds || 0;
    } else show("success", texts.success_heading, rich("success_message"));
    return 0;
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
          const outcome = await core.addPersonal(host, vmr, log);
          hidePersonal();
          if (outcome.kind === "already") {
            show("info", texts.already_assigned_heading, rich("already_assigned_message"));
          } else {
            show("success", texts.success_heading, rich("success_message"));
          }
        } catch (e) {
          log("insert failed", String(e && (e.message || e.code) || e));
          show("error", texts.error_heading, rich("error_inserting_personal_vmr_message"));
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
      show("error", texts.error_heading, rich("error_signing_in_message"));
      return;
    }
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    const user = host.user();
    const url = settings.personalApi + (user ? `?user=${encodeURIComponent(user)}` : "");
    const answer = await core.callApi(url, { headers }, log);
    log("personal VMRs answered", answer.status);
    if (answer.status === 401 && answer.ours) {
      if (storedSession()) storeSession("");  // signed out or expired on the service's side
      if (settings.signIn) {  // the host's token does not name the user: sign in explicitly
        const button = $("vmr-sign-in");
        button.hidden = false;
        show("info", "", "");
        button.focus();
      } else {
        show("error", texts.error_heading, rich("error_signing_in_message"));
      }
      return;
    }
    // no answer in time, a proxy's error page, or an error of the service's
    if (answer.status !== 200 || !answer.ours || !Array.isArray(answer.ours.vmrs)) {
      show("error", texts.error_heading, rich("error_getting_personal_vmrs_message"));
      return;
    }
    const { vmrs } = answer.ours;
    $("vmr-sign-in").hidden = true;
    if (!vmrs.length) {
      show("info", "", rich("no_personal_vmr_message"));
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
      show("error", texts.error_heading, rich("error_signing_in_message"));
      return;
    }
    if (!result.session) {
      log("sign-in refused", result.error, result.message);
      show("error", texts.error_heading, rich("error_signing_in_message"));
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
      const answer = await core.callApi(settings.sessionApi, {
        method: "DELETE", headers: { Authorization: "Bearer " + session },
      }, log);
      log("sign-out answered", answer.status);
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
    meeting.attendees = (await host.attendees()).map((a) => a.emailAddress);
    const response = await fetch(`${settings.demo}/send`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(meeting), credentials: "same-origin",
    });
    if (response.status !== 202) {
      log("demo send failed", response.status);
      show("error", texts.error_heading, "The meeting could not be sent.");
      return;
    }
    const { uid, delivered } = await response.json();
    log("sent", uid, delivered ? "to the room too" : "without the room");
    if (!delivered) {
      // Exchange delivers a meeting only to its attendees: without the room, nobody answers.
      renderReplies([]);
      show("info", "", "Sent. The room is not an attendee of this meeting, so it gets no request and sends no answer.");
      return;
    }
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

  // A button that does one thing at a time; anything unexpected shows `failure`. An action may
  // answer a number of seconds the button then stays disabled (the service asked to wait).
  function onClick(button, failure, action) {
    button.addEventListener("click", async () => {
      button.disabled = true;
      let wait = 0;
      try {
        wait = Number(await action()) || 0;
      } catch (e) {
        log("unexpected", String(e && (e.message || e.name) || e));
        show("error", texts.error_heading, failure);
      } finally {
        if (wait > 0) setTimeout(() => { button.disabled = false; }, wait * 1000);
        else button.disabled = false;
      }
    });
  }

  function wire(host) {
    log("host", host.name);
    $("vmr-debug").hidden = !settings.debug;
    const button = $("vmr-single-use");
    button.hidden = !settings.singleUse;
    onClick(button, rich("error_inserting_single_use_message"), () => addSingleUse(host));
    if (settings.personal) {
      const personal = $("vmr-personal");
      personal.hidden = false;
      if (!settings.singleUse) personal.classList.add("vmr-primary");
      $("vmr-preview-user").hidden = !(host.name === "preview" && settings.tokenValidation === "none");
      const failure = rich("error_getting_personal_vmrs_message");
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
    if (host.name === "outlook" && settings.singleUse) {
      // opened from the send check's "Add the room back" (its contextData says so): the room this
      // pane added is gone; opened any other way, nothing is changed
      core.repair(host, settings, log).then((invited) => {
        if (invited) show("success", texts.success_heading, rich("room_invited_again_message"));
      }).catch((e) => log("repair", String(e)));
    }
  }

  if (window.Office && Office.onReady) {
    Office.onReady((info) => wire(info && info.host ? core.outlookHost(settings, log) : previewHost()));
  } else {
    wire(previewHost());
  }
})();
