"""``simulations.deploy`` via ``simulations.deploy_local``: SuperLink + SuperNodes, TLS + auth."""

from __future__ import annotations

import json
import os
import re
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
    StudentSize,
    check_data_files,
    deploy,
    main,
    make_certificates,
    node_config,
    run_config_argument,
    settle_num_clients,
    settle_summary,
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

#: The end-to-end deployment: FedMD with secure aggregation of its shared predictions (the
#: protocol's four stages cross TLS between separate SuperNode processes; issue 22).
SECURE = [*TINY, "strategy=fedmd", "secagg.enabled=true", "num_rounds=1"]

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


def test_data_files_take_true_false_or_one_existing_file_per_node(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("f0,label\n1,0\n")
    b.write_text("f0,label\n1,0\n")
    assert split_arguments(["deploy.data_files=true"])[1].data_files is True
    assert split_arguments([])[1].data_files is False
    _, options = split_arguments([f"deploy.data_files=[{a}, {b}]"])
    assert options.data_files == (a, b)
    assert node_config(1, 2, options.data_files[1]) == (
        f'partition-id=1 num-partitions=2 data-file="{b}"'
    )
    with pytest.raises(ConfigError, match=r"no such file: .*missing\.csv"):
        split_arguments([f"deploy.data_files=[{a},{tmp_path / 'missing.csv'}]"])
    with pytest.raises(ConfigError, match="true, false or a list"):
        split_arguments(["deploy.data_files=yes"])
    check_data_files(options.data_files, 2)
    with pytest.raises(ConfigError, match="names 2 files for 3 SuperNodes"):
        check_data_files(options.data_files, 3)
    work = tmp_path / "work"  # the CLI: one line, exit 2, nothing started
    assert main([*TINY, "num_clients=3", f"deploy.data_files=[{a},{b}]",
                 f"deploy.workdir={work}"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "names 2 files for 3 SuperNodes" in err and len(err.strip().splitlines()) == 1
    assert not work.exists()


def _finished_rounds(run_dir: Path, rounds: int) -> dict[str, Any]:
    """A run directory as an interrupted ServerApp leaves it: config.yaml, metrics.jsonl."""
    from fedkd.config import compose_config
    from fedkd.run.results import RunWriter

    cfg = compose_config(settle_num_clients(TINY, 2)[0])
    writer = RunWriter(run_dir)
    writer.start(cfg)
    for r in range(rounds + 1):
        writer.append({"round": r, "student_accuracy": 0.5 + r / 10, "uplink_bytes": 100 * r})
    return cfg


def test_the_launcher_writes_the_summary_the_serverapp_did_not(tmp_path):
    run_dir = tmp_path / "run"
    cfg = _finished_rounds(run_dir, 2)
    summary = settle_summary(
        run_dir, cfg, StudentSize(10, 40), status="interrupted", error="interrupted (SIGINT)",
        wall_seconds=1.0,
    )  # fmt: skip
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert summary["status"] == "interrupted" and summary["rounds_completed"] == 2
    assert summary["final"]["student_accuracy"] == pytest.approx(0.7)
    assert summary["communication"]["uplink_bytes"] == 300  # 100 + 200, round 0 not counted
    assert summary["strategy"] == "feddf" and summary["parameters"] == 10
    # A summary the ServerApp wrote as failed (killed with the SuperLink) says interrupted;
    # one that says completed is kept.
    settled = settle_summary(
        run_dir, cfg, StudentSize(10, 40), status="failed", error="deploy.timeout",
        wall_seconds=1.0,
    )  # fmt: skip
    assert settled["status"] == "failed" and settled["serverapp_status"] == "interrupted"
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "completed"}))
    kept = settle_summary(
        run_dir, cfg, StudentSize(10, 40), status="interrupted", error="x", wall_seconds=1.0
    )
    assert kept["status"] == "completed"


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
    assert "insecure" not in connection
    # simulations.flwr_local's simulation SuperLink: plain HTTP on loopback
    plain = tomli.loads(write_cli_config(tmp_path, port=1, ca_cert=None).read_text())
    assert plain["superlink"]["fedkd-local"] == {"address": "127.0.0.1:1", "insecure": True}


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
    """One real deployment of a FedMD round under secure aggregation: 3 SuperNodes that
    train on their own data files and a fourth whose file is malformed; an unregistered
    SuperNode tries to join first."""
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

    overrides, _ = settle_num_clients(SECURE, 4)
    files = write_node_data(compose_config(overrides), base / "data")
    bad = _malformed_copy(files[3], base / "data" / "node-3-malformed.csv")
    started = time.perf_counter()
    result = deploy(
        SECURE,
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
def test_three_supernodes_aggregate_securely_over_tls_with_auth(deployment):
    result = deployment["result"]
    assert result.status == "completed", (result.status_details, result.logs_dir)
    assert result.ok
    assert len(set(result.node_ids)) == 4
    assert (result.run_dir / "config.yaml").is_file()
    # what a normal run writes besides the numbers: the server's log and the checkpoint
    assert (result.run_dir / "checkpoint.pt").is_file()
    assert "][fedkd." in (result.run_dir / "run.log").read_text()
    # every process's log, in the run directory (the work directory is throwaway)
    assert result.logs_dir == result.run_dir / "logs"
    logs = {path.name for path in result.logs_dir.iterdir()}
    assert {"superlink.log", "flwr-run.log", "intruder.log"} <= logs
    assert {f"node-{i}.log" for i in range(4)} <= logs
    rows = read_metrics(result.run_dir)
    assert [row["round"] for row in rows] == [0, 1]
    assert [row["clients_ok"] for row in rows[1:]] == [3]  # the malformed node is out
    # secure aggregation: the survivors' sum was unmasked, nothing crossed in the clear
    assert [row["secagg_survivors"] for row in rows[1:]] == [3]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["num_clients"] == 4
    released = {r["key"]: r["protection"] for r in summary["privacy"]["releases"]}
    assert released["predictions/secagg-masked"] == "secure_aggregation"
    assert not [key for key in released if key.endswith("proxy-probs")]
    # Every SuperNode connected under the id its registration returned.
    for i, node_id in enumerate(result.node_ids):
        assert f"SuperNode ID: {node_id}" in (result.logs_dir / f"node-{i}.log").read_text()
    print(f"3-node deployment, 1 round: {deployment['seconds']:.1f} s wall")


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
def test_a_signal_stops_every_started_process_and_leaves_the_summary(tmp_path):
    """Ctrl-C once round 1 is in metrics.jsonl: every process is stopped, and summary.json
    says interrupted with the finished rounds (the ServerApp, killed with the SuperLink,
    does not get to write it; the launcher does). SIGTERM takes the same handler
    (test_sigterm_unwinds_the_launcher_like_ctrl_c). Without deploy.out_dir, the run
    directory is a normal run's name plus ``-deploy``, under the working directory, and
    every log path the launcher printed is still there after it exits."""
    signum, code = signal.SIGINT, 130
    work = tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulations.deploy_local", *TINY, "num_rounds=30",
         "num_clients=2", f"deploy.workdir={work}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        run_dir = None
        while time.monotonic() < deadline and proc.poll() is None:
            found = list((tmp_path / "outputs").glob("*/*"))
            run_dir = found[0] if found else None
            metrics = run_dir / "metrics.jsonl" if run_dir else tmp_path / "none"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, output[-3000:]
    assert "interrupted" in output
    assert _processes_mentioning(str(work)) == []
    assert run_dir is not None and run_dir.parent.parent == tmp_path / "outputs"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", run_dir.parent.name), run_dir
    assert re.fullmatch(r"\d\d-\d\d-\d\d-feddf-synthetic-deploy", run_dir.name), run_dir
    printed = re.findall(r"log (/\S+\.log)", output)
    assert len(printed) == 3 and all(Path(path).is_file() for path in printed), output[-3000:]
    assert {Path(path).parent for path in printed} == {run_dir / "logs"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary
    rounds = [row["round"] for row in read_metrics(run_dir)]
    assert rounds == list(range(len(rounds))) and len(rounds) >= 2
    assert summary["rounds_completed"] == rounds[-1] < 30


CANARY = "CANARY-Jane-Doe-123-45-6789"


def _canary_files(directory: Path) -> list[Path]:
    """Three CSV files of real partitions, each with the canary where loading rejects it:
    a feature cell, a label cell, the header line (a wrongly chosen file)."""
    from fedkd.config import compose_config
    from fedkd.data import LocalDataSpec, load_local_data, write_local_data
    from simulations.deploy import write_node_data

    npz = write_node_data(compose_config(settle_num_clients(TINY, 3)[0]), directory / "npz")
    files = []
    for index in range(3):
        x, y = load_local_data(LocalDataSpec(path=npz[index], format="npz"))
        path = write_local_data(directory / f"site-{index}.csv", x, y)
        lines = path.read_text().splitlines()
        cells = lines[3].split(",")
        if index == 0:
            cells[0] = CANARY  # a feature cell
        elif index == 1:
            cells[-1] = CANARY  # a label
        else:
            lines[0] = f"{CANARY},{CANARY} diagnosis"  # the header of another file
        lines[3] = ",".join(cells)
        path.write_text("\n".join(lines) + "\n")
        files.append(path)
    return files


@needs_tools
@needs_flower
@pytest.mark.slow
def test_a_planted_record_in_the_users_data_files_never_reaches_the_server(tmp_path):
    """deploy.data_files=[...] with a canary in a feature cell, a label and a header: every
    node's loading fails, the server learns which file and line, never the value; nothing
    on the server's side (SuperLink and ServerApp logs, the launcher's output, the run
    directory) holds any part of it."""
    files = _canary_files(tmp_path / "data")
    work, run_dir = tmp_path / "work", tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.deploy_local", *TINY, "num_rounds=1",
         "num_clients=3", f"deploy.data_files=[{','.join(map(str, files))}]",
         f"deploy.workdir={work}", f"deploy.out_dir={run_dir}", "deploy.timeout=300"],
        cwd=REPO, capture_output=True, text=True, timeout=400, check=False,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]  # no node could load its data: run failed
    assert f"results in {run_dir}" in output  # the results table of the failed run
    logs = run_dir / "logs"
    for i, path in enumerate(files):  # each node loaded its own file, and rejected it
        assert path.name in (logs / f"node-{i}.log").read_text(errors="replace")
    server_log = (logs / "flwr-run.log").read_text()  # the ServerApp's stream
    # the reasons did cross (so the check below is not vacuous), naming file and line
    assert server_log.count("failed discovery") == 3, server_log[-3000:]
    assert "site-0.csv" in server_log and "line 4" in server_log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    seen: dict[str, str | Path] = {"launcher output": output}
    # everything in the run directory but the clients' own logs (logs/node-*.log: what each
    # SuperNode printed; on real machines they stay with the client that owns the data)
    seen.update({str(p): p for p in run_dir.rglob("*") if p.is_file()
                 if not (p.parent == logs and p.name.startswith("node-"))})  # fmt: skip
    assert {"superlink.log", "flwr-run.log"} <= {Path(p).name for p in seen}
    seen.update({str(p): p for p in (work / "superlink").rglob("*") if p.is_file()})
    for where, source in seen.items():
        text = source if isinstance(source, str) else source.read_text(errors="replace")
        lowered = text.lower()
        for fragment in ("canary", "jane", "123-45", "diagnosis"):
            assert fragment not in lowered, f"{fragment!r} reached {where}"


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


def test_sigterm_unwinds_the_launcher_like_ctrl_c():
    """The launcher's handler turns SIGINT and SIGTERM alike into DeployInterrupted, which
    unwinds through every ``finally`` (processes stopped, summary settled) and sets the exit
    code to 128 + the signal."""
    from fedkd.run.interrupt import exit_code
    from simulations.deploy.errors import DeployInterrupted
    from simulations.deploy.processes import _signals_raise

    before = signal.getsignal(signal.SIGTERM)
    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        with pytest.raises(DeployInterrupted) as raised, _signals_raise():
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises before this ends
        assert raised.value.signum == signum and exit_code(raised.value) == code
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
