// vmrsched function commands and event handlers, run by Outlook without the task pane:
// - onAppointmentSend (event-based activation, Smart Alerts): stops a meeting whose video room was
//   broken after the add-in put it in (joining details removed, room attendee removed, or a token
//   pasted from another meeting) and offers "Add the room back" (opens the pane, which invites the
//   room again) or "Send anyway". A meeting without a video room is never stopped.
// - addSingleUseRoom (Outlook on iOS and Android, the online-meeting button): the pane's
//   single-use flow, reported in the item's notification bar.
// Classic Outlook on Windows loads this file alone in a JavaScript-only runtime (no DOM, no other
// script): the send check needs nothing but Office.js and the item's custom properties.
"use strict";

(function (root) {
  const TOKEN_RE = /(PXPS|TOK):-[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}#/g;
  const PROPERTY = "vmrsched";
  const MESSAGES = {
    detailsRemoved: "The video room's joining details were removed from this meeting, so nobody can join it. Add the room back, or send anyway.",
    roomRemoved: "The video room is no longer an attendee of this meeting, so it will not be booked. Add the room back, or send anyway.",
    foreignToken: "This meeting carries the joining details of another meeting's video room. Add a room of its own, or send anyway.",
  };

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

  // The send check's verdict: null to let the meeting go, else the message to stop it with.
  function verdict(record, body, attendees) {
    const tokens = tokensIn(body);
    if (!record || record.kind !== "single_use") {
      // no single-use room was added here: a token in the body came from another meeting
      return tokens.size ? MESSAGES.foreignToken : null;
    }
    const own = normal(record.token);
    const replaced = own.startsWith("TOK") && [...tokens].some((t) => t.startsWith("PXPS"));
    if (!tokens.has(own) && !replaced) {
      return tokens.size ? MESSAGES.foreignToken : MESSAGES.detailsRemoved;
    }
    if ([...tokens].some((t) => t !== own && !(replaced && t.startsWith("PXPS")))) {
      return MESSAGES.foreignToken;
    }
    const room = String(record.room || "").toLowerCase();
    if (room && !attendees.some((a) => String(a.emailAddress || "").toLowerCase() === room)) {
      return MESSAGES.roomRemoved;
    }
    return null;
  }

  const supports = (set, version) => {
    const req = Office.context && Office.context.requirements;
    return Boolean(req && req.isSetSupported && req.isSetSupported(set, version));
  };

  async function onAppointmentSend(event) {
    let message = null;
    try {
      const item = Office.context.mailbox.item;
      const properties = await call((cb) => item.loadCustomPropertiesAsync(cb));
      let record = null;
      try { record = JSON.parse(properties.get(PROPERTY) || "null"); } catch (e) { record = null; }
      const body = await call((cb) => item.body.getAsync(Office.CoercionType.Html, cb));
      const lists = await Promise.all([item.requiredAttendees, item.optionalAttendees]
        .filter(Boolean).map((r) => call((cb) => r.getAsync(cb))));
      message = verdict(record, body, lists.flat());
    } catch (e) {
      message = null;  // a check that cannot run never holds a meeting back
    }
    if (!message) {
      event.completed({ allowEvent: true });
      return;
    }
    const options = { allowEvent: false, errorMessage: message };
    if (supports("Mailbox", "1.14")) {
      options.cancelLabel = "Add the room back";
      options.commandId = "vmrschedOpenPane";
      if (Office.MailboxEnums && Office.MailboxEnums.SendModeOverride) {
        options.sendModeOverride = Office.MailboxEnums.SendModeOverride.PromptUser;
      }
    }
    event.completed(options);
  }

  function notify(kind, message) {
    const item = Office.context.mailbox.item;
    if (!item.notificationMessages) return Promise.resolve();
    const type = Office.MailboxEnums && Office.MailboxEnums.ItemNotificationMessageType;
    const details = kind === "error"
      ? { type: type ? type.ErrorMessage : "errorMessage", message }
      : { type: type ? type.InformationalMessage : "informationalMessage", message, icon: "icon16", persistent: false };
    return call((cb) => item.notificationMessages.replaceAsync("vmrsched", details, cb)).catch(() => null);
  }

  // Outlook on iOS and Android: the online-meeting button adds a single-use room, as the pane does.
  async function addSingleUseRoom(event) {
    const element = root.document && root.document.getElementById("vmr-commands");
    try {
      const settings = JSON.parse(element.dataset.settings);
      const texts = settings.texts;
      const log = () => {};
      const core = root.vmrsched;
      const outcome = await core.addSingleUse(core.outlookHost(settings, log), settings, log);
      if (outcome.kind === "already") await notify("info", texts.already_assigned_message);
      else if (outcome.kind === "placeholder") await notify("info", texts.unavailable_message);
      else if (outcome.kind === "error") await notify("error", outcome.message);
      else await notify("info", texts.success_message);
    } catch (e) {
      await notify("error", "The video room could not be added.");
    }
    event.completed();
  }

  root.vmrschedCommands = { verdict, textOf };
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
