"""in-toto's keys are local files: securesystemslib's signers are imported without boto3 (the
AWS KMS signer's SDK, ~0.12 s of a small rebuild), and an ``awskms:`` signer URI gets it back."""

from __future__ import annotations

import subprocess
import sys

from tests.clients import REPO

SCRIPT = """
import sys
from pathlib import Path
from repobuild.signing import intoto
assert intoto.key_id(Path("keys.example/intoto/builder.pub").read_bytes())  # no import
assert "securesystemslib" not in sys.modules
intoto._import_sslib()  # as for a signer URI or an in-toto check
import securesystemslib.signer._aws_signer as aws
print("boto3 loaded:", "boto3" in sys.modules, "aws usable:", aws.AWS_IMPORT_ERROR is None)
import boto3  # not blocked after the import
intoto.aws_signer_back()
print("boto3 loaded:", "boto3" in sys.modules, "aws usable:", aws.AWS_IMPORT_ERROR is None)
"""


def test_in_toto_import_leaves_boto3_out_and_a_kms_signer_gets_it_back() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          cwd=REPO, timeout=60, check=True)
    assert proc.stdout.splitlines() == [
        "boto3 loaded: False aws usable: False",
        "boto3 loaded: True aws usable: True",
    ]
