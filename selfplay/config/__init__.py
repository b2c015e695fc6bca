"""Typed run configuration: one pydantic schema, YAML recipes, ``--set`` overrides."""

from selfplay.config.load import ConfigError, apply_overrides, dump_config, load_config
from selfplay.config.schema import RunConfig

__all__ = ["ConfigError", "RunConfig", "apply_overrides", "dump_config", "load_config"]
