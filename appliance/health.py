"""Is a running appliance healthy? Asked through its own Prometheus metrics endpoint.

Two scrapes `interval_s` apart: the appliance is healthy when its status point
(`appliance.status`) says running and its alive counter (`appliance.alive_counter`), which
the control core increments every cycle, went up between them. The metric names come from
the metrics face (`appliance.northbound.metrics.metric_name`), so they follow it when it
renames them; the status is read both as a state set (one series per state, 1 for the
current one) and as a plain gauge holding the state's code. The face exports only good
samples, so a frozen core shows as a counter that stops moving, a stale status as a
missing one.

    report = check_health("http://127.0.0.1:9464/metrics")
    report.ok, report.text

The fleet playbooks (ansible/upgrade.yml, ansible/check.yml) run this on each appliance as
``python -m appliance.health`` (the same as ``appliance health``); exit code 0 means healthy.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

DEFAULT_URL = "http://127.0.0.1:9464/metrics"
STATUS_POINT = "appliance.status"
ALIVE_POINT = "appliance.alive_counter"
RUNNING, DEGRADED = "running", "degraded"


@dataclass(frozen=True)
class MetricNames:
    """Where the two points appear in a scrape, and the status point's states by code."""

    status: str
    alive: str
    states: Mapping[int, str]


@functools.cache
def metric_names() -> MetricNames:
    """The names the metrics face gives the status and alive-counter points."""
    # Imported here: the point table takes a few hundred ms to load, `--help` need not wait.
    from appliance.northbound.metrics import metric_name  # noqa: PLC0415
    from appliance.points.table import shipped_point_table  # noqa: PLC0415

    table = shipped_point_table()
    status, alive = table[STATUS_POINT], table[ALIVE_POINT]
    # prometheus_client adds _total to a counter's samples.
    return MetricNames(metric_name(status), metric_name(alive) + "_total", dict(status.states))


@dataclass(frozen=True)
class Scrape:
    """The two values the health check needs from one scrape (None: not in the scrape)."""

    status: str | None
    alive_counter: float | None
    site: str | None


@dataclass(frozen=True)
class HealthReport:
    ok: bool
    #: One line for a person: "ok: ..." or "problem: ...".
    text: str
    status: str | None = None
    site: str | None = None


class ScrapeError(Exception):
    """The endpoint could not be read or did not answer in the exposition format."""


