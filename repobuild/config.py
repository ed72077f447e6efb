"""repobuild.toml: every setting has a default, so a build needs no configuration at all."""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from repobuild.errors import UsageError

_SUITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ComponentRule:
    glob: str
    component: str


@dataclass(frozen=True)
class Config:
    origin: str = "repobuild"
    label: str = "repobuild"
    suite: str = "stable"
    codename: str = "stable"
    description: str = "A repository built by repobuild"
    default_component: str = "main"
    components: tuple[ComponentRule, ...] = ()
    #: architectures always listed, even when no package declares them
    architectures: tuple[str, ...] = ()
    validity_days: float = 7.0
    by_hash_keep_days: float = 7.0
    sha512: bool = False
    #: SOURCE-relative path or file name -> yank reason ("" for no reason)
    yanked: dict[str, str] = field(default_factory=dict)
    base_url: str = ""

    def component_for(self, rel_path: str) -> str:
        for rule in self.components:
            if fnmatch.fnmatchcase(rel_path, rule.glob):
                return rule.component
        return self.default_component

    def yank_reason(self, rel_path: str) -> str | None:
        for key in (rel_path, rel_path.rsplit("/", 1)[-1]):
            if key in self.yanked:
                return self.yanked[key]
        return None


def _str(table: dict[str, Any], key: str, default: str, path: Path) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise UsageError(f"setting {key!r} must be a non-empty one-line string", path)
    return value


def _days(table: dict[str, Any], key: str, default: float, path: Path) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise UsageError(f"setting {key!r} must be a positive number of days", path)
    return float(value)


_REPOSITORY_KEYS = {
    "origin", "label", "suite", "codename", "description", "component", "architectures",
    "validity_days", "by_hash_keep_days", "base_url",
}


def _no_unknown_keys(table: dict[str, Any], section: str, known: set[str], path: Path) -> None:
    """A misspelt setting (validity_day = 3) is an error, not a silent default."""
    unknown = sorted(set(table) - known)
    if unknown:
        raise UsageError(f"unknown setting(s) in [{section}]: {', '.join(unknown)}", path)


def load_config(path: Path | None) -> Config:
    """Read repobuild.toml; ``None`` gives the defaults."""
    if path is None:
        return Config()
    import tomllib  # only with a file: a build without one never needs it (~1.5 ms)

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError("configuration file not found", path) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"invalid TOML: {exc}", path) from None
    known = {"repository", "components", "yanked", "hashes"}
    unknown = set(data) - known
    if unknown:
        raise UsageError(f"unknown section(s): {', '.join(sorted(unknown))}", path)
    repo = data.get("repository", {})
    if not isinstance(repo, dict):
        raise UsageError("[repository] must be a table", path)
    _no_unknown_keys(repo, "repository", _REPOSITORY_KEYS, path)
    suite = _str(repo, "suite", "stable", path)
    codename = _str(repo, "codename", suite, path)
    for name, value in (("suite", suite), ("codename", codename)):
        if not _SUITE_RE.match(value):
            raise UsageError(f"{name} {value!r} may hold only letters, digits, '.', '_', '-'", path)
    component = _str(repo, "component", "main", path)
    rules = []
    for i, rule in enumerate(data.get("components", [])):
        if not isinstance(rule, dict) or not isinstance(rule.get("glob"), str) or not isinstance(
            rule.get("component"), str
        ):
            raise UsageError(f"[[components]] entry {i + 1} needs 'glob' and 'component'", path)
        if not _SUITE_RE.match(rule["component"]):
            raise UsageError(f"component {rule['component']!r} is not a valid name", path)
        rules.append(ComponentRule(rule["glob"], rule["component"]))
    yanked = data.get("yanked", {})
    if not isinstance(yanked, dict) or not all(isinstance(v, str) for v in yanked.values()):
        raise UsageError("[yanked] maps file names to reason strings", path)
    arches = repo.get("architectures", [])
    if not isinstance(arches, list) or not all(isinstance(a, str) for a in arches):
        raise UsageError("setting 'architectures' must be a list of strings", path)
    hashes = data.get("hashes", {})
    if not isinstance(hashes, dict):
        raise UsageError("[hashes] must be a table", path)
    _no_unknown_keys(hashes, "hashes", {"sha512"}, path)
    sha512 = hashes.get("sha512", False) if isinstance(hashes, dict) else False
    if not isinstance(sha512, bool):
        raise UsageError("setting [hashes] sha512 must be true or false", path)
    return Config(
        origin=_str(repo, "origin", "repobuild", path),
        label=_str(repo, "label", "repobuild", path),
        suite=suite,
        codename=codename,
        description=_str(repo, "description", Config.description, path),
        default_component=component,
        components=tuple(rules),
        architectures=tuple(a for a in arches if a != "all"),
        validity_days=_days(repo, "validity_days", 7.0, path),
        by_hash_keep_days=_days(repo, "by_hash_keep_days", 7.0, path),
        sha512=sha512,
        yanked=dict(yanked),
        base_url=str(repo.get("base_url", "")),
    )


def build_time() -> datetime:
    """Now, or SOURCE_DATE_EPOCH when set (reproducible builds), in UTC without microseconds."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            return datetime.fromtimestamp(int(epoch), UTC)
        except ValueError:
            raise UsageError(f"SOURCE_DATE_EPOCH={epoch!r} is not an integer") from None
    return datetime.now(UTC).replace(microsecond=0)


def source_date_epoch() -> int | None:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return int(epoch) if epoch and epoch.isdigit() else None
