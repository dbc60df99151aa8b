"""A cloud path that cannot be reached or authenticated fails within seconds, in one line naming the URL,
the filesystem and the fix. The stores are test doubles (tests/fake_cloud_fs.py) registered in place of
gcsfs/s3fs in a fresh `finehard shards` process: nothing leaves the machine, and a run that waited for
them would wait forever (the subprocess timeout bounds the test)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from conftest import ROOT

RUN_WITH = """
import sys, fsspec
sys.path.insert(0, {tests!r})
import fake_cloud_fs
fs = sys.argv[1]
if fs == "missing":
    fsspec.register_implementation("gs", "no_such_module_here.GCSFileSystem", clobber=True,
                                   errtxt="Please install gcsfs to access Google Storage")
else:
    cls = getattr(fake_cloud_fs, fs)
    for protocol in cls.protocol:
        fsspec.register_implementation(protocol, cls, clobber=True)
from pipeline.cli import main
sys.exit(main(sys.argv[2:]))
""".format(tests=str(ROOT / "tests"))


def shards_with(fs: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_WITH, fs, "shards", *argv], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, capture_output=True,
                          text=True, timeout=90)


def one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return lines[0]


def test_an_unresolvable_store_fails_at_once_naming_url_filesystem_and_fix(tmp_path: pathlib.Path) -> None:
    line = one_line(shards_with("OfflineGCS", "--input", "gs://bucket/images/", "--output", str(tmp_path / "o")))
    assert line.startswith("finehard shards: error: --input gs://bucket/images/: Google Cloud Storage (gcsfs) "
                           "cannot be reached")
    assert "Name or service not known" in line and "no credentials were found" in line
    assert "check the network" in line and "GOOGLE_APPLICATION_CREDENTIALS" in line
    assert not (tmp_path / "o").exists()


def test_a_store_that_never_answers_fails_after_the_check_deadline(tmp_path: pathlib.Path) -> None:
    line = one_line(shards_with("SilentGCS", "--input", str(ROOT / "sample"), "--output", "gs://bucket/out",
                                env={"FINEHARD_CLOUD_CHECK_S": "2"}))
    assert "--output gs://bucket/out: Google Cloud Storage (gcsfs) did not answer within 2 s" in line
    assert "check the network" in line and "gcloud auth application-default login" in line


def test_missing_s3_credentials_are_named_with_how_to_give_them(tmp_path: pathlib.Path) -> None:
    line = one_line(shards_with("S3WithoutCredentials", "--input", "s3://bucket/in/{000..009}.tar",
                                "--output", str(tmp_path / "o")))
    assert line == ("finehard shards: error: --input s3://bucket/in/{000..009}.tar: Amazon S3 (s3fs): no credentials "
                    "(NoCredentialsError: Unable to locate credentials). Fix: give credentials (AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or ~/.aws/credentials)")


@pytest.mark.parametrize("flag", ["--input", "--output"])
def test_a_cloud_path_without_its_filesystem_names_the_extra_to_install_from_the_checkout(
        flag: str, tmp_path: pathlib.Path) -> None:
    paths = {"--input": str(ROOT / "sample"), "--output": str(tmp_path / "o"), flag: "gs://bucket/x/"}
    line = one_line(shards_with("missing", "--input", paths["--input"], "--output", paths["--output"]))
    assert line == (f"finehard shards: error: {flag} gs://bucket/x/: reading gs:// (Google Cloud Storage) needs the "
                    "gcsfs package, which is not installed; from the finehard checkout: pip install -e '.[gcp]'")
