"""A PACS over DICOMweb (dicomweb-client): find instances (QIDO-RS), fetch them (WADO-RS), store SRs (STOW-RS).

    client = connect("dicomweb+http://127.0.0.1:8042/dicom-web")   # user/password from the environment
    refs = query_instances(client, study_uid="1.2.3")               # or modalities=("CR", "DX")
    dataset = retrieve_instance(client, refs[0])                    # InstanceError says why not
    store_instance(client, sr)                                      # InstanceError says why not

Credentials come from $PNEUMO_DICOMWEB_USER and $PNEUMO_DICOMWEB_PASSWORD (HTTP basic auth), never from
the command line, and no message here contains them. Every failure that concerns one instance is an
InstanceError whose message is the reason for that instance; a failure of the query itself (server
refuses, times out, cannot be reached) is a DicomWebError.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session, create_session_from_auth
from pydicom.uid import UID

URL_PREFIX = "dicomweb+"  # dicomweb+http://host:port/dicom-web names a DICOMweb server
USER_ENV, PASSWORD_ENV = "PNEUMO_DICOMWEB_USER", "PNEUMO_DICOMWEB_PASSWORD"
TIMEOUT_S = 30.0  # per HTTP request
RETRIES = 3  # attempts per request when the server answers 408/429/503/504 (dicomweb-client's backoff)
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)  # the instance as stored: no transcoding on the server
# SOP classes that are not images, by the words in their names (pydicom's UID dictionary)
NOT_IMAGE_WORDS = ("SR Storage", "Presentation State", "Key Object", "Report", "Waveform", "Encapsulated", "RT Plan")

SOP_CLASS, SOP_INSTANCE, STUDY, SERIES, MODALITY = "00080016", "00080018", "0020000D", "0020000E", "00080060"


class DicomWebError(RuntimeError):
    """The server could not be asked at all: refused, unreachable, timed out (the message says which)."""


SKIPPED, UNREADABLE, FAILED = "skipped", "unreadable", "failed"  # why an instance has no result


class InstanceError(RuntimeError):
    """One instance cannot be used or stored; the message is the reason, for that instance's row, and
    `status` says which: skipped (not a film), unreadable (no usable pixels), failed (the server)."""

    def __init__(self, reason: str, status: str = FAILED):
        super().__init__(" ".join(reason.split()))  # one line, whatever the decoder's message held
        self.status = status


@dataclass(frozen=True)
class InstanceRef:
    """One instance as QIDO-RS lists it: enough to fetch it and to report on it (no patient data)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str


def server_url(location: str) -> str:
    """dicomweb+http://host:port/dicom-web -> http://host:port/dicom-web (a plain http(s) URL passes)."""
    url = location.removeprefix(URL_PREFIX)
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{location!r} is not a DICOMweb URL: give dicomweb+http://HOST:PORT/PATH")
    return url.rstrip("/")


def is_dicomweb(location: str) -> bool:
    return location.startswith(URL_PREFIX)


def _session(environ: Mapping[str, str]) -> requests.Session:
    user, password = environ.get(USER_ENV), environ.get(PASSWORD_ENV)
    if bool(user) != bool(password):
        missing = PASSWORD_ENV if user else USER_ENV
        raise ValueError(f"${missing} is not set: DICOMweb basic auth needs both ${USER_ENV} and ${PASSWORD_ENV}")
    return create_session_from_auth(requests.auth.HTTPBasicAuth(user, password)) if user else create_session()


def connect(
    location: str, timeout_s: float = TIMEOUT_S, retries: int = RETRIES, environ: Mapping[str, str] = os.environ
) -> DICOMwebClient:
    """A client for the server at `location`, with basic auth when $PNEUMO_DICOMWEB_USER is set."""
    client = DICOMwebClient(server_url(location), session=_session(environ), timeout=timeout_s)
    client.set_http_retry_params(retry=retries > 1, max_attempts=max(retries, 1), wait_exponential_multiplier=200)
    return client


