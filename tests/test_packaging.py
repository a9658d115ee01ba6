"""The install the Dockerfile and the systemd unit use (`pip install .` after `npm ci`) carries
everything the pane loads: the built wheel, installed into a fresh virtual environment, serves
MSAL.js from its own files; a wheel built without it makes check-config say so in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

import pytest

from tests.configs import spool_toml
from tests.serving import ROOT, free_port, wait_ready

pytestmark = pytest.mark.slow
PIP = (sys.executable, "-m", "pip")
MSAL = ROOT / "vmrsched/http/static/vendor/node_modules/@azure/msal-browser/lib/msal-browser.min.js"
ENTRA = """[[integrations]]
name = "online"
[integrations.exchange]
mailbox_name = "Online Room"
mailbox_email = "vmr-online@example.com"
[integrations.single_use]
alias_prefix = "onl"
[integrations.addin]
token_validation = "entra"
entra_tenant_id = "11111111-2222-3333-4444-555555555555"
entra_client_id = "22222222-3333-4444-5555-666666666666"
server_fqdn = "vc.example.com"
"""


def _wheel(tmp: Path, *, with_vendor: bool) -> Path:
    """A wheel built the way `pip install .` builds one, from a copy of the checkout (so the
    build leaves nothing in it)."""
    src = tmp / "src"
    skip = {".git", ".venv", "data", "test-output", "build", "tests", "bench"}
    if not with_vendor:
        skip.add("node_modules")
    shutil.copytree(ROOT, src, ignore=lambda _d, names: [n for n in names if n in skip])
    out = tmp / "wheels"
    subprocess.run(
        [*PIP, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        check=True,
    )
    (wheel,) = out.glob("vmrsched-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A new virtual environment holding the wheel; its dependencies come from the test venv's
    site-packages by a path entry (no network, and not the test venv's editable vmrsched)."""
    env = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [*PIP, "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
    )
    where = subprocess.run(
        [str(python), "-c", "import vmrsched; print(vmrsched.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp,
    ).stdout
    assert where.startswith(site), f"the fresh venv must import the wheel, not {where}"
    return python


def _config(tmp: Path, port: int) -> Path:
    path = tmp / "vmrsched.toml"
    path.write_text(spool_toml(tmp / "data", port=port) + ENTRA)
    return path


def test_the_built_wheel_serves_msal_js_from_its_own_files(tmp_path: Path) -> None:
    assert MSAL.is_file(), "scripts/test runs npm ci first"
    python = _fresh_venv(tmp_path, _wheel(tmp_path, with_vendor=True))
    port = free_port()
    config = _config(tmp_path, port)
    check = subprocess.run(
        [str(python), "-m", "vmrsched", "check-config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr
    assert "msal" not in check.stderr.lower()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        [str(python), "-m", "vmrsched", "serve", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(port)
        url = f"http://127.0.0.1:{port}/addin/static/vendor/msal-browser.min.js"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            assert response.read() == MSAL.read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_an_install_without_msal_js_is_named_by_check_config(tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path, _wheel(tmp_path, with_vendor=False))
    check = subprocess.run(
        [str(python), "-m", "vmrsched", "check-config", str(_config(tmp_path, free_port()))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr
    lines = [line for line in check.stderr.splitlines() if "msal-browser.min.js" in line]
    assert len(lines) == 1, check.stderr
    assert "npm ci --prefix vmrsched/http/static/vendor" in lines[0]
