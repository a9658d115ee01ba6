"""Calls to Microsoft Graph for one integration: app-only tokens (client credentials through
msal), one pooled HTTPS session under the service's proxy rule, at most
`max_concurrent_requests` calls in flight, Graph's answers as GatewayErrors, and $batch.

Throttling: Graph throttles per app and mailbox, so a Retry-After on 429/503/504, whether on a
whole answer or on one part of a $batch, holds every call to the mailbox (reading and sending:
`Hold`) until it has passed; a call asked for meanwhile is not made but refused at once with the
wait left, which backs its actor off. An expired token is refreshed once and the call
retried. An identity platform that cannot issue tokens is an outage like Graph's own (backoff,
exchange_unreachable). A call that changes something and got no answer
(REQUEST_TIMEOUT passed, the connection dropped) may have been carried out: its GatewayError
says so (outcome_unknown).

Threads: a GraphClient is used by the poller's and the notifier's threads at once, and a $batch
runs its chains on threads of its own. The session's connection pool holds as many connections
as calls may be in flight; `Slots` (a condition) caps those; the token source renews under its
own lock; the mailbox's `Hold` under its own; nothing else here changes after construction.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from vmrsched.config import GraphConfig, IntegrationConfig
from vmrsched.mailbox.base import GatewayError, outcome_unknown
from vmrsched.mailbox.ews_auth import IDENTITY_ERRORS, IdentityHttp, identity_failure
from vmrsched.mailbox.graph_batch import (
    Answer,
    Hold,
    Slots,
    answers_of,
    chain_body,
    retry_after,
    run_together,
    settle,
    split,
)
from vmrsched.mailbox.sessions import CaSession
from vmrsched.proxies import use_rule
from vmrsched.telemetry import Metrics

log = logging.getLogger("vmrsched.graph")

REQUEST_TIMEOUT = 30.0  # seconds to wait for Graph's answer to one call


class GraphTokens:
    """App-only tokens for Graph (client credentials); msal caches and renews them."""

    def __init__(self, graph: GraphConfig, session: requests.Session) -> None:
        self.graph = graph
        self.session = session
        self.http = IdentityHttp(session)  # timeouts; a 5xx answer is an outage
        self.scope = graph.graph_url.rstrip("/") + "/.default"
        self._lock = threading.Lock()
        self._app: Any = None

    def _credential(self) -> Any:
        """The client secret, or the certificate: msal signs a client assertion with its key
        and names the certificate by its SHA-1 thumbprint."""
        if not self.graph.client_certificate_file:
            secret = self.graph.client_secret
            return secret.reveal() if secret else None
        pem = Path(self.graph.client_certificate_file).read_bytes()
        certificate = x509.load_pem_x509_certificate(pem)
        thumbprint = certificate.fingerprint(hashes.SHA1()).hex()
        return {"private_key": pem.decode(), "thumbprint": thumbprint}

    def get(self, force: bool = False) -> str:
        """A token for Graph; an identity platform that cannot serve (unreachable, 5xx) is an
        outage (a transient GatewayError with its Retry-After), like Graph's own."""
        with self._lock:
            try:
                if force or self._app is None:
                    self._app = None  # rebuilt next time should this fail
                    self._app = msal.ConfidentialClientApplication(
                        self.graph.client_id,
                        client_credential=self._credential(),
                        authority=f"{self.graph.authority.rstrip('/')}/{self.graph.tenant_id}",
                        validate_authority=False,
                        instance_discovery=False,
                        http_client=self.http,
                    )
                result = self._app.acquire_token_for_client(scopes=[self.scope])
            except IDENTITY_ERRORS as exc:
                raise identity_failure(exc, "the token endpoint cannot be reached") from exc
        if not result or "access_token" not in result:
            detail = (result or {}).get("error_description") or (result or {}).get("error")
            raise GatewayError(f"no Graph token for the app registration ({detail})")
        return str(result["access_token"])


