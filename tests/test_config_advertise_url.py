"""[storage] advertise_url: where the other instances reach this one. Checked at load with its
key path; by default the listen address when that names one host; required with the shared
database when the server listens on every interface; `{hostname}` is the machine's host name."""

from __future__ import annotations

from typing import Any

import pytest

from vmrsched import config
from vmrsched.config import ConfigError

DSN = {"DSN": "host=db.example.com dbname=vmrsched", "POLICY": "a-long-policy-password"}


def doc(listen: str = "127.0.0.1:8080", **storage: Any) -> dict[str, Any]:
    """A config that is sound on any listen address but for what [storage] says."""
    return {
        "server": {"listen": listen, "policy_username": "pexip", "policy_password_env": "POLICY"},
        "storage": {"backend": "postgresql", "dsn_env": "DSN", **storage},
        "integrations": [
            {
                "name": "alpha",
                "exchange": {"mailbox_name": "VMR", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "exchange", "server_fqdn": "vmr.example.com"},
                "metadata": {"exchange_metadata_urls": ["mail.example.com"]},
            }
        ],
    }


def advertised(listen: str = "127.0.0.1:8080", **storage: Any) -> str:
    cfg = config.parse(doc(listen, **storage), environ=DSN)
    return cfg.storage.advertised(cfg.server, "vmrsched-b")


def problems(listen: str = "127.0.0.1:8080", **storage: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(doc(listen, **storage), environ=DSN)
    return [p for p in info.value.problems if p.startswith("storage.")]


def test_by_default_the_listen_address_when_it_names_one_host() -> None:
    assert advertised() == "http://127.0.0.1:8080"
    assert advertised("[::1]:9000") == "http://[::1]:9000"
    assert advertised(advertise_url="https://{hostname}:8443/") == "https://vmrsched-b:8443"
    assert advertised(advertise_url="http://10.0.0.2:8080") == "http://10.0.0.2:8080"


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", "127.0.0.1:0"])
def test_a_server_on_every_interface_must_say_where_it_is_reached(listen: str) -> None:
    [problem] = problems(listen)
    assert problem.startswith("storage.advertise_url: ")
    assert "http://{hostname}:8080" in problem
    ok = config.parse(doc(listen, advertise_url="http://{hostname}:8080"), environ=DSN)
    assert ok.storage.advertised(ok.server, "a") == "http://a:8080"


def test_one_instance_on_files_needs_none() -> None:
    cfg = config.parse({**doc("0.0.0.0:8080"), "storage": {}}, environ=DSN)
    assert cfg.storage.advertised(cfg.server, "a") == ""


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://b:21", "must be an http or https URL with a host"),
        ("b:8080", "must be an http or https URL with a host"),
        ("http://", "must be an http or https URL with a host"),
        ("http://b:99999", "port that is not a number"),
        ("http://user:pw@b:8080", "no user, query or fragment"),
        ("http://b:8080/?x=1", "no user, query or fragment"),
        ("http://b:8080/vmrsched", "scheme, host and port only"),
    ],
)
def test_a_url_the_others_cannot_use_is_named(url: str, says: str) -> None:
    [problem] = problems(advertise_url=url)
    assert problem.startswith("storage.advertise_url: ") and says in problem, problem
