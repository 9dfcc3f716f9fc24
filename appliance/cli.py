"""The `appliance` command: run, check-config, points, --version."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from appliance import __version__
from appliance.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/appliance/site.yaml")

log = logging.getLogger("appliance")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="PV + battery site appliance: acquisition, control, OPC UA server, Modbus slave.",
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (default: the config's logging.level, else INFO)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="start the appliance (Ctrl-C or SIGTERM stops it)")
    run.add_argument(
        "--config",
        type=Path,
        help=f"site configuration file (default {DEFAULT_CONFIG}; the built-in simulated site with --simulate)",
    )
    run.add_argument(
        "--simulate",
        action="store_true",
        help="also start the simulated site: a plant model whose devices speak their real protocols on loopback",
    )

    check = commands.add_parser("check-config", help="validate a site configuration and exit")
    check.add_argument("file", type=Path, nargs="?", default=DEFAULT_CONFIG)

    points = commands.add_parser("points", help="print the point table")
    points.add_argument("--format", choices=["table", "csv", "markdown"], default="table")
    points.add_argument(
        "--nodes", type=int, default=1, help="battery nodes and inverters to list (default 1)"
    )
    health = commands.add_parser(
        "health",
        help="check a running appliance through its own metrics endpoint (exit code 0: healthy)",
    )
    health.add_argument(
        "--url",
        default="http://127.0.0.1:9464/metrics",
        help="the appliance's metrics endpoint (default %(default)s)",
    )
    health.add_argument(
        "--interval",
        type=float,
        default=1.5,
        help="seconds between the two scrapes, above control.loop_interval_s (default %(default)s)",
    )
    health.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds to wait for each scrape (default %(default)s)",
    )
    health.add_argument(
        "--accept-degraded",
        action="store_true",
        help="count a degraded appliance (a device down) as healthy",
    )
    health.add_argument("--site", help="the site id the endpoint must answer for")
    return parser


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level,
        format="%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s",
    )


def cmd_check_config(path: Path) -> int:
    from appliance.config import load_config  # noqa: PLC0415 - keep `appliance points` light

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"{exc}", file=sys.stderr)
        return 1
    nodes = len(config.devices.battery_nodes)
    print(f"{path}: ok (site '{config.site.id}', {nodes} battery node(s))")
    return 0


def cmd_points(fmt: str, nodes: int) -> int:
    from appliance.points.docs import render_csv, render_markdown  # noqa: PLC0415
    from appliance.points.table import shipped_point_table  # noqa: PLC0415

    full = shipped_point_table()
    if fmt == "markdown":
        print(render_markdown(full), end="")
        return 0
    if fmt == "csv":
        print(render_csv(full), end="")
        return 0
    table = full.for_site({"battery": nodes, "inverter": nodes, "surplus": min(nodes, 8)})
    print(f"{'id':38} {'unit':5} {'type':9} {'access':10} {'modbus':>6}  opcua")
    for point in table:
        address = str(point.modbus.address) if point.modbus else "-"
        print(
            f"{point.id:38} {point.unit:5} {point.type.value:9} {point.access.value:10} "
            f"{address:>6}  {point.opcua_node_id}"
        )
    return 0


def cmd_run(config_path: Path | None, simulate: bool, log_level: str | None) -> int:
    from appliance.config import load_config, simulated_site_config  # noqa: PLC0415
    from appliance.runtime.app import run_appliance  # noqa: PLC0415

    try:
        if config_path is not None:
            config = load_config(config_path)
        elif simulate:
            config = simulated_site_config()
        elif DEFAULT_CONFIG.exists():
            config = load_config(DEFAULT_CONFIG)
        else:
            print(
                f"no configuration at {DEFAULT_CONFIG}: pass --config FILE, "
                "or --simulate to run the built-in simulated site",
                file=sys.stderr,
            )
            return 2
    except ConfigError as exc:
        print(f"{exc}", file=sys.stderr)
        return 1
    if simulate and config.simulation is None:
        print(
            "--simulate needs a 'simulation' section in the configuration "
            "(the built-in simulated site has one)",
            file=sys.stderr,
        )
        return 2
    setup_logging(log_level or config.logging.level)
    return run_appliance(config, simulate=simulate)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check-config":
            return cmd_check_config(args.file)
        if args.command == "points":
            return cmd_points(args.format, args.nodes)
        if args.command == "health":
            from appliance.health import cmd_health  # noqa: PLC0415

            return cmd_health(
                args.url, args.interval, args.timeout, args.accept_degraded, args.site
            )
    except BrokenPipeError:
        # `appliance points | head` closed the pipe early; that is not an error.
        sys.stderr.close()
        return 0
    return cmd_run(args.config, args.simulate, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