class GraphClient:
    """Graph for one integration's room mailbox: `call` one request, `batch` many."""

    def __init__(self, integ: IntegrationConfig, metrics: Metrics) -> None:
        self.integ = integ
        self.name = integ.name
        self.room = integ.exchange.mailbox_email
        self.metrics = metrics
        graph = integ.graph
        self.api = graph.graph_url.rstrip("/") + "/v1.0"
        self.base = f"{self.api}/users/{quote(self.room)}"
        # Graph and its token endpoint under the service's one proxy rule
        self.session = use_rule(CaSession(graph.tls_ca_file), integ.advanced.disable_web_proxy)
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=graph.max_concurrent_requests)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.tokens = GraphTokens(graph, self.session)
        self._slots = Slots(graph.max_concurrent_requests)
        self._hold = Hold()  # the mailbox's back-off: Graph's Retry-After, for every call

    def _count(self, operation: str, result: str) -> None:
        self.metrics.exchange_requests.labels(self.name, operation, result).inc()

    def call(
        self,
        method: str,
        url: str,
        operation: str,
        json: Any = None,
        parts: int = 1,
        **kwargs: Any,
    ) -> requests.Response:
        """One Graph call: a fresh token once on 401, throttling and outages as retryable
        GatewayErrors, 403/404/400 as permanent ones carrying Graph's error code. A call that
        changes something and got no answer (a timeout, a connection dropped once it was sent)
        may have been carried out: its GatewayError says so (outcome_unknown)."""
        for attempt in range(2):
            token = self.tokens.get(force=attempt > 0)
            headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
            try:
                with self._slots.take(parts):
                    self._wait_over(operation)
                    response = self.session.request(
                        method, url, json=json, headers=headers, timeout=REQUEST_TIMEOUT, **kwargs
                    )
            except requests.RequestException as exc:
                self._count(operation, "unreachable")
                if method != "GET" and outcome_unknown(exc):
                    raise GatewayError(
                        f"Microsoft Graph did not answer {operation} (it may have been carried "
                        f"out): {exc}",
                        outcome_unknown=True,
                    ) from exc
                raise GatewayError(f"Microsoft Graph cannot be reached: {exc}") from exc
            status = response.status_code
            self._count(operation, str(status))
            if status == 401 and attempt == 0:
                continue  # the token expired or was revoked: one fresh token, one retry
            if status < 300:
                return response
            return self._failed(response, method, url)
        raise AssertionError("unreachable")

    def _failed(self, response: requests.Response, method: str, url: str) -> requests.Response:
        status = response.status_code
        code, message = _graph_error(response)
        what = f"Graph {method} {url.removeprefix(self.api)} answered {status} {code}: {message}"
        if status in (429, 503, 504):
            wait = self._held(status, response.headers, what)
            raise GatewayError(f"Microsoft Graph is throttling or busy: {what}", retry_after=wait)
        if status >= 500:
            raise GatewayError(what)
        if status == 401:
            raise GatewayError(f"the app registration is not accepted: {what}")
        # 400, 403, 404, 409: about this one call (a message, an organizer outside the scope)
        raise GatewayError(what, permanent=True, code=code or f"http_{status}")

    def batch(
        self,
        calls: Sequence[tuple[str, str, Any]],
        operation: str,
        operations: Sequence[str] | None = None,
    ) -> list[Answer]:
        """Several calls in $batch requests: (method, URL, JSON body) each, answered in the same
        order, each as it would be alone (graph_batch: chains of up to 20, one call in flight
        per chain, up to max_concurrent_requests chains at once). Non-JSON bodies ($value)
        arrive base64-encoded. A chain whose $batch request failed gives its calls that error
        (Answer.error); the others keep their answers. `operations`: a metrics label per call."""
        labels = list(operations) if operations is not None else [operation] * len(calls)
        final: dict[int, Answer] = {}
        todo = list(range(len(calls)))
        while todo:
            chains = split(todo)
            replies: list[list[Answer]] = [[] for _ in chains]
            run_together(
                [
                    functools.partial(self._chain, [calls[i] for i in chain], operation, reply)
                    for chain, reply in zip(chains, replies, strict=True)
                ]
            )
            todo = sorted(
                index
                for chain, reply in zip(chains, replies, strict=True)
                for index in settle(chain, reply, final)
            )
        out = [final[i] for i in range(len(calls))]
        for label, answer in zip(labels, out, strict=True):
            if answer.error is None:
                self._count(label, str(answer.status))
        return out

    def _chain(
        self, calls: Sequence[tuple[str, str, Any]], operation: str, out: list[Answer]
    ) -> None:
        """One chained $batch; its answers (or its failure, as each call's) go into `out`."""
        try:
            reply = self.call(
                "POST", f"{self.api}/$batch", operation, json=chain_body(calls, self.api)
            ).json()
            out[:] = answers_of(reply, len(calls))
            for (method, url, _), answer in zip(calls, out, strict=True):
                what = f"{method} {url.removeprefix(self.api)} in a $batch"
                self._held(answer.status, answer.headers, what)
        except GatewayError as exc:
            out[:] = [Answer(400 if exc.permanent else 503, None, {}, exc)] * len(calls)

    def _wait_over(self, operation: str) -> None:
        """Refuse a call while Graph's Retry-After holds the mailbox: the caller backs off for
        the wait left (a transient GatewayError about the whole mailbox), nothing is sent."""
        wait = self._hold.remaining()
        if wait > 0:
            raise GatewayError(
                f"Microsoft Graph asked us to wait: {operation} not sent, the mailbox is held "
                f"for {wait:.1f} s more",
                retry_after=max(wait, 0.05),
            )

    def _held(self, status: int, headers: Any, what: str) -> float | None:
        """Hold every call to the mailbox for the Retry-After a throttled or busy answer asked
        for (logged once, when the hold starts); returns that wait (None: none asked)."""
        wait = retry_after(status, headers)
        if wait is not None and self._hold.extend(wait):
            log.warning(
                "Microsoft Graph asked for a wait of %.0f s (%s answered %d): no call to the "
                "mailbox until then",
                wait,
                what,
                status,
                extra={"integration": self.name},
            )
        return wait

    @staticmethod
    def _part_error(answer: Answer, what: str) -> GatewayError:
        """A failed part of a batch as the GatewayError the same call alone would give."""
        if answer.error is not None:
            return answer.error
        status, body, headers = answer.status, answer.body, answer.headers
        error = body.get("error", {}) if isinstance(body, dict) else {}
        code, message = str(error.get("code", "")), str(error.get("message", ""))
        text = f"Graph {what} answered {status} {code}: {message}"
        if status in (429, 503, 504):
            return GatewayError(
                f"Microsoft Graph is throttling or busy: {text}",
                retry_after=retry_after(status, headers),
            )
        if status >= 500 or status == 401:
            return GatewayError(text)
        return GatewayError(text, permanent=True, code=code or f"http_{status}")

    def close(self) -> None:
        self.session.close()


def _graph_error(response: requests.Response) -> tuple[str, str]:
    try:
        error = response.json().get("error") or {}
        return str(error.get("code", "")), str(error.get("message", ""))[:300]
    except ValueError:
        return "", response.text[:300]
