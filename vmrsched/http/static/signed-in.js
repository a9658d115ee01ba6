// The page the identity provider sends the sign-in dialog back to: hands the result (a session
// token, or an error) to the pane. In Outlook through Office's dialog channel; in an ordinary
// browser (preview) to the window that opened it, on our own origin only.
"use strict";

(function () {
  const message = document.getElementById("vmr-signed-in").dataset.result;

  function toOpener() {
    if (window.opener && window.opener !== window) {
      window.opener.postMessage(message, window.location.origin);
      window.close();
    }
  }

  if (window.Office && Office.onReady) {
    Office.onReady(() => {
      const ui = Office.context && Office.context.ui;
      if (ui && ui.messageParent) ui.messageParent(message);
      else toOpener();
    });
  } else {
    toOpener();
  }
})();
