"""``simulations.deploy`` via ``simulations.deploy_local``: SuperLink + SuperNodes, TLS + auth."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from shutil import which
from typing import Any

import pytest
import tomli
from cryptography import x509
from flwr.common.config import parse_config_args

from fedkd.errors import ConfigError
from fedkd.run.results import read_metrics
from simulations.deploy import (
    DeployError,
    LocalFederation,
    deploy,
    main,
    make_certificates,
    run_config_argument,
    settle_num_clients,
    split_arguments,
    write_cli_config,
)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY = [
    "dataset=synthetic",
    "dataset.num_samples=300",
    "num_rounds=2",
    "strategy=feddf",
    "strategy.fraction_evaluate=0",  # each message is a fresh clientapp process: keep few
    "client.epochs=1",
]

needs_tools = pytest.mark.skipif(
    which("openssl") is None or which("ssh-keygen") is None,
    reason="openssl and ssh-keygen are needed for the certificates and SuperNode keys",
)
needs_flower = pytest.mark.skipif(
    any(which(tool, path=str(BIN)) is None for tool in ("flwr", "flower-superlink")),
    reason="the Flower CLI is not installed beside this interpreter",
)


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or environment contains ``text``.

    An independent route to "nothing is left running": the SuperNodes' superexec children
    carry the work directory only in their environment (``FLWR_HOME``).
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            pids.append(int(entry.name))
    return pids


# ----------------------------------------------------------------------- fast unit tests


def test_split_arguments_takes_out_launcher_options(tmp_path):
    overrides, options = split_arguments(
        ["strategy=feddf", "deploy.nodes=4", f"deploy.workdir={tmp_path}", "deploy.timeout=90"]
    )
    assert overrides == ["strategy=feddf"]
    assert (options.nodes, options.workdir, options.timeout_seconds) == (4, tmp_path, 90.0)
    assert options.port is None and options.certs_dir is None
    with pytest.raises(ConfigError, match=r"deploy\.bogus"):
        split_arguments(["deploy.bogus=1"])
    with pytest.raises(ConfigError, match=r"deploy\.port"):
        split_arguments(["deploy.port=70000"])


def test_num_clients_follows_the_number_of_nodes():
    assert settle_num_clients(["seed=1"], None) == (["seed=1", "num_clients=3"], 3)
    assert settle_num_clients(["seed=1"], 5) == (["seed=1", "num_clients=5"], 5)
    assert settle_num_clients(["num_clients=4"], None) == (["num_clients=4"], 4)
    with pytest.raises(ConfigError, match=r"deploy\.nodes=2 must equal num_clients=4"):
        settle_num_clients(["num_clients=4"], 2)


@pytest.mark.parametrize(
    ("overrides", "inline"),
    [
        (["strategy=feddf", "num_rounds=2"], True),
        (["dataset.path=/data/with space", "seed=3"], True),  # shlex's '...' inside "..."
        (['dataset.path="quoted"'], False),  # shlex's '...' around a ": a TOML file
        (["experiment=it's"], False),  # shlex writes ' as '"'"'
    ],
)
def test_run_config_round_trips_through_flowers_parser(overrides, inline, tmp_path):
    argument = run_config_argument(overrides, tmp_path / "out", spill_dir=tmp_path)
    assert argument.endswith(".toml") is not inline
    parsed = parse_config_args([argument])
    assert parsed["out-dir"] == str(tmp_path / "out")
    assert shlex.split(str(parsed["overrides"])) == overrides


@needs_tools
def test_certificates_name_localhost_and_chain_to_the_ca(tmp_path):
    creds = make_certificates(tmp_path)
    cert = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(creds.ca_cert), str(creds.server_cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr


def test_cli_config_names_the_connection_with_an_absolute_ca(tmp_path):
    path = write_cli_config(tmp_path, port=12345, ca_cert=Path("ca.crt"))
    config = tomli.loads(path.read_text())
    connection = config["superlink"]["fedkd-local"]
    assert config["superlink"]["default"] == "fedkd-local"
    assert connection["address"] == "127.0.0.1:12345"
    assert Path(connection["root-certificates"]).is_absolute()


# --------------------------------------------------- bad input: fails before anything runs


def test_bad_config_exits_2_before_any_process_starts(tmp_path, capsys):
    work = tmp_path / "work"
    code = main([*TINY, "num_rounds=0", f"deploy.workdir={work}"])
    assert code == 2
    assert "num_rounds" in capsys.readouterr().err
    assert not work.exists()  # no certificates, no keys, no logs: nothing was started
    assert main(["strategy=nope", f"deploy.workdir={work}"]) == 2
    assert "strategy/nope" in capsys.readouterr().err
    assert main(["num_clients=4", "deploy.nodes=2"]) == 2
    assert not work.exists()


@needs_tools
@needs_flower
def test_port_in_use_is_named_and_nothing_is_started(tmp_path, capsys):
    work = tmp_path / "work"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main([*TINY, f"deploy.port={port}", f"deploy.workdir={work}"])
        assert code == 1
        assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err
        # The SuperLink's own check, for callers that drive LocalFederation directly.
        federation = LocalFederation(work, port=port, credentials=make_certificates(work / "certs"))
        with federation, pytest.raises(DeployError, match=f"port {port}"):
            federation.start_superlink()
        assert federation.started_pids == []
    assert _processes_mentioning(str(work)) == []


def test_certs_dir_missing_a_file_is_named(tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_text("x")
    (certs / "server.crt").write_text("x")
    with pytest.raises(DeployError, match=r"lacks server\.key"):
        deploy(TINY, certs_dir=certs, workdir=tmp_path / "work")
    assert not (tmp_path / "work" / "logs").exists()


# ------------------------------------------- end to end: 3 SuperNodes, TLS, SuperNode auth


def _malformed_copy(source: Path, target: Path) -> Path:
    """A CSV of the node's records with one feature value that is not a number."""
    from fedkd.data import LocalDataSpec, load_local_data, write_local_data

    x, y = load_local_data(LocalDataSpec(path=source, format="npz"))
    write_local_data(target, x, y)
    lines = target.read_text().splitlines()
    cells = lines[2].split(",")
    cells[0] = "n/a"
    lines[2] = ",".join(cells)
    target.write_text("\n".join(lines) + "\n")
    return target


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> dict[str, Any]:
    """One real deployment of 2 FedDF rounds: 3 SuperNodes that train on their own data files
    and a fourth whose file is malformed; an unregistered SuperNode tries to join first."""
    if which("openssl") is None or which("ssh-keygen") is None:
        pytest.skip("openssl and ssh-keygen are needed for the certificates and SuperNode keys")
    if which("flower-superlink", path=str(BIN)) is None:
        pytest.skip("the Flower CLI is not installed beside this interpreter")
    base = tmp_path_factory.mktemp("deploy")
    intruder: dict[str, Any] = {}

    def let_an_intruder_try(federation: LocalFederation) -> None:
        record = federation.start_unregistered_supernode("intruder")
        intruder["log"] = record.log
        intruder["exit_code"] = federation.wait_exit("intruder", timeout=60)
        intruder["members_running"] = [
            federation.process(f"node-{i}").poll() is None for i in range(4)
        ]

    from fedkd.config import compose_config
    from simulations.deploy import write_node_data

    overrides, _ = settle_num_clients(TINY, 4)
    files = write_node_data(compose_config(overrides), base / "data")
    bad = _malformed_copy(files[3], base / "data" / "node-3-malformed.csv")
    started = time.perf_counter()
    result = deploy(
        TINY,
        nodes=4,
        out_dir=base / "run",
        workdir=base / "work",
        timeout_seconds=500,
        data_files=True,
        node_data={3: bad},
        on_ready=let_an_intruder_try,
    )
    return {
        "result": result,
        "intruder": intruder,
        "seconds": time.perf_counter() - started,
        "work": base / "work",
    }


