"""The TOML files' reader and the checks their tables share (the policy file, ``policy``;
the callers file, ``api.callers``). Every error is a ``ConfigError`` that names the key at
fault by its path in the file (``tiers[2].weekly_limit``), or the variable that named a file
it cannot read."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["array_of_tables", "integer", "only", "read_toml", "required_name", "table"]


def read_toml(path: Path, key: str) -> dict[str, Any]:
    """The TOML document at ``path``; errors name ``key``, the variable that gave the path."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{key}: no such file {str(path)!r}") from None
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{key}: {path} is not valid TOML: {e}") from None


def array_of_tables(raw: Any, key: str, *, non_empty: bool) -> list[tuple[str, Mapping[str, Any]]]:
    """Each table of the ``[[key]]`` array ``raw``, with the path errors name it by."""
    if not isinstance(raw, list) or (non_empty and not raw):
        kind = "a non-empty array" if non_empty else "an array"
        raise ConfigError(f"{key}: expected {kind} of tables ([[{key}]])")
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{key}[{i}]: expected a table")
        tables.append((f"{key}[{i}]", entry))
    return tables


def required_name(table: Mapping[str, Any], where: str) -> str:
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name: expected a non-empty string")
    return name


def table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a table")
    return value


def only(table: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key (expected one of {sorted(allowed)})")


def integer(
    table: Mapping[str, Any], path: str, key: str, default: int | None, minimum: int = 0
) -> Any:
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{path}: must be at least {minimum}, got {value}")
    return value
