"""What check-config says about Pexip room settings (issue 27): other_participants values
Pexip does not take, and management_api conferences on nodes that also ask the policy
endpoint (joinable on Pexip from the lead, refused by the policy answer outside windows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmrsched import config


def doc(tmp: Path, single_use: dict[str, Any], pexip: dict[str, Any], **server: Any) -> Any:
    return {
        "server": {"data_dir": str(tmp / "data"), **server},
        "integrations": [
            {
                "name": "hq",
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none", "server_fqdn": "vc.example.com"},
                "single_use": {"alias_prefix": "81", **single_use},
                "pexip": pexip,
            }
        ],
    }


def test_allow_all_is_said_to_go_out_as_allow_if_trusted(tmp_path: Path) -> None:
    settings = {"identity_provider_group": "Staff", "other_participants": "allow_all"}
    warnings = "\n".join(config.parse(doc(tmp_path, settings, {}), tmp_path, {}).warnings)
    assert "other_participants" in warnings and "allow_if_trusted" in warnings


def test_management_api_on_nodes_that_ask_the_policy_endpoint_is_explained(
    tmp_path: Path,
) -> None:
    pexip = {
        "mode": "management_api",
        "management_url": "https://pexmgr.example.com",
        "management_username": "admin",
        "management_password_env": "PEXIP_PW",
    }
    server = {"policy_username": "node", "policy_password_env": "POLICY_PW"}
    env = {"PEXIP_PW": "x", "POLICY_PW": "a-long-policy-secret"}
    warnings = "\n".join(config.parse(doc(tmp_path, {}, pexip, **server), tmp_path, env).warnings)
    assert "refuse their aliases outside the windows" in warnings
