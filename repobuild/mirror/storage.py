"""Where a tree is published: a folder, an rsync target or S3-compatible object storage,
behind one interface (as aptly keeps its publishing back-ends behind PublishedStorage)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Protocol

from repobuild.errors import UsageError
from repobuild.mirror.cachepolicy import cache_control, content_type


class Storage(Protocol):
    label: str

    def read(self, rel: str) -> bytes | None:
        """A file at the destination (the current index.json), or None."""
        ...

    def exists(self, rel: str, size: int) -> bool:
        """Whether an immutable file of this size is already there."""
        ...

    def put_many(self, root: Path, rels: list[str]) -> None:
        """Upload these files of ``root`` so each appears whole (never a partial object)."""
        ...

    def delete_many(self, rels: list[str]) -> None: ...


class FolderStorage:
    def __init__(self, path: Path) -> None:
        self.root = path
        self.label = str(path)

    def read(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def exists(self, rel: str, size: int) -> bool:
        try:
            return (self.root / rel).stat().st_size == size
        except (FileNotFoundError, NotADirectoryError):
            return False

    def put_many(self, root: Path, rels: list[str]) -> None:
        tmpdir = self.root / ".repobuild" / "tmp"
        tmpdir.mkdir(parents=True, exist_ok=True)
        for rel in rels:
            dest = self.root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = tmpdir / uuid.uuid4().hex
            shutil.copyfile(root / rel, tmp)
            tmp.chmod(0o644)
            os.replace(tmp, dest)

    def delete_many(self, rels: list[str]) -> None:
        for rel in rels:
            (self.root / rel).unlink(missing_ok=True)


class RsyncStorage:
    """rsync in stages, like Debian's ftpsync: each stage a file list; ``--delay-updates``
    puts a stage's files in place together at its end."""

    def __init__(self, target: str) -> None:
        if shutil.which("rsync") is None:
            raise UsageError("rsync is not installed (Debian package 'rsync')")
        self.target = target if target.endswith("/") else target + "/"
        self.label = target

    def _local(self) -> Path | None:
        t = self.target
        if t.startswith("rsync://") or (":" in t.split("/", 1)[0]):
            return None
        return Path(t)

    def read(self, rel: str) -> bytes | None:
        local = self._local()
        if local is not None:
            return FolderStorage(local).read(rel)
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                ["rsync", "-q", self.target + rel, tmp + "/f"], capture_output=True, check=False
            )
            if proc.returncode != 0:
                return None
            return (Path(tmp) / "f").read_bytes()

    def exists(self, rel: str, size: int) -> bool:
        local = self._local()
        if local is not None:
            return FolderStorage(local).exists(rel, size)
        return False  # rsync --ignore-existing skips it remotely anyway

    def put_many(self, root: Path, rels: list[str]) -> None:
        if not rels:
            return
        with tempfile.NamedTemporaryFile("w", delete=False) as fh:
            fh.write("\n".join(rels) + "\n")
            listing = fh.name
        try:
            proc = subprocess.run(
                ["rsync", "-a", "--files-from", listing, "--delay-updates",
                 "--chmod=F644,D755", f"{root}/", self.target],
                capture_output=True, text=True, check=False,
            )
        finally:
            os.unlink(listing)
        if proc.returncode != 0:
            raise OSError(f"rsync failed: {proc.stderr.strip().splitlines()[-1:]}")

    def delete_many(self, rels: list[str]) -> None:
        local = self._local()
        if local is not None:
            FolderStorage(local).delete_many(rels)


class S3Storage:
    def __init__(self, url: str, *, endpoint_url: str | None = None, workers: int = 8) -> None:
        import boto3

        rest = url[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise UsageError(f"no bucket in {url}")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.label = url
        self.client = boto3.client("s3", endpoint_url=endpoint_url)
        self.workers = workers
        self._listing: dict[str, int] | None = None

    def _key(self, rel: str) -> str:
        return self.prefix + rel

    def _list(self) -> dict[str, int]:
        if self._listing is None:
            listing: dict[str, int] = {}
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    listing[obj["Key"][len(self.prefix):]] = int(obj["Size"])
            self._listing = listing
        return self._listing

    def read(self, rel: str) -> bytes | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(rel))
        except self.client.exceptions.NoSuchKey:
            return None
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return None
            raise
        return bytes(obj["Body"].read())

    def exists(self, rel: str, size: int) -> bool:
        return self._list().get(rel) == size

    def put_many(self, root: Path, rels: list[str]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        def one(rel: str) -> None:
            with open(root / rel, "rb") as fh:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._key(rel), Body=fh,
                    CacheControl=cache_control(rel), ContentType=content_type(rel),
                )

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            list(pool.map(one, rels))

    def delete_many(self, rels: list[str]) -> None:
        for i in range(0, len(rels), 1000):
            chunk = rels[i : i + 1000]
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self._key(r)} for r in chunk], "Quiet": True},
            )


def open_storage(dest: str, *, endpoint_url: str | None = None) -> Storage:
    if dest.startswith("s3://"):
        return S3Storage(dest, endpoint_url=endpoint_url)
    if dest.startswith("rsync://"):
        return RsyncStorage(dest)
    if dest.startswith("rsync:"):
        return RsyncStorage(dest[len("rsync:"):])
    head = dest.split("/", 1)[0]
    if ":" in head:  # host:path, as scp and rsync write it
        return RsyncStorage(dest)
    return FolderStorage(Path(dest))
