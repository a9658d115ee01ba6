"""The README's layout section is the map of the package: every module is named there, so the
map cannot go stale unnoticed."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    package = ROOT / "vmrsched"
    missing = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py") and f"`{path.name}`" not in layout
    ]
    assert not missing, f"README's layout does not name: {missing}"
    folders = sorted(f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file())
    for folder in folders:
        assert f"`{folder}`" in layout


def test_no_module_is_over_600_lines() -> None:
    """A module past 600 lines holds more than one thing: split it by what each part holds."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in sorted((ROOT / "vmrsched").rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > 600
    }
    assert not long, f"over 600 lines: {long}"
