"""A client's local training routes that do not depend on the method: the labeled-proxy
warm-up, supervised training (with BYOT self-distillation and born-again generations) and
DP-SGD. Methods with a loss of their own train through their payload (:meth:`Payload.train`).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context

from fedkd.distill.self_train import born_again, check_born_again, train_self_distilled
from fedkd.errors import ConfigError
from fedkd.privacy import PrivacySpec
from fedkd.privacy.mechanisms import torch_noise_seed
from fedkd.train import train_local
from fedkd.wire import keys
from fedkd.wire.payloads import ClientRound


def warm_up(client: ClientRound, epochs: int) -> None:
    """FedMD's transfer learning: train on the labeled proxy before a first participation."""
    data = client.data
    if data.proxy_y is None:
        raise ConfigError("FedMD warm-up needs a labeled proxy: set data.proxy_labeled=true")
    # The warm-up has always trained without client.weight_decay; kept so runs reproduce.
    settings = client.setup.local.train_settings(epochs=epochs, weight_decay=0.0)
    train_local(
        client.model,
        data.proxy_x,
        data.proxy_y,
        settings=settings,
        seed=client.seed,
        device=client.device,
    )


def train_supervised(client: ClientRound, *, epochs: int) -> float:
    """Cross-entropy training, or BYOT self-distillation (``client.self_distill``), then
    born-again generations (``client.born_again``) when configured."""
    local = client.setup.local
    x, y = client.client_data.train_x, client.client_data.train_y
    settings = local.train_settings(epochs=epochs)
    if local.self_distill is not None:
        loss = train_self_distilled(
            client.model,
            x,
            y,
            options=local.self_distill,
            settings=settings,
            seed=client.seed,
            device=client.device,
        )
    else:
        loss = train_local(
            client.model,
            x,
            y,
            settings=settings,
            seed=client.seed,
            device=client.device,
            proximal_mu=client.float_option(keys.PROXIMAL_MU, 0.0),  # FedProx only
        ).loss
    spec = check_born_again(local.born_again)
    if spec is not None and spec["generations"] > 0:
        loss = born_again(
            client.model, x, y, **spec, settings=settings, seed=client.seed, device=client.device
        )
    return loss


def train_dpsgd(client: ClientRound, context: Context, spec: PrivacySpec) -> tuple[float, float]:
    """DP-SGD local training (Opacus); the accountant's history lives in ``context.state``
    so epsilon composes over every round this client trained in."""
    from fedkd.privacy.dpsgd import train_dpsgd as run_dpsgd

    history: list[tuple[float, float, int]] = []
    if keys.DP_HISTORY in context.state.config_records:
        saved = context.state.config_records[keys.DP_HISTORY]
        noise, rate, steps = (np.asarray(saved[k]) for k in ("noise", "rate", "steps"))
        history = [(float(z), float(q), int(n)) for z, q, n in zip(noise, rate, steps, strict=True)]
    report = run_dpsgd(
        client.model,
        client.client_data.train_x,
        client.client_data.train_y,
        settings=client.train_settings,
        noise_multiplier=spec.noise_multiplier,
        max_grad_norm=spec.max_grad_norm,
        delta=spec.delta,
        history=history,
        noise_seed=torch_noise_seed(
            spec.reproducible_noise, client.setup.seed, client.server_round, client.partition_id
        ),
        device=client.device,
    )
    context.state[keys.DP_HISTORY] = ConfigRecord(
        {
            "noise": [float(z) for z, _, _ in report.history],
            "rate": [float(q) for _, q, _ in report.history],
            "steps": [int(n) for _, _, n in report.history],
        }
    )
    return report.loss, report.epsilon
