"""Build pneumo's image here, where no registry can be pulled from: Debian's buildah builds the root
Containerfile (chroot isolation) FROM a Debian bookworm made with debootstrap, standing in for
python:3.11-slim-bookworm. Both stay in buildah's store (/var/lib/containers/storage) between runs.

    python tests/deploy/image_build.py          # the base if missing, then the image (cached layers reused)

pip inside the build reaches the package index through this network's CA (mounted, named by
PIP_CERT) and this machine's local index mirrors (mounted, named by PIP_EXTRA_INDEX_URL): pip's own
environment variables, declared as ARGs in the Containerfile, so nothing of them stays in the image.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
BASE_TAG = "localhost/pneumo-test-base:bookworm"  # the Containerfile's BASE_IMAGE in the tests
FLAVOR = "cuda"  # the flavour whose torch this machine has offline (PyPI's, with its CUDA libraries)
MIRROR = "http://deb.debian.org/debian"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
LOCAL_INDEXES = [Path("/opt/pypi"), Path("/opt/pypi-more")]  # this machine's local PyPI mirrors, when present


def buildah(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *args], check=check, text=True, capture_output=capture)


def image_exists(tag: str) -> bool:
    return buildah("inspect", "--type", "image", tag, check=False).returncode == 0


def image_tag() -> str:
    """The image's tag, keyed by what its slow layers are made of (the Containerfile, requirements.lock and
    pyproject.toml's name, version and runtime dependencies, as its stand-in stage reads them): a build
    with this tag in the store means the next build only redoes the code layers."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    digest = hashlib.sha256()
    for name in ("Containerfile", "requirements.lock"):
        digest.update((REPO / name).read_bytes())
    digest.update(json.dumps([project[key] for key in ("name", "version", "dependencies")]).encode())
    return f"localhost/pneumo-test:{FLAVOR}-{digest.hexdigest()[:12]}"


def ensure_base() -> float:
    """debootstrap bookworm (minbase) committed as BASE_TAG, once; returns seconds spent."""
    if image_exists(BASE_TAG):
        return 0.0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pneumo-base-", dir="/var/tmp") as scratch:
        root = Path(scratch) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), MIRROR],
            check=True,
            capture_output=True,
        )
        tarball = Path(scratch) / "root.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "."], check=True)
        container = buildah("from", "scratch").stdout.strip()
        try:
            buildah("add", container, str(tarball), "/")
            buildah(
                "config",
                "--cmd",
                "/bin/bash",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                container,
            )
            buildah("commit", "--rm", container, BASE_TAG)
        except BaseException:
            buildah("rm", container, check=False)
            raise
    return time.monotonic() - started


def build_args() -> list[str]:
    """`buildah bud` arguments that let pip inside the build use this machine's CA and local mirrors."""
    args = ["--build-arg", f"BASE_IMAGE={BASE_TAG}", "--build-arg", f"FLAVOR={FLAVOR}"]
    if HOST_CA.exists():
        args += ["-v", f"{HOST_CA}:/etc/ssl/host-ca.crt:ro", "--build-arg", "PIP_CERT=/etc/ssl/host-ca.crt"]
    indexes = [index for index in LOCAL_INDEXES if (index / "simple").is_dir()]
    for index in indexes:
        args += ["-v", f"{index}:{index}:ro"]
    if indexes:
        urls = " ".join(f"file://{index}/simple" for index in indexes)
        args += ["--build-arg", f"PIP_EXTRA_INDEX_URL={urls}"]
    return args


def build_image(tag: str, log=None) -> float:
    """`buildah bud` of the root Containerfile into `tag` (layers cached); returns seconds spent."""
    started = time.monotonic()
    subprocess.run(
        [
            "buildah",
            "bud",
            "--isolation",
            "chroot",
            "--layers",
            "--format",
            "docker",
            *build_args(),
            "-t",
            tag,
            "-f",
            "Containerfile",
            ".",
        ],
        cwd=REPO,
        check=True,
        stdout=log or subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return time.monotonic() - started


def tools_missing() -> list[str]:
    return [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]


if __name__ == "__main__":
    if missing := tools_missing():
        sys.exit(f"missing: {' '.join(missing)} (apt-get install -y buildah debootstrap)")
    print(f"base {BASE_TAG}: {ensure_base():.0f} s", flush=True)
    tag = image_tag()
    print(f"image {tag}: {build_image(tag, sys.stdout):.0f} s", flush=True)
