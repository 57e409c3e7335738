"""A minute of `pneumo serve` under 32 clients with 20% hostile bodies (bench/soak.py, 10 minutes there).

Timing targets (the p99 drift) stay in the benchmark; this test holds what must never happen under
load: a server error other than Serve's deliberate 503, a client left without an answer, a bad body
answered with anything but a 4xx, or the replica's memory growing after warm-up."""

import pytest

from bench.soak import MEMORY_GROWTH_LIMIT, run

pytestmark = pytest.mark.slow


def test_a_minute_of_load_with_hostile_bodies():
    report = run(duration_s=60, clients=32, bad_share=0.2, model="resnet10t", image_size=64)
    holds = report["holds"]
    assert report["statuses"].get("200", 0) > 0 and report["bad_body_statuses"], report
    assert holds["no_5xx_but_503"] and holds["every_request_answered"], (report["statuses"], report["unanswered"])
    assert holds["bad_bodies_get_4xx"], report["bad_body_statuses"]
    assert report["replica_rss_mb"]["growth"] <= MEMORY_GROWTH_LIMIT, report["replica_rss_mb"]
