"""The settings a reader of a run's report needs, read from the run's resolved ``config.yaml``.

:func:`key_settings` is a short curated list (method, data, partition, training,
distillation, privacy, ...), each entry built from whole config blocks so that a new option
shows up without changing this module; :func:`all_settings` is every setting, flattened by
block. The run's ``report.html`` and the comparison page (``python -m simulations.report
--html``) both show them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

#: Strategy options that say how clients are sampled and what a round needs (shown under
#: "sampling", not among the method's own options).
SAMPLING_KEYS = ("fraction_train", "fraction_evaluate", "min_train_replies", "on_too_few_replies")
#: Strategy options of the server's distillation (shown under "distillation").
DISTILL_PREFIX = "distill_"
#: Keys never shown in the curated list: the class path says nothing a reader needs.
HIDDEN_KEYS = frozenset({"_target_"})


def format_value(value: Any) -> str:
    """A setting as YAML writes it: ``true``, ``null``, ``0.0001``, ``[128, 64]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def options(block: Any, *, skip: Sequence[str] = (), only: Sequence[str] | None = None) -> str:
    """``key = value, ...`` of a config block, in the block's order ('' when none)."""
    if not isinstance(block, Mapping):
        return ""
    keys = [k for k in block if k != "name" and k not in HIDDEN_KEYS and k not in skip]
    if only is not None:
        keys = [k for k in keys if k in only]
    return ", ".join(f"{k} = {format_value(block[k])}" for k in keys)


def named(block: Any, *, skip: Sequence[str] = ()) -> str:
    """A group's choice with its options: ``dirichlet (alpha = 0.5, ...)``."""
    if not isinstance(block, Mapping):
        return format_value(block)
    name = format_value(block.get("name", "?"))
    detail = options(block, skip=skip)
    return f"{name} ({detail})" if detail else name


