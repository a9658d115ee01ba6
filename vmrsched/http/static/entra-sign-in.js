// The Entra ID sign-in for Outlook hosts without nested app authentication (NestedAppAuth 1.1):
// the pane opens this page in an Office dialog; MSAL.js signs the user in with the authorization
// code flow and PKCE (a redirect to the identity platform and back to this page), then hands the
// access token for the add-in API's scope to the pane with messageParent. Same origin as the pane.
"use strict";

(function () {
  const main = document.getElementById("vmr-entra");
  const settings = JSON.parse(main.dataset.settings);

  function reply(answer) {
    const message = JSON.stringify(answer);
    const send = () => {
      const ui = window.Office && Office.context && Office.context.ui;
      if (ui && ui.messageParent) ui.messageParent(message);
      else if (window.opener && window.opener !== window) window.opener.postMessage(message, window.location.origin);
    };
    if (window.Office && Office.onReady) Office.onReady(send);
    else send();
  }

  async function signIn() {
    const client = new msal.PublicClientApplication({
      auth: {
        clientId: settings.clientId,
        authority: `${settings.authority}/${settings.tenantId}`,
        // The authority is the administrator's configuration, so trust it as configured: MSAL
        // then reads the tenant's OpenID configuration from it directly. Otherwise, for a host it
        // carries no built-in metadata for (anything but Microsoft's own clouds: a stand-in of
        // the identity platform in the tests, a proxy), it would first ask instance discovery at
        // login.microsoftonline.com, which this page's CSP does not let it reach (connect-src is
        // 'self' and the authority), and fail with untrusted_authority. For
        // login.microsoftonline.com it only replaces MSAL's built-in aliases of the host
        // (login.windows.net, ...) in its cache keys; this page's cache is its own sessionStorage.
        knownAuthorities: [settings.authority],
        redirectUri: new URL(window.location.pathname, window.location.origin).href,
      },
      cache: { cacheLocation: "sessionStorage" },
    });
    await client.initialize();
    const request = { scopes: [settings.scope] };
    const back = await client.handleRedirectPromise();
    if (back && back.accessToken) {
      reply({ accessToken: back.accessToken });
      return;
    }
    const account = client.getAllAccounts()[0];
    if (account) {
      try {
        const silent = await client.acquireTokenSilent({ ...request, account });
        reply({ accessToken: silent.accessToken });
        return;
      } catch (e) { /* fall through to the redirect */ }
    }
    await client.acquireTokenRedirect(request);
  }

  signIn().catch((e) => {
    document.getElementById("vmr-entra-status").textContent = "The sign-in did not work.";
    reply({ error: String(e && (e.errorCode || e.message) || e) });
  });
})();
