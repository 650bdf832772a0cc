"""The SLO controller in a real server over gRPC: requests held past the target make it cut
the admission limit on its own timer; the next call is refused with RESOURCE_EXHAUSTED,
naming the SLO, while the held ones stream to the end; its decisions are metrics.
"""

from __future__ import annotations

import pytest
from harness import small_model
from live_server import LiveServer, e2e_config
from test_metrics import CALL_TIMEOUT_S, scrape, value

from batchmaker.config import ServerConfig
from batchmaker.errors import AdmissionRejectedError

TARGET_S = 0.05


def test_held_requests_past_the_target_cut_admission_and_the_rest_still_stream() -> None:
    model = small_model("lstm", name="m", seed=7)
    config = e2e_config(slo_p99_s=TARGET_S, max_num_live_requests=16)
    server = ServerConfig(port=0, warmup=False, metrics_port=0)
    with LiveServer(models=[model], config=config, server_config=server, gated=True) as live:
        url = live.server.metrics_url
        assert url is not None
        slo = live.server.engine.slo
        assert slo is not None
        client = live.client()
        held = [client.infer_stream("m", [1, 2, 3], timeout=CALL_TIMEOUT_S) for _ in range(4)]
        live.wait_until(lambda: live.server.engine.num_live == 4)
        # The gate holds them; within a few of the controller's quarter-second updates
        # they are live past the target, and it cuts the limit to half the live count.
        live.wait_until(lambda: slo.live_limit == 2)
        with pytest.raises(AdmissionRejectedError, match="SLO controller"):
            client.infer("m", [1], timeout=CALL_TIMEOUT_S)
        live.call(live.gate.open)  # type: ignore[union-attr]
        for stream in held:
            assert len(stream.collect().steps) == 3
        live.wait_idle()
        got = scrape(url)
        assert value(got, "batchmaker_slo_target_seconds") == TARGET_S
        assert value(got, "batchmaker_slo_live_limit") == 2
        assert value(got, "batchmaker_slo_rejected_total") == 1
        assert value(got, "batchmaker_slo_completed_total") == 4
        assert value(got, "batchmaker_slo_over_total") == 4
        assert value(got, "batchmaker_slo_changes_total") >= 1
        assert value(got, "batchmaker_slo_max_steps_per_plan") >= 1
        # Under the new limit the server goes on serving.
        assert len(client.infer("m", [4, 5], timeout=CALL_TIMEOUT_S).steps) == 2


def test_without_a_target_there_are_no_slo_series() -> None:
    server = ServerConfig(port=0, warmup=False, metrics_port=0)
    with LiveServer(models=[small_model("gru", name="g", seed=1)], server_config=server) as live:
        url = live.server.metrics_url
        assert url is not None
        assert not [k for k in scrape(url) if k[0].startswith("batchmaker_slo_")]
