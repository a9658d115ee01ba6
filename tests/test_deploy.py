"""deploy/: the Prometheus rules and the Grafana dashboard name only metrics the service really
exports (and every alarm it can raise has a rule); the rules file has the shape Prometheus
loads; the systemd unit runs unprivileged with the usual hardening."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.needs import unavailable
from vmrsched import telemetry
from vmrsched.telemetry import Metrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
METRIC = re.compile(r"\bvmrsched_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def exported() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    names = set()
    for family in registry.collect():
        names.add(family.name)
        if family.type == "histogram":  # labelled: no samples yet, but these series
            names.update(family.name + suffix for suffix in SUFFIXES)
    # counters are exposed with _total; histograms with _bucket/_count/_sum
    return names | {f"{n}_total" for n in names}


def referenced(text: str) -> set[str]:
    return set(METRIC.findall(text))


def test_rules_and_dashboard_name_only_exported_metrics() -> None:
    names = exported()
    rules = (DEPLOY / "prometheus-rules.yml").read_text()
    dashboard = (DEPLOY / "grafana" / "vmrsched-dashboard.json").read_text()
    for text in (rules, dashboard):
        unknown = {m for m in referenced(text) if m not in names}
        assert not unknown, unknown
    assert len(referenced(dashboard)) >= 12  # the dashboard shows most of what is exported


def test_every_alarm_has_a_rule_and_the_rules_load() -> None:
    doc = yaml.safe_load((DEPLOY / "prometheus-rules.yml").read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert rule["alert"] and rule["expr"] and rule["labels"]["severity"]
        assert rule["annotations"]["summary"]
    alarms = {
        value
        for name, value in vars(telemetry).items()
        if name.isupper() and isinstance(value, str) and re.fullmatch(r"[a-z_]+", value)
    }
    covered = {m.group(1) for r in rules if (m := re.search(r'alarm="([a-z_]+)"', r["expr"]))}
    assert alarms and alarms <= covered, alarms - covered
    exprs = " ".join(r["expr"] for r in rules)
    for metric in ("vmrsched_mailbox_lag_seconds", "vmrsched_meeting_requests_total"):
        assert metric in exprs  # lag and error rates


def test_the_dashboard_is_grafana_json() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "vmrsched-dashboard.json").read_text())
    assert dashboard["uid"] == "vmrsched" and dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])


def test_the_systemd_unit_is_hardened() -> None:
    unit = (DEPLOY / "vmrsched.service").read_text()
    for option in (
        "User=vmrsched",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert option in unit, option


def test_the_dockerfile_runs_unprivileged_with_a_volume_and_a_health_check() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "USER vmrsched" in dockerfile and "VOLUME" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile


# --- as the real tools read them (Debian's nginx, promtool and systemd; scripts/test installs
# them where it can, and CI always has them) -------------------------------------------------

ROOT = DEPLOY.parent


def needs(tool: str) -> str:
    found = shutil.which(tool) or (
        f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else ""
    )
    if not found:
        unavailable(f"{tool} is not installed (scripts/test installs it when run as root)")
    return found


def make_certificate(tmp_path: Path) -> None:
    """A throwaway self-signed certificate and key (cert.pem, key.pem) for nginx -t."""
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=vmr.example.com", "-keyout", str(tmp_path / "key.pem")),
            *("-out", str(tmp_path / "cert.pem")),
        ],
        check=True,
        capture_output=True,
    )


def assert_nginx_accepts(nginx: str, site: str, tmp_path: Path) -> None:
    """`nginx -t` accepts `site` inside a minimal main config, without a warning."""
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    include {tmp_path}/site.conf;\n}}\n"
    )
    out = subprocess.run(
        [nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "[warn]" not in out.stderr, out.stderr


def test_nginx_accepts_the_shipped_site(tmp_path: Path) -> None:
    nginx = needs("nginx")
    make_certificate(tmp_path)
    site = (DEPLOY / "nginx.conf").read_text()
    site = site.replace("/etc/ssl/vmr.example.com/fullchain.pem", str(tmp_path / "cert.pem"))
    site = site.replace("/etc/ssl/vmr.example.com/privkey.pem", str(tmp_path / "key.pem"))
    assert_nginx_accepts(nginx, site, tmp_path)


@pytest.mark.parametrize(
    ("what", "file"), [("rules", "prometheus-rules.yml"), ("config", "prometheus-scrape.yml")]
)
def test_promtool_loads_the_rules_and_the_scrape_config(what: str, file: str) -> None:
    promtool = needs("promtool")
    out = subprocess.run(
        [promtool, "check", what, str(DEPLOY / file)], capture_output=True, text=True
    )
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = needs("systemd-analyze")
    unit = (DEPLOY / "vmrsched.service").read_text()
    # the installed program, which a test machine does not have at /opt: an executable stands in
    (tmp_path / "vmrsched.service").write_text(
        unit.replace("/opt/vmrsched/bin/vmrsched", "/bin/true")
    )
    out = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / "vmrsched.service")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def final_stage_copies() -> dict[str, str]:
    """What the runtime image gets from the build context: destination -> source."""
    stages = (DEPLOY / "Dockerfile").read_text().split("\nFROM ")
    copies = {}
    for line in stages[-1].splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            *sources, destination = words[1:]
            for source in sources:
                copies[destination if len(sources) == 1 else destination + Path(source).name] = (
                    source
                )
    return copies


def test_the_image_starts_with_its_shipped_config(tmp_path: Path) -> None:
    """The config the image runs when nobody mounts one passes check-config as the image would
    run it (its files where the Dockerfile puts them, the secrets it documents given)."""
    copies = final_stage_copies()
    assert copies["/etc/vmrsched/vmrsched.toml"] == "deploy/container.toml"
    for destination, source in copies.items():
        target = tmp_path / destination.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / source, target)
    env = {
        **os.environ,
        "VMRSCHED_ADMIN_TOKEN": "a" * 32,
        "VMRSCHED_POLICY_PASSWORD": "p" * 16,
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmrsched",
            "check-config",
            str(tmp_path / "etc/vmrsched/vmrsched.toml"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "listening on 0.0.0.0:8080, data in /var/lib/vmrsched" in out.stdout
    build = (DEPLOY / "Dockerfile").read_text()
    # what `pip install .` in the build stage reads is in the build context
    assert "LICENSE" in build.split("\nFROM ")[1]  # the build stage
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "data", "**/node_modules"} <= set(ignored)


def test_the_scrape_job_is_the_one_the_rules_name(tmp_path: Path) -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus-scrape.yml").read_text())
    [job] = scrape["scrape_configs"]
    rules = (DEPLOY / "prometheus-rules.yml").read_text()
    assert f'job="{job["job_name"]}"' in rules
    promtool = needs("promtool")
    config = tmp_path / "prometheus.yml"
    shutil.copy(DEPLOY / "prometheus-rules.yml", tmp_path / "prometheus-rules.yml")
    config.write_text(
        yaml.safe_dump({**scrape, "rule_files": ["prometheus-rules.yml"]}, sort_keys=False)
    )
    out = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# --- two instances on one PostgreSQL database (deploy/two-instances/, docs/high-availability.md)

TWO = DEPLOY / "two-instances"
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|DSN|SECRET")
DATA_DIR = "/var/lib/vmrsched"


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((TWO / "compose.yaml").read_text())
    return doc


def instances(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The vmrsched services of the compose file: those that run `serve`."""
    return {name: s for name, s in doc["services"].items() if "serve" in s.get("command", [])}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's volumes: target -> source (short syntax, as the example writes them)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        found[target] = source
    return found


