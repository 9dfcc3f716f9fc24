"""`appliance health`: the verdict from two scrapes, against a real metrics endpoint on loopback."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry

from appliance.config import simulated_site_config
from appliance.health import (
    MetricNames,
    Scrape,
    ScrapeError,
    check_health,
    cmd_health,
    evaluate,
    main,
    metric_names,
    parse_scrape,
)
from appliance.northbound.metrics import PointCollector
from appliance.runtime.site_table import site_point_table
from appliance.store import Quality, Sample

# --------------------------------------------------------------------------- pure verdicts


def _scrape(status: str | None, alive: float | None) -> Scrape:
    return Scrape(status=status, alive_counter=alive, site="s1")


@pytest.mark.parametrize(
    ("first", "second", "accept_degraded", "ok", "words"),
    [
        (
            _scrape("running", 10),
            _scrape("running", 13),
            False,
            True,
            "ok: site 's1' running, alive counter 10 -> 13",
        ),
        (
            _scrape("running", 10),
            _scrape("running", 10),
            False,
            False,
            "stayed at 10 for 1.5 s: the control core is frozen",
        ),
        (_scrape("running", 10), _scrape("running", 2), False, False, "went back from 10 to 2"),
        (
            _scrape("degraded", 10),
            _scrape("degraded", 13),
            False,
            False,
            "is degraded (a device is down",
        ),
        (_scrape("degraded", 10), _scrape("degraded", 13), True, True, "ok: site 's1' degraded"),
        (_scrape("starting", 1), _scrape("starting", 3), True, False, "is starting"),
        (_scrape("stopping", 1), _scrape("stopping", 3), False, False, "is stopping"),
        (_scrape(None, 1), _scrape(None, 3), False, False, "publishes no status"),
        (
            _scrape("running", None),
            _scrape("running", 3),
            False,
            False,
            "publishes no alive counter",
        ),
        (
            _scrape("running", 4),
            _scrape("running", None),
            False,
            False,
            "publishes no alive counter",
        ),
    ],
)
def test_evaluate(
    first: Scrape, second: Scrape, accept_degraded: bool, ok: bool, words: str
) -> None:
    report = evaluate(first, second, 1.5, accept_degraded=accept_degraded)
    assert report.ok is ok
    assert report.text.startswith("ok: " if ok else "problem: ")
    assert words in report.text


def test_evaluate_refuses_another_site_on_the_port() -> None:
    healthy = (_scrape("running", 1), _scrape("running", 2))
    assert evaluate(*healthy, 1.5, expected_site="s1").ok
    other = evaluate(*healthy, 1.5, expected_site="hof")
    assert not other.ok
    assert other.text == "problem: the endpoint answers for site 's1', not 'hof'"


NAMES = MetricNames("x_status", "x_cycles_total", {0: "starting", 1: "running", 2: "degraded"})


def test_parse_scrape_reads_a_state_set_the_counter_and_the_site() -> None:
    text = (
        "# TYPE x_cycles counter\n"
        'x_cycles_total{site="hof"} 42.0\n'
        "# TYPE x_status gauge\n"
        'x_status{site="hof",state="starting"} 0.0\n'
        'x_status{site="hof",state="running"} 0.0\n'
        'x_status{site="hof",state="degraded"} 1.0\n'
        'appliance_grid_active_power_watts{site="hof"} 17.0\n'
    )
    assert parse_scrape(text, NAMES) == Scrape(status="degraded", alive_counter=42.0, site="hof")
    assert parse_scrape("", NAMES) == Scrape(status=None, alive_counter=None, site=None)


def test_parse_scrape_reads_a_plain_gauge_status_by_its_code() -> None:
    assert parse_scrape('x_status{site="a"} 1.0\n', NAMES).status == "running"
    assert parse_scrape('x_status{site="a"} 7.0\n', NAMES).status == "unknown (7)"


@pytest.mark.parametrize(
    "body", ["<html>not metrics</html>", "garbage garbage garbage", "x_status +Inf"]
)
def test_parse_scrape_rejects_what_is_not_the_text_format(body: str) -> None:
    with pytest.raises(ScrapeError, match="not in the Prometheus text format"):
        parse_scrape(body, NAMES)


def test_metric_names_come_from_the_metrics_face() -> None:
    names = metric_names()
    assert names.status.startswith("appliance_")
    assert names.alive.endswith("_total")
    assert names.states[1] == "running"


# --------------------------------------------------------------------------- real endpoint


@dataclass
class Endpoint:
    """The appliance's own PointCollector behind prometheus_client's HTTP server."""

    url: str
    mirror: dict[str, Sample] = field(default_factory=dict)

    def publish(
        self, status: int | None, alive: int | None, quality: Quality = Quality.GOOD
    ) -> None:
        for point, value in (("appliance.status", status), ("appliance.alive_counter", alive)):
            if value is None:
                self.mirror.pop(point, None)
            else:
                self.mirror[point] = Sample(value, 1.7e9, quality, 0.0)


@pytest.fixture(scope="module")
def _served_endpoint() -> Iterator[Endpoint]:
    config = simulated_site_config()
    mirror: dict[str, Sample] = {}
    registry = CollectorRegistry(auto_describe=True)
    registry.register(PointCollector(site_point_table(config), mirror, config.site.id))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield Endpoint(f"http://127.0.0.1:{server.server_port}/metrics", mirror)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def endpoint(_served_endpoint: Endpoint) -> Endpoint:
    """One server for the module (its shutdown takes 0.5 s); each test starts with no samples."""
    _served_endpoint.mirror.clear()
    return _served_endpoint


def test_healthy_appliance_through_the_real_metrics_face(endpoint: Endpoint) -> None:
    endpoint.publish(status=1, alive=100)
    # The injected sleep is where the core would cycle: the counter moves between the scrapes.
    report = check_health(endpoint.url, sleep=lambda _s: endpoint.publish(status=1, alive=103))
    assert report.ok, report.text
    assert report.text == "ok: site 'simulated' running, alive counter 100 -> 103 in 1.5 s"
    assert report.site == "simulated"
    assert report.status == "running"


def test_frozen_core_is_a_problem(endpoint: Endpoint) -> None:
    endpoint.publish(status=1, alive=100)
    report = check_health(endpoint.url, sleep=lambda _s: None)
    assert not report.ok
    assert "alive counter stayed at 100" in report.text


def test_stale_status_disappears_from_the_scrape_and_is_a_problem(endpoint: Endpoint) -> None:
    endpoint.publish(status=1, alive=100, quality=Quality.STALE)
    report = check_health(endpoint.url, sleep=lambda _s: endpoint.publish(1, 101, Quality.STALE))
    assert not report.ok
    assert "publishes no status" in report.text


def test_degraded_is_a_problem_unless_accepted(endpoint: Endpoint) -> None:
    endpoint.publish(status=2, alive=5)
    strict = check_health(endpoint.url, sleep=lambda _s: endpoint.publish(2, 6))
    endpoint.publish(status=2, alive=6)
    lenient = check_health(
        endpoint.url, accept_degraded=True, sleep=lambda _s: endpoint.publish(2, 7)
    )
    assert not strict.ok
    assert "degraded" in strict.text
    assert lenient.ok, lenient.text


def test_cmd_health_prints_and_exits_by_verdict(
    endpoint: Endpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint.publish(status=1, alive=1)
    # A real 0.6 s wait: the endpoint does not change by itself, so this is a frozen core.
    assert cmd_health(endpoint.url, 0.6, 2.0, accept_degraded=False) == 1
    err = capsys.readouterr().err
    assert "problem:" in err
    assert "stayed at 1 for 0.6 s" in err


def test_main_parses_the_cli_options(
    endpoint: Endpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint.publish(status=1, alive=1)
    argv = ["--url", endpoint.url, "--interval", "0.1", "--timeout", "2", "--site", "other"]
    assert main([*argv, "--accept-degraded"]) == 1
    assert "answers for site 'simulated', not 'other'" in capsys.readouterr().err


# --------------------------------------------------------------------------- broken endpoints


@dataclass
class Answer:
    """What the fake endpoint answers to every GET."""

    url: str = ""
    code: int = 200
    body: bytes = b""


@pytest.fixture
def answering() -> Iterator[Answer]:
    answer = Answer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answer.code)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test output is not the place for access logs."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    answer.url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        yield answer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_error_is_a_problem(answering: Answer) -> None:
    answering.code = 503
    report = check_health(answering.url, sleep=lambda _s: None)
    assert not report.ok
    assert "HTTP 503" in report.text


def test_garbage_body_is_a_problem(answering: Answer) -> None:
    answering.body = b"<html>login</html>\n"
    report = check_health(answering.url, sleep=lambda _s: None)
    assert not report.ok
    assert "not in the Prometheus text format" in report.text


def test_nobody_listening_is_a_problem() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port was free a moment ago and nothing listens on it now.
    report = check_health(f"http://127.0.0.1:{port}/metrics", timeout_s=2.0)
    assert not report.ok
    assert report.text.startswith(f"problem: cannot read http://127.0.0.1:{port}/metrics: ")


def test_only_http_urls_are_read() -> None:
    report = check_health("file:///etc/passwd", sleep=lambda _s: None)
    assert not report.ok
    assert "is not an http:// or https:// URL" in report.text
