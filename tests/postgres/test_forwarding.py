"""Any instance answers the add-in and the admin API (issue 30): two `vmrsched serve` processes
on one PostgreSQL, each running one of the two integrations. A request sent to the instance that
does not run its integration is passed on to the one that does, whose answer comes back as it
gave it; the owner believes who the client is only with a proof from another instance."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from tests import serving, spoolkit
from tests.sharedkit import write_config
from vmrsched.http.forwarding import Proofs
from vmrsched.postgres import migrations
from vmrsched.postgres.peers import shared_key

pytestmark = pytest.mark.slow
LEASE = 2.0
NAMES = ("alpha", "beta")
TOKEN = "forwarding-test-admin-token-0123456789"
SERVER = 'admin_token_env = "VMRSCHED_ADMIN_TOKEN"\nrate_limit_per_minute = 100000\n'


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def reserve(port: int, name: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    status, headers, body = call(
        port,
        "POST",
        f"/api/addin/v1/{name}/single-use-vmrs",
        b'{"subject": "Weekly"}',
        {"Content-Type": "application/json"},
    )
    return status, headers, json.loads(body)


def owned(port: int) -> list[str]:
    try:
        status, body = serving.get(port, "/readyz")
    except OSError:
        return []
    found: list[str] = json.loads(body).get("owned", []) if status in (200, 503) else []
    return found


def counted(port: int, name: str, outcome: str) -> float:
    """vmrsched_forwarded_requests_total{integration=name,outcome=outcome} on that instance."""
    _, text = serving.get(port, "/metrics")
    pattern = (
        rf'^vmrsched_forwarded_requests_total\{{integration="{name}",outcome="{outcome}"\}} (\S+)$'
    )
    found = re.search(pattern, text.decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


class Pair:
    def __init__(self, tmp: Path, dsn: str) -> None:
        self.tmp = tmp
        self.dsn = dsn
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.ports: list[int] = []

    def start(self) -> None:
        env = {"VMRSCHED_DSN": self.dsn, "VMRSCHED_ADMIN_TOKEN": TOKEN}
        for instance in ("one", "two"):
            port = serving.free_port()
            config = write_config(self.tmp, instance, port, LEASE, NAMES, server=SERVER)
            self.procs[port] = serving.start(config, env)
            self.ports.append(port)
            if instance == "one":  # one takes both before two starts: then they spread
                spoolkit.wait_for(lambda p=port: owned(p) == list(NAMES), timeout=40)
        # a busy machine may take a few lease rounds to hand one integration over
        spoolkit.wait_for(lambda: all(len(owned(p)) == 1 for p in self.ports), timeout=40)
        for port in self.ports:
            serving.wait_ready(port, timeout=40)

    def owner(self, name: str) -> int:
        return next(p for p in self.ports if name in owned(p))

    def other(self, name: str) -> int:
        return next(p for p in self.ports if name not in owned(p))

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
                proc.wait(30)

    def record(self, name: str, alias: str) -> dict[str, Any] | None:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(
                "SELECT record FROM vmrsched_records WHERE integration = %s"
                " AND record->>'alias' = %s",
                (name, alias),
            ).fetchone()
        return None if row is None else dict(row[0])

    def key(self) -> bytes:
        """The instances' key, as an instance gets it (made by whoever asks first)."""
        return shared_key(lambda: psycopg.connect(self.dsn, autocommit=True))

    def instance(self, port: int) -> str:
        _, body = serving.get(port, "/readyz")
        return str(json.loads(body)["instance"])


@pytest.fixture
def pair(tmp_path: Path, dsn: str) -> Iterator[Pair]:
    started = Pair(tmp_path, dsn)
    try:
        started.start()
        yield started
    finally:
        started.stop()


def test_a_reservation_sent_to_the_other_instance_is_made_and_answered_by_the_owner(
    pair: Pair,
) -> None:
    owner, other = pair.owner("alpha"), pair.other("alpha")
    status, headers, body = reserve(other, "alpha")
    assert status == 201, body
    assert headers["Content-Type"].startswith("application/json")
    assert set(body) >= {"alias", "numeric_alias", "alias_id", "joining_instructions"}
    record = pair.record("alpha", body["alias"])  # committed by the owner, in the database
    assert record is not None and f"PXPS:-{record['alias_id']}#" == body["alias_id"]
    assert counted(other, "alpha", "relayed") == 1
    assert counted(owner, "alpha", "received") == 1
    # the owner's own answer to an error comes back as it gave it
    status, _, raw = call(other, "POST", "/api/addin/v1/alpha/single-use-vmrs", b"[1]")
    assert status == 400 and json.loads(raw)["error"]["code"]
    assert counted(other, "alpha", "relayed") == 2
    # a body over the limit is refused before anything is passed on (its headers say so)
    conn = http.client.HTTPConnection("127.0.0.1", other, timeout=10)
    conn.putrequest("POST", "/api/addin/v1/alpha/single-use-vmrs")
    conn.putheader("Content-Length", str(65536 + 1))
    conn.endheaders()
    answer = conn.getresponse()
    assert answer.status == 413
    assert json.loads(answer.read())["error"]["code"] == "payload_too_large"
    conn.close()
    assert counted(other, "alpha", "relayed") == 2


