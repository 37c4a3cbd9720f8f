"""flwr-datasets' four partitioners restated on numpy arrays: the same draws, the same clients.

Importing ``flwr_datasets`` imports Hugging Face ``datasets``, pandas, pyarrow, matplotlib
and seaborn: about 2 s, as long as importing torch, for arithmetic that needs only numpy.
So :func:`fedkd.data.partition.partition_indices` runs these instead. Each function follows
its flwr-datasets 0.6 class step by step (``IidPartitioner``, ``DirichletPartitioner``,
``PathologicalPartitioner``, ``ContinuousPartitioner``) on a table whose row ``i`` is
sample ``i``, and consumes the seeded generator in the same order, so every partition is
the one the class gives; ``tests/fedkd/data/test_partitioners.py`` compares them with the
classes over a grid of sizes, seeds and options. Only the final shuffle within each client
is left out: it is the generator's last use and the indices come back sorted.

Each function returns, per partition, the sorted int64 row indices; an impossible request
raises ``ValueError`` (as the classes do) and questionable ones warn (``warnings.warn``).
"""

from __future__ import annotations

import warnings

import numpy as np

#: flwr-datasets' DirichletPartitioner samples at most this many more times when a client
#: gets fewer than ``min_partition_size`` samples, then gives up.
DIRICHLET_MAX_RETRIES = 10


