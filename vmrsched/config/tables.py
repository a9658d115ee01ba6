"""Reading TOML tables into the config dataclasses, recording every problem on the way.

`_Loader.build` works for any dataclass declared with `fields._f`: it knows types, rules, secret
keys and file paths, not what any one key means, so it sits below the checks that do. The checks
and `loader.parse` write their problems and warnings into the same `_Loader`, so a config file
is reported in one pass, every problem with its key path.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from vmrsched.config.fields import SECRET_KEYS, Secret

# keys naming a file or directory the service uses: relative paths are relative to the config
# file (DESIGN, "Security rules"), [server] data_dir included, so a file means the same data
# whatever directory the service starts in (systemd: its WorkingDirectory)
PATH_KEYS = frozenset(
    {"tls_ca_file", "client_certificate_file", "directory_file", "directory", "data_dir"}
)
# of those, the ones shown as they resolve (check-config's "data in …", serve's log): the
# shipped config's "../data" reads as the checkout's data directory, not as config/../data
_NORMALISED = frozenset({"data_dir"})


class _Loader:
    def __init__(self, base_dir: Path, environ: Mapping[str, str]) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []
        # the rooms' aliases of each integration's directory file, read by its own checks, for
        # the service-wide check against every single-use range: key path -> (alias, whose)
        self.directory_aliases: dict[str, list[tuple[str, str]]] = {}
        self.base_dir = base_dir
        self.environ = environ

    def error(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def secret(self, path: str, key: str, table: Mapping[str, Any]) -> Secret | None:
        env_key, file_key = f"{key}_env", f"{key}_file"
        if env_key in table and file_key in table:
            self.error(f"{path}.{key}", f"give either {env_key} or {file_key}, not both")
            return None
        if env_key in table:
            var = table[env_key]
            if not isinstance(var, str) or not var:
                self.error(f"{path}.{env_key}", "must name an environment variable")
                return None
            value = self.environ.get(var)
            if value is None:
                self.error(f"{path}.{env_key}", f"environment variable {var} is not set")
                return None
            return Secret(value, f"environment variable {var}")
        if file_key in table:
            name = table[file_key]
            if not isinstance(name, str) or not name:
                self.error(f"{path}.{file_key}", "must name a file")
                return None
            file_path = self.base_dir / name
            try:
                value = file_path.read_text().strip()
            except OSError as exc:
                self.error(f"{path}.{file_key}", f"cannot read {file_path}: {exc.strerror}")
                return None
            if "\n" in value or "\r" in value:  # never taken whole: what it holds stays unsaid
                self.error(
                    f"{path}.{file_key}",
                    f"{file_path} holds more than one line: a secret file holds the secret "
                    "alone, on one line (a final newline is fine)",
                )
                return None
            return Secret(value, f"file {name}")
        return None

    def build(self, cls: type[Any], table: Any, path: str) -> Any:
        """Instantiate dataclass `cls` from a TOML table, recording every problem under `path`."""
        if not isinstance(table, dict):
            self.error(path, f"must be a table, got {type(table).__name__}")
            return cls()
        hints = get_type_hints(cls)
        # a derived field is the loader's to fill (from another table), never the file's
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("derived")}
        known = set(fields)
        for key in fields:
            if key in SECRET_KEYS:
                known |= {f"{key}_env", f"{key}_file"}
        values: dict[str, Any] = {}
        for key in table:
            if key in SECRET_KEYS:
                self.error(
                    f"{path}.{key}",
                    f"secrets may not be written in the file; use {key}_env or {key}_file",
                )
            elif key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.error(f"{path}.{key}", f"unknown key{hint}")
        for name, f in fields.items():
            key_path = f"{path}.{name}"
            hint = hints[name]
            if name in SECRET_KEYS:
                if name not in table:
                    values[name] = self.secret(path, name, table)
                continue
            if name not in table:
                if name in PATH_KEYS and f.default:  # a default file, e.g. vmrs.toml
                    values[name] = self.resolve(str(f.default), name)
                continue
            raw = table[name]
            if isinstance(hint, type) and dataclasses.is_dataclass(hint):
                values[name] = self.build(hint, raw, key_path)
                continue
            value = self.convert(hint, raw, key_path)
            if value is not _INVALID and self.check_rule(f.metadata, value, key_path):
                values[name] = self.resolve(value, name) if name in PATH_KEYS else value
        return cls(**values)

    def resolve(self, value: str, key: str = "") -> str:
        """A file named in the config, relative to the config file's directory: read the same
        by check-config and by the service whatever directory it runs in (systemd: /)."""
        resolved = str(self.base_dir / value) if value and not Path(value).is_absolute() else value
        return os.path.normpath(resolved) if key in _NORMALISED and resolved else resolved

    def convert(self, hint: Any, raw: Any, path: str) -> Any:
        origin = get_origin(hint)
        if origin in (Union, types.UnionType):
            hint = next(a for a in get_args(hint) if a is not type(None))
            origin = get_origin(hint)
        if origin is tuple:
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                self.error(path, "must be a list of strings")
                return _INVALID
            return tuple(raw)
        expected = {str: "a string", int: "an integer", bool: "true or false", float: "a number"}
        if hint is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        if hint is int and isinstance(raw, bool):
            self.error(path, "must be an integer, got a boolean")
            return _INVALID
        if not isinstance(raw, hint):
            self.error(path, f"must be {expected.get(hint, hint)}, got {type(raw).__name__}")
            return _INVALID
        return raw

    def check_rule(self, rule: Mapping[str, Any], value: Any, path: str) -> bool:
        ok = True
        if "choices" in rule and value not in rule["choices"]:
            self.error(path, f"must be one of {', '.join(rule['choices'])}, got {value!r}")
            ok = False
        lo, hi = rule.get("minimum"), rule.get("maximum")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.error(path, f"must be {lo}-{hi}, got {value!r}")
            ok = False
        min_len, max_len = rule.get("min_len"), rule.get("max_len")
        if min_len is not None and max_len is not None and not min_len <= len(value) <= max_len:
            self.error(path, f"must be {min_len}-{max_len} characters, got {value!r}")
            ok = False
        elif max_len is not None and len(value) > max_len:
            self.error(path, f"must be at most {max_len} characters, got {len(value)}")
            ok = False
        return ok


_INVALID = object()
