"""The simulation harness's instructions to chosen clients: faults and attacks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from fedkd.reliability.attacks import AttackSpec
from fedkd.reliability.faults import FaultSpec
from fedkd.wire import keys


def harness_config(
    faults: FaultSpec,
    attack: AttackSpec,
    *,
    malicious: Sequence[int],
    partitions: Sequence[int],
    seed: int,
    server_round: int,
    round_timeout: float,
    metrics: dict[str, Any],
) -> dict[int, dict[str, Any]]:
    """Extra round-config keys for clients told to fail (``faults``) or to poison what they
    share (``attack``); empty for every other client, so a run without faults or attack
    sends exactly the messages of a clean run. Records ``faults_injected`` in ``metrics``."""
    extra: dict[int, dict[str, Any]] = {}
    plan = faults.plan(seed, server_round, partitions)
    if plan:
        metrics["faults_injected"] = dict(sorted(Counter(plan.values()).items()))
    for partition_id, kind in plan.items():
        extra[partition_id] = {keys.FAULT: kind, keys.FAULT_DELAY: faults.delay(round_timeout)}
    for partition_id in set(malicious) & set(partitions):
        extra.setdefault(partition_id, {}).update(
            {
                keys.ATTACK_KIND: str(attack.kind),
                keys.ATTACK_SCALE: float(attack.scale),
                keys.ATTACK_TARGET: int(attack.target),
            }
        )
    return extra