def _sorted_parts(parts: list[list[int]] | list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def iid_parts(num_rows: int, num_partitions: int) -> list[np.ndarray]:
    """``IidPartitioner``: contiguous shards of the rows, the first ``num_rows %
    num_partitions`` one row longer (``datasets.Dataset.shard(contiguous=True)``)."""
    return _sorted_parts(np.array_split(np.arange(num_rows, dtype=np.int64), num_partitions))


def dirichlet_parts(
    labels: np.ndarray,
    num_partitions: int,
    *,
    alpha: float,
    min_partition_size: int,
    self_balancing: bool,
    seed: int,
) -> list[np.ndarray]:
    """``DirichletPartitioner``: per class (in sorted order), client shares drawn from
    ``Dir(alpha)``, the class's rows cut at the cumulative shares; with ``self_balancing`` a
    client already above the mean size gets no more. Redrawn (with a warning) while a client
    has fewer than ``min_partition_size`` rows, at most :data:`DIRICHLET_MAX_RETRIES` times."""
    rng = np.random.default_rng(seed=seed)
    alphas = np.array([float(alpha)], dtype=float).repeat(num_partitions)
    targets = np.asarray(labels)
    unique_classes = sorted(np.unique(targets).tolist())
    mean_size = len(targets) / num_partitions
    sampling_try = 0
    while True:
        assigned: dict[int, list[int]] = {pid: [] for pid in range(num_partitions)}
        for k in unique_classes:
            rows_of_k = np.nonzero(targets == k)[0]
            proportions = rng.dirichlet(alphas)
            shares = {pid: proportions[pid] for pid in range(num_partitions)}
            if self_balancing:
                for pid in shares.copy():
                    if len(assigned[pid]) > mean_size:
                        shares[pid] = 0
                total = sum(shares.values())
                for pid, share in shares.copy().items():
                    shares[pid] = share / total
            cuts = (np.cumsum(list(shares.values())) * len(rows_of_k)).astype(int)[:-1]
            for pid, rows in enumerate(np.split(rows_of_k, cuts)):
                assigned[pid].extend(rows.tolist())
        sizes = [len(rows) for rows in assigned.values()]
        if min(sizes) >= min_partition_size:
            break
        warnings.warn(
            f"The specified min_partition_size ({min_partition_size}) was not satisfied for "
            f"alpha ({[alphas[i] for i, s in enumerate(sizes) if s == min(sizes)]}) after "
            f"{sampling_try} attempts at sampling from the Dirichlet distribution; sampling "
            "again",
            stacklevel=2,
        )
        if sampling_try == DIRICHLET_MAX_RETRIES:
            raise ValueError(
                f"The max number of attempts ({DIRICHLET_MAX_RETRIES}) was reached. Please "
                "update the values of alpha and try again."
            )
        sampling_try += 1
    return _sorted_parts(list(assigned.values()))


def pathological_parts(
    labels: np.ndarray,
    num_partitions: int,
    *,
    classes_per_client: int,
    class_assignment_mode: str,
    seed: int,
) -> list[np.ndarray]:
    """``PathologicalPartitioner``: each client is given ``classes_per_client`` classes
    (``first-deterministic``: class ``pid % C`` then seeded draws; ``deterministic``:
    ``pid, pid + 1, ...``; ``random``: seeded draws without replacement), and each class's
    rows are cut into equal contiguous pieces among the clients that have it. Classes no
    client has are left out (with a warning)."""
    rng = np.random.default_rng(seed=seed)
    targets = np.asarray(labels)
    unique_labels: list[int] = sorted(np.unique(targets).tolist())
    num_unique = len(unique_labels)
    if classes_per_client > num_unique:
        raise ValueError(
            f"classes_per_client={classes_per_client} is greater than the number of classes "
            f"in the data ({num_unique})"
        )
    classes_of: dict[int, list[int]] = {pid: [] for pid in range(num_partitions)}
    if class_assignment_mode == "first-deterministic":
        for pid in range(num_partitions):
            classes_of[pid].append(unique_labels[pid % num_unique])
            while len(classes_of[pid]) < classes_per_client:
                label = rng.choice(unique_labels, size=1)[0]
                if label not in classes_of[pid]:
                    classes_of[pid].append(label)
    elif class_assignment_mode == "deterministic":
        for pid in range(num_partitions):
            classes_of[pid] = [
                unique_labels[(pid + i) % num_unique] for i in range(classes_per_client)
            ]
    elif class_assignment_mode == "random":
        for pid in range(num_partitions):
            classes_of[pid] = rng.choice(
                unique_labels, size=classes_per_client, replace=False
            ).tolist()
    else:
        raise ValueError(f"unknown class_assignment_mode {class_assignment_mode!r}")
    clients_per_label = {label: 0 for label in unique_labels}
    for classes in classes_of.values():
        for label in classes:
            clients_per_label[label] += 1
    for label in unique_labels:
        available = int(np.sum(targets == label))
        if clients_per_label[label] > available:
            raise ValueError(
                f"Label: {label} is needed to be assigned to more partitions "
                f"({clients_per_label[label]}) than there are samples (corresponding to this "
                f"label) in the dataset ({available})"
            )
    assigned: dict[int, list[int]] = {pid: [] for pid in range(num_partitions)}
    unused = []
    for label in unique_labels:
        if clients_per_label[label] == 0:
            unused.append(label)
            continue
        pieces = np.array_split(np.where(targets == label)[0], clients_per_label[label])
        piece = 0
        for pid in range(num_partitions):
            if label in classes_of[pid]:
                assigned[pid].extend(pieces[piece])
                piece += 1
    if unused:
        warnings.warn(
            f"Classes: {unused} will NOT be used due to the chosen configuration",
            stacklevel=2,
        )
    return _sorted_parts(list(assigned.values()))


def continuous_parts(
    values: np.ndarray, num_partitions: int, *, strictness: float, seed: int
) -> list[np.ndarray]:
    """``ContinuousPartitioner``: the float32 column standardised, blended with seeded
    Gaussian noise (``strictness * z + (1 - strictness) * eps``), the rows sorted by the
    blend and cut into ``num_partitions`` contiguous shards (client 0 the lowest)."""
    rng = np.random.default_rng(seed)
    column = np.array(values, dtype=np.float32)
    if np.isnan(column).any():
        raise ValueError("the column contains NaN values")
    std = np.std(column)
    if std < 1e-6 and strictness > 0:
        raise ValueError(f"cannot standardize a column with near-zero std (std={std})")
    standardized = (column - np.mean(column)) / std
    noise = rng.normal(loc=0, scale=1, size=len(standardized))
    blended = strictness * standardized + (1 - strictness) * noise
    return _sorted_parts(np.array_split(np.argsort(blended), num_partitions))
