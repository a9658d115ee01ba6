"""The manifest's Version follows its content: Microsoft 365 centralized deployment and Exchange's
app catalogue take a changed manifest up by its version, so a changed label or name must come
with another version, and an unchanged manifest keeps its own (every instance, every restart)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from vmrsched import config
from vmrsched.http import manifest

NS = {"o": manifest.NS_APP}
BASE = "https://vc.example.com"


def integration(**addin: Any) -> config.IntegrationConfig:
    document = {
        "server": {"listen": "127.0.0.1:8080"},
        "integrations": [
            {
                "name": "alpha",
                "exchange": {"mailbox_name": "VMR", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none", **addin},
            }
        ],
    }
    return config.parse(document, Path("."), {}).integrations[0]


def version_and_id(xml: bytes) -> tuple[str, str]:
    root = ET.fromstring(xml)
    return root.findtext("o:Version", namespaces=NS) or "", root.findtext(
        "o:Id", namespaces=NS
    ) or ""


def test_the_version_changes_with_the_content_and_only_then() -> None:
    first = manifest.build(integration(), BASE)
    again = manifest.build(integration(), BASE)
    assert first == again
    version, addin_id = version_and_id(first)
    assert re.fullmatch(r"1\.0\.\d{1,5}\.\d{1,5}", version)
    for change in ({"button_label": "Book a video room"}, {"provider_name": "Example Ltd"}):
        changed_version, changed_id = version_and_id(manifest.build(integration(**change), BASE))
        assert changed_id == addin_id  # the same add-in
        assert changed_version != version  # in a new version


def test_a_mail_add_ins_icons_come_in_the_sizes_microsoft_documents() -> None:
    """IconUrl 64x64 and HighResolutionIconUrl 128x128 for a mail add-in."""
    root = ET.fromstring(manifest.build(integration(), BASE))
    urls = {
        tag: root.find(f"o:{tag}", NS).get("DefaultValue")  # type: ignore[union-attr]
        for tag in ("IconUrl", "HighResolutionIconUrl")
    }
    assert urls == {
        "IconUrl": f"{BASE}/addin/alpha/icon-64.png",
        "HighResolutionIconUrl": f"{BASE}/addin/alpha/icon-128.png",
    }
    static = Path(manifest.__file__).parent / "static"
    assert config.png_size((static / "icon-64.png").read_bytes()) == (64, 64)
    assert config.png_size((static / "icon-128.png").read_bytes()) == (128, 128)