def test_the_compose_file_runs_postgresql_and_two_instances_with_their_own_data() -> None:
    doc = compose()
    services = doc["services"]
    [postgres] = [s for s in services.values() if s.get("image", "").startswith("postgres:")]
    assert postgres["image"] == "postgres:15"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert mounts(postgres)["/var/lib/postgresql/data"] in doc["volumes"]
    found = instances(doc)
    assert len(found) == 2, sorted(found)
    data = [mounts(s)[DATA_DIR] for s in found.values()]
    assert len(set(data)) == 2 and set(data) <= set(doc["volumes"])  # each its own volume
    assert len({s["hostname"] for s in found.values()}) == 2  # the instances' names differ
    for service in found.values():
        build = service["build"]
        assert (TWO / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        config = service["command"][service["command"].index("--config") + 1]
        assert mounts(service)[config] == "./vmrsched.toml"
        check = " ".join(service["healthcheck"]["test"])
        assert "http://127.0.0.1:8080/readyz" in check
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    # nginx in front reaches both, and only nginx is published beyond the host's loopback
    [nginx] = [s for s in services.values() if s.get("image", "").startswith("nginx:")]
    assert mounts(nginx)["/etc/nginx/conf.d/default.conf"] == "./nginx.conf"
    site = (TWO / "nginx.conf").read_text()
    for name in found:
        assert f"server {name}:8080 " in site, name
        assert all(p.startswith("127.0.0.1:") for p in found[name].get("ports", []))
    # either instance answers for every integration: only an instance that is down is passed
    # over, and a POST already sent is never sent twice
    assert "proxy_next_upstream error timeout;" in site
    assert not re.search(r"proxy_next_upstream[^;]*(http_503|non_idempotent)", site)
    # and a browser needs no instance of its own: sessions and sign-ins are in the database
    assert not re.search(r"^\s*(ip_hash|hash|sticky)\b", site, re.MULTILINE)


def test_the_compose_file_holds_no_secret_and_names_where_they_come_from() -> None:
    text = (TWO / "compose.yaml").read_text()
    assert not re.search(r"postgres(ql)?://", text)  # no DSN as a URL
    assert not re.search(r"\b(host|password|user)=", text)  # nor in keyword form
    interpolated = set(re.findall(r"\$\{([A-Z_]+)", text))
    for service in compose()["services"].values():
        environment = service.get("environment", {})
        assert isinstance(environment, dict)
        for name, value in environment.items():
            if SECRET_NAME.search(name):  # from .env, and Compose refuses to start without it
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), name
    # env.example names every variable the compose file takes, and .env stays out of git
    example = (TWO / "env.example").read_text()
    given = set(re.findall(r"^([A-Z_]+)=", example, re.MULTILINE))
    assert interpolated and interpolated <= given, interpolated - given
    assert ".env" in (TWO / ".gitignore").read_text().split()


