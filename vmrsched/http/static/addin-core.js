// vmrsched add-in core: what the task pane and the function commands (Outlook on iOS/Android's
// online-meeting button) share. No UI here: each flow returns an outcome the caller shows.
//
// Outlook facts this file is built on (Office.js, Mailbox requirement set 1.1 onwards):
// - Exchange delivers a meeting request only to its attendees, so a single-use room works only if
//   the equipment mailbox is invited (requiredAttendees.addAsync); a personal room needs no booking.
// - body.getAsync(Html) returns a whole HTML document on Windows and Mac, a fragment on the web and
//   on mobile: new content goes inside <body>, never after </html>.
// - location holds at most 255 characters.
// - what the add-in put in a meeting is remembered in the item's custom properties, which travel
//   with the item, so the send check (commands.js) and a reopened pane know it.
"use strict";

(function (root) {
  const TOKEN_RE = /(PXPS|TOK):-[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}#/;
  const MAX_LOCATION = 255;
  const PROPERTY = "vmrsched";

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
        if (!item.body.setAsync) {
          // Mailbox 1.1 and 1.2 hosts cannot replace the body: the instructions go at its top
          return officeCall((cb) => item.body.prependAsync(fragment, html, cb));
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

  async function insertPlaceholder(host, settings, log) {
    const token = `TOK:-${uuid4()}#`;
    await host.insert(`${settings.placeholderHtml}<p>${token}</p>`);
    await host.invite(settings.room);
    await host.remember({ kind: "single_use", token, alias: "", room: settings.room.email });
    log("inserted placeholder and invited the room", token);
    return { kind: "placeholder" };
  }

  // Outcomes: added | placeholder | already | error (with the message to show as text, and the
  // key of the configured text it is, whose HTML the pane may show).
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
    let token = null;
    try {
      token = await host.token();
    } catch (e) {
      log("token failed", String(e && (e.message || e.code) || e));
      return { kind: "error", message: texts.error_signing_in_message, key: "error_signing_in_message" };
    }
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    let response;
    try {
      response = await fetch(settings.api, {
        method: "POST", headers, body: JSON.stringify(meeting), credentials: "same-origin",
      });
    } catch (e) {
      log("network error", String(e));
      return insertPlaceholder(host, settings, log);
    }
    log("API answered", response.status);
    if (response.status === 503) return insertPlaceholder(host, settings, log);
    if (response.status !== 201) {
      let detail = "";
      try { detail = (await response.json()).error.code; } catch (e) { /* not JSON */ }
      log("API error", detail);
      return {
        kind: "error", message: texts.error_inserting_single_use_message,
        key: "error_inserting_single_use_message", code: detail,
      };
    }
    const vmr = await response.json();
    await host.insert(vmr.joining_instructions);
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

  // The send check stopped the meeting because its room attendee is gone: put it back.
  async function repair(host, settings, log) {
    const record = await host.recall();
    if (!record || record.kind !== "single_use" || !settings.room.email) return false;
    const invited = await host.invite(settings.room);
    if (invited) log("invited the room again", settings.room.email);
    return invited;
  }

  root.vmrsched = {
    TOKEN_RE, MAX_LOCATION, PROPERTY, uuid4, visibleText, insertIntoBody, sameAddress, officeCall,
    outlookHost, holdsRoom, addSingleUse, addPersonal, repair,
  };
})(window);
