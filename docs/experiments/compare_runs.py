"""Compare the ``metrics.jsonl`` of two sets of run directories, timing fields aside.

``python docs/experiments/compare_runs.py BEFORE AFTER``: for every run directory in BEFORE,
the rows of AFTER's directory of the same name must be equal key for key, value for value
and in the same key order (so the files are byte-identical but for ``seconds``). Prints one
line per run and exits 1 when any differs or is missing.

Rows are compared by the metric names of fedkd 0.2 (``fedkd.run.names``): a row of fedkd 0.1
(old keys only) is renamed first, and the federated evaluation's new key, which 0.1 wrote
only as ``client_accuracy``, is left out (its value is ``client_accuracy``'s, compared).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fedkd.run import names

TIMING = "seconds"
SKIPPED = (names.GLOBAL_EVALUATED, names.LOCAL_EVALUATED)


def rows(path: Path) -> list[list[tuple[str, object]]]:
    """The rows of a metrics.jsonl as ordered (key, value) lists, by the new names, timing
    fields and the federated evaluation's new key dropped."""
    with path.open() as lines:
        return [
            [
                (k, v)
                for k, v in names.with_aliases(json.loads(line)).items()
                if not k.endswith(TIMING) and k not in SKIPPED
            ]
            for line in lines
        ]


def first_difference(a: list, b: list) -> str:
    for number, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            left, right = dict(x), dict(y)
            changed = sorted(k for k in left.keys() | right.keys() if left.get(k) != right.get(k))
            return f"round {number}: {changed or 'key order'}"
    return f"{len(a)} rows against {len(b)}"


def main(before: Path, after: Path) -> int:
    failures = 0
    for run in sorted(p for p in before.iterdir() if (p / "metrics.jsonl").exists()):
        other = after / run.name / "metrics.jsonl"
        if not other.exists():
            print(f"MISSING {run.name}")
            failures += 1
            continue
        a, b = rows(run / "metrics.jsonl"), rows(other)
        if a == b:
            final = dict(a[-1]).get("student_accuracy")
            print(f"same    {run.name} (final student_accuracy {final})")
        else:
            print(f"DIFFERS {run.name}: {first_difference(a, b)}")
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