def test_the_two_instance_config_loads_on_the_shared_database() -> None:
    from vmrsched.config import load

    text = (TWO / "vmrsched.toml").read_text()
    named = set(re.findall(r'_env = "([A-Z_]+)"', text))
    assert "VMRSCHED_DSN" in named and "dsn =" not in text
    dsn = "host=postgres port=5432 dbname=vmrsched user=vmrsched password=dummy"
    environ = {name: "s" * 32 for name in named} | {"VMRSCHED_DSN": dsn}
    cfg = load(TWO / "vmrsched.toml", environ=environ)
    assert cfg.storage.backend == "postgresql"
    assert cfg.storage.dsn is not None and cfg.storage.dsn.reveal() == dsn
    assert cfg.storage.instance == ""  # host name and process id: one file for both
    # each instance tells the other where it serves: its host name, set to its service's name
    assert cfg.storage.advertise_url == "http://{hostname}:8080"
    for name, service in instances(compose()).items():
        assert service["hostname"] == name  # resolvable on the compose network
        assert cfg.storage.advertised(cfg.server, service["hostname"]) == f"http://{name}:8080"
    assert cfg.server.data_dir == DATA_DIR
    # compose.yaml gives both instances every variable the config names
    for service in instances(compose()).values():
        assert named <= set(service["environment"]), named - set(service["environment"])
        # a spool is on a volume both instances mount, never in an instance's own data_dir
        shared = {t for t, s in mounts(service).items() if t != DATA_DIR and not s.startswith(".")}
        for integ in cfg.integrations:
            if integ.backend == "spool":
                assert any(integ.spool.directory.startswith(t + "/") for t in shared)


def test_nginx_accepts_the_two_instance_site(tmp_path: Path) -> None:
    nginx = needs("nginx")
    make_certificate(tmp_path)
    site = (TWO / "nginx.conf").read_text()
    site = site.replace("/etc/nginx/tls/fullchain.pem", str(tmp_path / "cert.pem"))
    site = site.replace("/etc/nginx/tls/privkey.pem", str(tmp_path / "key.pem"))
    # the instances' names resolve on the compose network only; nginx -t resolves them
    for port, name in enumerate(instances(compose()), start=18081):
        site = site.replace(f"server {name}:8080", f"server 127.0.0.1:{port}")
    assert_nginx_accepts(nginx, site, tmp_path)


