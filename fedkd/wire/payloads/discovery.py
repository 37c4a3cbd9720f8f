"""Discovery: what a client tells the server once, before the first round."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
from flwr.app import MetricRecord, RecordDict

from fedkd.wire import keys
from fedkd.wire.payloads.base import MAX_EXAMPLES, Reporting


@dataclass(frozen=True)
class Discovery:
    """A client's answer to the ``query`` message: partition id, training example count,
    label histogram and architecture index.

    The server maps partition ids to node ids with it (sampling is keyed on partition ids),
    caps the example count every later reply may report, and keeps the histograms for
    label-aware teacher rules and ``partitions.json``. Without a privacy mechanism both are
    exact and the histogram sums to the count; under one, the count is a public bound
    (:func:`fedkd.privacy.public_examples`) and the histogram is withheld (then
    ``label_histogram`` is empty) unless ``privacy.allow_unprotected`` names
    ``label-histogram``; an allowed histogram must fit the bound (see
    :meth:`~fedkd.wire.payloads.base.Reporting.histogram_problem`; docs/PRIVACY.md).
    ``num_examples`` is the count the client reported, which its train replies repeat.
    """

    partition_id: int
    num_examples: int
    label_histogram: tuple[int, ...]
    architecture: int = 0

    @staticmethod
    def compute(
        *,
        partition_id: int,
        train_y: np.ndarray,
        num_classes: int,
        architecture: int,
        num_examples: int | None = None,
    ) -> MetricRecord:
        """The client's reply record (``metrics``); ``num_examples``: the count to report
        (default: the exact one)."""
        histogram = np.bincount(train_y, minlength=num_classes)
        return MetricRecord(
            {
                keys.PARTITION_ID: partition_id,
                keys.NUM_EXAMPLES: len(train_y) if num_examples is None else num_examples,
                keys.LABEL_HISTOGRAM: [int(c) for c in histogram],
                keys.ARCHITECTURE: architecture,
            }
        )

    @staticmethod
    def decode(
        content: RecordDict,
        *,
        num_classes: int | None = None,
        num_partitions: int | None = None,
        num_architectures: int | None = None,
        require_histogram: bool = True,
        reporting: Reporting | None = None,
    ) -> Discovery:
        """The server's view of a discovery reply, checked against the run's classes,
        partitions and client architectures when given, and the histogram against the
        example count as ``reporting`` (the run's privacy mechanism; default: exact counts)
        says. ``require_histogram=False`` (the histogram is withheld under a privacy
        mechanism) accepts a count alone; otherwise an answer without a histogram is
        unusable. An answer without a count gets the one its histogram implies.

        Raises
        ------
        ValueError
            The reply is not a usable discovery answer; the message says why.
        """
        reporting = reporting or Reporting()
        if keys.METRICS not in content.metric_records:
            raise ValueError("missing metrics")
        metrics: dict[str, Any] = dict(content.metric_records[keys.METRICS])
        partition_id = metrics.get(keys.PARTITION_ID)
        if not _is_int(partition_id):
            raise ValueError("missing partition-id")
        if num_partitions is not None and not 0 <= partition_id < num_partitions:
            raise ValueError(f"partition-id {partition_id} outside [0, {num_partitions})")
        histogram = metrics.get(keys.LABEL_HISTOGRAM)
        count = metrics.get(keys.NUM_EXAMPLES)
        if count is not None and not (_is_int(count) and 1 <= count <= MAX_EXAMPLES):
            raise ValueError(f"num-examples must be an integer in [1, {MAX_EXAMPLES}]")
        if not require_histogram:  # withheld under a privacy mechanism: the count alone
            if count is None:
                raise ValueError("missing num-examples")
            counts: tuple[int, ...] = ()
        else:
            if not isinstance(histogram, list) or not all(_is_int(c) for c in histogram):
                raise ValueError("missing label-histogram or not integer counts")
            counts = tuple(histogram)
            if num_classes is not None and len(counts) != num_classes:
                raise ValueError(f"label-histogram has {len(counts)} classes, not {num_classes}")
            if any(c < 0 for c in counts):
                raise ValueError("label-histogram has negative counts")
            total = sum(counts)
            if total > MAX_EXAMPLES:
                raise ValueError(f"label-histogram sums to more than {MAX_EXAMPLES}")
            if count is None:
                count = reporting.examples(total)
            problem = reporting.histogram_problem(total, count)
            if problem is not None:
                raise ValueError(
                    f"label-histogram counts {problem} num-examples "
                    f"({total} against {count}{'' if reporting.exact else ', a public bound'})"
                )
        architecture = metrics.get(keys.ARCHITECTURE, 0)
        if not _is_int(architecture) or (
            num_architectures is not None and not 0 <= architecture < num_architectures
        ):
            raise ValueError(f"architecture {architecture!r} is not one of the run's")
        return Discovery(
            partition_id=partition_id,
            num_examples=int(count),
            label_histogram=counts,
            architecture=architecture,
        )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
