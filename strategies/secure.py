"""Secure aggregation in the round loop (a mixin of :class:`strategies.base.FedKDStrategy`).

Under ``secagg.enabled=true`` a round runs: sample, :meth:`SecureAggregation.open_secure_round`
(keys and shares with the sampled clients, :mod:`strategies.core.secure_rounds`), train
messages carrying each client's routed shares, replies carrying masked sums
(:class:`~fedkd.wire.payloads.secure_sum.SecureSum`), then
:meth:`SecureAggregation.finish_secure_round`: the survivors unmask their sum, and the
method receives one :class:`ClientReply` standing for all of them (``partition_id = -1``,
its values from the sums) plus ``RoundState.secure`` (the raw sums and the survivors, for
a privacy mechanism's release). Methods whose mean teacher rule works on that one reply
need no change; :meth:`check_secure_aggregation` refuses, before any client runs, every
setting that would need a client's own values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from flwr.app import Message
from flwr.serverapp import Grid

from fedkd.errors import ConfigError
from fedkd.privacy.mechanisms import logit_dp_noise_std
from fedkd.run.console import phase
from fedkd.wire.payloads import Expectation, Payload, resolve
from fedkd.wire.payloads.base import NOISE_BOUND_STDS
from fedkd.wire.payloads.secure_sum import SecureSum, SumLayout
from fedkd.wire.secure import SecAggSpec, SumRule, fit_encoding
from strategies.core.secure_rounds import SecureRoundFailed, SecureSession, open_session
from strategies.core.validation import ClientReply, RoundState

if TYPE_CHECKING:
    from strategies.base import FedKDStrategy

logger = logging.getLogger(__name__)

#: Teacher rules that are a weighted mean: the only ones a sum can give.
SUM_RULES = ("mean", "size_weighted")


class SecureAggregation:
    """What the strategy does differently under ``secagg`` (see the module docstring)."""

    #: The current round's session (None: secure aggregation is off or failed this round).
    secure_session: SecureSession | None = None
    _secure_grid: Grid | None = None

    @property
    def secagg(self: FedKDStrategy) -> SecAggSpec:  # type: ignore[misc]
        return getattr(self.assets, "secagg", SecAggSpec())

    # ------------------------------------------------------------------ before Ray
    def check_secure_aggregation(self: FedKDStrategy) -> None:  # type: ignore[misc]
        """Refuse, naming the setting, what secure aggregation cannot do for this run."""
        if not self.secagg.enabled:
            return
        method = type(self).__name__
        if not self.has_clients:
            raise ConfigError(f"secagg.enabled=true: strategy {method} has no clients to sum")
        payloads = resolve(self.requested_payloads())
        if not payloads:
            raise ConfigError(f"secagg.enabled=true: strategy {method} shares nothing to sum")
        clear = [p.name for p in payloads if not p.summable]
        if clear:
            raise ConfigError(
                f"secagg.enabled=true sums shared predictions and statistics; strategy "
                f"{method} also sends {clear}, which would cross in the clear (secure "
                "aggregation of weights is not implemented): use fedmd, dsfl, fedet, fd or "
                "fedproto"
            )
        if self.encoding.name != "float32":
            raise ConfigError(
                f"secagg.enabled=true needs encoding.name=float32 (the rows are fixed-point "
                f"encoded for masking), got encoding.name={self.encoding.name}"
            )
        rule = self.target_rule.get("name", "mean")
        if rule not in SUM_RULES:
            raise ConfigError(
                f"secagg.enabled=true gives the server only the sum of the clients' rows; the "
                f"teacher rule {rule!r} needs each client's own rows: use aggregation=mean or "
                "size_weighted (FedET: strategy.weighting=mean). Lost with it: robust rules "
                "(median, trimmed mean) and per-row checks of each reply (docs/PRIVACY.md)"
            )
        privacy = self.assets.privacy
        if self.secagg.noise == "distributed" and not (
            privacy.name == "logit_dp" and privacy.mode == "central"
        ):
            raise ConfigError(
                "secagg.noise=distributed splits central logit_dp's noise among the clients: "
                f"it needs privacy=logit_dp with privacy.mode=central, got privacy={privacy.name}"
            )
        expected = max(1, round(self.fraction_train * self.assets.setup.num_clients))
        if expected < 2:
            raise ConfigError(
                f"secagg.enabled=true needs at least 2 clients per round; "
                f"strategy.fraction_train * num_clients gives {expected}"
            )
        self.secagg.degree_for(expected)  # max_dropouts and degree fit the sample
        layout = self.sum_layout(RoundState(0, proxy_indices=self.current.proxy_indices))
        self.secure_bound(layout, expected)  # the sum fits the modulus

    # ------------------------------------------------------------------ per round
    def sum_rule(self: FedKDStrategy, sampled: int = 0) -> SumRule:  # type: ignore[misc]
        """How clients turn their rows into summands this round."""
        privacy = self.privacy.spec if self.privacy is not None else None
        mechanism = privacy.name if privacy is not None else "none"
        noise_std = 0.0
        if privacy is not None and self.secagg.noise == "distributed" and sampled:
            total = logit_dp_noise_std(
                len(self.current.proxy_indices), privacy.clip, "central", privacy.noise_multiplier
            )
            # every survivor adds sigma^2 / (sampled - max_dropouts): at least sigma^2 in all
            noise_std = total / math.sqrt(sampled - self.secagg.dropouts_for(sampled))
        return SumRule(
            space="identity" if mechanism in ("logit_dp", "pate") else self.teacher_space,
            temperature=self.teacher_temperature,
            floor=self.teacher_floor,
            size_weighted=self.target_rule.get("name", "mean") == "size_weighted",
            noise_std=noise_std,
        )

    def sum_layout(self: FedKDStrategy, state: RoundState) -> SumLayout:  # type: ignore[misc]
        return SumLayout.build(self.wire_payloads(), self.expectation(state, -1, 0))

    def secure_bound(self: FedKDStrategy, layout: SumLayout, sampled: int) -> float:  # type: ignore[misc]
        """The largest summand an honest client sends this round (checked to fit)."""
        rule = self.sum_rule(sampled)
        privacy = self.assets.privacy
        value_bound = 1.0
        if privacy.name == "logit_dp":
            value_bound = privacy.clip
            if privacy.mode == "local":
                rows = len(self.current.proxy_indices)
                std = logit_dp_noise_std(rows, privacy.clip, "local", privacy.noise_multiplier)
                value_bound += NOISE_BOUND_STDS * std
        examples = list(self.federation.examples.values()) or [
            len(self.assets.data.client_data(p).train_y)
            for p in range(self.assets.setup.num_clients)
        ]
        max_examples = float(max(examples))
        by_name = {p.name: p for p in self.wire_payloads()}
        bound = max(
            rule.weight_bound(max_examples),  # the weight word
            *(
                by_name[name].sum_bound(rule, value_bound=value_bound, max_examples=max_examples)
                for name in layout.payload_names()
            ),
        )
        fit_encoding(bound, sampled, self.secagg.frac_bits)
        return bound

    def open_secure_round(  # type: ignore[misc]
        self: FedKDStrategy, grid: Grid, state: RoundState, query_config: dict[str, Any]
    ) -> list[int]:
        """Rounds 0 and 1 with the sampled clients; returns those that get a train message
        (none when the session failed: the round is then skipped with the reason)."""
        self.secure_session, self._secure_grid = None, grid
        server_round = state.server_round
        phase(f"round {server_round}: secure aggregation: keys and shares")
        layout = self.sum_layout(state)
        sampled = len(state.partitions)
        try:
            bound = self.secure_bound(layout, max(sampled, 2))
            self.secure_session = open_session(
                partial(self._secure_send, grid, state.server_round),
                spec=self.secagg,
                partitions=state.partitions,
                node_of_partition=self.node_of_partition,
                layout=layout,
                rule=self.sum_rule(sampled),
                bound=bound,
                query_config=query_config,
                metrics=state.metrics,
            )
        except (SecureRoundFailed, ConfigError) as exc:  # e.g. a Poisson sample too large
            state.metrics["secagg_failed"] = str(exc)
            logger.warning("round %s: secure aggregation: %s", state.server_round, exc)
            return []
        phase(f"round {server_round}: clients training, then masking what they share")
        return self.secure_session.partitions

    def _secure_send(  # type: ignore[misc]
        self: FedKDStrategy, grid: Grid, server_round: int, messages: list[Message]
    ) -> list[Message]:
        timeout = self.assets.round_timeout
        return self.send_and_receive(grid, messages, timeout=timeout, server_round=server_round)

    def validated_payloads(self: FedKDStrategy) -> list[Payload]:  # type: ignore[misc]
        """What the server checks in each reply: under a session, the masked sum in place of
        the summable payloads."""
        payloads = self.wire_payloads()
        if self.secure_session is None:
            return payloads
        return [p for p in payloads if not p.summable] + resolve([SecureSum.name])

    def secure_expectation(self, expect: Expectation) -> Expectation:
        """``expect`` with the session's layout and modulus (for SecureSum's checks)."""
        if self.secure_session is None:
            return expect
        options = {**expect.options, **self.secure_session.expectation_options()}
        return replace(expect, options=options)

    def finish_secure_round(  # type: ignore[misc]
        self: FedKDStrategy, state: RoundState, valid: Sequence[ClientReply]
    ) -> list[ClientReply]:
        """Round 3: the survivors' sum as one reply (none when it cannot be released)."""
        session, grid = self.secure_session, self._secure_grid
        if session is None or grid is None:
            return []
        masked = {r.partition_id: r.values[SecureSum.name] for r in valid}
        phase(f"round {state.server_round}: secure aggregation: unmasking the survivors' sum")
        try:
            result = session.finish(
                partial(self._secure_send, grid, state.server_round),
                masked,
                self.wire_payloads(),
                noise_added=self.secagg.noise == "distributed",
            )
        except SecureRoundFailed as exc:
            state.metrics["secagg_failed"] = str(exc)
            logger.warning("round %s: secure aggregation: %s", state.server_round, exc)
            return []
        finally:
            self.secure_session = None
            phase(f"round {state.server_round}: aggregating the replies")
        state.secure = result
        kept = set(result.partitions)
        survivors = [r for r in valid if r.partition_id in kept]
        return [
            ClientReply(
                partition_id=-1,
                node_id=-1,
                architecture=0,
                num_examples=sum(r.num_examples for r in survivors),
                metrics={},
                values=result.values,
                uplink_bytes=sum(r.uplink_bytes for r in survivors),
                message=survivors[0].message,  # a survivor's raw reply (never read for values)
            )
        ]