def test_reservations_on_both_instances_at_once_never_collide(pair: Pair) -> None:
    results: list[tuple[str, int, dict[str, Any]]] = []
    lock = threading.Lock()

    def work(port: int, name: str) -> None:
        for _ in range(25):
            status, _, body = reserve(port, name)
            with lock:
                results.append((name, status, body))

    threads = [
        threading.Thread(target=work, args=(port, name))
        for port in pair.ports
        for name in NAMES
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [s for _, s, _ in results] == [201] * 200
    aliases = [b["alias"] for _, _, b in results]
    assert len(set(aliases)) == len(aliases)
    with psycopg.connect(pair.dsn) as conn:
        rows = conn.execute(
            "SELECT integration, record->>'alias', record->>'alias_id' FROM vmrsched_records"
        ).fetchall()
    assert {(n, b["alias"], b["alias_id"]) for n, _, b in results} == {
        (n, alias, f"PXPS:-{alias_id}#") for n, alias, alias_id in rows
    }


def test_an_admin_deletes_an_alias_through_the_instance_that_does_not_run_it(
    pair: Pair,
) -> None:
    owner, other = pair.owner("beta"), pair.other("beta")
    _, _, made = reserve(owner, "beta")
    # percent-encoded as a client may send it: passed on (and proven) byte for byte
    path = f"/api/admin/v1/integrations/beta/aliases/{quote(made['alias'], safe='')}"
    assert "%40" in path
    status, _, raw = call(other, "DELETE", path)  # the owner checks the token: none here
    assert status == 401 and json.loads(raw)["error"]["code"] == "admin_token_required"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    status, _, raw = call(other, "DELETE", path, headers=bearer)
    assert status == 200, raw
    record = pair.record("beta", made["alias"])
    assert record is not None and record["status"] == "deleted"
    status, _, raw = call(other, "GET", "/api/admin/v1/integrations/beta/aliases", headers=bearer)
    assert status == 200 and made["alias"] in raw.decode()
    assert counted(other, "beta", "relayed") == 3
    assert counted(owner, "beta", "received") == 3  # each proven as passed on


def _deleted_by(pair: Pair, name: str, alias: str) -> str:
    record = pair.record(name, alias)
    assert record is not None and record["status"] == "deleted"
    return json.dumps(record)


def test_only_a_proof_from_an_instance_names_the_client(pair: Pair) -> None:
    owner, other = pair.owner("alpha"), pair.other("alpha")
    me = pair.instance(owner)
    key = pair.key()
    claimed = "203.0.113.9"
    bearer = {"Authorization": f"Bearer {TOKEN}"}

    # a proof made with the instances' key, for the owner, now: the owner names the client so
    _, _, made = reserve(owner, "alpha")
    path = f"/api/admin/v1/integrations/alpha/aliases/{made['alias']}"
    proof = Proofs().sign(key, "DELETE", path, claimed, me)
    status, _, _ = call(owner, "DELETE", path, headers={**bearer, **proof})
    assert status == 200
    assert f"from {claimed}" in _deleted_by(pair, "alpha", made["alias"])
    assert counted(owner, "alpha", "received") == 1
    # the same proof again (a replay), on a request of its own: an ordinary client's request
    status, _, _ = call(owner, "DELETE", path, headers={**bearer, **proof})
    assert status == 404  # a deleted alias is unknown_alias to a second delete, unclaimed
    assert counted(owner, "alpha", "received") == 1

    forged = {**proof, "X-Vmrsched-Forwarded-Proof": "0" * 64}
    expired_proofs = Proofs(clock=lambda: time.time() - 120)
    for headers in (
        forged,
        {"X-Vmrsched-Forwarded-For": claimed},  # no proof at all
        Proofs().sign(b"k" * 32, "DELETE", "/elsewhere", claimed, me),  # another key
    ):
        _, _, made = reserve(owner, "alpha")
        path = f"/api/admin/v1/integrations/alpha/aliases/{made['alias']}"
        status, _, _ = call(owner, "DELETE", path, headers={**bearer, **headers})
        assert status == 200
        kept = _deleted_by(pair, "alpha", made["alias"])
        assert claimed not in kept and "from 127.0.0.1" in kept
    _, _, made = reserve(owner, "alpha")
    path = f"/api/admin/v1/integrations/alpha/aliases/{made['alias']}"
    expired = expired_proofs.sign(key, "DELETE", path, claimed, me)
    status, _, _ = call(owner, "DELETE", path, headers={**bearer, **expired})
    assert status == 200 and claimed not in _deleted_by(pair, "alpha", made["alias"])
    # made for another path, or another instance: not this request's proof
    _, _, made = reserve(owner, "alpha")
    path = f"/api/admin/v1/integrations/alpha/aliases/{made['alias']}"
    elsewhere = Proofs().sign(key, "DELETE", path, claimed, pair.instance(other))
    status, _, _ = call(owner, "DELETE", path, headers={**bearer, **elsewhere})
    assert status == 200 and claimed not in _deleted_by(pair, "alpha", made["alias"])
    assert counted(owner, "alpha", "received") == 1


def test_a_request_passed_on_is_never_passed_on_again(pair: Pair) -> None:
    other = pair.other("alpha")
    key = pair.key()
    path = "/api/addin/v1/alpha/single-use-vmrs"
    # proven as passed on to `other`, which does not run alpha: 503, not a second hop
    proof = Proofs().sign(key, "POST", path, "198.51.100.7", pair.instance(other))
    status, headers, raw = call(other, "POST", path, b"{}", proof)
    assert status == 503 and json.loads(raw)["error"]["code"] == "not_owner"
    assert "Retry-After" in headers
    assert counted(other, "alpha", "not_owner") == 1
    assert counted(other, "alpha", "relayed") == 0


def test_with_its_owner_gone_an_integration_is_unavailable_then_taken_over(pair: Pair) -> None:
    owner, other = pair.owner("alpha"), pair.other("alpha")
    assert reserve(other, "alpha")[0] == 201
    pair.procs[owner].send_signal(signal.SIGKILL)
    pair.procs[owner].wait(10)
    status, headers, body = reserve(other, "alpha")  # its lease has not run out yet
    assert status == 503 and body["error"]["code"] == "owner_unavailable", body
    assert headers["Retry-After"] == str(int(LEASE))
    assert counted(other, "alpha", "unreachable") >= 1
    spoolkit.wait_for(lambda: owned(other) == list(NAMES), timeout=4 * LEASE)
    spoolkit.wait_for(lambda: reserve(other, "alpha")[0] == 201, timeout=10)


def raw(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request as sent, redirects not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


def test_the_organizer_page_and_its_forms_work_through_either_instance(
    tmp_path: Path, pair: Pair
) -> None:
    owner, other = pair.owner("alpha"), pair.other("alpha")
    # Olga books a meeting offline: the room binds it (the service draws the alias)
    data, _ = spoolkit.request(body="<p>TOK:-00000001-0000-4000-8000-000000000000#</p>")
    spoolkit.drop(tmp_path / "spool" / "alpha" / "inbox", data)
    spoolkit.wait_for(lambda: bound(pair, "alpha") is not None, timeout=20)
    alias = bound(pair, "alpha")
    assert alias is not None
    # her page, asked of the instance that does not run alpha: the owner's bookings
    status, _, page = raw(other, "GET", "/my/alpha?user=olga%40example.com")
    assert status == 200 and alias in page.decode()
    assert counted(other, "alpha", "relayed") == 1
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.decode())
    assert found is not None
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    fields = f"csrf={found.group(1)}&user=olga%40example.com".encode()
    # resending the joining details through the other instance: the owner takes the form
    resend = f"/my/alpha/bookings/{quote(alias, safe='')}/resend"
    status, headers, _ = raw(other, "POST", resend, fields, form)
    assert status == 303 and "done=resent" in headers["Location"]
    assert counted(other, "alpha", "relayed") == 2
    # the page's CSRF token holds on every instance (their key is shared): either signs out
    for port in (owner, other):
        status, headers, _ = raw(port, "POST", "/my/alpha/sign-out", fields, form)
        assert status == 303 and "done=signed_out" in headers["Location"]
    status, _, _ = raw(
        other, "POST", "/my/alpha/sign-out", b"csrf=00&user=olga%40example.com", form
    )
    assert status == 403


def bound(pair: Pair, name: str) -> str | None:
    """The alias of the integration's bound meeting in the database (None: none yet)."""
    with psycopg.connect(pair.dsn) as conn:
        row = conn.execute(
            "SELECT record->>'alias' FROM vmrsched_records WHERE integration = %s"
            " AND record->>'status' = 'bound'",
            (name,),
        ).fetchone()
    return None if row is None else str(row[0])


class Ghost(threading.Thread):
    """Another instance as the database sees it: alive (its heartbeat kept fresh), running
    nothing. The real instance then holds only its fair share, half of the integrations."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.done.is_set():
                conn.execute(
                    "INSERT INTO vmrsched_instances (instance, seen, started, url)"
                    " VALUES ('ghost', clock_timestamp(), clock_timestamp(), '')"
                    " ON CONFLICT (instance) DO UPDATE SET seen = EXCLUDED.seen"
                )
                self.done.wait(0.2)


def test_an_integration_no_instance_runs_is_owner_unavailable_until_one_takes_it(
    tmp_path: Path, dsn: str
) -> None:
    port = serving.free_port()
    config = write_config(tmp_path, "solo", port, LEASE, NAMES, server=SERVER)
    proc = serving.start(config, {"VMRSCHED_DSN": dsn, "VMRSCHED_ADMIN_TOKEN": TOKEN})
    ghost = Ghost(dsn)
    try:
        spoolkit.wait_for(lambda: owned(port) == list(NAMES), timeout=40)
        ghost.start()  # a second live instance: this one hands one integration back
        spoolkit.wait_for(lambda: len(owned(port)) == 1, timeout=10 * LEASE)
        [free] = [n for n in NAMES if n not in owned(port)]
        status, headers, body = reserve(port, free)
        assert status == 503 and body["error"]["code"] == "owner_unavailable", body
        assert headers["Retry-After"] == str(int(LEASE))
        assert counted(port, free, "no_owner") == 1
        ghost.done.set()  # gone: once it is no longer counted live, this one takes it
        spoolkit.wait_for(lambda: owned(port) == list(NAMES), timeout=10 * LEASE)
        spoolkit.wait_for(lambda: reserve(port, free)[0] == 201, timeout=10)
    finally:
        ghost.done.set()
        proc.terminate()
        proc.wait(30)


PANE_SECONDS = 10.0  # the add-in pane gives up on an answer after this (docs/outlook-add-in.md)


def held_by(dsn: str, name: str, owner: str, url: str) -> None:
    """The database says `owner` holds the integration's lease for the next hour and serves at
    `url`: an owner that stopped answering without dying (SIGSTOP, a frozen VM) before its
    lease ran out."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrations.migrate(conn)
        conn.execute(
            "INSERT INTO vmrsched_instances (instance, seen, started, url)"
            " VALUES (%s, now(), now(), %s)",
            (owner, url),
        )
        conn.execute(
            "INSERT INTO vmrsched_leases (integration, owner, token, expires, acquired)"
            " VALUES (%s, %s, 1, now() + interval '1 hour', now())",
            (name, owner),
        )


def timed_reserve(port: int, name: str) -> tuple[float, int, dict[str, str], dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/addin/v1/{name}/single-use-vmrs", data=b"{}", method="POST"
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            status, headers, body = answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        status, headers, body = exc.code, dict(exc.headers), exc.read()
    return time.monotonic() - started, status, headers, json.loads(body)


def test_an_owner_that_does_not_answer_costs_the_pane_less_than_its_10_seconds(
    tmp_path: Path, dsn: str
) -> None:
    # alpha's owner accepts connections and never answers (a paused process: the kernel
    # still completes the handshake); beta's accepts none (its queue of connections is full)
    paused = socket.create_server(("127.0.0.1", 0), backlog=8)
    frozen = socket.create_server(("127.0.0.1", 0), backlog=0)
    fillers = []
    for _ in range(4):  # until the kernel takes no more: a new connection then never completes
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(frozen.getsockname())
        fillers.append(filler)
    time.sleep(0.2)
    held_by(dsn, "alpha", "paused", f"http://127.0.0.1:{paused.getsockname()[1]}")
    held_by(dsn, "beta", "frozen", f"http://127.0.0.1:{frozen.getsockname()[1]}")
    port = serving.free_port()
    config = write_config(tmp_path, "solo", port, LEASE, NAMES, server=SERVER)
    proc = serving.start(config, {"VMRSCHED_DSN": dsn, "VMRSCHED_ADMIN_TOKEN": TOKEN})
    try:
        serving.wait_ready(port, timeout=40)
        assert owned(port) == []
        for name in NAMES:
            took, status, headers, body = timed_reserve(port, name)
            assert status == 503 and body["error"]["code"] == "owner_unavailable", body
            assert headers["Retry-After"] == str(int(LEASE))
            assert took < PANE_SECONDS - 1, f"{name}: {took:.1f} s"
        assert counted(port, "alpha", "unreachable") == counted(port, "beta", "unreachable") == 1
    finally:
        proc.terminate()
        proc.wait(30)
        for sock in (paused, frozen, *fillers):
            sock.close()
