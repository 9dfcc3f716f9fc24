"""The point table of one configured site: the shipped table narrowed to its nodes and loads."""

from __future__ import annotations

from appliance.config.schema import SiteConfig
from appliance.points.table import PointTable, shipped_point_table

MAX_SURPLUS_LOADS = 8


def site_point_table(config: SiteConfig) -> PointTable:
    nodes = len(config.devices.battery_nodes)
    loads = min(len(config.devices.surplus_loads), MAX_SURPLUS_LOADS)
    return shipped_point_table().for_site({"battery": nodes, "inverter": nodes, "surplus": loads})