@pytest.mark.slow
def test_three_supernodes_run_feddf_over_tls_with_auth(deployment):
    result = deployment["result"]
    assert result.status == "completed", (result.status_details, result.logs_dir)
    assert result.ok
    assert len(set(result.node_ids)) == 4
    assert (result.run_dir / "config.yaml").is_file()
    rows = read_metrics(result.run_dir)
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert [row["clients_ok"] for row in rows[1:]] == [3, 3]  # the malformed node is out
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["num_clients"] == 4
    # Every SuperNode connected under the id its registration returned.
    for i, node_id in enumerate(result.node_ids):
        assert f"SuperNode ID: {node_id}" in (result.logs_dir / f"node-{i}.log").read_text()
    print(f"3-node deployment, 2 rounds: {deployment['seconds']:.1f} s wall")


@pytest.mark.slow
def test_no_started_process_outlives_the_deployment(deployment):
    result = deployment["result"]
    names = {record.name for record in result.processes}
    assert {"superlink", "node-0", "node-1", "node-2", "node-3", "intruder", "flwr-run"} <= names
    for record in result.processes:
        assert not Path(f"/proc/{record.pid}").exists() or (
            Path(f"/proc/{record.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        ), record
    assert _processes_mentioning(str(deployment["work"])) == []


@pytest.mark.slow
def test_unregistered_supernode_is_refused_and_the_federation_carries_on(deployment):
    intruder = deployment["intruder"]
    assert intruder["exit_code"] == 1  # it gave up by itself (auth failures are not retried)
    log = intruder["log"].read_text()
    assert "2004" in log, log[-2000:]
    superlink_log = (deployment["result"].logs_dir / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in superlink_log
    assert intruder["members_running"] == [True, True, True, True]
    assert deployment["result"].ok


@needs_tools
@needs_flower
@pytest.mark.slow
def test_ctrl_c_stops_every_started_process(tmp_path):
    work = tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulations.deploy_local", *TINY, f"deploy.workdir={work}",
         f"deploy.out_dir={tmp_path / 'run'}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        last_node_log = work / "logs" / "node-2.log"
        while time.monotonic() < deadline and proc.poll() is None:
            if last_node_log.is_file() and "SuperNode ID" in last_node_log.read_text():
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted" in output
    assert _processes_mentioning(str(work)) == []


@pytest.mark.slow
def test_a_node_with_a_malformed_data_file_fails_clearly_on_that_node(deployment):
    """Its ClientApp raises a DataFileError naming the file and the column; the server
    leaves the node out at discovery and both rounds complete with the other three."""
    result = deployment["result"]
    node_log = (result.logs_dir / "node-3.log").read_text()
    assert "node-3-malformed.csv" in node_log and "not numeric" in node_log, node_log[-3000:]
    for i in range(3):
        assert "DataFileError" not in (result.logs_dir / f"node-{i}.log").read_text()
    assert result.ok
