"""Exception types raised by fedkd."""


class FedKDError(Exception):
    """Base class for all fedkd errors."""


class ConfigError(FedKDError, ValueError):
    """An invalid configuration value; the message names the config key."""
