// vmrsched add-in core: what the task pane and the function commands (Outlook on iOS/Android's
// online-meeting button) share. No UI here: each flow returns an outcome the caller shows.
//
// Outlook facts this file is built on (Office.js, Mailbox requirement set 1.1 onwards):
// - Exchange delivers a meeting request only to its attendees, so a single-use room works only if
//   the equipment mailbox is invited (requiredAttendees.addAsync); a personal room needs no booking.
// - body.getAsync(Html) returns a whole HTML document on Windows and Mac, a fragment on the web and
//   on mobile: new content goes inside <body>, never after </html>.
// - location holds at most 255 characters.
// - a body can be plain text (tablets and phones may report Text): body.getTypeAsync says which,
//   and Html into a Text body fails, so such a body gets the instructions as text.
// - Mailbox 1.1 and 1.2 hosts have no body.setAsync (1.3): nothing can append to the end there,
//   so the instructions go at the top (prependAsync).
// - what the add-in put in a meeting is remembered in the item's custom properties, which travel
//   with the item, so the send check (commands.js) and a reopened pane know it.
"use strict";

(function (root) {
  const TOKEN_RE = /(PXPS|TOK):-[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}#/;
  const MAX_LOCATION = 255;
  const PROPERTY = "vmrsched";
  // Longer than this and the service counts as unreachable: well under what Outlook gives a
  // function command or an event handler, and a person waiting on a button.
  const API_TIMEOUT_MS = 10000;
  // what the send check hands the pane with its button (Smart Alerts contextData)
  const ADD_ROOM_BACK = "add_room_back";

  function uuid4() {
    if (root.crypto && crypto.randomUUID) return crypto.randomUUID();
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

  // The body with `html` added at the end of what the user wrote: before </body> when the host
  // handed us a whole document (Windows, Mac), at the end of a fragment otherwise (web, mobile).
  function insertIntoBody(current, html) {
    const lower = current.toLowerCase();
    for (const closing of ["</body", "</html"]) {
      const at = lower.lastIndexOf(closing);
      if (at >= 0) return current.slice(0, at) + html + current.slice(at);
    }
    return current + html;
  }

  // A plain-text rendering of instructions written as HTML, for a body that is plain text: one
  // line per block, links with their address after the text when it differs.
  const BLOCKS = new Set(["P", "DIV", "LI", "TR", "H1", "H2", "H3", "H4", "H5", "H6", "TABLE", "UL", "OL", "BLOCKQUOTE", "PRE"]);
  function htmlToText(html) {
    const doc = new DOMParser().parseFromString(html, "text/html");
    const out = [];
    const walk = (node) => {
      if (node.nodeType === 3) { out.push(node.nodeValue.replace(/\s+/g, " ")); return; }
      if (node.nodeType !== 1) return;
      const tag = node.tagName;
      if (tag === "SCRIPT" || tag === "STYLE" || tag === "HEAD") return;
      if (tag === "BR") { out.push("\n"); return; }
      const block = BLOCKS.has(tag);
      if (block) out.push("\n");
      node.childNodes.forEach(walk);
      if (tag === "A") {
        const href = (node.getAttribute("href") || "").replace(/^mailto:/i, "");
        const text = (node.textContent || "").trim();
        if (href && href !== text) out.push(` <${href}>`);
      }
      if (block) out.push("\n");
    };
    walk(doc.body);
    return out.join("").split("\n").map((l) => l.trim()).filter((l, i, all) => l || (i > 0 && all[i - 1]))
      .join("\n").trim();
  }

  const sameAddress = (a, b) => String(a || "").trim().toLowerCase() === String(b || "").trim().toLowerCase();

  // --- Outlook ---------------------------------------------------------------------------------
  function officeCall(fn) {
    return new Promise((resolve, reject) => fn((result) => {
      if (result.status === Office.AsyncResultStatus.Succeeded) resolve(result.value);
      else reject(result.error || new Error("Office call failed"));
    }));
  }

  const supports = (set, version) => {
    const req = Office.context && Office.context.requirements;
    return Boolean(req && req.isSetSupported && req.isSetSupported(set, version));
  };

  // Entra ID token through nested app authentication (MSAL.js, served from our origin): the
  // Outlook host brokers the sign-in. Hosts without NestedAppAuth 1.1 sign in in an Office dialog
  // on our origin instead (entra-sign-in.html), which hands the token back with messageParent.
  let naaClient = null;
  async function naaToken(entra, log) {
    if (!root.msal || !msal.createNestablePublicClientApplication) {
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

  function dialogToken(settings) {
    const url = new URL(settings.entra.dialog, root.location.href).href;
    return new Promise((resolve, reject) => {
      Office.context.ui.displayDialogAsync(url, { height: 60, width: 30, promptBeforeOpen: false }, (result) => {
        if (result.status !== Office.AsyncResultStatus.Succeeded) { reject(result.error); return; }
        const dialog = result.value;
        dialog.addEventHandler(Office.EventType.DialogMessageReceived, (arg) => {
          dialog.close();
          let answer = {};
          try { answer = JSON.parse(arg.message); } catch (e) { /* not ours */ }
          if (answer.accessToken) resolve(answer.accessToken);
          else reject(new Error(answer.error || "sign-in failed"));
        });
        dialog.addEventHandler(Office.EventType.DialogEventReceived, (arg) => {
          reject(new Error(`dialog closed (${arg.error})`));
        });
      });
    });
  }

  function entraToken(settings, log) {
    if (supports("NestedAppAuth", "1.1")) return naaToken(settings.entra, log);
    log("no nested app authentication here: signing in in a dialog");
    return dialogToken(settings);
  }

  function outlookHost(settings, log) {
    const mailbox = Office.context.mailbox;
    const item = mailbox.item;
    const html = { coercionType: Office.CoercionType.Html };
    let properties = null;
    const loadProperties = async () => {
      if (!properties) properties = await officeCall((cb) => item.loadCustomPropertiesAsync(cb));
      return properties;
    };
    const attendees = async () => {
      const lists = await Promise.all([item.requiredAttendees, item.optionalAttendees]
        .filter(Boolean).map((r) => officeCall((cb) => r.getAsync(cb))));
      return lists.flat();
    };
    return {
      name: "outlook",
      platform: String(Office.context.diagnostics && Office.context.diagnostics.platform || ""),
      // Mailbox 1.1 and 1.2 hosts cannot read the body: the custom property alone tells a room
      getBody: async () => (item.body.getAsync ? officeCall((cb) => item.body.getAsync(Office.CoercionType.Html, cb)) : null),
      insert: async (fragment) => {
        // the body's own type: Html into a plain-text body fails (Insert data in the body)
        const type = item.body.getTypeAsync ? await officeCall((cb) => item.body.getTypeAsync(cb)) : Office.CoercionType.Html;
        const text = type === Office.CoercionType.Text;
        const as = { coercionType: text ? Office.CoercionType.Text : Office.CoercionType.Html };
        const data = text ? htmlToText(fragment) : fragment;
        if (!item.body.setAsync) {
          // Mailbox 1.1 and 1.2 hosts cannot replace the body: the instructions go at its top
          return officeCall((cb) => item.body.prependAsync(text ? data + "\n\n" : data, as, cb));
        }
        if (text) {
          const body = await officeCall((cb) => item.body.getAsync(Office.CoercionType.Text, cb));
          const kept = String(body || "").replace(/\s+$/, "");
          return officeCall((cb) => item.body.setAsync(kept ? `${kept}\n\n${data}` : data, as, cb));
        }
        const body = await officeCall((cb) => item.body.getAsync(Office.CoercionType.Html, cb));
        return officeCall((cb) => item.body.setAsync(insertIntoBody(body, fragment), html, cb));
      },
      setLocation: (text) => officeCall((cb) => item.location.setAsync(String(text).slice(0, MAX_LOCATION), cb)),
      attendees,
      invite: async (room) => {
        if ((await attendees()).some((a) => sameAddress(a.emailAddress, room.email))) return false;
        await officeCall((cb) => item.requiredAttendees.addAsync(
          [{ displayName: room.name || room.email, emailAddress: room.email }], cb));
        return true;
      },
      recall: async () => {
        const raw = (await loadProperties()).get(PROPERTY);
        try { return raw ? JSON.parse(raw) : null; } catch (e) { return null; }
      },
      // the send check's contextData when its button opened this pane, else null
      openedWith: async () => {
        if (!item.getInitializationContextAsync) return null;
        try {
          const raw = await officeCall((cb) => item.getInitializationContextAsync(cb));
          return raw ? JSON.parse(raw) : null;
        } catch (e) {
          return null;  // no context (older hosts answer an error), or not ours
        }
      },
      remember: async (record) => {
        const props = await loadProperties();
        props.set(PROPERTY, JSON.stringify(record));
        await officeCall((cb) => props.saveAsync(cb));
      },
      meeting: async () => {
        const fields = {};
        try { fields.subject = await officeCall((cb) => item.subject.getAsync(cb)); } catch (e) { log("subject", String(e)); }
        try { fields.start = (await officeCall((cb) => item.start.getAsync(cb))).toISOString(); } catch (e) { log("start", String(e)); }
        try { fields.end = (await officeCall((cb) => item.end.getAsync(cb))).toISOString(); } catch (e) { log("end", String(e)); }
        return fields;
      },
      // token validation "none" (loopback trials only): the host's own profile names the user
      user: () => (settings.tokenValidation === "none" && mailbox.userProfile && mailbox.userProfile.emailAddress) || "",
      token: async () => {
        if (settings.tokenValidation === "exchange") {
          return officeCall((cb) => mailbox.getUserIdentityTokenAsync(cb));
        }
        if (settings.tokenValidation === "entra") return entraToken(settings, log);
        return null;
      },
    };
  }

  // --- the flows -------------------------------------------------------------------------------
  // One meeting holds one room: a token in the body, or the room this add-in put in it still
  // named in the body, means there is one already.
  async function holdsRoom(host) {
    const body = await host.getBody();
    const record = await host.recall();
    if (body === null) return Boolean(record && record.kind);  // a host that cannot read it
    if (TOKEN_RE.test(body)) return true;
    const text = visibleText(body);
    if (TOKEN_RE.test(text)) return true;
    return Boolean(record && record.alias && text.includes(record.alias));
  }

  // A room for a meeting that cannot happen would be reserved for nothing: say so first (the
  // text's key, or null).
  function impossible(meeting) {
    const start = Date.parse(meeting.start || "");
    const end = Date.parse(meeting.end || "");
    if (Number.isNaN(start) || Number.isNaN(end)) return null;  // the host did not say
    if (end <= start) return "meeting_ends_before_start_message";
    if (end <= Date.now()) return "meeting_in_past_message";
    return null;
  }

  // One call to the service with a deadline. `ours` is the service's own JSON (a reservation, or
  // {error: {code}}); anything else (a proxy's 502/504 page, a timeout, no connection) is null.
  async function callApi(url, init, log) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), API_TIMEOUT_MS);
    try {
      const response = await fetch(url, { ...init, credentials: "same-origin", signal: controller.signal });
      let ours = null;
      try { ours = await response.json(); } catch (e) { ours = null; }  // not JSON: not the service
      if (ours !== null && typeof ours !== "object") ours = null;
      return { status: response.status, ours, retryAfter: response.headers.get("Retry-After") };
    } catch (e) {
      log("no answer", String(e && (e.name || e.message) || e));
      return { status: 0, ours: null, retryAfter: null };
    } finally {
      clearTimeout(timer);
    }
  }

  // Retry-After is seconds or an HTTP date (RFC 9110); missing or unreadable: a minute.
  function secondsOf(retryAfter) {
    const value = String(retryAfter || "").trim();
    let seconds = /^\d+$/.test(value) ? Number(value) : (Date.parse(value) - Date.now()) / 1000;
    if (!Number.isFinite(seconds)) seconds = 60;
    return Math.min(3600, Math.max(1, Math.ceil(seconds)));
  }

  // The configured text for an error the service answered with.
  function apiError(answer, texts) {
    const code = (answer.ours.error && answer.ours.error.code) || "";
    let key = "error_inserting_single_use_message";
    let seconds = 0;
    if (answer.status === 401) key = "error_signing_in_message";
    else if (code === "quota_exceeded") key = "error_quota_exceeded_message";
    else if (answer.status === 429) {
      key = "error_too_many_requests_message";
      seconds = secondsOf(answer.retryAfter);
    }
    const fill = (text) => String(text).replace(/\{seconds\}/g, String(seconds));
    return { kind: "error", key, code, seconds, fill, message: fill(texts[key]) };
  }

  async function insertPlaceholder(host, settings, log) {
    const token = `TOK:-${uuid4()}#`;
    await host.insert(`${settings.placeholderHtml}<p>${token}</p>`);
    await host.invite(settings.room);
    await host.remember({ kind: "single_use", token, alias: "", room: settings.room.email });
    log("inserted placeholder and invited the room", token);
    return { kind: "placeholder" };
  }

  // A reservation the service made whose details are not in the meeting yet (the insertion
  // failed): the next try in this pane uses it instead of reserving another.
  let reserved = null;

  // Outcomes: added | placeholder | already | error (with the message to show as text, and the
  // key of the configured text it is, whose HTML the pane may show; `fill` puts the same values
  // into that HTML; `seconds` to wait on a 429).
  async function addSingleUse(host, settings, log) {
    const texts = settings.texts;
    if (await holdsRoom(host)) {
      log("the meeting already holds a room");
      return { kind: "already" };
    }
    const meeting = await host.meeting();
    const problem = impossible(meeting);
    if (problem) {
      log("impossible meeting", problem);
      return { kind: "error", message: texts[problem], key: problem };
    }
    let vmr = reserved;
    if (vmr) {
      log("using the reservation not yet in the meeting", vmr.alias);
    } else {
      let token = null;
      try {
        token = await host.token();
      } catch (e) {
        log("token failed", String(e && (e.message || e.code) || e));
        return { kind: "error", message: texts.error_signing_in_message, key: "error_signing_in_message" };
      }
      const headers = { "Content-Type": "application/json" };
      if (token) headers.Authorization = "Bearer " + token;
      const answer = await callApi(settings.api, { method: "POST", headers, body: JSON.stringify(meeting) }, log);
      log("API answered", answer.status);
      // unreachable: no answer, not the service's JSON, or the service saying it is unavailable
      if (!answer.ours || answer.status === 503) return insertPlaceholder(host, settings, log);
      if (answer.status !== 201 || !answer.ours.alias) {
        const outcome = apiError(answer, texts);
        log("API error", outcome.code);
        return outcome;
      }
      vmr = reserved = answer.ours;
    }
    await host.insert(vmr.joining_instructions);
    reserved = null;
    await host.setLocation(vmr.alias);
    await host.invite(settings.room);
    await host.remember({ kind: "single_use", token: vmr.alias_id, alias: vmr.alias, room: settings.room.email });
    log("inserted", vmr.alias, vmr.alias_id, "and invited", settings.room.email);
    return { kind: "added", vmr };
  }

  // A personal room lives on Pexip for good: nothing to book, so the room mailbox is not invited.
  async function addPersonal(host, vmr, log) {
    if (await holdsRoom(host)) {
      log("the meeting already holds a room");
      return { kind: "already" };
    }
    await host.insert(vmr.joining_instructions);
    await host.setLocation(vmr.location);
    const alias = (vmr.aliases && vmr.aliases[0]) || vmr.location || "";
    await host.remember({ kind: "personal", token: "", alias, room: "" });
    log("inserted personal VMR", vmr.name);
    return { kind: "added" };
  }

  // The send check stopped the meeting because its room attendee is gone and the organizer chose
  // its "Add the room back" (the pane opens with its contextData): put the room back. Opened any
  // other way, the pane never re-invites a room: the organizer may have removed it on purpose.
  // Nor where the joining details are gone too: the room would only decline the meeting.
  async function repair(host, settings, log) {
    const context = await host.openedWith();
    if (!context || context.vmrsched !== ADD_ROOM_BACK) return false;
    const record = await host.recall();
    if (!record || record.kind !== "single_use" || !settings.room.email) return false;
    const body = await host.getBody();
    if (body !== null && !TOKEN_RE.test(body) && !TOKEN_RE.test(visibleText(body))) return false;
    const invited = await host.invite(settings.room);
    if (invited) log("invited the room again", settings.room.email);
    return invited;
  }

  root.vmrsched = {
    TOKEN_RE, MAX_LOCATION, PROPERTY, ADD_ROOM_BACK, uuid4, visibleText, htmlToText, insertIntoBody,
    sameAddress, officeCall, callApi, outlookHost, holdsRoom, addSingleUse, addPersonal, repair,
  };
})(window);
