"""schemathesis against the running server, from vmrsched/http/openapi.yaml: no 5xx, and every
response matches the spec (status codes, content types, bodies)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "vmrsched" / "http" / "openapi.yaml"
pytestmark = pytest.mark.slow


def test_spec_is_served_and_is_the_file(server: str) -> None:
    with urllib.request.urlopen(f"{server}/api/openapi.yaml", timeout=5) as response:
        served = response.read()
    assert served == SPEC.read_bytes()
    assert yaml.safe_load(served)["openapi"].startswith("3.")


class _Strict(yaml.SafeLoader):
    """YAML 1.2 as strict loaders read it: a key given twice in one mapping is an error
    (PyYAML would keep the last silently)."""


def _mapping(loader: _Strict, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    keys = [loader.construct_object(key, deep=deep) for key, _ in node.value]
    duplicated = {key for key in keys if keys.count(key) > 1}
    if duplicated:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate keys {sorted(duplicated)}", node.start_mark
        )
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def test_spec_holds_no_key_twice_and_names_421_wherever_the_server_answers_it() -> None:
    spec = yaml.load(SPEC.read_text(), _Strict)
    for path, operations in spec["paths"].items():
        guarded = path.startswith(("/api/", "/addin/", "/admin", "/my/"))
        for method, operation in operations.items():
            assert ("421" in operation["responses"]) == guarded, (method, path)


def test_schemathesis_finds_no_5xx_and_no_spec_violation(
    server: str,
    tmp_path: Path,
) -> None:
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert binary is not None
    # Operations are per integration: aim the generated requests at the running one, so they
    # reach the handlers instead of stopping at 404.
    (tmp_path / "schemathesis.toml").write_text('[parameters]\n"path.integration" = "default"\n')
    result = subprocess.run(
        [
            binary,
            "run",
            str(SPEC),
            "--url",
            server,
            "--checks",
            "all",
            "--max-examples",
            "40",
            "--seed",
            "20261122",
            "--generation-deterministic",
            "--request-timeout",
            "10",
            "--report",
            "junit",
            "--report-junit-path",
            str(tmp_path / "schemathesis.xml"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "No issues found" in output or "passed" in output.lower(), output[-3000:]
