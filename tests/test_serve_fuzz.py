"""schemathesis against the served /openapi.json: no server errors, answers as documented, and the
schema states what the endpoint accepts (required fields, item counts, content types, error bodies).

Seeded (derandomized) and bounded in examples per operation. The one thing a schema cannot say is
whether bytes decode as a chest film: a schema-valid request may be refused with 400, but only for
its image content (the check below), never for its structure — which is how the endpoint once
refused a /predict/batch body without `files` that its schema allowed.
"""

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

pytestmark = pytest.mark.slow

IMAGE_FIELD = re.compile(r"^(body|file|files\[\d+\])$")  # where an unusable image is reported
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            # 400 for a schema-valid body is judged by refused_only_for_its_pixels
            # 422 for a schema-valid image the out-of-distribution gate refuses (the API description says so)
            # 415 for an SR asked of a film that is not DICOM (judged by refused_only_for_its_pixels)
            "positive_data_acceptance": {"expected-statuses": ["2XX", 400, 401, 404, 415, 422, 503]},
            # more files than the schema's maxItems is 422 like every other input the schema forbids
            "negative_data_rejection": {"expected-statuses": [400, 401, 404, 415, 422]},
        }
    }
)


@schemathesis.check
def refused_only_for_its_pixels(ctx, response, case):
    """A schema-valid request refused with 400 names an image part and an image-content reason; with 415
    it asked an SR (?format=dicom-sr) of a film that is not DICOM."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code not in (400, 415):
        return None
    if response.status_code == 415:
        assert (case.query or {}).get("format") == "dicom-sr", (
            f"a schema-valid upload refused for its type: {response.text}"
        )
        return None
    body = response.json()
    assert IMAGE_FIELD.match(body.get("field") or ""), f"schema-valid request refused for its structure: {body}"
    assert "empty" not in body["error"], f"the schema allows what is refused: {body}"
    return None


@pytest.fixture(scope="module")
def served_schema(serve_app):
    return schemathesis.openapi.from_url(f"{serve_app.url}/openapi.json", config=CONFIG)


schema = schemathesis.pytest.from_fixture("served_schema")


@schema.parametrize()
@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_served_schema_states_the_truth(case):
    case.call_and_validate(timeout=30, additional_checks=[refused_only_for_its_pixels])
