"""How every EWS request goes out, and what its failures mean.

Every request passes `CountingAdapter`, exchangelib's HTTP adapter for all integrations: it is
counted in vmrsched_exchange_requests_total by operation and result, gets the integration's OAuth
bearer token (retried once with a fresh one on 401), its CA bundle and its proxy rule, and the
Retry-After of a 503 or 429 is kept for the call's error (exchangelib's own errors drop it, and
docs/supervision.md promises the wait the server asked for). `translate` turns exchangelib's
failures into the GatewayErrors the actors act on. `EwsClient`
opens the room's and the organizers' mailboxes, always by impersonation (the ExchangeImpersonation
header on every request): the documented set-up grants the service account ApplicationImpersonation
over the room and the organizers, nothing else (no FullAccess on the room), and an app-only
OAuth token (oauth_app) is refused by Exchange on any request without that header.

Threads: the adapter is shared by every integration and thread, so what belongs to one
integration's call (its counter, token source, CA file, proxy switch) travels in a thread-local
that `EwsClient._calling` sets around the call and restores after it: the poller's and the
notifier's calls, and other integrations', never see each other's. The accounts are built once,
under `_state`; exchangelib's protocol keeps a pool of at most four sessions for both threads.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from exchangelib import (
    BASIC,
    IMPERSONATION,
    NTLM,
    Account,
    Configuration,
    Credentials,
    FailFast,
)
from exchangelib.errors import (
    ErrorExceededConnectionCount,
    ErrorInternalServerTransientError,
    ErrorItemNotFound,
    ErrorServerBusy,
    ErrorTimeoutExpired,
    ErrorTooManyObjectsOpened,
    EWSError,
    RateLimitError,
    ResponseMessageError,
    TransportError,
    UnauthorizedError,
)
from exchangelib.ewsdatetime import UTC as EWS_UTC
from exchangelib.items.base import BaseReplyItem
from exchangelib.properties import Fields
from exchangelib.protocol import BaseProtocol
from exchangelib.services import CreateItem
from exchangelib.transport import NOAUTH
from exchangelib.version import Build, Version

from vmrsched.config import IntegrationConfig
from vmrsched.mailbox.base import GatewayError, outcome_unknown, retry_after_seconds
from vmrsched.mailbox.ews_auth import TokenSource
from vmrsched.telemetry import Metrics

# Exchange 2013 SP1 schema: understood by every supported on-premises version, so no request is
# spent guessing the server version.
REQUEST_VERSION = Version(build=Build(15, 0, 847))
_OPERATION = re.compile(rb"<(?:\w+:)?Body[^>]*>\s*<(?:\w+:)?(\w+)")
_current = threading.local()


class RemoveItem(BaseReplyItem):  # type: ignore[misc]
    """EWS RemoveItem: takes a cancelled meeting off the room's calendar and removes the
    cancellation. exchangelib has the other response objects but not this one."""

    ELEMENT_NAME = "RemoveItem"
    FIELDS = Fields(BaseReplyItem.FIELDS[BaseReplyItem.FIELDS.index_by_name("reference_item_id")])


# What exchangelib acts on itself for the whole request when an answer carries it (it lowers its
# connection count and backs off, or, under FailFast, raises): the server is strained, which is
# no refusal of one item.
_STRAINED = (
    ErrorServerBusy,
    ErrorExceededConnectionCount,
    ErrorTimeoutExpired,
    ErrorTooManyObjectsOpened,
    ErrorInternalServerTransientError,
)


class RespondToItems(CreateItem):  # type: ignore[misc]
    """CreateItem for responses to request items, one ResponseMessage per item in its answer.
    exchangelib hands back only some response codes as that item's result and raises the others
    (ErrorInvalidRequest, ErrorAccessDenied, …) for the whole request, which throws away what
    Exchange did with every other item of it: responses it carried out would be sent again
    (refused as ErrorItemNotFound, their requests having left the inbox, or, with immutable
    ids, answering the organizer twice). Here each item's refusal is that item's result, as
    Exchange gave it; a strained server still stops the request as exchangelib has it."""

    def _get_element_container(self, message: Any, name: Any = None) -> Any:
        try:
            return super()._get_element_container(message=message, name=name)
        except _STRAINED:
            raise
        except ResponseMessageError as exc:
            return exc


class CountingAdapter(requests.adapters.HTTPAdapter):
    """Every EWS request passes here: it is counted by operation and result for the integration
    the calling thread works for, gets that integration's OAuth bearer token, and is retried
    once with a fresh token when Exchange says the token expired (401). The proxy follows the
    service's one rule (vmrsched.proxies): the environment's, or none for an integration with
    disable_web_proxy."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        body = request.body if isinstance(request.body, bytes) else b""
        match = _OPERATION.search(body[:4000])
        operation = match.group(1).decode() if match else "unknown"
        counter = getattr(_current, "counter", None)
        tokens = getattr(_current, "tokens", None)
        ca_file = getattr(_current, "ca_file", None)
        if ca_file:
            kwargs["verify"] = ca_file
        if getattr(_current, "direct", False):  # the integration turned the web proxy off
            kwargs["proxies"] = {}
        attempts = 2 if tokens is not None else 1
        for attempt in range(attempts):
            if tokens is not None:
                request.headers["Authorization"] = f"Bearer {tokens.get(force=attempt > 0)}"
            try:
                response = super().send(request, *args, **kwargs)
            except Exception:
                if counter is not None:
                    counter(operation, "error")
                raise
            result = "ok" if response.status_code < 400 else str(response.status_code)
            if response.status_code in (429, 503):
                _current.retry_after = retry_after_seconds(
                    str(response.headers.get("Retry-After", ""))
                )
            if counter is not None:
                counter(operation, result)
            if response.status_code != 401 or attempt + 1 == attempts:
                return response
            response.close()  # give the connection back to the pool before the retry
        raise AssertionError("unreachable")