def key_settings(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The settings a reader needs first, as ``(label, text)``; parts the config lacks
    (an older or partial ``config.yaml``) are left out."""
    out: list[tuple[str, str]] = []
    for label, build in _KEY_SETTINGS:
        try:
            text = build(config)
        except (AttributeError, KeyError, TypeError):  # a block of an unexpected shape
            text = None
        if text:
            out.append((label, text))
    return out


def _block(config: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = config.get(key)
    return value if isinstance(value, Mapping) else {}


def _method(config: Mapping[str, Any]) -> str | None:
    strategy = _block(config, "strategy")
    if not strategy:
        return None
    skip = [*SAMPLING_KEYS, *(k for k in strategy if k.startswith(DISTILL_PREFIX))]
    return named(strategy, skip=skip)


def _sampling(config: Mapping[str, Any]) -> str:
    return options(_block(config, "strategy"), only=SAMPLING_KEYS)


def _federation(config: Mapping[str, Any]) -> str | None:
    if "num_clients" not in config and "num_rounds" not in config:
        return None
    return (
        f"{format_value(config.get('num_clients', '?'))} clients, "
        f"{format_value(config.get('num_rounds', '?'))} rounds"
    )


def _models(config: Mapping[str, Any]) -> str | None:
    model, student = _block(config, "model"), _block(config, "student")
    if not model and not student:
        return None
    if model == student:
        return f"clients and student: {named(model)}"
    return f"clients: {named(model)}; student: {named(student)}"


def _client(config: Mapping[str, Any]) -> str:
    client = _block(config, "client")
    # self-distillation and born-again training are listed only when on
    off = [k for k in ("self_distill", "born_again") if client.get(k) is None]
    return options(client, skip=off)


def _distillation(config: Mapping[str, Any]) -> str | None:
    """The server's distillation: the strategy's ``distill_*`` options; None for a method
    that does not distill on the server."""
    return options(_server_distillation(config))


def _distillation_loss(config: Mapping[str, Any]) -> str | None:
    """The distillation loss (the ``distill`` block), for a method that distills."""
    loss = _block(config, "distill")
    return named(loss) if loss and _server_distillation(config) else None


def _server_distillation(config: Mapping[str, Any]) -> dict[str, Any]:
    strategy = _block(config, "strategy")
    return {k.removeprefix(DISTILL_PREFIX): v for k, v in strategy.items()
            if k.startswith(DISTILL_PREFIX)}  # fmt: skip


def _proxy(config: Mapping[str, Any]) -> str:
    data = _block(config, "data")
    keys = [k for k in data if k.startswith("proxy_")]
    # proxy_classes and proxy_dataset only when set: null means "the whole proxy"
    shown = [k for k in keys if data[k] is not None or k in ("proxy_fraction", "proxy_size")]
    return options(data, only=shown)


def _splits(config: Mapping[str, Any]) -> str:
    data = _block(config, "data")
    return options(data, only=[k for k in data if not k.startswith("proxy_")])


def _privacy(config: Mapping[str, Any]) -> str | None:
    privacy = _block(config, "privacy")
    if not privacy:
        return None
    # the membership-inference audit's own options only when the audit is on
    audit = [k for k in privacy if k.startswith("audit_")] if not privacy.get("audit") else []
    return named(privacy, skip=audit)


def _encoding(config: Mapping[str, Any]) -> str | None:
    encoding = _block(config, "encoding")
    if not encoding:
        return None
    # k only means something to top-k
    return named(encoding, skip=() if encoding.get("name") == "topk" else ("k",))


def _augment(config: Mapping[str, Any]) -> str | None:
    augment = _block(config, "augment")
    return named(augment) if augment and augment.get("name") != "none" else None


def _seeds(config: Mapping[str, Any]) -> str | None:
    if "seed" not in config:
        return None
    data_seed = config.get("data_seed")
    follows = " (follows seed)" if data_seed is None else ""
    return f"seed = {format_value(config['seed'])}, data_seed = {format_value(data_seed)}{follows}"


def _when_on(key: str, *, on: Callable[[Mapping[str, Any]], bool]) -> Callable[..., str | None]:
    def build(config: Mapping[str, Any]) -> str | None:
        block = _block(config, key)
        return options(block) if block and on(block) else None

    return build


def _group(key: str) -> Callable[[Mapping[str, Any]], str | None]:
    def build(config: Mapping[str, Any]) -> str | None:
        block = _block(config, key)
        return named(block) if block else None

    return build


_KEY_SETTINGS: list[tuple[str, Callable[[Mapping[str, Any]], str | None]]] = [
    ("method", _method),
    ("dataset", _group("dataset")),
    ("partition", _group("partition")),
    ("federation", _federation),
    ("sampling", _sampling),
    ("models", _models),
    ("client training", _client),
    ("distillation (server)", _distillation),
    ("distillation loss", _distillation_loss),
    ("proxy data", _proxy),
    ("test splits", _splits),
    ("aggregation", _group("aggregation")),
    ("augmentation", _augment),
    ("privacy", _privacy),
    ("encoding", _encoding),
    ("backend", _group("backend")),
    ("seeds", _seeds),
    ("faults", _when_on("faults", on=lambda b: any(v not in (None, 0, 0.0) for v in b.values()))),
    ("attack", _when_on("attack", on=lambda b: b.get("kind") is not None)),
]


def all_settings(config: Mapping[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Every setting: ``("run", top-level scalars)`` first, then one entry per block with
    its keys flattened (``hidden``, ``report.sparsities``, ``proxy_dataset.name``)."""
    scalars = [(str(k), format_value(v)) for k, v in config.items() if not isinstance(v, Mapping)]
    blocks = [(str(k), _flatten(v, "")) for k, v in config.items() if isinstance(v, Mapping)]
    return [("run", scalars), *blocks] if scalars else blocks


def _flatten(block: Mapping[str, Any], prefix: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in block.items():
        if isinstance(value, Mapping) and value:
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", format_value(value)))
    return out


def parse_config(text: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """``config.yaml``'s text as a mapping, or ``(None, why not)``."""
    if text is None:
        return None, "config.yaml was not found beside this report"
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, f"config.yaml could not be read: {exc}"
    if not isinstance(config, Mapping):
        return None, "config.yaml does not hold a mapping of settings"
    return dict(config), None


def settings_html(config_text: str | None) -> list[str]:
    """The page's "Settings" section: the key settings, every setting by block (folded) and
    the whole ``config.yaml`` (folded). Every text is escaped."""
    esc = html.escape
    parts = ["<h2>Settings</h2>"]
    config, problem = parse_config(config_text)
    if config is None:
        return [*parts, f'<p class="note">{esc(str(problem))}</p>']
    parts += [
        '<dl class="run settings">',
        *(f"<dt>{esc(label)}</dt><dd>{esc(text)}</dd>" for label, text in key_settings(config)),
        "</dl>",
    ]
    blocks = all_settings(config)
    count = sum(len(entries) for _, entries in blocks)
    parts += [f"<details><summary>All {count} settings, by block</summary>", '<div class="blocks">']
    for block, entries in blocks:
        parts += [
            f"<table><caption>{esc(block)}</caption>",
            *(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in entries),
            "</table>",
        ]
    parts += [
        "</div></details>",
        "<details><summary>config.yaml (the run's resolved configuration)</summary>",
        f"<pre>{esc(str(config_text))}</pre>",
        "</details>",
    ]
    return parts
