"""Hydra/OmegaConf glue: compose the run config, validate it, build objects from it.

This is the only module of the library that imports Hydra; everything else takes plain
dicts. The same functions serve ``python -m simulations.run`` (Hydra main) and the
ServerApp under ``flwr run`` (Hydra's compose API with an ``overrides`` run-config string).
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.core.utils import filter_overrides
from hydra.errors import HydraException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from fedkd.errors import ConfigError

REQUIRED_GROUPS = ("dataset", "partition", "model", "student", "strategy", "distill", "backend")
#: Top-level keys that are not in ``config.yaml`` but are Hydra's own: its settings, and the
#: optional preset group.
HYDRA_KEYS = ("hydra", "experiment")


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
    data_seed = cfg.get("data_seed")
    if data_seed is not None and (
        not isinstance(data_seed, int) or isinstance(data_seed, bool) or data_seed < 0
    ):
        raise ConfigError(f"data_seed must be null or an integer >= 0, got {data_seed!r}")
    valid = top_level_keys()
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; valid keys: {', '.join(valid)}")


def config_groups(root: Path) -> tuple[str, ...]:
    """The config groups under ``root``: its folders that hold ``*.yaml`` options."""
    return tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.yaml"))))


def top_level_keys(root: Path | None = None, config_name: str = "config") -> tuple[str, ...]:
    """Every key a composed config may have at the top: the config groups, the keys of
    ``config.yaml`` (and of ``config_name``, when another primary config such as ``tune``),
    and Hydra's own (:data:`HYDRA_KEYS`), sorted."""
    root = config_dir() if root is None else root
    keys = {*config_groups(root), *HYDRA_KEYS}
    for name in {"config", config_name}:
        path = root / f"{name}.yaml"
        loaded = yaml.safe_load(path.read_text()) if path.is_file() else None
        if isinstance(loaded, dict):
            keys.update(str(k) for k in loaded if k != "defaults")
    return tuple(sorted(keys))


def check_overrides(
    overrides: Sequence[str], *, root: Path | None = None, config_name: str = "config"
) -> None:
    """Refuse, before Hydra composes, command-line overrides that pick an option a config
    group does not have (``dataset=nope``) or name an unknown top-level key (``foo=1``,
    ``+foo=1``), in one line naming the valid choices.

    Sweeps (``strategy=fedavg,feddf``) are checked option by option, and a nested key
    (``strategy.distill_lr=0.01``) by its top-level key only; ``hydra.*`` and ``hydra/...``
    overrides, deletions (``~key``), package overrides (``group@pkg=...``) and ``glob(...)``
    are left to Hydra, as is anything its parser rejects.
    """
    root = config_dir() if root is None else root
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return  # Hydra reports its own syntax errors
    groups = config_groups(root)
    valid_keys: tuple[str, ...] | None = None
    for override in parsed:
        key = override.key_or_group
        top = key.split(".", 1)[0].split("/", 1)[0]
        if top == "hydra" or override.is_delete() or override.package is not None:
            continue
        typed = override.input_line or key
        if key in groups:
            if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
                continue
            values = (
                list(override.sweep_string_iterator())
                if override.is_sweep_override()
                else [override.get_value_element_as_str()]
            )
            available = sorted(p.stem for p in (root / key).glob("*.yaml"))
            for value in values:
                if value != "null" and not (root / key / f"{value}.yaml").is_file():
                    raise ConfigError(
                        f"{typed}: {key} has no option {value!r}; choose one of {available}"
                    )
            continue
        valid_keys = valid_keys or top_level_keys(root, config_name)
        if top not in valid_keys:
            raise ConfigError(f"{typed}: unknown key {top!r}; valid keys: {', '.join(valid_keys)}")
    _check_nested_keys(parsed, groups, root=root, config_name=config_name)


def _check_nested_keys(
    parsed: Sequence[Any], groups: Sequence[str], *, root: Path, config_name: str
) -> None:
    """Refuse a plain override of a nested key the composed config does not have
    (``aggregation.trim=0.1`` with ``aggregation=mean``), naming the keys that exist there.

    The config is composed with the overrides' group choices only, so that a wrong value
    elsewhere cannot hide the key check. Additions (``+a.b=1``, ``++a.b=1``) are allowed by
    design, a key under a null or non-mapping value is left to Hydra, and so are sweeps (the
    keys depend on the job).
    """
    nested = [
        o
        for o in parsed
        if "." in o.key_or_group
        and o.key_or_group.split(".", 1)[0] != "hydra"
        and not (o.is_delete() or o.is_add() or o.is_force_add() or o.package is not None)
    ]
    if not nested or any(o.is_sweep_override() for o in parsed):
        return
    choices = [o.input_line for o in parsed if o.key_or_group in groups and o.input_line]
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(root), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=choices)
    except (HydraException, OmegaConfBaseException):
        return  # Hydra reports what is wrong with the choices themselves
    for override in nested:
        node: Any = cfg
        path: list[str] = []
        for part in override.key_or_group.split("."):
            if not isinstance(node, DictConfig):
                break
            if part not in node:
                where = ".".join(path)
                raise ConfigError(
                    f"{override.input_line or override.key_or_group}: {where} has no key "
                    f"{part!r}; valid keys: {', '.join(str(k) for k in node)}"
                )
            path.append(part)
            node = node[part]


def sweep_job_configs(
    config: DictConfig,
    hydra_context: Any,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    log: logging.Logger,
) -> list[DictConfig]:
    """Each job's config of a launcher's batch (what fedkd's Hydra launchers run): the
    sweep config with the job's overrides, its ``hydra.job.id``/``num`` set to its index;
    every job is logged as Hydra's basic launcher logs it."""
    configs = []
    for offset, overrides in enumerate(job_overrides):
        idx = initial_job_idx + offset
        log.info("\t#%s : %s", idx, " ".join(filter_overrides(overrides)))
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        configs.append(sweep_config)
    return configs
