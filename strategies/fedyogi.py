"""FedYogi baseline: FedAvg whose server applies Yogi to the mean client update."""

from __future__ import annotations

from flwr.serverapp.strategy import FedYogi as FlowerFedYogi

from strategies.fedopt import AveragedReplies, FedOpt


class _FlowerFedYogi(FlowerFedYogi, AveragedReplies):
    """Flower's FedYogi stepping from the mean fedkd computed (:class:`AveragedReplies`)."""


class FedYogi(FedOpt):
    """FedYogi (Reddi et al., 2021, "Adaptive Federated Optimization", ICLR, Algorithm 2).

    Round ``t``, with ``Delta_t`` the example-weighted mean client update (see
    :class:`~strategies.fedopt.FedOpt`)::

        m_t = beta_1 m_{t-1} + (1 - beta_1) Delta_t
        v_t = v_{t-1} - (1 - beta_2) Delta_t^2 sign(v_{t-1} - Delta_t^2)
        x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau)

    The step is ``flwr.serverapp.strategy.FedYogi.aggregate_train``, unchanged (``v``
    starts at zero, where the paper starts it at ``tau^2`` or above).

    Parameters
    ----------
    assets, fraction_train, fraction_evaluate, min_train_replies, on_too_few_replies
        See :class:`strategies.base.FedKDStrategy`.
    eta : float
        Server learning rate (default 0.01, Flower's default).
    beta_1 : float
        First-moment decay (default 0.9).
    beta_2 : float
        Second-moment decay (default 0.99).
    tau : float
        Adaptivity (default 1e-3).

    The defaults are ``configs/strategy/fedyogi.yaml``'s (Flower's). The client learning rate
    ``eta_l`` is ``client.lr``. Client keys honoured: as
    :class:`~strategies.fedavg.FedAvg`.
    """

    flower_strategy = _FlowerFedYogi
