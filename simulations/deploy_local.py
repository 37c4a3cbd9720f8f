"""``python -m simulations.deploy_local [overrides]``: a real Flower deployment on 127.0.0.1.

One command runs what docs/DEPLOYMENT.md describes for real machines, on loopback: a
throwaway CA and server certificate (``openssl``), one SSH key pair per SuperNode
(``ssh-keygen``), a ``flower-superlink`` with TLS and SuperNode authentication, the public
keys registered with ``flwr supernode register``, N ``flower-supernode`` processes, and one
run submitted with ``flwr run``. The real outcome comes from ``flwr ls --format json`` and
the run directory's ``summary.json`` (``flwr run --stream`` exits 0 even when the ServerApp
failed). Every process it started is stopped by pid at the end, also on error, Ctrl-C or
SIGTERM, and every exit once they have started leaves ``summary.json`` in the run directory
(status ``completed``, ``failed`` or ``interrupted``; written by the launcher from
``metrics.jsonl`` when the ServerApp did not get to). At the end it prints the results
table of a normal run. Exit codes: 0 completed, 1 failed or timed out, 2 invalid
configuration (nothing started), 130 SIGINT, 143 SIGTERM.

Arguments are the Hydra overrides of ``python -m simulations.run`` plus launcher options
written as ``deploy.<key>=<value>``, which are taken out before the config is composed:

==================  ==========================================================================
``deploy.nodes``    number of SuperNodes; must equal ``num_clients`` (default: ``num_clients``
                    when given, else 3, and ``num_clients`` is then set to it)
``deploy.port``     the SuperLink's one HTTPS port (default: a free port)
``deploy.out_dir``  the run directory (default: a normal run's with ``-deploy``,
                    ``outputs/<date>/<time>-<strategy>-<dataset>-deploy``); every process's
                    log goes to its ``logs/``
``deploy.timeout``  seconds for the whole deployment (default 600)
``deploy.workdir``  certificates, keys and ``FLWR_HOME`` (default: a temporary directory,
                    removed at the end)
``deploy.certs_dir`` a directory with ``ca.crt``, ``server.crt`` and ``server.key`` to use
                    instead of generating a throwaway CA
``deploy.data_files`` ``true``: every SuperNode gets its partition as its own data file;
                    ``[a.csv,b.csv,...]``: the user's own files, one per SuperNode in
                    order (default ``false``)
==================  ==========================================================================

Every SuperNode gets ``partition-id=i num-partitions=N`` as its node config, so each
ClientApp rebuilds its own partition exactly as under ``flwr run``'s simulation. With
``deploy.data_files=true`` the launcher writes each partition to ``<workdir>/data/node-i.npz``
and adds ``data-file="..."`` to that node's config: the client then trains on the file, as a
real client with its own records does (``fedkd.data.local_files``; same numbers). With
``deploy.data_files=[a.csv,b.csv,...]`` node ``i`` gets the ``i``-th file as its
``data-file`` (csv, npz or parquet by extension; label column ``label``); the list must
name one existing file per node, else the launcher exits 2 before anything starts.

The code lives in the package :mod:`simulations.deploy` (options, PKI, processes,
orchestration); this module is its command-line entry point and re-exports its API.
"""

from __future__ import annotations

import sys

from simulations.deploy import (
    DeployError,
    DeployOptions,
    DeployResult,
    LocalFederation,
    deploy,
    main,
    make_certificates,
    run_config_argument,
    settle_num_clients,
    split_arguments,
    write_cli_config,
    write_node_data,
)

__all__ = [
    "DeployError",
    "DeployOptions",
    "DeployResult",
    "LocalFederation",
    "deploy",
    "main",
    "make_certificates",
    "run_config_argument",
    "settle_num_clients",
    "split_arguments",
    "write_cli_config",
    "write_node_data",
]

if __name__ == "__main__":
    sys.exit(main())