BaseProtocol.HTTP_ADAPTER_CLS = CountingAdapter


# Response codes that will not change on a retry (Microsoft's EWS response code reference):
# the message fails alone, is kept with its reason, and the queue goes on.
PERMANENT_CODES = frozenset(
    {
        "ErrorImpersonateUserDenied",
        "ErrorImpersonationDenied",
        "ErrorAccessDenied",
        "ErrorSendAsDenied",
        "ErrorNonExistentMailbox",
        "ErrorMailRecipientNotFound",
        "ErrorInvalidRecipients",
        "ErrorInvalidSmtpAddress",
        "ErrorMessageSizeExceeded",
        "ErrorItemNotFound",
        "ErrorInvalidIdMalformed",
        "ErrorCalendarIsCancelledForAccept",
        "ErrorCalendarIsCancelledForDecline",
        "ErrorCalendarIsCancelledForRemove",
        "ErrorCalendarIsOrganizerForAccept",
        "ErrorCalendarIsOrganizerForDecline",
        "ErrorCalendarIsOrganizerForRemove",
        "ErrorCalendarIsDelegatedForAccept",
        "ErrorCalendarIsDelegatedForDecline",
        "ErrorCalendarIsDelegatedForRemove",
        "ErrorSchemaValidation",
        "ErrorInvalidRequest",
        "ErrorInvalidPropertySet",
        "ErrorCorruptData",
        "ErrorInvalidSid",
        "ErrorQuotaExceeded",
    }
)


# Response codes about the schema version a request speaks, never about one item (Microsoft's
# EWS response code reference): the server takes no request of that version, so the mailbox
# waits as in an outage. exchangelib raises one of them too when every version it tried was
# refused.
VERSION_CODES = frozenset(
    {
        "ErrorInvalidServerVersion",
        "ErrorIncorrectSchemaVersion",
        "ErrorInvalidSchemaVersionForMailboxVersion",
    }
)


def translate(exc: Exception) -> GatewayError:
    """exchangelib's failures as the gateway error the actors act on: throttling and outages
    back the whole mailbox off; a response code about one message fails or retries it alone.
    A request that went out and got no answer (exchangelib re-raises a read timeout or a
    dropped connection as ErrorTimeoutExpired, or as ErrorServerBusy) is an outage, never one
    message's refusal, and it may have been carried out (outcome_unknown)."""
    code = type(exc).__name__ if type(exc).__name__.startswith("Error") else ""
    if str(exc).startswith("Reraised from") and isinstance(
        exc, ErrorServerBusy | ErrorTimeoutExpired | ErrorInternalServerTransientError
    ):
        return GatewayError(f"Exchange did not answer: {exc}", outcome_unknown=outcome_unknown(exc))
    if isinstance(exc, requests.RequestException | OSError):
        return GatewayError(
            f"Exchange unreachable: {type(exc).__name__}: {exc}",
            outcome_unknown=outcome_unknown(exc),
        )
    if isinstance(exc, ErrorServerBusy):
        # the server's own BackOffMilliseconds (or Retry-After) when it gave one, else the
        # caller's backoff: for a transient error without either (a bare 503), exchangelib
        # "re-raises" it as busy with a guess of its own (10 s and doubling), which is not ours
        delay = None if str(exc).startswith("Reraised from") else getattr(exc, "back_off", None)
        return GatewayError(f"Exchange is throttling: {exc}", retry_after=delay or None)
    if isinstance(exc, RateLimitError):
        wait = getattr(exc, "wait", None)
        return GatewayError(f"Exchange is throttling: {exc}", retry_after=wait or None)
    if isinstance(exc, UnauthorizedError):
        return GatewayError(f"Exchange refused the service account: {exc}")
    if code in VERSION_CODES:
        return GatewayError(f"Exchange refuses the request version: {code}: {exc}")
    if code in PERMANENT_CODES:
        return GatewayError(f"Exchange refused: {code}: {exc}", permanent=True, code=code)
    if isinstance(exc, ResponseMessageError) and code:
        return GatewayError(f"Exchange refused, for now: {code}: {exc}", code=code)
    return GatewayError(f"Exchange unreachable: {type(exc).__name__}: {exc}")


