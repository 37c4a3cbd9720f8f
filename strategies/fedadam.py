"""FedAdam baseline: FedAvg whose server applies Adam to the mean client update."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam as FlowerFedAdam

from strategies.fedopt import AveragedReplies, FedOpt


class _FlowerFedAdam(FlowerFedAdam, AveragedReplies):
    """Flower's FedAdam stepping from the mean fedkd computed (:class:`AveragedReplies`)."""


class FedAdam(FedOpt):
    """FedAdam (Reddi et al., 2021, "Adaptive Federated Optimization", ICLR, Algorithm 2).

    Round ``t``, with ``Delta_t`` the example-weighted mean client update (see
    :class:`~strategies.fedopt.FedOpt`)::

        m_t = beta_1 m_{t-1} + (1 - beta_1) Delta_t
        v_t = beta_2 v_{t-1} + (1 - beta_2) Delta_t^2
        eta_t = eta sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))    (Flower's bias correction)
        x_{t+1} = x_t + eta_t m_t / (sqrt(v_t) + tau)

    The step is ``flwr.serverapp.strategy.FedAdam.aggregate_train``, unchanged.

    Parameters
    ----------
    assets, fraction_train, fraction_evaluate, min_train_replies, on_too_few_replies
        See :class:`strategies.base.FedKDStrategy`.
    eta : float
        Server learning rate (default 0.1, Flower's default).
    beta_1 : float
        First-moment decay (default 0.9).
    beta_2 : float
        Second-moment decay (default 0.99).
    tau : float
        Adaptivity (default 1e-3).

    The defaults are ``configs/strategy/fedadam.yaml``'s (Flower's). The client learning rate
    ``eta_l`` is ``client.lr``. Client keys honoured: as
    :class:`~strategies.fedavg.FedAvg`.
    """

    flower_strategy = _FlowerFedAdam
