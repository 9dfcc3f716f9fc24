"""The site configuration: one YAML file, checked hard, with errors a site engineer can act on.

    from appliance.config import load_config, simulated_site_config
    cfg = load_config("/etc/appliance/site.yaml")   # -> SiteConfig, or ConfigError

Every problem raises `appliance.errors.ConfigError` (as `ConfigValidationError`, which also
carries the list `problems`); each line names the file, the field path, the offending value
and what is allowed.
"""

from appliance.config.loader import (
    EXAMPLE_SITE,
    SIMULATED_SITE,
    builtin_site,
    device_map_path,
    load_config,
    load_config_text,
    models_root,
    simulated_site_config,
)
from appliance.config.schema import (
    ArchiveConfig,
    BatteryLimits,
    BatteryNodeConfig,
    BmsConfig,
    CanConnection,
    Connection,
    ControlConfig,
    DevicesConfig,
    FacesConfig,
    InfluxConfig,
    InverterConfig,
    LocalArchiveConfig,
    LoggingConfig,
    MeterConfig,
    MetricsFace,
    ModbusConnection,
    ModbusFace,
    ModbusRtuFace,
    OpcUaFace,
    SerialConnection,
    SimulationConfig,
    SiteConfig,
    SiteInfo,
    SpoolConfig,
    SurplusLoadConfig,
    TcpConnection,
    UserConfig,
    ZigbeeConnection,
)
from appliance.config.users import hash_password, verify_password
from appliance.config.validate import ConfigValidationError, Problem

__all__ = [
    "EXAMPLE_SITE",
    "SIMULATED_SITE",
    "ArchiveConfig",
    "BatteryLimits",
    "BatteryNodeConfig",
    "BmsConfig",
    "CanConnection",
    "ConfigValidationError",
    "Connection",
    "ControlConfig",
    "DevicesConfig",
    "FacesConfig",
    "InfluxConfig",
    "InverterConfig",
    "LocalArchiveConfig",
    "LoggingConfig",
    "MeterConfig",
    "MetricsFace",
    "ModbusConnection",
    "ModbusFace",
    "ModbusRtuFace",
    "OpcUaFace",
    "Problem",
    "SerialConnection",
    "SimulationConfig",
    "SiteConfig",
    "SiteInfo",
    "SpoolConfig",
    "SurplusLoadConfig",
    "TcpConnection",
    "UserConfig",
    "ZigbeeConnection",
    "builtin_site",
    "device_map_path",
    "hash_password",
    "load_config",
    "load_config_text",
    "models_root",
    "simulated_site_config",
    "verify_password",
]
