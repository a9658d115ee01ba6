"""`../shared` beside the clone (the corpus of real-world files and the manifest XSDs) adds tests
where it is present; a user's fresh clone has nothing beside it, and those tests skip."""

from __future__ import annotations

from pathlib import Path

import pytest

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