def fetch_metrics(url: str, timeout_s: float) -> str:
    """The body of a GET on `url`; raises ScrapeError on any transport or HTTP problem."""
    if not url.startswith(("http://", "https://")):
        raise ScrapeError(f"{url!r} is not an http:// or https:// URL")
    try:
        # The scheme is checked above: no file:// or custom openers reach urlopen.
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            body: bytes = response.read()
    except urllib.error.HTTPError as exc:
        raise ScrapeError(f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise ScrapeError(str(exc.reason)) from exc
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed URL
        raise ScrapeError(str(exc) or type(exc).__name__) from exc
    return body.decode("utf-8", errors="replace")


def parse_scrape(text: str, names: MetricNames | None = None) -> Scrape:
    """Pick the status and the alive counter out of a scrape in the Prometheus text format."""
    names = names or metric_names()
    status: str | None = None
    alive: float | None = None
    site: str | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == names.status:
                    state = sample.labels.get("state")
                    if state is None:  # a plain gauge holding the state's code
                        code = int(sample.value)
                        status = names.states.get(code, f"unknown ({code})")
                    elif sample.value == 1:  # a state set: the current state's series is 1
                        status = state
                    site = site or sample.labels.get("site")
                elif sample.name == names.alive and alive is None:
                    alive = float(sample.value)
                    site = site or sample.labels.get("site")
    except (ValueError, OverflowError) as exc:  # OverflowError: a status of +Inf
        raise ScrapeError(f"not in the Prometheus text format: {exc}") from exc
    return Scrape(status=status, alive_counter=alive, site=site)


def evaluate(
    first: Scrape,
    second: Scrape,
    interval_s: float,
    *,
    accept_degraded: bool = False,
    expected_site: str | None = None,
) -> HealthReport:
    """The verdict from two scrapes taken `interval_s` apart (pure logic).

    With `expected_site`, an endpoint answering for another site is a problem: another
    appliance on the same port must not pass for this one.
    """
    site = second.site or first.site
    where = f"site {site!r}" if site else "the appliance"
    status = second.status
    problem = _status_problem(where, site, status, accept_degraded, expected_site)
    if problem is None:
        problem = _counter_problem(where, first.alive_counter, second.alive_counter, interval_s)
    if problem is not None:
        return HealthReport(False, f"problem: {problem}", status, site)
    return HealthReport(
        True,
        f"ok: {where} {status}, alive counter {first.alive_counter:.0f} -> "
        f"{second.alive_counter:.0f} in {interval_s:g} s",
        status,
        site,
    )


def _status_problem(
    where: str,
    site: str | None,
    status: str | None,
    accept_degraded: bool,
    expected_site: str | None,
) -> str | None:
    if expected_site is not None and site is not None and site != expected_site:
        return f"the endpoint answers for site {site!r}, not {expected_site!r}"
    if status is None:
        return f"{where} publishes no status (starting, or its status is stale)"
    if status == RUNNING or (accept_degraded and status == DEGRADED):
        return None
    hint = " (a device is down or a face is restarting)" if status == DEGRADED else ""
    return f"{where} is {status}{hint}"


def _counter_problem(
    where: str, before: float | None, after: float | None, interval_s: float
) -> str | None:
    if before is None or after is None:
        return f"{where} publishes no alive counter: the control core is not cycling"
    if after < before:
        return (
            f"{where} alive counter went back from {before:.0f} to {after:.0f}: "
            "the appliance restarted between the two reads"
        )
    if after == before:
        return (
            f"{where} alive counter stayed at {before:.0f} for {interval_s:g} s: "
            "the control core is frozen"
        )
    return None


def check_health(
    url: str = DEFAULT_URL,
    *,
    interval_s: float = 1.5,
    timeout_s: float = 5.0,
    accept_degraded: bool = False,
    expected_site: str | None = None,
    fetch: Callable[[str, float], str] = fetch_metrics,
    sleep: Callable[[float], None] = time.sleep,
) -> HealthReport:
    """Scrape `url` twice, `interval_s` apart, and say whether the appliance is healthy.

    `interval_s` must be longer than the site's control.loop_interval_s (0.5 s by default),
    or a healthy core may not have cycled between the two scrapes. Never raises for an
    unreachable or broken endpoint: that is a problem report.
    """
    try:
        first = parse_scrape(fetch(url, timeout_s))
        sleep(interval_s)
        second = parse_scrape(fetch(url, timeout_s))
    except ScrapeError as exc:
        return HealthReport(False, f"problem: cannot read {url}: {exc}")
    return evaluate(
        first, second, interval_s, accept_degraded=accept_degraded, expected_site=expected_site
    )


def cmd_health(
    url: str,
    interval_s: float,
    timeout_s: float,
    accept_degraded: bool,
    expected_site: str | None = None,
) -> int:
    """`appliance health`: print the one-line report; exit code 0 healthy, 1 not."""
    report = check_health(
        url,
        interval_s=interval_s,
        timeout_s=timeout_s,
        accept_degraded=accept_degraded,
        expected_site=expected_site,
    )
    stream = sys.stdout if report.ok else sys.stderr
    stream.write(report.text + "\n")
    return 0 if report.ok else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `appliance health` (and of `python -m appliance.health`)."""
    parser.add_argument(
        "--url",
        default=DEFAULT_URL,
        help=f"the appliance's metrics endpoint (default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.5,
        help="seconds between the two scrapes; above control.loop_interval_s (default 1.5)",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for each scrape (default 5)"
    )
    parser.add_argument(
        "--accept-degraded",
        action="store_true",
        help="count a degraded appliance (a device down) as healthy",
    )
    parser.add_argument(
        "--site",
        help="the site id the endpoint must answer for (another appliance on the port fails)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.health",
        description="Check a running appliance through its Prometheus metrics endpoint.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return cmd_health(args.url, args.interval, args.timeout, args.accept_degraded, args.site)


if __name__ == "__main__":
    sys.exit(main())
