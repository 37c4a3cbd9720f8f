"""fedkd: federated distillation simulation on Flower."""

import time as _time

__version__ = "0.2.0"

#: ``time.perf_counter()`` when fedkd was first imported: where ``/proc`` cannot tell when
#: the process started, :mod:`fedkd.run.timing` counts a run's start-up from here.
IMPORTED_AT = _time.perf_counter()
#: The process's CPU seconds at that moment (:mod:`fedkd.run.timing` tells from it whether
#: the process is older than its Python interpreter).
IMPORTED_CPU = _time.process_time()
