"""`../shared` beside the clone (the corpus of real-world files and the manifest XSDs) adds tests
where it is present; a user's fresh clone has nothing beside it, and those tests skip."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus" / "ics"
SCHEMAS = SHARED / "schemas" / "office-addin-manifest"
FIXTURES = ROOT / "tests" / "data" / "ics"

needs_corpus = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"{CORPUS} is not here (only beside the project's own clone)"
)
needs_schemas = pytest.mark.skipif(
    not SCHEMAS.is_dir(), reason=f"{SCHEMAS} is not here (only beside the project's own clone)"
)


MO11 = "http://schemas.microsoft.com/office/mailappversionoverrides/1.1"
# What Outlook learnt after the newest valid XSDs in ../shared (2018; SOURCES.txt there says so):
# Microsoft documents these elements in [MS-OWEMXML] and the manifest reference, not in a
# published .xsd. `schema_valid_part` takes them out so that everything else is checked strictly
# against the XSDs; `test_manifest_*` checks their own shape against the documentation.
NEWER_THAN_THE_XSDS = (
    f"{{{MO11}}}Runtimes",  # Mailbox 1.10: the runtime of event-based activation
    f"{{{MO11}}}SupportsSharedFolders",  # Mailbox 1.8: delegates' shared calendars
    f"{{{MO11}}}MobileFormFactor",  # the mobile online-meeting surface
)


def schema_valid_part(document: etree._Element) -> etree._Element:
    """A copy of a manifest without the elements the 2018 XSDs predate (and LaunchEvent extension
    points, Mailbox 1.10)."""
    copy = etree.fromstring(etree.tostring(document))
    doomed = [e for tag in NEWER_THAN_THE_XSDS for e in copy.iter(tag)]
    xsi_type = "{http://www.w3.org/2001/XMLSchema-instance}type"
    doomed += [
        e
        for e in copy.iter(f"{{{MO11}}}ExtensionPoint")
        if e.get(xsi_type, "").endswith("LaunchEvent")
    ]
    for element in doomed:
        parent = element.getparent()
        assert parent is not None
        parent.remove(element)
    return copy