def test_the_shared_database_rules_name_only_exported_metrics() -> None:
    text = (TWO / "prometheus-rules-shared.yml").read_text()
    unknown = {m for m in referenced(text) if m not in exported()}
    assert not unknown, unknown
    for metric in ("vmrsched_integration_owned", "vmrsched_lease_renewals_total"):
        assert metric in text
    rules = [r for group in yaml.safe_load(text)["groups"] for r in group["rules"]]
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert rule["alert"] and rule["expr"] and rule["labels"]["severity"]
        assert rule["annotations"]["summary"]
    # no rule of the same name as one in deploy/prometheus-rules.yml: both files load together
    others = yaml.safe_load((DEPLOY / "prometheus-rules.yml").read_text())
    taken = {r["alert"] for group in others["groups"] for r in group["rules"]}
    assert not taken & {r["alert"] for r in rules}


def test_promtool_loads_the_two_instance_scrape_job_with_both_rule_files(tmp_path: Path) -> None:
    scrape = yaml.safe_load((TWO / "prometheus-scrape.yml").read_text())
    [job] = scrape["scrape_configs"]
    assert job["job_name"] == "vmrsched"  # what VmrschedDown looks for
    [targets] = job["static_configs"]
    published = {
        p.rsplit(":", 1)[0] for s in instances(compose()).values() for p in s.get("ports", [])
    }
    assert set(targets["targets"]) == published  # every instance, each on its own
    promtool = needs("promtool")
    files = [DEPLOY / "prometheus-rules.yml", TWO / "prometheus-rules-shared.yml"]
    for rules in files:
        shutil.copy(rules, tmp_path / rules.name)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump({**scrape, "rule_files": [f.name for f in files]}, sort_keys=False)
    )
    out = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_high_availability_guide_names_files_that_exist() -> None:
    guide = (ROOT / "docs" / "high-availability.md").read_text()
    named = set(re.findall(r"deploy/two-instances/([\w.-]+)", guide))
    assert {"compose.yaml", "nginx.conf", "prometheus-rules-shared.yml"} <= named
    assert all((TWO / name).is_file() for name in named), named


def general_errors_test(outcome: str) -> dict[str, Any]:
    """A `promtool test rules` case: one integration answering 10 meetings a minute and as many
    items of `outcome` with reason general_error, for 40 minutes."""
    return {
        "interval": "1m",
        "input_series": [
            {
                "series": 'vmrsched_meeting_requests_total{integration="alpha",'
                'outcome="accepted",reason="new_single"}',
                "values": "0+10x40",
            },
            {
                "series": 'vmrsched_meeting_requests_total{integration="alpha",'
                f'outcome="{outcome}",reason="general_error"}}',
                "values": "0+10x40",
            },
        ],
        "alert_rule_test": [
            {
                "eval_time": "40m",
                "alertname": "VmrschedGeneralErrors",
                "exp_alerts": []
                if outcome == "quarantined"
                else [
                    {
                        "exp_labels": {"integration": "alpha", "severity": "warning"},
                        "exp_annotations": {
                            "summary": "over 5% of meetings on alpha get a general_error decline",
                            "description": "Look up the correlation ids in the admin console "
                            "(Recent decisions) or the log.",
                        },
                    }
                ],
            }
        ],
    }


def test_the_general_error_rule_counts_declines_not_quarantined_items(tmp_path: Path) -> None:
    """A file in the spool's inbox that is no meeting request at all is quarantined (counted as
    outcome quarantined, reason general_error) and gets no decline: it must not page anyone as
    meetings declined for an unexpected error do."""
    promtool = needs("promtool")
    shutil.copy(DEPLOY / "prometheus-rules.yml", tmp_path / "prometheus-rules.yml")
    tests = {
        "rule_files": ["prometheus-rules.yml"],
        "evaluation_interval": "1m",
        "tests": [general_errors_test("declined"), general_errors_test("quarantined")],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    out = subprocess.run(
        [promtool, "test", "rules", "tests.yml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
