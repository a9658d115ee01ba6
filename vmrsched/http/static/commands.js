// vmrsched function commands and event handlers, run by Outlook without the task pane:
// - onAppointmentSend (event-based activation, Smart Alerts): stops a meeting whose video room was
//   broken after the add-in put it in (joining details removed, room attendee removed, or a token
//   pasted from another meeting) and advises only what the pane then does: "Add the room back"
//   opens the pane, which invites the room again (room removed) or takes a new one (details
//   removed); another meeting's details must go first (the pane adds no second room), so that
//   alert has no button. "Send anyway" always works. A meeting without a video room is never
//   stopped. Every text comes from the integration's configuration.
// - addSingleUseRoom (Outlook on iOS and Android, the online-meeting button): the pane's
//   single-use flow, reported in the item's notification bar.
// Classic Outlook on Windows loads this file alone in a JavaScript-only runtime (no DOM, no other
// script): the send check needs nothing but Office.js and the item's custom properties, and its
// texts come in globalThis.vmrschedSettings, which the service puts in front of this file there
// (/addin/<integration>/commands.js); in commands.html they come with the page.
"use strict";

(function (root) {
  const TOKEN_RE = /(PXPS|TOK):-[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}#/g;
  const PROPERTY = "vmrsched";
  // Outlook's notification bar takes at most 150 characters (a longer message throws)
  const MAX_NOTIFICATION = 150;
  const ADD_ROOM_BACK = "add_room_back";

  function settingsOf() {
    if (root.vmrschedSettings) return root.vmrschedSettings;
    const element = root.document && root.document.getElementById("vmr-commands");
    return element ? JSON.parse(element.dataset.settings) : null;
  }

  function call(fn) {
    return new Promise((resolve, reject) => fn((result) => {
      if (result.status === Office.AsyncResultStatus.Succeeded) resolve(result.value);
      else reject(result.error || new Error("Office call failed"));
    }));
  }

  // Tags and entities out, without a DOM (the Windows runtime has none): enough to find a token
  // that Outlook's editor split with markup or wrote with entities.
  function textOf(html) {
    return String(html)
      .replace(/<[^>]*>/g, "")
      .replace(/&#(\d+);/g, (_, n) => String.fromCharCode(Number(n)))
      .replace(/&#x([0-9a-f]+);/gi, (_, n) => String.fromCharCode(parseInt(n, 16)))
      .replace(/&amp;/g, "&")
      .replace(/[\u200b-\u200d\u2060\ufeff\u00ad]/g, "");
  }

  const tokensIn = (html) => {
    const found = new Set();
    for (const text of [String(html), textOf(html)]) {
      for (const match of text.matchAll(TOKEN_RE)) found.add(match[0].toUpperCase().replace(/-/g, ""));
    }
    return found;
  };
  const normal = (token) => String(token || "").toUpperCase().replace(/-/g, "");

  // The send check's verdict: null to let the meeting go, else what broke (detailsRemoved,
  // roomRemoved, foreignToken).
  function verdict(record, body, attendees) {
    const tokens = tokensIn(body);
    if (!record || record.kind !== "single_use") {
      // no single-use room was added here: a token in the body came from another meeting
      return tokens.size ? "foreignToken" : null;
    }
    const own = normal(record.token);
    const replaced = own.startsWith("TOK") && [...tokens].some((t) => t.startsWith("PXPS"));
    if (!tokens.has(own) && !replaced) {
      return tokens.size ? "foreignToken" : "detailsRemoved";
    }
    if ([...tokens].some((t) => t !== own && !(replaced && t.startsWith("PXPS")))) {
      return "foreignToken";
    }
    const room = String(record.room || "").toLowerCase();
    if (room && !attendees.some((a) => String(a.emailAddress || "").toLowerCase() === room)) {
      return "roomRemoved";
    }
    return null;
  }

  // What each verdict says (the integration's texts), and whether the pane can act on it.
  const ALERTS = {
    detailsRemoved: { text: "send_check_details_removed_message", pane: true },
    roomRemoved: { text: "send_check_room_removed_message", pane: true },
    foreignToken: { text: "send_check_foreign_token_message", pane: false },
  };

  const supports = (set, version) => {
    const req = Office.context && Office.context.requirements;
    return Boolean(req && req.isSetSupported && req.isSetSupported(set, version));
  };

  async function onAppointmentSend(event) {
    let broken = null;
    let texts = null;
    try {
      texts = settingsOf().texts;
      const item = Office.context.mailbox.item;
      const properties = await call((cb) => item.loadCustomPropertiesAsync(cb));
      let record = null;
      try { record = JSON.parse(properties.get(PROPERTY) || "null"); } catch (e) { record = null; }
      const body = await call((cb) => item.body.getAsync(Office.CoercionType.Html, cb));
      const lists = await Promise.all([item.requiredAttendees, item.optionalAttendees]
        .filter(Boolean).map((r) => call((cb) => r.getAsync(cb))));
      broken = verdict(record, body, lists.flat());
    } catch (e) {
      broken = null;  // a check that cannot run never holds a meeting back
    }
    if (!broken) {
      event.completed({ allowEvent: true });
      return;
    }
    const alert = ALERTS[broken];
    const options = { allowEvent: false, errorMessage: texts[alert.text] };
    if (alert.pane && supports("Mailbox", "1.14")) {
      // the button opens the pane; only "Add the room back" of a removed room has it re-invite
      options.cancelLabel = texts.send_check_button_label;
      options.commandId = "vmrschedOpenPane";
      if (broken === "roomRemoved") options.contextData = JSON.stringify({ vmrsched: ADD_ROOM_BACK });
      if (Office.MailboxEnums && Office.MailboxEnums.SendModeOverride) {
        options.sendModeOverride = Office.MailboxEnums.SendModeOverride.PromptUser;
      }
    }
    event.completed(options);
  }

  // At most 150 characters, cut at a word where one is near, with an ellipsis.
  function clip(message) {
    const text = String(message || "").replace(/\s+/g, " ").trim();
    if (text.length <= MAX_NOTIFICATION) return text;
    const cut = text.slice(0, MAX_NOTIFICATION - 1);
    const space = cut.lastIndexOf(" ");
    return (space > MAX_NOTIFICATION * 0.6 ? cut.slice(0, space) : cut).replace(/[\s.,;:]+$/, "") + "\u2026";
  }

  function notify(kind, text) {
    const item = Office.context.mailbox.item;
    if (!item.notificationMessages) return Promise.resolve();
    const type = Office.MailboxEnums && Office.MailboxEnums.ItemNotificationMessageType;
    const message = clip(text);
    const details = kind === "error"
      ? { type: type ? type.ErrorMessage : "errorMessage", message }
      : { type: type ? type.InformationalMessage : "informationalMessage", message, icon: "icon16", persistent: false };
    return call((cb) => item.notificationMessages.replaceAsync("vmrsched", details, cb)).catch(() => null);
  }

  // Outlook on iOS and Android: the online-meeting button adds a single-use room, as the pane does.
  async function addSingleUseRoom(event) {
    let texts = null;
    try {
      const settings = settingsOf();
      texts = settings.texts;
      const log = () => {};
      const core = root.vmrsched;
      const outcome = await core.addSingleUse(core.outlookHost(settings, log), settings, log);
      if (outcome.kind === "already") await notify("info", texts.already_assigned_message);
      else if (outcome.kind === "placeholder") await notify("info", texts.unavailable_message);
      else if (outcome.kind === "error") await notify("error", outcome.message);
      else await notify("info", texts.success_message);
    } catch (e) {
      if (texts) await notify("error", texts.error_inserting_single_use_message);
    }
    event.completed();
  }

  root.vmrschedCommands = { verdict, textOf, clip };
  if (root.Office && Office.actions && Office.actions.associate) {
    Office.actions.associate("onAppointmentSend", onAppointmentSend);
    Office.actions.associate("addSingleUseRoom", addSingleUseRoom);
  } else {
    // hosts older than event-based activation look function commands up by global name
    root.onAppointmentSend = onAppointmentSend;
    root.addSingleUseRoom = addSingleUseRoom;
  }
  if (root.Office && Office.onReady) Office.onReady(() => null);
})(typeof globalThis !== "undefined" ? globalThis : this);