RETRYABLE = (TransportError, EWSError, requests.RequestException, OSError)


class EwsClient:
    """One integration's way into Exchange: the room's account and the organizers', opened by
    impersonation, and `_calling`, the context every call runs in."""

    def __init__(
        self,
        integ: IntegrationConfig,
        metrics: Metrics | None = None,
        tokens: TokenSource | None = None,
    ) -> None:
        self.integ = integ
        self.tokens = tokens
        self.name = integ.name
        self.metrics = metrics
        self.room = integ.exchange.mailbox_email
        self._account: Account | None = None
        self._impersonated: dict[str, Account] = {}
        # what the poller's and the notifier's threads both change: the accounts built once
        # (and, in the gateway, the items handed off to a reply and the item classes)
        self._state = threading.Lock()

    def _count(self, operation: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.exchange_requests.labels(self.name, operation, result).inc()

    @contextmanager
    def _calling(self) -> Iterator[None]:
        saved = (
            getattr(_current, "counter", None),
            getattr(_current, "tokens", None),
            getattr(_current, "ca_file", None),
            getattr(_current, "direct", False),
        )
        _current.counter, _current.tokens = self._count, self.tokens
        _current.ca_file = self.integ.exchange.tls_ca_file or None
        _current.direct = self.integ.advanced.disable_web_proxy
        _current.retry_after = None
        try:
            yield
        except GatewayError:
            raise
        except ErrorItemNotFound:
            raise  # the caller knows what a missing item means where it asked
        except RETRYABLE as exc:
            error = translate(exc)
            asked = getattr(_current, "retry_after", None)
            if asked and not error.permanent:  # Exchange (or its proxy) said how long to wait
                error.retry_after = asked
                error.args = (f"{error} (Retry-After: {asked:g} s)",)
            raise error from exc
        finally:
            _current.counter, _current.tokens, _current.ca_file, _current.direct = saved

    def _configuration(self) -> Configuration:
        ex = self.integ.exchange
        common: dict[str, Any] = {
            "service_endpoint": ex.ews_url,
            "version": REQUEST_VERSION,
            "retry_policy": FailFast(),
            "max_connections": 4,
        }
        if ex.authentication.startswith("oauth"):
            if self.tokens is None:
                raise GatewayError(f"{ex.authentication}: no token source")
            # the bearer token is added per request by CountingAdapter (msal keeps it fresh)
            return Configuration(auth_type=NOAUTH, **common)
        if ex.service_account_password is None:
            raise GatewayError("no service account password configured")
        credentials = Credentials(ex.service_account_username, ex.service_account_password.reveal())
        return Configuration(
            credentials=credentials,
            auth_type=BASIC if ex.authentication == "basic" else NTLM,
            **common,
        )

    def account(self) -> Account:
        """The equipment mailbox's account, opened by impersonation, built once (by whichever
        thread asks first)."""
        with self._state:
            if self._account is None:
                with self._calling():
                    self._account = self._open(self.room, self._configuration())
            return self._account

    @staticmethod
    def _open(address: str, config: Configuration, access_type: str = IMPERSONATION) -> Account:
        return Account(
            address,
            config=config,
            autodiscover=False,
            access_type=access_type,
            default_timezone=EWS_UTC,
        )

    def _as(self, address: str) -> Account:
        """An organizer's mailbox through ApplicationImpersonation (built once per organizer)."""
        key = address.lower()
        config = self.account().protocol.config
        with self._state:
            if key not in self._impersonated:
                self._impersonated[key] = self._open(address, config)
            return self._impersonated[key]

    def close(self) -> None:
        if self._account is not None:
            self._account.protocol.close()
