"""Hydra/OmegaConf glue: compose the run config, validate it, build objects from it.

This is the only module of the library that imports Hydra; everything else takes plain
dicts. The same functions serve ``python -m simulations.run`` (Hydra main) and the
ServerApp under ``flwr run`` (Hydra's compose API with an ``overrides`` run-config string).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedkd.errors import ConfigError

REQUIRED_GROUPS = ("dataset", "partition", "model", "student", "strategy", "distill", "backend")


def config_dir() -> Path:
    """Directory holding ``config.yaml`` and the config groups.

    ``FEDKD_CONFIG_DIR`` wins; otherwise the ``configs/`` folder beside the package (the
    repository checkout, which is where an editable install and a Flower app bundle have it).
    """
    override = os.environ.get("FEDKD_CONFIG_DIR")
    path = Path(override) if override else Path(__file__).resolve().parent.parent / "configs"
    if not (path / "config.yaml").is_file():
        raise ConfigError(
            f"no config.yaml in {path}; set FEDKD_CONFIG_DIR to fedkd's configs/ folder"
        )
    return path


def compose_config(overrides: Sequence[str] | str = ()) -> dict[str, Any]:
    """Compose ``config.yaml`` with Hydra overrides and return a plain, resolved dict."""
    if isinstance(overrides, str):
        overrides = shlex.split(overrides)
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return to_plain(cfg)


def to_plain(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A resolved plain-dict copy of a config, without Hydra's own ``hydra`` node."""
    try:
        if isinstance(cfg, DictConfig):
            plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        else:
            plain = OmegaConf.to_container(
                OmegaConf.create(dict(cfg)), resolve=True, throw_on_missing=True
            )
    except OmegaConfBaseException as exc:  # e.g. dataset=hf without dataset.path
        raise ConfigError(
            str(exc).splitlines()[0] + f" (key: {getattr(exc, 'full_key', '?')})"
        ) from exc
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    return {str(k): v for k, v in plain.items()}


def options(spec: Mapping[str, Any], *, drop: Sequence[str] = ("name",)) -> dict[str, Any]:
    """A config group's options without its bookkeeping keys."""
    return {k: v for k, v in spec.items() if k not in drop and not k.startswith("_")}


def strategy_class(spec: Mapping[str, Any]) -> type:
    """Import the class named by ``strategy._target_`` with a clear error if it is wrong."""
    target = spec.get("_target_")
    if not target:
        raise ConfigError("strategy._target_ is missing; pick a strategy with strategy=<name>")
    try:
        return get_class(str(target))
    except Exception as exc:  # hydra wraps ImportError/AttributeError in its own types
        available = sorted(p.stem for p in (config_dir() / "strategy").glob("*.yaml"))
        raise ConfigError(
            f"strategy._target_ {target!r} cannot be imported ({exc}); "
            f"available strategies: {available}"
        ) from exc


def check_top_level(cfg: Mapping[str, Any]) -> None:
    """Validate the top-level keys every run needs (cheap, before anything is built)."""
    for group in REQUIRED_GROUPS:
        if not isinstance(cfg.get(group), Mapping) or "name" not in cfg[group]:
            raise ConfigError(f"config group {group!r} is missing or has no 'name'")
    for key, minimum in (("num_clients", 1), ("num_rounds", 1)):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    if not isinstance(cfg.get("seed"), int):
        raise ConfigError(f"seed must be an integer, got {cfg.get('seed')!r}")
