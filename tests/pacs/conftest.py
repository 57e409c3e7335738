"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin, on loopback, with its own
config, storage and port, and a user to log in with (films to put in it: films.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests

from pneumo.cli.ray_start import free_local_port
from pneumo.pacs.dicomweb import PASSWORD_ENV, USER_ENV
from pneumo.pacs.sr import part10_bytes

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_USER, ORTHANC_PASSWORD = "reader", "pacs-test-secret-7f3a"  # only this test server knows them
START_TIMEOUT_S = 30


@dataclass
class Orthanc:
    url: str  # http://127.0.0.1:PORT (Orthanc's REST API)
    dicomweb: str  # dicomweb+http://127.0.0.1:PORT/dicom-web, as pneumo takes it
    environ: dict[str, str]  # the credentials as pneumo reads them ($PNEUMO_DICOMWEB_USER/PASSWORD)
    log: Path  # Orthanc's own log

    @property
    def auth(self) -> tuple[str, str]:
        return ORTHANC_USER, ORTHANC_PASSWORD

    def upload(self, dataset: pydicom.Dataset) -> None:
        """POST /instances: the way a modality's files arrive (not through pneumo's code)."""
        answer = requests.post(f"{self.url}/instances", data=part10_bytes(dataset), auth=self.auth, timeout=30)
        assert answer.status_code == 200, answer.text


def _wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"Orthanc exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if requests.get(f"{url}/system", auth=(ORTHANC_USER, ORTHANC_PASSWORD), timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"Orthanc did not answer in {START_TIMEOUT_S} s:\n{log.read_text()[-2000:]}")


@pytest.fixture
def dead_dicomweb() -> str:
    """The DICOMweb URL of a PACS that is down: a loopback port nobody listens at."""
    return f"dicomweb+http://127.0.0.1:{free_local_port()}/dicom-web"


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory) -> Iterator[Orthanc]:
    """Debian's Orthanc (apt-get install orthanc orthanc-dicomweb; .ci/run installs them) on 127.0.0.1
    with DICOMweb, its own storage and free ports, and basic auth for one user."""
    if ORTHANC is None or not DICOMWEB_PLUGIN.exists():
        pytest.skip("PACS tests need Orthanc with DICOMweb: apt-get install -y orthanc orthanc-dicomweb")
    root = tmp_path_factory.mktemp("orthanc")
    port = free_local_port()
    config = {
        "Name": "pneumo-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,  # DICOMweb only: no DIMSE port to collide with
        "RemoteAccessAllowed": False,  # loopback only
        "AuthenticationEnabled": True,
        "RegisteredUsers": {ORTHANC_USER: ORTHANC_PASSWORD},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = root / "orthanc.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [ORTHANC, str(root / "orthanc.json")], stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process, log)
        environ = {**os.environ, USER_ENV: ORTHANC_USER, PASSWORD_ENV: ORTHANC_PASSWORD}
        yield Orthanc(url, f"dicomweb+{url}/dicom-web", environ, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
