"""deploy/: the Prometheus rules and the Grafana dashboard name only metrics the service really
exports (and every alarm it can raise has a rule); the rules file has the shape Prometheus
loads; the systemd unit runs unprivileged with the usual hardening."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

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
