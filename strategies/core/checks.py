"""Checks that refuse, before Ray starts, a run whose settings cannot work together.

Each function takes the values it checks (the strategy's declared payloads and flags, the
assets) and raises :class:`~fedkd.errors.ConfigError` naming the keys; nothing calls back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fedkd.distill import build_loss
from fedkd.distill.losses import DistillLoss
from fedkd.distill.target_registry import TARGET_RULE_REGISTRY
from fedkd.errors import ConfigError
from fedkd.models import FedKDModel
from fedkd.wire import keys
from fedkd.wire.payloads import ModelWeights, ProxyPredictions, resolve
from strategies.core import transport
from strategies.core.assets import RunAssets, rule_options
from strategies.core.options import RoundOptions

logger = logging.getLogger(__name__)


def check_privacy(
    assets: RunAssets,
    *,
    method: str,
    has_clients: bool,
    payloads: Sequence[str],
    trains_locally: bool,
    target_rule: dict[str, Any],
) -> None:
    """Refuse a ``privacy`` mechanism that cannot protect what the method's payloads carry,
    or a delta that is not meaningful for the privacy unit."""
    spec = assets.privacy
    if not spec.enabled:
        return
    if not has_clients:
        raise ConfigError(
            f"privacy={spec.name} protects what clients share; strategy {method} trains "
            "centrally on pooled data and shares nothing (use privacy=none)"
        )
    shares_weights = ModelWeights.name in payloads
    if spec.name in ("logit_dp", "pate"):
        if ProxyPredictions.name not in payloads or shares_weights:
            shared = "weights" if shares_weights else "no proxy predictions"
            raise ConfigError(
                f"privacy={spec.name} protects shared proxy predictions, but strategy "
                f"{method} shares {shared}; use strategy=fedmd, dsfl or fedet, or "
                "privacy=dpsgd (which covers everything a DP-SGD model releases)"
            )
        rule = assets.aggregation.get("name", "mean")
        if rule != "mean":
            raise ConfigError(
                f"privacy={spec.name} releases a noisy "
                f"{'mean' if spec.name == 'logit_dp' else 'vote count'} of the clients' "
                f"predictions, which replaces the teacher rule; aggregation={rule} "
                "cannot apply (use aggregation=mean)"
            )
        if target_rule.get("name", "mean") != "mean":
            logger.warning(
                "privacy=%s replaces %s's weighting %r with the mechanism's release",
                spec.name,
                method,
                target_rule.get("name"),
            )
        population = assets.setup.num_clients
        unit = f"1/num_clients = 1/{population}"
    else:  # dpsgd
        rule = assets.aggregation.get("name", "mean")
        if (
            rule in TARGET_RULE_REGISTRY
            and TARGET_RULE_REGISTRY[rule].needs_label_histograms
            and not spec.sends_unprotected(keys.LABEL_HISTOGRAM)
        ):
            raise ConfigError(
                f"aggregation={rule} weighs clients by their label histograms, which "
                f"privacy={spec.name} withholds (exact counts of private records); add "
                f"{keys.LABEL_HISTOGRAM} to privacy.allow_unprotected to send them anyway"
            )
        direct = [p.name for p in resolve(payloads) if p.from_private_records]
        if direct or trains_locally:
            raise ConfigError(
                f"privacy=dpsgd cannot cover strategy {method}: it shares statistics "
                f"computed directly on private data ({', '.join(direct) or 'local training'}), "
                "not only outputs of the DP-SGD model"
            )
        local = assets.setup.local
        if local.self_distill is not None or local.born_again is not None:
            raise ConfigError(
                "privacy=dpsgd trains clients with DP-SGD; client.self_distill and "
                "client.born_again would train on private data without it (set them null)"
            )
        data = assets.data
        population = min(len(data.client_data(p).train_y) for p in range(data.num_clients))
        unit = f"1/n = 1/{population} (n: the smallest client's training set)"
    if not spec.delta < 1.0 / population:
        raise ConfigError(
            f"privacy.delta={spec.delta:g} must be < {unit}: a larger delta allows "
            "releasing a whole unit's data"
        )


def check_target_rule(aggregation: Mapping[str, Any], *, method: str, forms_ensemble: bool) -> None:
    """Refuse a teacher rule (the ``aggregation`` group) other than ``mean`` for a method that
    declares no teacher ensemble (``forms_ensemble`` false, e.g. FedAvg), where the rule would
    never be applied."""
    rule = aggregation.get("name", "mean")
    if rule != "mean" and not forms_ensemble:
        raise ConfigError(
            f"aggregation={rule} is a rule for combining the clients' predictions into teacher "
            f"targets, but strategy {method} forms no teacher ensemble, so it would never be "
            "applied; use aggregation=mean or a method that distills from an ensemble"
        )


def check_min_train_replies(options: RoundOptions, *, num_clients: int, has_clients: bool) -> None:
    """Refuse ``strategy.min_train_replies`` above the clients a round samples, with which
    every round would be skipped (or aborted)."""
    if not has_clients:
        return
    # the round's sample size, as configure_train draws it (it does not depend on the seed)
    sampled = len(
        transport.sample_partitions(
            range(num_clients), options.fraction_train, seed=0, server_round=1, stream=0
        )
    )
    if options.min_train_replies > sampled:
        raise ConfigError(
            f"strategy.min_train_replies={options.min_train_replies} is more than the "
            f"{sampled} client(s) sampled per round (strategy.fraction_train="
            f"{options.fraction_train} of num_clients={num_clients}), so no round could "
            f"complete; use strategy.min_train_replies <= {sampled}"
        )


def check_distill_loss(
    assets: RunAssets,
    *,
    method: str,
    architecture_model: Callable[[int], FedKDModel],
    probe_bind: Callable[[DistillLoss, FedKDModel, Sequence[FedKDModel]], None],
    provides_teacher_models: bool,
    distills_student: bool,
    distilled_architectures: Sequence[int],
    digests_on_clients: bool,
) -> None:
    """Fail before Ray when the ``distill`` loss cannot work with this run's models.

    Checks the layers the loss reads against the student (and every model the server
    distills) and, where the server holds client models, the teachers; a loss that
    matches teacher features where none exist (prediction-sharing methods, client
    digests) is refused. Then the loss's learned modules are created on a probe batch
    (seeded), which also catches shape problems such as attention maps on an MLP.
    """
    architectures = range(len(assets.setup.architectures))
    self_distill = assets.setup.local.self_distill
    if self_distill is not None:
        _check_client_self_distill(self_distill, architectures, architecture_model, probe_bind)
    loss = assets.distill_loss
    if not isinstance(loss, DistillLoss):
        return
    teachers = [architecture_model(i) for i in architectures] if provides_teacher_models else None
    if distills_student:
        students = [assets.student, *(architecture_model(i) for i in distilled_architectures)]
        for student in students:
            loss.check_layers(
                student.feature_names,
                None if teachers is None else [t.feature_names for t in teachers],
            )
            probe_bind(loss, student, teachers or [])
    if digests_on_clients:
        # Clients build their own copy from the same config; never share learned parts.
        config = assets.distill_config
        client_loss = build_loss(config["name"], **rule_options(config))
        for i in architectures:
            model = architecture_model(i)
            try:
                client_loss.check_layers(model.feature_names, None)
            except ConfigError as exc:
                raise ConfigError(
                    f"{exc} (strategy {method} runs the distill loss in the clients' digest "
                    "steps, where only the server's consensus exists)"
                ) from exc
            probe_bind(client_loss, model, [])


def _check_client_self_distill(
    spec: Any,
    architectures: range,
    architecture_model: Callable[[int], FedKDModel],
    probe_bind: Callable[[DistillLoss, FedKDModel, Sequence[FedKDModel]], None],
) -> None:
    """``client.self_distill`` must build the ``self`` loss and fit every client model."""
    if not isinstance(spec, dict):
        raise ConfigError(
            f"client.self_distill must be a mapping of self-loss options or null, got {spec!r}"
        )
    try:
        loss = build_loss("self", **spec)
        for i in architectures:
            model = architecture_model(i)
            loss.check_layers(model.feature_names, None)
            probe_bind(loss, model, [])
    except ConfigError as exc:
        raise ConfigError(f"client.self_distill: {exc}") from exc


def common_embedding_width(
    assets: RunAssets, architecture_model: Callable[[int], FedKDModel], *, method: str
) -> int:
    """The width ``D`` of the ``"embedding"`` feature every client architecture shares.

    Methods that combine embeddings across clients (FedProto's prototypes, FedGKT's
    features) need one width; heterogeneous architectures with different widths are refused.
    """
    widths = {}
    for index, spec in enumerate(assets.setup.architectures):
        model = architecture_model(index)
        probe = torch.zeros((2, *assets.data.input_shape), device=assets.device)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                _, features = model.forward_features(probe)
        finally:
            model.train(was_training)
        widths[f"{index}: {spec}"] = int(features["embedding"].flatten(1).shape[1])
    if len(set(widths.values())) > 1:
        listed = "; ".join(f"[{name}] -> {width}" for name, width in widths.items())
        raise ConfigError(
            f"strategy {method} combines embeddings across clients, so every client "
            "architecture (model.architectures) must have the same embedding width; "
            f"got {listed}"
        )
    return next(iter(widths.values()))
