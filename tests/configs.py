"""Configurations the tests run the service with: the smallest config file that runs (one spool
integration on loopback, token validation off), parsed configs for spool and EWS integrations,
and a handle on a running spool service. Shared helpers live here, not in test modules, so no
test module imports another; tests and benchmarks add what they need around them."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import pykka

from tests import spoolkit
from tests.spoolkit import answers_for, drop, wait_handled
from vmrsched import config, service
from vmrsched.actors.messages import FindAliases, Request, Reserve
from vmrsched.store import Record


def spool_toml(
    data_dir: Path | str,
    *,
    name: str = "default",
    port: int | None = None,
    server: str = "",
    integration: str = "",
    head: str = "",
) -> str:
    """A spool integration's TOML: `head` goes into the integration's table, `integration`
    after [integrations.addin] (addin keys, then any further tables)."""
    listen = f'listen = "127.0.0.1:{port}"\n' if port is not None else ""
    return f"""
[server]
{listen}data_dir = "{data_dir}"
{server}
[[integrations]]
name = "{name}"
{head}
[integrations.exchange]
mailbox_name = "Video Room"
mailbox_email = "vmr@example.com"
[integrations.addin]
token_validation = "none"
{integration}"""


# the demo pane's integration settings the browser tests read their headings from
PANE_ADDIN = """server_fqdn = "vc.example.com"
success_heading = "Room added!"
unavailable_heading = "Offline, placeholder added"
already_assigned_heading = "Already has a room"
[integrations.advanced]
enable_addin_debug_logs = true
[integrations.spool]
poll_interval_seconds = 0.05
[integrations.personal]
directory_file = "{directory}"
""".format(directory=Path(__file__).resolve().parent.parent / "config" / "vmrs.toml")


ROOM = "room@example.com"


PW = {"VMRSCHED_EWS_PASSWORD": "s3cret"}


def spool_config(
    tmp_path: Path, names: tuple[str, ...] = ("alpha",), **extra: Any
) -> config.Config:
    """Spool integrations, each with `extra`; the first on the default alias range (prefix
    `vmr`), the others on their own (`vmr1`, `vmr2`, …)."""
    integrations = []
    for index, name in enumerate(names):
        integ: dict[str, Any] = {
            "name": name,
            "exchange": {
                "mailbox_name": "Video Room",
                "mailbox_email": f"vmr{index or ''}@example.com",
            },
            "addin": {"token_validation": "none", "server_fqdn": "vc.example.com"},
            "spool": {"poll_interval_seconds": 0.05},
            "timezone": "Europe/London",
        }
        integ.update(extra)
        if index:  # aliases are unique across the service: each its own range
            integ["single_use"] = {"alias_prefix": f"vmr{index}", **extra.get("single_use", {})}
        integrations.append(integ)
    doc = {
        "server": {"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "data")},
        "integrations": integrations,
    }
    return config.parse(doc, tmp_path, {})


def ask_allocator(allocator: pykka.ActorRef[Any], payload: Any, timeout: float = 10.0) -> Any:
    """An allocator's answer to `payload`, asked from a test's thread as the service asks from
    the event loop: a Request told to the actor, answered from its thread (after the commit
    that covers it, for a reservation)."""
    answer: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def reply(result: Any, error: BaseException | None) -> None:
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(result)

    allocator.tell(Request(payload, reply))
    return answer.result(timeout)


def reserve_alias(allocator: pykka.ActorRef[Any], user: str = "") -> Record:
    """One alias reserved as the add-in API reserves it (a Reserve request), durable; raises
    the allocator's QuotaReached for a user at the cap."""
    (result,) = ask_allocator(allocator, Reserve((user,)))
    if isinstance(result, BaseException):
        raise result
    record: Record = result
    return record


def stored_record(allocator: pykka.ActorRef[Any], alias_id: str) -> Record:
    """An alias's record (not archived) as the admin API reads it (FindAliases)."""
    found: list[Record] = ask_allocator(allocator, FindAliases(limit=1_000_000))
    for record in found:
        if record["alias_id"] == alias_id:
            return record
    raise KeyError(f"alias {alias_id} is not in the store")


class Running:
    def __init__(self, svc: service.Service, cfg: config.Config) -> None:
        self.svc = svc
        self.cfg = cfg
        self.spool = cfg.integrations[0].spool_dir(cfg.data_dir)
        self.inbox = self.spool / "inbox"

    def reserve(self, name: str = "alpha") -> Record:
        spoolkit.wait_for(
            lambda: self.svc.ctx.status.snapshot().get(name, {}).get("state") == "running"
        )
        return reserve_alias(self.svc.ctx.registry.get(name, "allocator"))

    def send(self, data: bytes) -> str:
        name = drop(self.inbox, data)
        wait_handled(self.spool, name)
        self.settle()
        return name

    def settle(self, name: str = "alpha") -> None:
        """Wait until the notifier has delivered everything queued (handled items' replies are
        queued durably first and delivered right after)."""
        notifier = self.svc.ctx.registry.get(name, "notifier")
        spoolkit.wait_for(lambda: notifier.proxy().pending().get(timeout=5) == 0)

    def answers(self, uid: str) -> list[spoolkit.Mail]:
        return answers_for(self.spool, uid)


def pxps(record: Record) -> str:
    return f"<p>Join us</p><p>PXPS:-{record['alias_id']}#</p>"


def ews_config(tmp_path: Path, url: str) -> config.Config:
    doc = {
        "server": {"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "data")},
        "integrations": [
            {
                "name": "onprem",
                "backend": "ews",
                "timezone": "Europe/London",
                "exchange": {
                    "ews_url": f"{url}/EWS/Exchange.asmx",
                    "authentication": "basic",
                    "service_account_username": "CONTOSO\\svc-vmr",
                    "service_account_password_env": "VMRSCHED_EWS_PASSWORD",
                    "mailbox_name": "Video Room",
                    "mailbox_email": ROOM,
                    "poll_interval_seconds": 0.05,
                },
                "addin": {"token_validation": "none", "server_fqdn": "vc.example.com"},
            }
        ],
    }
    return config.parse(doc, tmp_path, PW)


def write_toml(data_dir: Path, url: str, server: str = "", exchange: str = "") -> Path:
    """The config file of one EWS integration against the fake at `url`, beside `data_dir`."""
    path = data_dir.parent / "vmrsched.toml"
    path.write_text(f"""
[server]
data_dir = "{data_dir}"
{server}
[[integrations]]
name = "onprem"
backend = "ews"
[integrations.exchange]
ews_url = "{url}/EWS/Exchange.asmx"
authentication = "basic"
service_account_username = "svc-vmr"
service_account_password_env = "VMRSCHED_EWS_PASSWORD"
mailbox_name = "Video Room"
mailbox_email = "{ROOM}"
{exchange}
[integrations.addin]
token_validation = "none"
""")
    return path