def describe_failure(error: Exception, doing: str) -> str:
    """`doing` failed, in words: the HTTP status and the server's reason, a timeout, no connection."""
    if isinstance(error, requests.HTTPError) and error.response is not None:
        response = error.response
        hint = f" (check ${USER_ENV} and ${PASSWORD_ENV})" if response.status_code in (401, 403) else ""
        detail = response.text.strip().replace("\n", " ")[:200]
        return f"{doing}: the server answered HTTP {response.status_code} {response.reason}{hint}" + (
            f": {detail}" if detail else ""
        )
    if isinstance(error, requests.Timeout):
        return f"{doing}: the server did not answer in time ({type(error).__name__})"
    if isinstance(error, requests.ConnectionError):
        return f"{doing}: the server cannot be reached (connection failed)"
    return f"{doing}: {type(error).__name__}: {error}"


def _value(attributes: dict, tag: str) -> str:
    values = attributes.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _refs(found: Sequence[dict]) -> list[InstanceRef]:
    return [
        InstanceRef(
            _value(item, STUDY),
            _value(item, SERIES),
            _value(item, SOP_INSTANCE),
            _value(item, SOP_CLASS),
            _value(item, MODALITY),
        )  # fmt: skip
        for item in found
    ]


def query_instances(
    client: DICOMwebClient, study_uid: Optional[str] = None, modalities: Sequence[str] = ()
) -> list[InstanceRef]:
    """QIDO-RS: the instances of one study, or of every study with these modalities (one query each).

    An empty list is an answer (a study with no instances); a server that refuses or times out raises
    DicomWebError."""
    if not study_uid and not modalities:
        raise ValueError("query_instances needs a study UID or modalities (e.g. CR, DX)")
    queries = [{"Modality": modality} for modality in modalities] or [{}]
    found: dict[str, InstanceRef] = {}
    for filters in queries:
        try:
            answer = client.search_for_instances(
                study_instance_uid=study_uid, search_filters=filters or None, get_remaining=True
            )
        except (requests.RequestException, ValueError) as error:
            raise DicomWebError(describe_failure(error, f"QIDO-RS query {filters or study_uid}")) from None
        found.update({ref.sop_instance_uid: ref for ref in _refs(answer)})
    return sorted(found.values(), key=lambda ref: (ref.study_uid, ref.series_uid, ref.sop_instance_uid))


def sop_class_name(uid: str) -> str:
    return UID(uid).name if uid else "unknown SOP class"


def not_an_image(sop_class_uid: str) -> Optional[str]:
    """Why an instance of this SOP class is not a film to score (an SR, a presentation state …), else None."""
    name = sop_class_name(sop_class_uid)
    if any(word in name for word in NOT_IMAGE_WORDS):
        return f"not an image ({name})"
    return None


def retrieve_instance(client: DICOMwebClient, ref: InstanceRef) -> pydicom.Dataset:
    """WADO-RS: the instance in its stored transfer syntax. Raises InstanceError with the reason."""
    try:
        dataset = client.retrieve_instance(
            ref.study_uid, ref.series_uid, ref.sop_instance_uid, media_types=ANY_TRANSFER_SYNTAX
        )
    except (requests.RequestException, ValueError, IndexError) as error:
        raise InstanceError(describe_failure(error, "WADO-RS retrieve")) from None
    reason = not_an_image(str(dataset.get("SOPClassUID", ref.sop_class_uid)))
    if reason:
        raise InstanceError(reason, SKIPPED)
    if "PixelData" not in dataset:
        raise InstanceError(f"no pixel data ({sop_class_name(str(dataset.get('SOPClassUID', '')))})", UNREADABLE)
    return dataset


def store_instance(client: DICOMwebClient, dataset: pydicom.Dataset) -> None:
    """STOW-RS one instance into its study. Raises InstanceError with the server's reason."""
    try:
        answer = client.store_instances([dataset], study_instance_uid=dataset.StudyInstanceUID)
    except (requests.RequestException, ValueError) as error:
        raise InstanceError(describe_failure(error, "STOW-RS store")) from None
    failed = answer.get("FailedSOPSequence") or []
    if failed:
        reason = failed[0].get("FailureReason", "unknown")
        raise InstanceError(f"STOW-RS store: the server refused the instance (failure reason {reason})")
