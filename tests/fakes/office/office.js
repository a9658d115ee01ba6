/*
 * A test stand-in for Office.js in Outlook (appointment organizer / compose mode), written from
 * Microsoft's published API reference and add-in guides, not from Microsoft's library. Tests
 * serve it in place of https://appsforoffice.microsoft.com/lib/1/hosted/office.js.
 *
 * It reads window.__officeHostConfig when it loads (tests set it with an init script). Without
 * one it behaves as Office.js does in a plain browser: Office.onReady resolves with a null host
 * and platform, and there is no mailbox. Which behaviour follows which page of the
 * documentation, and where the documentation is silent and the strict reading was chosen, is in
 * README.md next to this file.
 *
 * The test API is window.__outlook: state(), calls, fire(name, options), closeDialog(),
 * edit(patch).
 */
(function () {
  "use strict";

  if (window.Office && window.Office.__standIn) {
    return; // loaded twice in the same page: keep the first instance and its state
  }

  var DIALOG_NAME_PREFIX = "__officeStandInDialog:";
  var MAX_BODY_CHARS = 1000000;
  var MAX_SUBJECT_CHARS = 255;
  var MAX_LOCATION_CHARS = 255;
  var MAX_DISPLAY_NAME_CHARS = 255;
  var MAX_RECIPIENTS_PER_CALL = 100;
  var MAX_CUSTOM_PROPERTIES_JSON = 2500;
  var MAX_ALERT_MESSAGE_CHARS = 500;
  var MAX_CANCEL_LABEL_CHARS = 20;
  var MAX_NOTIFICATION_CHARS = 150;
  var MAX_NOTIFICATION_KEY_CHARS = 32;
  var MAX_NOTIFICATIONS = 5;
  var FIRE_TIMEOUT_MS = 5000;
  var OIDC_SCOPES = ["openid", "profile", "offline_access", "email"];
  var BRIDGE_STATUSES = [
    "USER_INTERACTION_REQUIRED",
    "USER_CANCEL",
    "NO_NETWORK",
    "TRANSIENT_ERROR",
    "PERSISTENT_ERROR",
    "DISABLED",
    "ACCOUNT_UNAVAILABLE",
    "NESTED_APP_AUTH_UNAVAILABLE",
  ];

  // ---------------------------------------------------------------- configuration

  var isDialog = typeof window.name === "string" && window.name.indexOf(DIALOG_NAME_PREFIX) === 0;

  function readConfig() {
    if (window.__officeHostConfig !== undefined && window.__officeHostConfig !== null) {
      return window.__officeHostConfig;
    }
    if (isDialog && window.opener) {
      try {
        // the dialog's first page is on the add-in's origin, so the opener is readable
        var fromOpener = window.opener.__officeHostConfig;
        if (fromOpener !== undefined && fromOpener !== null) {
          return JSON.parse(JSON.stringify(fromOpener));
        }
      } catch (e) {
        /* a cross-origin opener: no configuration from it */
      }
    }
    return null;
  }

  var config = readConfig();
  var PLATFORMS = ["PC", "OfficeOnline", "Mac", "iOS", "Android"];
  var platform = config ? config.platform || "PC" : null;
  if (config && PLATFORMS.indexOf(platform) < 0) {
    throw new Error("office.js stand-in: unknown platform " + JSON.stringify(platform));
  }
  var isMobile = platform === "iOS" || platform === "Android";
  var isWordHost = platform === "PC" || platform === "Mac"; // Word's editor writes the body

  function defaultRequirementSets() {
    if (isMobile) {
      return { Mailbox: "1.5", DialogApi: "1.1" };
    }
    return {
      Mailbox: "1.14",
      DialogApi: "1.2",
      DialogOrigin: "1.1",
      IdentityAPI: "1.3",
      NestedAppAuth: "1.1",
    };
  }
  var requirementSets = config ? config.requirementSets || defaultRequirementSets() : {};

  function parseVersion(v) {
    return String(v)
      .split(".")
      .map(function (part) {
        var n = parseInt(part, 10);
        return isNaN(n) ? 0 : n;
      });
  }

  function compareVersions(a, b) {
    var x = parseVersion(a);
    var y = parseVersion(b);
    for (var i = 0; i < Math.max(x.length, y.length); i++) {
      var d = (x[i] || 0) - (y[i] || 0);
      if (d !== 0) {
        return d < 0 ? -1 : 1;
      }
    }
    return 0;
  }

  function isSetSupported(name, minVersion) {
    if (typeof name !== "string") {
      throw new Error("isSetSupported: the requirement set name must be a string");
    }
    var key = Object.keys(requirementSets).filter(function (k) {
      return k.toLowerCase() === name.toLowerCase();
    })[0];
    if (key === undefined) {
      return false;
    }
    if (minVersion === undefined || minVersion === null) {
      return true;
    }
    // a number is turned into a string as JavaScript does: 1.10 is 1.1
    return compareVersions(requirementSets[key], String(minVersion)) >= 0;
  }

  function mailbox(v) {
    return isSetSupported("Mailbox", v);
  }

  // ---------------------------------------------------------------- enums

  var Office = { __standIn: true };
  Office.AsyncResultStatus = { Succeeded: "succeeded", Failed: "failed" };
  Office.CoercionType = {
    Html: "html",
    Image: "image",
    Matrix: "matrix",
    Ooxml: "ooxml",
    SlideRange: "slideRange",
    Table: "table",
    Text: "text",
    XmlSvg: "xmlSvg",
  };
  Office.EventType = {
    DialogMessageReceived: "dialogMessageReceived",
    DialogEventReceived: "dialogEventReceived",
    DialogParentMessageReceived: "dialogParentMessageReceived",
  };
  Office.HostType = {
    Word: "Word",
    Excel: "Excel",
    PowerPoint: "PowerPoint",
    Outlook: "Outlook",
    OneNote: "OneNote",
    Project: "Project",
    Access: "Access",
  };
  Office.PlatformType = {
    PC: "PC",
    OfficeOnline: "OfficeOnline",
    Mac: "Mac",
    iOS: "iOS",
    Android: "Android",
    Universal: "Universal",
  };
  Office.InitializationReason = { Inserted: "inserted", DocumentOpened: "documentOpened" };
  Office.MailboxEnums = {
    ItemType: { Message: "message", Appointment: "appointment" },
    RecipientType: {
      DistributionList: "distributionList",
      User: "user",
      ExternalUser: "externalUser",
      Other: "other",
    },
    LocationType: { Custom: "custom", Room: "room" },
    ResponseType: {
      None: "none",
      Organizer: "organizer",
      Tentative: "tentative",
      Accepted: "accepted",
      Declined: "declined",
    },
    SendModeOverride: { PromptUser: "promptUser" },
    ItemNotificationMessageType: {
      ProgressIndicator: "progressIndicator",
      InformationalMessage: "informationalMessage",
      ErrorMessage: "errorMessage",
      InsightMessage: "insightMessage",
    },
    DelegatePermissions: {
      Read: 1,
      Write: 2,
      DeleteOwn: 4,
      DeleteAll: 8,
      EditOwn: 16,
      EditAll: 32,
    },
  };

  // ---------------------------------------------------------------- results and errors

  function AsyncResult(status, value, error, asyncContext) {
    this.status = status;
    this.value = value;
    this.error = error;
    this.asyncContext = asyncContext;
  }

  function OfficeError(name, message, code) {
    this.name = name;
    this.message = message;
    this.code = code;
  }

  // A failure the host reports through AsyncResult (as opposed to a bad argument, which Office.js
  // throws synchronously).
  function HostFailure(name, message, code) {
    this.error = new OfficeError(name, message, code);
  }

  // error.name follows the documentation; error.code is the Common API code where that table has
  // the condition, otherwise a stand-in value (README.md): tests should match on the name.
  var ERRORS = {
    DataExceedsMaximumSize: 2009,
    InvalidFormatError: 2006,
    InvalidCoercionType: 1000,
    NumberOfRecipientsExceeded: 9037,
    NumberOfNotificationMessagesExceeded: 9041,
    KeyNotFound: 9042,
    InvalidEndTime: 9038,
    ItemNotSaved: 9039,
    ItemNotShared: 9040,
    GenericTokenError: 9017,
    InternalServerError: 9018,
    EventRegistrationError: 5003,
  };

  function fail(name, message) {
    return new HostFailure(name, message, ERRORS[name] || 9000);
  }

  var latencyMs = config && typeof config.latencyMs === "number" ? config.latencyMs : 0;

  function later(fn) {
    setTimeout(function () {
      fn();
      persist();
    }, latencyMs);
  }

  var calls = [];

  function jsonable(x) {
    if (x === undefined) {
      return null;
    }
    try {
      return JSON.parse(
        JSON.stringify(x, function (k, v) {
          return typeof v === "function" ? undefined : v;
        })
      );
    } catch (e) {
      return String(x);
    }
  }

  function record(api, args) {
    calls.push({ api: api, args: jsonable(args) });
  }

  // Splits (fixed..., [options], [callback]) as Office.js methods take them.
  function splitArgs(api, args, fixed) {
    var list = Array.prototype.slice.call(args);
    var lead = list.slice(0, fixed);
    var rest = list.slice(fixed);
    var options;
    var callback;
    if (rest.length > 2) {
      throw new Error(api + ": too many arguments");
    }
    if (typeof rest[0] === "function") {
      callback = rest[0];
      if (rest[1] !== undefined) {
        throw new Error(api + ": nothing may follow the callback");
      }
    } else {
      if (rest[0] !== undefined && rest[0] !== null) {
        if (typeof rest[0] !== "object") {
          throw new Error(api + ": options must be an object");
        }
        options = rest[0];
      }
      if (rest[1] !== undefined && rest[1] !== null) {
        if (typeof rest[1] !== "function") {
          throw new Error(api + ": the callback must be a function");
        }
        callback = rest[1];
      }
    }
    return { lead: lead, options: options || {}, callback: callback, rawOptions: options };
  }

  // An async method: validate runs now (a bad argument throws, as Office.js does), run runs on
  // the host's turn and its value or HostFailure goes to the callback, never synchronously.
  function asyncMethod(api, fixed, validate, run) {
    return function () {
      var a = splitArgs(api, arguments, fixed);
      record(api, a.rawOptions === undefined ? a.lead : a.lead.concat([a.rawOptions]));
      if (validate) {
        validate.apply(null, a.lead.concat([a.options]));
      }
      later(function () {
        var result;
        try {
          var value = run.apply(null, a.lead.concat([a.options]));
          result = new AsyncResult(
            Office.AsyncResultStatus.Succeeded,
            value,
            undefined,
            a.options.asyncContext
          );
        } catch (e) {
          if (!(e instanceof HostFailure)) {
            throw e;
          }
          result = new AsyncResult(
            Office.AsyncResultStatus.Failed,
            undefined,
            e.error,
            a.options.asyncContext
          );
        }
        if (a.callback) {
          a.callback(result);
        }
      });
    };
  }

  // For the older (callback, userContext) shape of loadCustomPropertiesAsync and friends.
  function callbackFirstMethod(api, run) {
    return function (callback, userContext) {
      record(api, [userContext]);
      if (typeof callback !== "function") {
        throw new Error(api + ": the callback must be a function");
      }
      later(function () {
        var result;
        try {
          result = new AsyncResult(Office.AsyncResultStatus.Succeeded, run(), undefined, userContext);
        } catch (e) {
          if (!(e instanceof HostFailure)) {
            throw e;
          }
          result = new AsyncResult(Office.AsyncResultStatus.Failed, undefined, e.error, userContext);
        }
        callback(result);
      });
    };
  }

  function requireString(api, value, what) {
    if (typeof value !== "string") {
      throw new Error(api + ": " + what + " must be a string");
    }
  }

  // ---------------------------------------------------------------- HTML helpers

  function escapeHtml(s) {
    return String(s)
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;");
  }

  function textToHtml(text) {
    return escapeHtml(text).replace(/\r\n|\r|\n/g, "<br>");
  }

  var BLOCKS = /^(P|DIV|LI|UL|OL|TR|TABLE|H[1-6]|BLOCKQUOTE|PRE|SECTION|ARTICLE|HEADER|FOOTER)$/;

  function htmlToText(html) {
    var doc = new DOMParser().parseFromString(
      "<!DOCTYPE html><html><body>" + html + "</body></html>",
      "text/html"
    );
    var out = "";
    function newline() {
      if (out.length > 0 && out.charAt(out.length - 1) !== "\n") {
        out += "\n";
      }
    }
    function walk(node) {
      if (node.nodeType === 3) {
        out += node.nodeValue.replace(/\s+/g, " ");
        return;
      }
      if (node.nodeType !== 1) {
        return;
      }
      var tag = node.tagName;
      if (tag === "STYLE" || tag === "SCRIPT" || tag === "HEAD" || tag === "TITLE") {
        return;
      }
      if (tag === "BR") {
        out += "\n";
        return;
      }
      var block = BLOCKS.test(tag);
      if (block) {
        newline();
      }
      for (var c = node.firstChild; c; c = c.nextSibling) {
        walk(c);
      }
      if (block) {
        newline();
      }
    }
    walk(doc.body);
    return out
      .split("\n")
      .map(function (line) {
        return line.replace(/^ +| +$/g, "");
      })
      .join("\n")
      .replace(/^\n+|\n+$/g, "");
  }

  // A single outer Word section <div> is Word's page layout, not content: Word makes its own.
  function unwrapWordSection(html) {
    var m = /^\s*<div\s+class=(["']?)WordSection\d+\1\s*>([\s\S]*)<\/div>\s*$/i.exec(html);
    if (!m) {
      return html;
    }
    var inner = m[2].replace(/^\r?\n/, "").replace(/\r?\n$/, "");
    var opens = (inner.match(/<div[\s>]/gi) || []).length;
    var closes = (inner.match(/<\/div\s*>/gi) || []).length;
    return opens === closes ? inner : html;
  }

  // What the editor keeps of HTML handed to it: of a whole document, what is inside <body>;
  // the <head> (and its <style>), and anything outside <body> or after </html>, is not kept.
  function editorContent(data) {
    var lower = data.toLowerCase();
    var bodyOpen = /<body(?:\s[^>]*)?>/i.exec(data);
    if (bodyOpen) {
      var start = bodyOpen.index + bodyOpen[0].length;
      var end = lower.indexOf("</body", start);
      if (end < 0) {
        end = lower.indexOf("</html", start);
      }
      if (end < 0) {
        end = data.length;
      }
      return unwrapWordSection(data.slice(start, end));
    }
    var htmlOpen = /<html(?:\s[^>]*)?>/i.exec(data);
    if (htmlOpen) {
      var from = htmlOpen.index + htmlOpen[0].length;
      var headClose = lower.indexOf("</head>", from);
      if (headClose >= 0) {
        from = headClose + "</head>".length;
      }
      var to = lower.indexOf("</html", from);
      return unwrapWordSection(data.slice(from, to < 0 ? data.length : to));
    }
    return data;
  }

  // The body as Word's editor (Outlook on Windows and on Mac) hands it out: a whole document.
  function wordDocument(content) {
    return [
      '<html xmlns:v="urn:schemas-microsoft-com:vml" ' +
        'xmlns:o="urn:schemas-microsoft-com:office:office" ' +
        'xmlns:w="urn:schemas-microsoft-com:office:word" ' +
        'xmlns:m="http://schemas.microsoft.com/office/2004/12/omml" ' +
        'xmlns="http://www.w3.org/TR/REC-html40">',
      "<head>",
      '<meta http-equiv="Content-Type" content="text/html; charset=utf-8">',
      '<meta name="Generator" content="Microsoft Word 15 (filtered medium)">',
      "<style><!--",
      "/* Font Definitions */",
      "@font-face",
      '\t{font-family:"Cambria Math";',
      "\tpanose-1:2 4 5 3 5 4 6 3 2 4;}",
      "@font-face",
      "\t{font-family:Aptos;}",
      "/* Style Definitions */",
      "p.MsoNormal, li.MsoNormal, div.MsoNormal",
      "\t{margin:0cm;",
      "\tfont-size:12.0pt;",
      '\tfont-family:"Aptos",sans-serif;}',
      "a:link, span.MsoHyperlink",
      "\t{mso-style-priority:99;",
      "\tcolor:#467886;",
      "\ttext-decoration:underline;}",
      ".MsoChpDefault",
      "\t{mso-style-type:export-only;}",
      "@page WordSection1",
      "\t{size:612.0pt 792.0pt;",
      "\tmargin:72.0pt 72.0pt 72.0pt 72.0pt;}",
      "div.WordSection1",
      "\t{page:WordSection1;}",
      "--></style><!--[if gte mso 9]><xml>",
      '<o:shapedefaults v:ext="edit" spidmax="1026" />',
      "</xml><![endif]--><!--[if gte mso 9]><xml>",
      '<o:shapelayout v:ext="edit">',
      '<o:idmap v:ext="edit" data="1" />',
      "</o:shapelayout></xml><![endif]-->",
      "</head>",
      "<body lang=EN-US link=\"#467886\" vlink=\"#96607D\" style='word-wrap:break-word'>",
      "<div class=WordSection1>",
      content,
      "</div>",
      "</body>",
      "</html>",
      "",
    ].join("\r\n");
  }

  // ---------------------------------------------------------------- the item's state

  var itemConfig = (config && config.item) || {};
  var profileConfig = (config && config.userProfile) || {};
  var userProfile = {
    displayName: profileConfig.displayName || "Test User",
    emailAddress: profileConfig.emailAddress || "user@example.com",
    timeZone: profileConfig.timeZone || "UTC",
    accountType: profileConfig.accountType || "office365",
  };
  var shared = config && config.shared ? config.shared : null;

  function domainOf(address) {
    var at = String(address).lastIndexOf("@");
    return at < 0 ? "" : String(address).slice(at + 1).toLowerCase();
  }

  var homeDomain = domainOf(shared ? shared.owner : userProfile.emailAddress);

  function defaultStart() {
    var d = new Date();
    d.setUTCSeconds(0, 0);
    d.setUTCMinutes(d.getUTCMinutes() < 30 ? 30 : 60);
    return d;
  }

  function parseDate(value, what) {
    var d = new Date(value);
    if (isNaN(d.getTime())) {
      throw new Error("office.js stand-in: item." + what + " is not a date: " + value);
    }
    return d;
  }

  function recipientFrom(x, api) {
    var r;
    if (typeof x === "string") {
      r = { displayName: x, emailAddress: x };
    } else if (x && typeof x === "object" && typeof x.emailAddress === "string") {
      r = {
        displayName: typeof x.displayName === "string" && x.displayName ? x.displayName : x.emailAddress,
        emailAddress: x.emailAddress,
      };
      if (typeof x.recipientType === "string") {
        r.recipientType = x.recipientType;
      }
      if (typeof x.appointmentResponse === "string") {
        r.appointmentResponse = x.appointmentResponse;
      }
    } else {
      throw new Error(
        api + ": a recipient must be an SMTP address string, an EmailUser or EmailAddressDetails"
      );
    }
    if (!r.recipientType) {
      r.recipientType = domainOf(r.emailAddress) === homeDomain ? "user" : "externalUser";
    }
    if (!r.appointmentResponse) {
      r.appointmentResponse = "none";
    }
    return r;
  }

  function dedupe(list) {
    var seen = {};
    return list.filter(function (r) {
      var key = r.emailAddress.toLowerCase();
      if (seen[key]) {
        return false;
      }
      seen[key] = true;
      return true;
    });
  }

  var rooms = (config && config.rooms) || {};

  function parseLocationText(text) {
    return text
      .split(";")
      .map(function (s) {
        return s.trim();
      })
      .filter(function (s) {
        return s.length > 0;
      })
      .map(function (s) {
        return { id: s, type: "custom", displayName: s };
      });
  }

  var start = itemConfig.start ? parseDate(itemConfig.start, "start") : defaultStart();
  var end = itemConfig.end
    ? parseDate(itemConfig.end, "end")
    : new Date(start.getTime() + 30 * 60 * 1000);
  var organizerConfig = itemConfig.organizer ||
    (shared
      ? { displayName: shared.ownerDisplayName || shared.owner, emailAddress: shared.owner }
      : { displayName: userProfile.displayName, emailAddress: userProfile.emailAddress });

  var item = {
    subject: itemConfig.subject || "",
    start: start,
    end: end,
    locationText: itemConfig.location || "",
    locations: parseLocationText(itemConfig.location || ""),
    bodyType: itemConfig.bodyType === "text" ? "text" : "html",
    bodyContent: itemConfig.body || "",
    // null: the cursor was never in the body, so insertions go to the top
    cursor: null,
    requiredAttendees: dedupe(
      (itemConfig.requiredAttendees || []).map(function (x) {
        return recipientFrom(x, "config");
      })
    ),
    optionalAttendees: dedupe(
      (itemConfig.optionalAttendees || []).map(function (x) {
        return recipientFrom(x, "config");
      })
    ),
    organizer: {
      displayName: organizerConfig.displayName || organizerConfig.emailAddress,
      emailAddress: organizerConfig.emailAddress,
    },
    isNew: itemConfig.isNew !== false,
    customProperties: JSON.parse(JSON.stringify(itemConfig.customProperties || {})),
    // the item's notification bar: key -> NotificationMessageDetails, in the order added
    notifications: {},
    itemId: itemConfig.itemId || null,
    paneClosed: false,
  };
  // The item outlives the pane: a reload of the page in the same tab finds it as it was left.
  var STORAGE_KEY = "__officeStandInItem";
  var persistEnabled = !!config && !isDialog;

  function persist() {
    if (!persistEnabled) {
      return;
    }
    try {
      sessionStorage.setItem(STORAGE_KEY, JSON.stringify(item));
    } catch (e) {
      /* no storage here: the item lives as long as the page */
    }
  }

  function restore() {
    var saved = null;
    try {
      saved = persistEnabled ? sessionStorage.getItem(STORAGE_KEY) : null;
    } catch (e) {
      saved = null;
    }
    if (!saved) {
      return false;
    }
    var data = JSON.parse(saved);
    Object.keys(item).forEach(function (k) {
      if (k in data) {
        item[k] = data[k];
      }
    });
    item.start = new Date(data.start);
    item.end = new Date(data.end);
    return true;
  }

  if (restore()) {
    // as the user left it
  } else if (itemConfig.cursor === "end") {
    item.cursor = item.bodyContent.length;
  } else if (itemConfig.cursor === "start") {
    item.cursor = 0;
  }

  function syncLocationText() {
    item.locationText = item.locations
      .map(function (l) {
        return l.displayName;
      })
      .join("; ");
  }

  // ---------------------------------------------------------------- body

  function checkData(api, data) {
    requireString(api, data, "data");
  }

  function coercionOf(api, options) {
    var c = options.coercionType === undefined ? "text" : options.coercionType;
    if (c !== "text" && c !== "html") {
      throw fail("InvalidCoercionType", api + ": the coercion type " + c + " is not supported");
    }
    return c;
  }

  // The content a write puts into the body, after the documented checks.
  function insertion(api, data, options) {
    if (data.length > MAX_BODY_CHARS) {
      throw fail("DataExceedsMaximumSize", "The data parameter is longer than 1,000,000 characters.");
    }
    var c = coercionOf(api, options);
    if (c === "html" && item.bodyType === "text") {
      throw fail(
        "InvalidFormatError",
        "The coercionType is set to Office.CoercionType.Html and the body is in plain text."
      );
    }
    if (item.bodyType === "text") {
      return data;
    }
    return c === "html" ? editorContent(data) : textToHtml(data);
  }

  function bodyAsHtml() {
    var content = item.bodyType === "html" ? item.bodyContent : textToHtml(item.bodyContent);
    return isWordHost ? wordDocument(content) : "<div>" + content + "</div>";
  }

  var body = {};
  body.getTypeAsync = asyncMethod("body.getTypeAsync", 0, null, function () {
    return item.bodyType;
  });
  if (mailbox("1.3")) {
    body.getAsync = asyncMethod(
      "body.getAsync",
      1,
      function (coercionType) {
        requireString("body.getAsync", coercionType, "coercionType");
      },
      function (coercionType) {
        if (coercionType === "html") {
          return bodyAsHtml();
        }
        if (coercionType === "text") {
          return item.bodyType === "text" ? item.bodyContent : htmlToText(item.bodyContent);
        }
        throw fail("InvalidCoercionType", "The coercion type " + coercionType + " is not supported");
      }
    );
    body.setAsync = asyncMethod("body.setAsync", 1, checkData.bind(null, "body.setAsync"), function (
      data,
      options
    ) {
      item.bodyContent = insertion("body.setAsync", data, options);
      // where the cursor is afterwards differs by client (Body.setAsync remarks)
      if (platform === "PC") {
        item.cursor = 0;
      } else if (platform === "OfficeOnline") {
        item.cursor = item.bodyContent.length;
      } else {
        item.cursor = null;
      }
    });
  }
  body.prependAsync = asyncMethod(
    "body.prependAsync",
    1,
    checkData.bind(null, "body.prependAsync"),
    function (data, options) {
      var inserted = insertion("body.prependAsync", data, options);
      item.bodyContent = inserted + item.bodyContent;
      if (platform === "Mac" || isMobile) {
        item.cursor = null;
      } else if (item.cursor !== null) {
        item.cursor += inserted.length; // it stays in the preexisting content
      }
    }
  );
  body.setSelectedDataAsync = asyncMethod(
    "body.setSelectedDataAsync",
    1,
    checkData.bind(null, "body.setSelectedDataAsync"),
    function (data, options) {
      var inserted = insertion("body.setSelectedDataAsync", data, options);
      var at = item.cursor === null ? 0 : Math.min(item.cursor, item.bodyContent.length);
      item.bodyContent = item.bodyContent.slice(0, at) + inserted + item.bodyContent.slice(at);
      item.cursor = at + inserted.length;
    }
  );

  // ---------------------------------------------------------------- simple fields

  function textField(name, limit, getter, setter) {
    return {
      getAsync: asyncMethod(name + ".getAsync", 0, null, getter),
      setAsync: asyncMethod(
        name + ".setAsync",
        1,
        function (value) {
          requireString(name + ".setAsync", value, name);
        },
        function (value) {
          if (value.length > limit) {
            throw fail(
              "DataExceedsMaximumSize",
              "The " + name + " parameter is longer than " + limit + " characters."
            );
          }
          setter(value);
        }
      ),
    };
  }

  function timeField(name) {
    return {
      getAsync: asyncMethod(name + ".getAsync", 0, null, function () {
        return new Date(item[name].getTime());
      }),
      setAsync: asyncMethod(
        name + ".setAsync",
        1,
        function (dateTime) {
          if (!(dateTime instanceof Date) || isNaN(dateTime.getTime())) {
            throw new Error(name + ".setAsync: dateTime must be a valid Date");
          }
        },
        function (dateTime) {
          if (name === "start") {
            var duration = item.end.getTime() - item.start.getTime();
            item.start = new Date(dateTime.getTime());
            item.end = new Date(dateTime.getTime() + duration); // the duration is kept
          } else {
            if (dateTime.getTime() < item.start.getTime()) {
              throw fail("InvalidEndTime", "The appointment end time is before its start time.");
            }
            item.end = new Date(dateTime.getTime());
          }
        }
      ),
    };
  }

  // ---------------------------------------------------------------- recipients

  function recipientsField(field) {
    var api = field;
    function validate(recipients) {
      if (!Array.isArray(recipients)) {
        throw new Error(api + ": recipients must be an array");
      }
      recipients.forEach(function (x) {
        recipientFrom(x, api);
      });
    }
    function prepared(recipients) {
      if (recipients.length > MAX_RECIPIENTS_PER_CALL) {
        throw fail("NumberOfRecipientsExceeded", "The number of recipients exceeded 100 entries.");
      }
      var list = recipients.map(function (x) {
        return recipientFrom(x, api);
      });
      list.forEach(function (r) {
        if (r.displayName.length > MAX_DISPLAY_NAME_CHARS) {
          throw fail("DataExceedsMaximumSize", "A display name is longer than 255 characters.");
        }
      });
      return list;
    }
    return {
      getAsync: asyncMethod(api + ".getAsync", 0, null, function () {
        var list = item[field].map(function (r) {
          return Object.assign({}, r);
        });
        // Classic Outlook on Windows includes the organizer; the web only for an existing item.
        var withOrganizer =
          field === "requiredAttendees" &&
          (platform === "PC" || (platform === "OfficeOnline" && !item.isNew));
        var orgKey = (item.organizer.emailAddress || "").toLowerCase();
        if (
          withOrganizer &&
          !list.some(function (r) {
            return r.emailAddress.toLowerCase() === orgKey;
          })
        ) {
          list.unshift({
            displayName: item.organizer.displayName,
            emailAddress: item.organizer.emailAddress,
            recipientType: "user",
            appointmentResponse: "organizer",
          });
        }
        return list;
      }),
      setAsync: asyncMethod(api + ".setAsync", 1, validate, function (recipients) {
        item[field] = dedupe(prepared(recipients));
      }),
      addAsync: asyncMethod(api + ".addAsync", 1, validate, function (recipients) {
        item[field] = dedupe(item[field].concat(prepared(recipients)));
      }),
    };
  }

  // ---------------------------------------------------------------- enhanced location

  function locationIdentifiers(api, list) {
    if (!Array.isArray(list)) {
      throw new Error(api + ": locationIdentifiers must be an array");
    }
  }

  function checkedIdentifiers(list) {
    return list.map(function (l) {
      if (
        !l ||
        typeof l.id !== "string" ||
        !l.id ||
        (l.type !== "custom" && l.type !== "room")
      ) {
        throw fail("InvalidFormatError", "The format of the specified data object is not valid.");
      }
      return { id: l.id, type: l.type };
    });
  }

  function sameLocation(a, b) {
    return a.type === b.type && a.id.toLowerCase() === b.id.toLowerCase();
  }

  var enhancedLocation = {
    getAsync: asyncMethod("enhancedLocation.getAsync", 0, null, function () {
      return item.locations.map(function (l) {
        var d = { locationIdentifier: { id: l.id, type: l.type }, displayName: l.displayName };
        if (l.type === "room") {
          d.emailAddress = l.id;
        }
        return d;
      });
    }),
    addAsync: asyncMethod(
      "enhancedLocation.addAsync",
      1,
      locationIdentifiers.bind(null, "enhancedLocation.addAsync"),
      function (list) {
        checkedIdentifiers(list).forEach(function (l) {
          if (
            !item.locations.some(function (x) {
              return sameLocation(x, l);
            })
          ) {
            item.locations.push({
              id: l.id,
              type: l.type,
              displayName: l.type === "room" ? rooms[l.id.toLowerCase()] || rooms[l.id] || l.id : l.id,
            });
          }
        });
        syncLocationText();
      }
    ),
    removeAsync: asyncMethod(
      "enhancedLocation.removeAsync",
      1,
      locationIdentifiers.bind(null, "enhancedLocation.removeAsync"),
      function (list) {
        var gone = checkedIdentifiers(list);
        item.locations = item.locations.filter(function (x) {
          return !gone.some(function (l) {
            return sameLocation(x, l);
          });
        });
        syncLocationText();
      }
    ),
  };

  // ---------------------------------------------------------------- custom properties

  function CustomProperties(values) {
    var local = JSON.parse(JSON.stringify(values));
    this.get = function (name) {
      return local[name];
    };
    this.set = function (name, value) {
      record("customProperties.set", [name, value]);
      requireString("CustomProperties.set", name, "name");
      local[name] = value;
    };
    this.remove = function (name) {
      record("customProperties.remove", [name]);
      delete local[name];
    };
    if (mailbox("1.9")) {
      this.getAll = function () {
        return Object.assign({}, local);
      };
    }
    this.saveAsync = function (callback, asyncContext) {
      record("customProperties.saveAsync", [asyncContext]);
      if (callback !== undefined && typeof callback !== "function") {
        // saveAsync(asyncContext) is the other documented shape
        asyncContext = callback;
        callback = undefined;
      }
      // "always passed to the server as a string"
      var toSave = {};
      Object.keys(local).forEach(function (k) {
        toSave[k] = typeof local[k] === "string" ? local[k] : String(local[k]);
      });
      later(function () {
        var result;
        if (JSON.stringify(toSave).length > MAX_CUSTOM_PROPERTIES_JSON) {
          result = new AsyncResult(
            Office.AsyncResultStatus.Failed,
            undefined,
            fail("DataExceedsMaximumSize", "Custom properties are longer than 2,500 characters.")
              .error,
            asyncContext
          );
        } else {
          item.customProperties = toSave;
          result = new AsyncResult(Office.AsyncResultStatus.Succeeded, undefined, undefined, asyncContext);
        }
        if (callback) {
          callback(result);
        }
      });
    };
  }

  // ---------------------------------------------------------------- the item object

  // ---------------------------------------------------------------- notification messages

  // NotificationMessageDetails as documented: a message of at most 150 characters (longer throws
  // ArgumentOutOfRange), icon and persistent only for InformationalMessage (which needs both),
  // a key of at most 32 characters, at most 5 notifications per item.
  var NOTIFICATION_TYPES = ["informationalMessage", "errorMessage", "progressIndicator", "insightMessage"];

  function checkNotification(api, key, details) {
    requireString(api, key, "key");
    if (key.length > MAX_NOTIFICATION_KEY_CHARS) {
      throw new Error(api + ": ArgumentOutOfRange: the key can't be longer than 32 characters");
    }
    if (!details || typeof details !== "object") {
      throw new Error(api + ": JSONmessage must be a NotificationMessageDetails object");
    }
    if (NOTIFICATION_TYPES.indexOf(details.type) < 0) {
      throw new Error(api + ": unknown notification type " + JSON.stringify(details.type));
    }
    requireString(api, details.message, "message");
    if (details.message.length > MAX_NOTIFICATION_CHARS) {
      throw new Error(api + ": ArgumentOutOfRange: message is longer than 150 characters");
    }
    var informational = details.type === "informationalMessage";
    if (!informational && ("icon" in details || "persistent" in details)) {
      throw new Error(api + ": ArgumentException: icon and persistent apply to InformationalMessage only");
    }
    if (informational && (typeof details.icon !== "string" || typeof details.persistent !== "boolean")) {
      throw new Error(api + ": an InformationalMessage needs icon and persistent");
    }
  }

  function stored(details) {
    var kept = { type: details.type, message: details.message };
    if (details.type === "informationalMessage") {
      kept.icon = details.icon;
      kept.persistent = details.persistent;
    }
    return kept;
  }

  var notificationMessages = {
    addAsync: asyncMethod("notificationMessages.addAsync", 2, checkNotification.bind(null, "notificationMessages.addAsync"), function (key, details) {
      if (Object.keys(item.notifications).length >= MAX_NOTIFICATIONS) {
        throw fail("NumberOfNotificationMessagesExceeded", "There are a maximum of 5 notifications per message.");
      }
      item.notifications[key] = stored(details);
    }),
    replaceAsync: asyncMethod("notificationMessages.replaceAsync", 2, checkNotification.bind(null, "notificationMessages.replaceAsync"), function (key, details) {
      // a key that doesn't exist yet: the message is added
      if (!(key in item.notifications) && Object.keys(item.notifications).length >= MAX_NOTIFICATIONS) {
        throw fail("NumberOfNotificationMessagesExceeded", "There are a maximum of 5 notifications per message.");
      }
      item.notifications[key] = stored(details);
    }),
    removeAsync: asyncMethod("notificationMessages.removeAsync", 1, null, function (key) {
      if (!(key in item.notifications)) {
        throw fail("KeyNotFound", "The key for the notification message doesn't exist.");
      }
      delete item.notifications[key];
    }),
    getAllAsync: asyncMethod("notificationMessages.getAllAsync", 0, null, function () {
      return Object.keys(item.notifications).map(function (k) {
        var d = JSON.parse(JSON.stringify(item.notifications[k]));
        d.key = k;
        return d;
      });
    }),
  };

  function newItemId() {
    var bytes = new Uint8Array(48);
    crypto.getRandomValues(bytes);
    return (
      "AAMkA" +
      btoa(String.fromCharCode.apply(null, bytes))
        .replace(/\+/g, "-")
        .replace(/\//g, "_")
        .replace(/=+$/, "")
    );
  }

  function buildItem() {
    var it = {};
    it.itemType = Office.MailboxEnums.ItemType.Appointment;
    it.body = body;
    it.subject = textField(
      "subject",
      MAX_SUBJECT_CHARS,
      function () {
        return item.subject;
      },
      function (v) {
        item.subject = v;
      }
    );
    it.location = textField(
      "location",
      MAX_LOCATION_CHARS,
      function () {
        return item.locationText;
      },
      function (v) {
        item.locationText = v;
        item.locations = parseLocationText(v);
      }
    );
    it.start = timeField("start");
    it.end = timeField("end");
    it.requiredAttendees = recipientsField("requiredAttendees");
    it.optionalAttendees = recipientsField("optionalAttendees");
    it.loadCustomPropertiesAsync = callbackFirstMethod("loadCustomPropertiesAsync", function () {
      return new CustomProperties(item.customProperties);
    });
    if (mailbox("1.2")) {
      it.setSelectedDataAsync = asyncMethod(
        "item.setSelectedDataAsync",
        1,
        checkData.bind(null, "item.setSelectedDataAsync"),
        function (data, options) {
          if (item.cursor === null) {
            throw fail("InvalidSelection", "The cursor is not in the body or subject field.");
          }
          var inserted = insertion("item.setSelectedDataAsync", data, options);
          var at = Math.min(item.cursor, item.bodyContent.length);
          item.bodyContent = item.bodyContent.slice(0, at) + inserted + item.bodyContent.slice(at);
          item.cursor = at + inserted.length;
        }
      );
    }
    if (mailbox("1.3")) {
      it.saveAsync = asyncMethod("item.saveAsync", 0, null, function () {
        if (!item.itemId) {
          item.itemId = newItemId();
        }
        return item.itemId;
      });
      it.close = function () {
        record("item.close", []);
        item.paneClosed = true;
      };
    }
    if (mailbox("1.3")) {
      it.notificationMessages = notificationMessages;
    }
    if (mailbox("1.8")) {
      // the data a Smart Alerts button (commandId + contextData) handed the pane it opened; an
      // empty string when the pane was opened otherwise
      it.getInitializationContextAsync = asyncMethod("item.getInitializationContextAsync", 0, null, function () {
        var data = config.initializationContext;
        return data === undefined || data === null ? "" : String(data);
      });
    }
    if (mailbox("1.7")) {
      it.organizer = {
        getAsync: asyncMethod("organizer.getAsync", 0, null, function () {
          // no recipientType: the organizer is always a user on the Exchange server
          return {
            displayName: item.organizer.displayName,
            emailAddress: item.organizer.emailAddress,
          };
        }),
      };
      it.seriesId = null;
    }
    if (mailbox("1.8")) {
      it.enhancedLocation = enhancedLocation;
      it.getItemIdAsync = asyncMethod("item.getItemIdAsync", 0, null, function () {
        if (!item.itemId) {
          throw fail("ItemNotSaved", "The ID can't be retrieved until the item is saved.");
        }
        return item.itemId;
      });
      if (!isMobile) {
        it.getSharedPropertiesAsync = asyncMethod("item.getSharedPropertiesAsync", 0, null, function () {
          if (!shared) {
            throw fail("ItemNotShared", "The current folder or mailbox isn't shared.");
          }
          return {
            owner: shared.owner,
            delegatePermissions: shared.delegatePermissions || 0,
            targetMailbox: shared.targetMailbox || shared.owner,
            targetRestUrl: shared.targetRestUrl || "https://outlook.office.com/api",
          };
        });
      }
    }
    return it;
  }

  function buildMailbox() {
    var profile = {
      displayName: userProfile.displayName,
      emailAddress: userProfile.emailAddress,
      timeZone: userProfile.timeZone,
    };
    if (mailbox("1.6")) {
      profile.accountType = userProfile.accountType;
    }
    var hostName = {
      PC: "Outlook",
      Mac: "Outlook",
      OfficeOnline: (config && config.hostName) || "OutlookWebApp",
      iOS: "OutlookIOS",
      Android: "OutlookAndroid",
    }[platform];
    var diagnostics = {
      hostName: hostName,
      hostVersion: platform === "OfficeOnline" ? "15.20.8800.0" : "16.0.18324.20000",
    };
    if (platform === "OfficeOnline") {
      diagnostics.OWAView = "ThreeColumns";
    }
    return {
      item: buildItem(),
      userProfile: profile,
      diagnostics: diagnostics,
      getUserIdentityTokenAsync: callbackFirstMethod("getUserIdentityTokenAsync", function () {
        var t = config.identityToken;
        if (typeof t === "string") {
          return t;
        }
        if (t && t.error) {
          throw new HostFailure(
            t.error.name || "GenericTokenError",
            t.error.message || "An internal error has occurred.",
            t.error.code || ERRORS[t.error.name] || 9017
          );
        }
        // legacy Exchange tokens are turned off in Exchange Online
        throw fail("GenericTokenError", "An internal error has occurred.");
      }),
    };
  }

  // ---------------------------------------------------------------- dialogs (host page side)

  var openDialog = null;
  var dialogCount = 0;

  function isLoopback(hostname) {
    return hostname === "127.0.0.1" || hostname === "localhost" || hostname === "[::1]";
  }

  function emitToDialogHandlers(d, type, args) {
    (d.handlers[type] || []).slice().forEach(function (h) {
      h(args);
    });
  }

  function dialogGone(d, byUser) {
    if (openDialog !== d) {
      return;
    }
    clearInterval(d.poll);
    openDialog = null;
    if (byUser) {
      emitToDialogHandlers(d, Office.EventType.DialogEventReceived, { error: 12006 });
    }
  }

  window.addEventListener("message", function (e) {
    var data = e.data;
    if (!data || typeof data !== "object") {
      return;
    }
    if (data.__officeStandIn === "messageParent" && openDialog && e.source === openDialog.win) {
      var args = { message: data.message };
      args.origin = isSetSupported("DialogOrigin", "1.1") ? e.origin : undefined;
      emitToDialogHandlers(openDialog, Office.EventType.DialogMessageReceived, args);
    }
    if (data.__officeStandIn === "messageChild" && isDialog && e.source === window.opener) {
      parentMessageHandlers.slice().forEach(function (h) {
        h({
          message: data.message,
          origin: isSetSupported("DialogOrigin", "1.1") ? e.origin : undefined,
          type: Office.EventType.DialogParentMessageReceived,
        });
      });
    }
  });

  function makeDialog(d) {
    var dialog = {
      addEventHandler: function (eventType, handler) {
        record("dialog.addEventHandler", [eventType]);
        if (
          eventType !== Office.EventType.DialogMessageReceived &&
          eventType !== Office.EventType.DialogEventReceived
        ) {
          throw new Error("Dialog.addEventHandler: unsupported event type " + eventType);
        }
        if (typeof handler !== "function") {
          throw new Error("Dialog.addEventHandler: the handler must be a function");
        }
        (d.handlers[eventType] = d.handlers[eventType] || []).push(handler);
      },
      close: function () {
        record("dialog.close", []);
        if (openDialog !== d) {
          return;
        }
        clearInterval(d.poll);
        try {
          d.win.close();
        } catch (e) {
          /* already gone */
        }
        // asynchronous: a dialog opened right after close() finds the old one still open
        setTimeout(function () {
          if (openDialog === d) {
            openDialog = null;
          }
        }, 0);
      },
    };
    if (isSetSupported("DialogApi", "1.2")) {
      dialog.messageChild = function (message, messageOptions) {
        record("dialog.messageChild", [message, messageOptions]);
        requireString("Dialog.messageChild", message, "message");
        var target = d.origin;
        if (messageOptions && messageOptions.targetOrigin && isSetSupported("DialogOrigin", "1.1")) {
          target = messageOptions.targetOrigin;
        }
        if (openDialog === d && !d.win.closed) {
          d.win.postMessage({ __officeStandIn: "messageChild", message: message }, target);
        }
      };
    }
    return dialog;
  }

  function displayDialogAsync(startAddress) {
    var a = splitArgs("ui.displayDialogAsync", arguments, 1);
    record("ui.displayDialogAsync", a.rawOptions === undefined ? [startAddress] : [startAddress, a.rawOptions]);
    requireString("ui.displayDialogAsync", startAddress, "startAddress");
    var options = a.options;
    function done(value, error) {
      if (!a.callback) {
        return;
      }
      var r = error
        ? new AsyncResult(Office.AsyncResultStatus.Failed, undefined, error, options.asyncContext)
        : new AsyncResult(Office.AsyncResultStatus.Succeeded, value, undefined, options.asyncContext);
      a.callback(r);
    }
    function dialogError(code, message) {
      done(undefined, new OfficeError("Display Dialog Error", message, code));
    }
    later(function () {
      if (openDialog) {
        return dialogError(12007, "A dialog box is already opened from this host window.");
      }
      var url;
      try {
        url = new URL(startAddress); // an absolute URL: no base is assumed
      } catch (e) {
        return dialogError(12004, "The domain of the URL is not included in the AppDomains.");
      }
      var devHttp =
        url.protocol === "http:" &&
        location.protocol === "http:" &&
        isLoopback(location.hostname);
      if (url.protocol !== "https:" && !devHttp) {
        return dialogError(12005, "The URL uses the HTTP protocol. HTTPS is required.");
      }
      if (url.origin !== location.origin) {
        return dialogError(12004, "The domain of the URL is not the domain of the host page.");
      }
      var width = Math.max(150, Math.round(((options.width || 80) / 100) * screen.availWidth));
      var height = Math.max(250, Math.round(((options.height || 80) / 100) * screen.availHeight));
      dialogCount += 1;
      var win = window.open(
        url.href,
        DIALOG_NAME_PREFIX + dialogCount,
        "popup=yes,width=" + width + ",height=" + height
      );
      if (!win) {
        return dialogError(12011, "The browser blocked the dialog.");
      }
      var d = { win: win, url: url.href, origin: url.origin, handlers: {} };
      d.poll = setInterval(function () {
        if (win.closed) {
          dialogGone(d, true);
        }
      }, 100);
      openDialog = d;
      done(makeDialog(d));
    });
  }

  // ---------------------------------------------------------------- dialogs (dialog side)

  var parentMessageHandlers = [];
  var addinInitialized = false; // Office.onReady called or Office.initialize assigned

  function messageParent(message, messageOptions) {
    record("ui.messageParent", [message, messageOptions]);
    if (!isDialog || !window.opener) {
      throw new Error("messageParent: this page is not an Office dialog");
    }
    if (!addinInitialized) {
      throw new Error("messageParent: initialize Office.js in the dialog first (Office.onReady)");
    }
    var target = location.origin; // the domain the dialog is hosting now
    if (messageOptions && messageOptions.targetOrigin && isSetSupported("DialogOrigin", "1.1")) {
      target = messageOptions.targetOrigin;
    }
    window.opener.postMessage({ __officeStandIn: "messageParent", message: String(message) }, target);
  }

  function buildUi() {
    var ui = {};
    if (mailbox("1.4")) {
      if (!isDialog) {
        ui.displayDialogAsync = displayDialogAsync;
      }
      ui.messageParent = messageParent;
    }
    if (mailbox("1.5")) {
      ui.closeContainer = function () {
        record("ui.closeContainer", []);
        item.paneClosed = true;
        if (openDialog) {
          makeDialog(openDialog).close();
        }
      };
    }
    if (isSetSupported("DialogApi", "1.2")) {
      ui.addHandlerAsync = asyncMethod(
        "ui.addHandlerAsync",
        2,
        function (eventType, handler) {
          if (typeof handler !== "function") {
            throw new Error("ui.addHandlerAsync: the handler must be a function");
          }
        },
        function (eventType, handler) {
          if (eventType !== Office.EventType.DialogParentMessageReceived || !isDialog) {
            throw fail("EventRegistrationError", "The event type is not supported here.");
          }
          parentMessageHandlers.push(handler);
        }
      );
    }
    return ui;
  }

  // ---------------------------------------------------------------- nested app authentication

  function base64url(s) {
    var bytes = new TextEncoder().encode(s);
    var bin = "";
    bytes.forEach(function (b) {
      bin += String.fromCharCode(b);
    });
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function naaAccount() {
    var a = (config.naa && config.naa.account) || {};
    var tenantId = a.tenantId || "72f988bf-0000-4000-8000-00000000c0de";
    var localAccountId = a.localAccountId || "00000000-0000-4000-8000-0000000000a1";
    return {
      homeAccountId: a.homeAccountId || localAccountId + "." + tenantId,
      environment: a.environment || "login.microsoftonline.com",
      tenantId: tenantId,
      username: a.username || userProfile.emailAddress,
      localAccountId: localAccountId,
      name: a.name || userProfile.displayName,
    };
  }

  function naaExpiresIn() {
    var e = config.naa.expiresOn;
    var at;
    if (typeof e === "number") {
      at = e * 1000;
    } else if (typeof e === "string") {
      at = new Date(e).getTime();
    } else {
      at = Date.now() + 3600 * 1000;
    }
    return Math.max(0, Math.floor((at - Date.now()) / 1000));
  }

  function naaError(err) {
    if (typeof err === "string") {
      return BRIDGE_STATUSES.indexOf(err) >= 0
        ? { status: err }
        : { status: "PERSISTENT_ERROR", code: "stand_in_error", description: err };
    }
    return {
      status: err.status || "PERSISTENT_ERROR",
      code: err.code,
      subError: err.subError,
      description: err.description,
    };
  }

  function naaRespond(listeners, response) {
    var text = JSON.stringify(response);
    listeners.slice().forEach(function (cb) {
      cb(text);
    });
  }

  function installNestedAppAuthBridge() {
    var listeners = [];
    window.nestedAppAuthBridge = {
      addEventListener: function (eventName, callback) {
        if (eventName === "message" && typeof callback === "function") {
          listeners.push(callback);
        }
      },
      removeEventListener: function (eventName, callback) {
        var i = listeners.indexOf(callback);
        if (i >= 0) {
          listeners.splice(i, 1);
        }
      },
      postMessage: function (message) {
        var request;
        try {
          request = JSON.parse(message);
        } catch (e) {
          return;
        }
        if (!request || request.messageType !== "NestedAppAuthRequest" || !request.requestId) {
          return;
        }
        later(function () {
          naaRespond(listeners, handleNaaRequest(request));
        });
      },
    };
  }

  function handleNaaRequest(request) {
    var base = { messageType: "NestedAppAuthResponse", requestId: request.requestId };
    var account = naaAccount();
    if (request.method === "GetInitContext") {
      return Object.assign(base, {
        success: true,
        initContext: {
          sdkName: "office-js-stand-in",
          sdkVersion: "1.0.0",
          capabilities: { queryAccount: false },
          accountContext: {
            homeAccountId: account.homeAccountId,
            environment: account.environment,
            tenantId: account.tenantId,
          },
        },
      });
    }
    if (request.method !== "GetToken" && request.method !== "GetTokenPopup") {
      return Object.assign(base, {
        success: false,
        error: { status: "PERSISTENT_ERROR", description: "unsupported method " + request.method },
      });
    }
    var params = request.tokenParams || {};
    var scopes = String(params.scope || "")
      .split(" ")
      .filter(function (s) {
        return s;
      });
    record(request.method === "GetToken" ? "naa.getToken" : "naa.getTokenPopup", [
      Object.assign({ scopes: scopes }, params),
    ]);
    if (config.naa.error) {
      return Object.assign(base, { success: false, error: naaError(config.naa.error) });
    }
    var onlyOidc = scopes.every(function (s) {
      return OIDC_SCOPES.indexOf(s.toLowerCase()) >= 0;
    });
    if (onlyOidc) {
      return Object.assign(base, {
        success: false,
        error: {
          status: "PERSISTENT_ERROR",
          code: "invalid_scope",
          description: "The token request must include a scope other than openid, profile, " +
            "offline_access or email.",
        },
      });
    }
    var now = Math.floor(Date.now() / 1000);
    var expiresIn = naaExpiresIn();
    var claims = {
      aud: params.clientId,
      iss: "https://login.microsoftonline.com/" + account.tenantId + "/v2.0",
      iat: now,
      nbf: now,
      exp: now + expiresIn,
      name: account.name,
      oid: account.localAccountId,
      preferred_username: account.username,
      sub: "stand-in-" + account.localAccountId,
      tid: account.tenantId,
      ver: "2.0",
    };
    var idToken =
      base64url(JSON.stringify({ alg: "none", typ: "JWT" })) +
      "." +
      base64url(JSON.stringify(claims)) +
      ".c3RhbmQtaW4";
    return Object.assign(base, {
      success: true,
      token: {
        access_token: config.naa.accessToken,
        expires_in: expiresIn,
        id_token: idToken,
        properties: null,
        scope: scopes.join(" "),
      },
      account: Object.assign({ idTokenClaims: claims }, account),
    });
  }

  // ---------------------------------------------------------------- Office.actions and events

  var actionHandlers = {};

  Office.actions = undefined;
  if (config && mailbox("1.10")) {
    Office.actions = {
      associate: function (actionId, actionFunction) {
        record("actions.associate", [actionId]);
        requireString("Office.actions.associate", actionId, "actionId");
        if (typeof actionFunction !== "function") {
          throw new Error("Office.actions.associate: actionFunction must be a function");
        }
        actionHandlers[actionId] = actionFunction;
      },
    };
  }

  var SMART_ALERT_OPTIONS = {
    allowEvent: "1.12",
    errorMessage: "1.12",
    cancelLabel: "1.14",
    commandId: "1.14",
    contextData: "1.14",
    sendModeOverride: "1.14",
    errorMessageMarkdown: "1.15",
  };

  // What the host makes of event.completed(options): the options it knows (by requirement set),
  // or {invalid: [...], options} when they break the documented rules.
  function completedOutcome(eventType, options) {
    if (options === undefined || options === null) {
      return {};
    }
    if (typeof options !== "object") {
      return { invalid: ["options must be an object"], options: jsonable(options) };
    }
    var invalid = [];
    var kept = {};
    if (eventType === null) {
      // Office.AddinCommands.Event: only allowEvent, from Mailbox 1.8
      if ("allowEvent" in options && mailbox("1.8")) {
        if (typeof options.allowEvent !== "boolean") {
          invalid.push("allowEvent must be a boolean");
        }
        kept.allowEvent = options.allowEvent;
      }
    } else {
      Object.keys(SMART_ALERT_OPTIONS).forEach(function (k) {
        if (k in options && mailbox(SMART_ALERT_OPTIONS[k])) {
          kept[k] = options[k];
        }
      });
      if ("allowEvent" in kept && typeof kept.allowEvent !== "boolean") {
        invalid.push("allowEvent must be a boolean");
      }
      ["errorMessage", "errorMessageMarkdown"].forEach(function (k) {
        if (k in kept) {
          if (typeof kept[k] !== "string") {
            invalid.push(k + " must be a string");
          } else if (kept[k].length > MAX_ALERT_MESSAGE_CHARS) {
            invalid.push(k + " must be 500 characters or less");
          }
        }
      });
      if ("cancelLabel" in kept) {
        if (typeof kept.cancelLabel !== "string") {
          invalid.push("cancelLabel must be a string");
        } else if (kept.cancelLabel.length > MAX_CANCEL_LABEL_CHARS) {
          invalid.push("cancelLabel must be 20 characters or less");
        }
      }
      if ("commandId" in kept && typeof kept.commandId !== "string") {
        invalid.push("commandId must be a string");
      }
      if ("sendModeOverride" in kept && kept.sendModeOverride !== "promptUser") {
        invalid.push("sendModeOverride can only be Office.MailboxEnums.SendModeOverride.PromptUser");
      }
      if ("contextData" in kept && !("commandId" in kept)) {
        delete kept.contextData; // ignored without a commandId
      }
    }
    if (invalid.length) {
      return { invalid: invalid, options: jsonable(options) };
    }
    return jsonable(kept);
  }

  var launchEvents = (config && config.launchEvents) || {};

  function eventTypeFor(name) {
    var types = Object.keys(launchEvents).filter(function (t) {
      return launchEvents[t] === name;
    });
    return types.length ? types[0] : null;
  }

  function fire(name, opts) {
    opts = opts || {};
    var eventType = opts.eventType || eventTypeFor(name);
    if (!config || isDialog) {
      return Promise.reject(new Error("fire: no Outlook item here"));
    }
    if (eventType !== null) {
      var needs =
        eventType === "OnAppointmentSend" || eventType === "OnMessageSend" ? "1.12" : "1.10";
      if (!mailbox(needs)) {
        return Promise.reject(
          new Error("fire: " + eventType + " needs Mailbox " + needs + "; this host lacks it")
        );
      }
    } else if (!mailbox("1.3")) {
      return Promise.reject(new Error("fire: function commands need Mailbox 1.3"));
    }
    var timeoutMs = typeof opts.timeoutMs === "number" ? opts.timeoutMs : FIRE_TIMEOUT_MS;
    return new Promise(function (resolve) {
      var settled = false;
      function settle(value) {
        if (!settled) {
          settled = true;
          resolve(value);
        }
      }
      setTimeout(function () {
        settle({ timeout: true });
      }, timeoutMs);
      function run() {
        var handler = actionHandlers[name];
        if (!handler) {
          if (!settled) {
            setTimeout(run, 20); // the host waits for the runtime to associate the handler
          }
          return;
        }
        record("fire", [name, eventType]);
        var event = {
          completed: function (options) {
            record("event.completed", [options]);
            settle(completedOutcome(eventType, options));
          },
        };
        if (eventType !== null) {
          event.type = eventType;
        } else {
          event.source = { id: opts.sourceId || name };
        }
        try {
          var out = handler(event);
          if (out && typeof out.then === "function") {
            out.then(null, function (e) {
              settle({ error: String((e && e.message) || e) });
            });
          }
        } catch (e) {
          settle({ error: String((e && e.message) || e) });
        }
      }
      run();
    });
  }

  // ---------------------------------------------------------------- initialization

  var readyInfo = null;
  var readyWaiters = [];
  var initializeHandler;

  Object.defineProperty(Office, "initialize", {
    configurable: true,
    enumerable: true,
    get: function () {
      return initializeHandler;
    },
    set: function (fn) {
      initializeHandler = fn;
      addinInitialized = true;
    },
  });

  Office.onReady = function (callback) {
    addinInitialized = true;
    return new Promise(function (resolve) {
      function deliver(info) {
        var copy = { host: info.host, platform: info.platform };
        if (typeof callback === "function") {
          callback(copy);
        }
        resolve(copy);
      }
      if (readyInfo) {
        setTimeout(function () {
          deliver(readyInfo);
        }, 0);
      } else {
        readyWaiters.push(deliver);
      }
    });
  };

  Office.context = undefined;

  function boot() {
    if (!config) {
      // a plain browser: no host, no mailbox, no requirement set
      Office.context = { requirements: { isSetSupported: isSetSupported } };
      readyInfo = { host: null, platform: null };
    } else {
      var context = {
        requirements: { isSetSupported: isSetSupported },
        displayLanguage: (config && config.displayLanguage) || "en-US",
        contentLanguage: (config && config.displayLanguage) || "en-US",
        ui: buildUi(),
      };
      if (!isDialog) {
        context.mailbox = buildMailbox();
      }
      if (mailbox("1.5")) {
        context.diagnostics = {
          host: Office.HostType.Outlook,
          platform: platform,
          version: platform === "OfficeOnline" ? "16.0.0.0" : "16.0.18324.20000",
        };
      }
      Office.context = context;
      if (!isDialog && config.naa && isSetSupported("NestedAppAuth", "1.1")) {
        installNestedAppAuthBridge();
      }
      readyInfo = { host: Office.HostType.Outlook, platform: platform };
      if (typeof initializeHandler === "function") {
        initializeHandler(Office.InitializationReason.Inserted);
      }
    }
    readyWaiters.splice(0).forEach(function (deliver) {
      deliver(readyInfo);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () {
      setTimeout(boot, 0);
    });
  } else {
    setTimeout(boot, 0);
  }

  // ---------------------------------------------------------------- the test API

  function recipientsState(list) {
    return list.map(function (r) {
      return {
        displayName: r.displayName,
        emailAddress: r.emailAddress,
        recipientType: r.recipientType,
        appointmentResponse: r.appointmentResponse,
      };
    });
  }

  window.__outlook = {
    calls: calls,
    state: function () {
      if (!config || isDialog) {
        return { platform: platform, dialog: isDialog };
      }
      return {
        platform: platform,
        subject: item.subject,
        start: item.start.toISOString(),
        end: item.end.toISOString(),
        location: item.locationText,
        enhancedLocations: item.locations.map(function (l) {
          var o = { id: l.id, type: l.type, displayName: l.displayName };
          if (l.type === "room") {
            o.emailAddress = l.id;
          }
          return o;
        }),
        bodyType: item.bodyType,
        bodyContent: item.bodyContent,
        cursor: item.cursor,
        requiredAttendees: recipientsState(item.requiredAttendees),
        optionalAttendees: recipientsState(item.optionalAttendees),
        organizer: {
          displayName: item.organizer.displayName,
          emailAddress: item.organizer.emailAddress,
        },
        customProperties: JSON.parse(JSON.stringify(item.customProperties)),
        notifications: JSON.parse(JSON.stringify(item.notifications)),
        shared: shared ? JSON.parse(JSON.stringify(shared)) : null,
        itemId: item.itemId,
        paneClosed: item.paneClosed,
        dialog: openDialog ? { url: openDialog.url, open: !openDialog.win.closed } : null,
      };
    },
    fire: fire,
    closeDialog: function () {
      // the user closes the dialog with its X button
      var d = openDialog;
      if (!d) {
        return false;
      }
      try {
        d.win.close();
      } catch (e) {
        /* already gone */
      }
      dialogGone(d, true);
      return true;
    },
    edit: function (patch) {
      // what the user does in the compose form
      patch = patch || {};
      if (typeof patch.subject === "string") {
        item.subject = patch.subject;
      }
      if (typeof patch.location === "string") {
        item.locationText = patch.location;
        item.locations = parseLocationText(patch.location);
      }
      if (typeof patch.bodyContent === "string") {
        item.bodyContent = patch.bodyContent;
        item.cursor = null;
      }
      if (patch.cursor === "start") {
        item.cursor = 0;
      } else if (patch.cursor === "end") {
        item.cursor = item.bodyContent.length;
      }
      if (patch.start) {
        item.start = parseDate(patch.start, "start");
      }
      if (patch.end) {
        item.end = parseDate(patch.end, "end");
      }
      persist();
    },
  };

  window.Office = Office;
})();
