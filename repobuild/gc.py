"""`repobuild gc`: remove blobs and by-hash files that no index of the last N days lists.

Every build keeps a copy of its index.json in ``OUT/.repobuild/history/``. A file is garbage
when it lies under ``blobs/`` or a ``by-hash/`` folder, the current index does not list it as
current, and no index generated within the last N days lists it as current either. The current
index may still list such a file as *retired* (kept while caches may ask for it): a retired
entry is allowed to be absent, so removing it leaves the tree valid without re-signing.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from repobuild.errors import UsageError, ValidationError
from repobuild.formats import manifest
from repobuild.formats.manifest import Manifest, ManifestError
from repobuild.store import STATE_DIR, OutTree

HISTORY = "history"


def history_dir(tree_root: Path) -> Path:
    return tree_root / STATE_DIR / HISTORY


def record_history(tree: OutTree, version: int, index: Path) -> Callable[[], None]:
    """Copy ``index`` (the new index.json, before it lands) for the history; the returned
    function files the copy once the index has landed."""
    folder = tree.state / HISTORY
    folder.mkdir(exist_ok=True)
    tmp = tree.temp_path()
    try:  # a second name for the same bytes: index.json is only ever replaced, never rewritten
        os.link(index, tmp)
    except OSError:
        shutil.copyfile(index, tmp)

    def file_it() -> None:
        tmp.replace(folder / f"{version:08d}.json")

    return file_it


def current_paths(index: Manifest) -> set[str]:
    """What an index lists as current (not retired)."""
    paths = {a["blob"] for a in index.artifacts}
    paths.update(p for p, f in index.files.items() if not f.retired)
    return paths


def _is_collectable(rel: str) -> bool:
    return rel.startswith("blobs/") or (rel.startswith("dists/") and "/by-hash/" in rel)


@dataclass
class GcResult:
    removed: list[tuple[str, int]] = field(default_factory=list)
    kept_indices: int = 0

    @property
    def bytes(self) -> int:
        return sum(size for _p, size in self.removed)


def collect(out: Path, *, keep_days: float, now: datetime, dry_run: bool) -> GcResult:
    tree = OutTree(out)
    index_path = out / "index.json"
    try:
        current = manifest.parse(index_path.read_bytes())
    except FileNotFoundError:
        raise UsageError("holds no index.json: nothing to collect", out) from None
    except ManifestError as exc:
        raise ValidationError(f"malformed: {exc}", index_path) from None
    referenced = current_paths(current)
    result = GcResult(kept_indices=1)
    cutoff = now - timedelta(days=keep_days)
    folder = history_dir(out)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            old = manifest.parse(path.read_bytes())
        except (ManifestError, OSError, json.JSONDecodeError):
            continue
        if old.generated >= cutoff:
            referenced |= current_paths(old)
            result.kept_indices += 1
    tree.open()
    try:
        for rel in tree.walk():
            if _is_collectable(rel) and rel not in referenced:
                size = tree.path(rel).stat().st_size
                result.removed.append((rel, size))
                if not dry_run:
                    tree.remove(rel)
        if not dry_run:
            for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
                try:
                    if manifest.parse(path.read_bytes()).generated < cutoff:
                        path.unlink()
                except (ManifestError, OSError):
                    path.unlink(missing_ok=True)
    finally:
        tree.close(failed=False)
    return result
