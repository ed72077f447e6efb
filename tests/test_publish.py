"""`repobuild publish` to a folder, an rsync folder target and S3 (moto's standalone server on
127.0.0.1, driven through boto3): each destination then passes `repobuild verify`; a second
publish after adding one package uploads only the new blobs and the changed indices, and the
purge list holds exactly the changed mutable paths."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from repobuild.formats import manifest
from repobuild.mirror.cachepolicy import IMMUTABLE, MUTABLE, is_immutable
from tests.clients import DEMO_KEYS, FIXTURES, fixture_generator, repobuild, snapshot

TRUST = DEMO_KEYS / "trust.json"
SIGS = {"index.json", "index.json.asc", "index.json.sig", "index.json.sigstore.json"}
MOTO = Path(sys.executable).parent / "moto_server"




def build(source: Path, out: Path) -> None:
    proc = repobuild("build", source, "--out", out, "--keys", DEMO_KEYS)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    if not MOTO.exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.devnull, "w")  # noqa: SIM115
    proc = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    import boto3

    client = boto3.client("s3", endpoint_url=url)
    client.create_bucket(Bucket="repo")
    # a static-site bucket: anyone may read (as a CDN origin or a public bucket would be)
    client.put_bucket_policy(Bucket="repo", Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                       "Resource": "arn:aws:s3:::repo/*"}],
    }))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def publish(out: Path, *dests: str, endpoint: str | None = None) -> dict:  # type: ignore[type-arg]
    args: list[str | Path] = ["publish", out, "--json"]
    for d in dests:
        args += ["--to", d]
    if endpoint:
        args += ["--endpoint-url", endpoint]
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    proc = repobuild(*args, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    report["rc"] = proc.returncode
    report["stderr"] = proc.stderr
    return report


def changed_mutable(old: Path, new: Path) -> set[str]:
    before = manifest.parse(old.read_bytes()).listed()
    after = manifest.parse(new.read_bytes()).listed()
    return {p for p, v in after.items() if not is_immutable(p) and before.get(p) != v}


def s3_objects(endpoint: str) -> dict[str, dict]:  # type: ignore[type-arg]
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="repo", Prefix="site/"):
        for obj in page.get("Contents", []):
            out[obj["Key"][len("site/"):]] = obj
    return out


def test_publish_to_folder_rsync_and_s3(tmp_path: Path, moto: str) -> None:
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed")
    source = tmp_path / "src"
    shutil.copytree(FIXTURES, source)
    out = tmp_path / "out"
    build(source, out)
    folder, rsync_dir = tmp_path / "www", tmp_path / "rsync-target"
    first = publish(out, str(folder), f"rsync:{rsync_dir}", "s3://repo/site", endpoint=moto)
    assert first["rc"] == 0, first
    assert all(d["ok"] for d in first["destinations"])
    for target in (folder, rsync_dir, f"{moto}/repo/site/"):
        proc = repobuild("verify", target, "--trust", TRUST)
        assert proc.returncode == 0, (target, proc.stderr)
    objects = s3_objects(moto)
    listed = manifest.parse((out / "index.json").read_bytes()).listed()
    assert set(listed) | SIGS == set(objects)
    import boto3

    client = boto3.client("s3", endpoint_url=moto)
    blob = next(p for p in listed if p.startswith("blobs/") and p.endswith(".deb"))
    head = client.head_object(Bucket="repo", Key=f"site/{blob}")
    assert head["CacheControl"] == IMMUTABLE
    assert head["ContentType"] == "application/vnd.debian.binary-package"
    head = client.head_object(Bucket="repo", Key="site/dists/stable/InRelease")
    assert head["CacheControl"] == MUTABLE

    # add one package, rebuild, publish again
    mr = fixture_generator()
    mr.make_wheel(source / "python", "rbdemo-extra", "1.0.0")
    old_index = tmp_path / "old-index.json"
    shutil.copy(out / "index.json", old_index)
    build(source, out)
    expect_changed = changed_mutable(old_index, out / "index.json") | SIGS
    new_blobs = {p for p in manifest.parse((out / "index.json").read_bytes()).listed()
                 if is_immutable(p)} - {p for p in manifest.parse(old_index.read_bytes()).listed()}
    assert len(new_blobs) == 2  # the wheel and its .metadata
    folder_before = snapshot(folder)
    s3_before = s3_objects(moto)
    second = publish(out, str(folder), f"rsync:{rsync_dir}", "s3://repo/site", endpoint=moto)
    assert second["rc"] == 0, second
    assert set(second["purge"]) == expect_changed
    for dest in second["destinations"]:
        assert dest["uploaded_immutable"] == 2, dest
        assert dest["uploaded_mutable"] == len(expect_changed), dest
    # independently of the report: untouched files kept their inode and mtime, S3 objects theirs
    folder_after = snapshot(folder)
    rewritten = {p for p in folder_before if folder_before[p] != folder_after.get(p)}
    assert rewritten <= expect_changed, rewritten - expect_changed
    s3_after = s3_objects(moto)
    s3_rewritten = {k for k in s3_before if s3_before[k]["LastModified"]
                    != s3_after[k]["LastModified"] or s3_before[k]["ETag"] != s3_after[k]["ETag"]}
    assert s3_rewritten <= expect_changed
    assert new_blobs <= set(s3_after)
    for target in (folder, rsync_dir, f"{moto}/repo/site/"):
        proc = repobuild("verify", target, "--trust", TRUST)
        assert proc.returncode == 0, (target, proc.stderr)


def test_a_failing_destination_does_not_stop_the_others(tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(FIXTURES, out)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be\n")
    good = tmp_path / "good"
    report = publish(out, str(blocker / "x"), str(good))
    assert report["rc"] == 1
    by_dest = {d["dest"]: d for d in report["destinations"]}
    assert not by_dest[str(blocker / "x")]["ok"]
    assert by_dest[str(good)]["ok"]
    assert f"repobuild: publish: {blocker / 'x'}:" in report["stderr"]
    assert repobuild("verify", good, "--trust", TRUST).returncode == 0
