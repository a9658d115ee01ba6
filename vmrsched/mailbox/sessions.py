"""HTTP sessions of the mailbox backends (EWS token endpoints, Graph)."""

from __future__ import annotations

from typing import Any

import requests


class CaSession(requests.Session):
    """A session that keeps the configured CA bundle (internal CAs: AD FS, hybrid Exchange,
    inspecting proxies): plain requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override
    `Session.verify`."""

    def __init__(self, ca_file: str) -> None:
        super().__init__()
        self.ca_file = ca_file

    def merge_environment_settings(self, *args: Any, **kwargs: Any) -> Any:
        settings = super().merge_environment_settings(*args, **kwargs)
        if self.ca_file:
            settings["verify"] = self.ca_file
        return settings
