"""fedkd: federated distillation simulation on Flower."""

import time as _time

__version__ = "0.1.0"

#: ``time.perf_counter()`` when fedkd was first imported: where ``/proc`` cannot tell when
#: the process started, :mod:`fedkd.run.timing` counts a run's start-up from here.
IMPORTED_AT = _time.perf_counter()
