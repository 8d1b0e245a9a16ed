"""The Ray runner on a real two-node Ray cluster on this machine (`ray start --head`, then a second
node joining it, each with one CPU), as a user would run one. Skipped only without the ray extra."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cosal_cli import io, methods
from cosal_cli.cli import app
from cosal_cli.runners import cluster
from cosal_cli.runners.summary import Summary
from cosal_cli.runners.worker import GroupTask, GroupWorker, WorkerSpec

from . import ray_support
from .conftest import EXAMPLES, REPO, SilentReporter, seed_gain_home

# Token authentication (Ray's default for local clusters from 2.59 on), with one token for the test cluster's
# nodes, this process and the commands the tests start. Set before Ray is imported: it reads its configuration
# once, at import.
os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
RAY = Path(sys.executable).with_name("ray")
CLUSTER_TEMP: dict[str, Path] = {}  # the test cluster's address -> its temporary folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and a second node joining it, one CPU each: ``host:port`` of the head."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    # short (Ray's sockets live under it), and unique, as it identifies the cluster's processes
    temp = CLUSTER_TEMP[address] = Path(f"/tmp/cosal-ray-{os.getpid()}-{secrets.token_hex(3)}")
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    head = [str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--include-dashboard", "false", "--temp-dir", str(temp), *common]  # fmt: skip
    join = [str(RAY), "start", "--address", address, "--node-ip-address", "127.0.0.1", *common]
    try:
        for command in (head, join):
            started = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)
            assert started.returncode == 0, f"{' '.join(command)}: {started.stderr[-3000:]}"
        yield address
    finally:
        stop_cluster(temp)


def stop_cluster(temp: Path) -> None:
    """Kill this cluster's processes (those naming its temporary folder, and their descendants), not any
    other Ray cluster of the machine (`ray stop` would stop them all), then remove the folder."""
    for pid in cluster_processes(temp):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(temp, ignore_errors=True)


def cluster_processes(temp: Path) -> dict[int, str]:
    """pid -> command line of the processes of the cluster using ``temp``, and of their descendants (the
    agents and the workers, whose process titles do not name it)."""
    listing = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True)
    table = {int(row[0]): (int(row[1]), row[2] if len(row) == 3 else "")
             for row in (line.split(None, 2) for line in listing.stdout.splitlines())}  # fmt: skip
    naming = re.compile(re.escape(str(temp)) + r"(/|\s|$)")  # not a longer name it is the start of
    found = {pid for pid, (_, args) in table.items() if naming.search(args)}
    grown = True
    while grown:
        children = {pid for pid, (parent, _) in table.items() if parent in found}
        grown = not children <= found
        found |= children
    return {pid: table[pid][1] for pid in found if pid != os.getpid()}


@pytest.fixture
def slow_method(tmp_path, monkeypatch):
    """``test-slow`` registered here and (through the runtime environment) in every worker."""
    home, manifest, _ = seed_gain_home(tmp_path, "test-slow")
    for name, value in (("COSAL_HOME", str(home)), ("COSAL_MANIFEST", str(manifest))):
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(sys.modules, ray_support.MODULE, None)  # both removed again after the test
    monkeypatch.setitem(methods.CARDS, "test-slow", None)
    ray_support.register()
    env_vars = {"COSAL_HOME": str(home), "COSAL_MANIFEST": str(manifest), "PYTHONPATH": str(REPO)}
    return {"env_vars": env_vars, "worker_process_setup_hook": "tests.ray_support.register"}


def groups_of(folder: Path, groups: int, images: int) -> Path:
    rng = np.random.default_rng(0)
    for group in range(groups):
        for index in range(images):
            pixels = rng.integers(0, 255, (24 + index, 32, 3), dtype=np.uint8)
            (folder / f"g{group}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"g{group}" / f"{index}.png")
    return folder


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def detect(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["detect", *args, "--json", "--offline"])
    return result.exit_code, json.loads(result.stdout)


def test_detect_on_two_ray_workers_writes_the_local_runners_bytes(ray_cluster, real_weights, tmp_path):
    home = real_weights("efficientnet-lite0-imagenet").parents[1]
    runtime = json.dumps({"env_vars": {"COSAL_HOME": str(home)}})
    local_code, local = detect(str(EXAMPLES / "Image"), "-o", str(tmp_path / "local"), "--threads", "1")
    code, summary = detect(str(EXAMPLES / "Image"), "-o", str(tmp_path / "ray"), "--runner", "ray", "--ray-address",
                           ray_cluster, "--workers", "2", "--ray-runtime-env", runtime)  # fmt: skip
    assert local_code == code == 0
    assert summary["runner"] == "ray" and summary["workers"] == 2 and summary["retries"] == 0
    assert summary["counts"] == local["counts"] and summary["counts"]["written"] == 14
    assert files_of(tmp_path / "ray") == files_of(tmp_path / "local")
    assert [group["name"] for group in summary["groups"]] == [group["name"] for group in local["groups"]]


def test_tta_flip_reaches_the_ray_workers(ray_cluster, tmp_path):
    arguments = (str(EXAMPLES / "Image"), "-m", "gmr", "--threads", "1")
    local_code, local = detect(*arguments, "--tta", "flip", "-o", str(tmp_path / "local"))
    code, summary = detect(*arguments, "--tta", "flip", "-o", str(tmp_path / "ray"), "--runner", "ray",
                           "--ray-address", ray_cluster, "--workers", "2")  # fmt: skip
    plain_code, _ = detect(*arguments, "-o", str(tmp_path / "plain"))
    assert local_code == code == plain_code == 0
    assert summary["tta"] == local["tta"] == "flip" and summary["counts"]["written"] == 14
    assert files_of(tmp_path / "ray") == files_of(tmp_path / "local")
    assert files_of(tmp_path / "ray") != files_of(tmp_path / "plain")  # the workers did flip


def test_a_killed_worker_costs_a_retry_and_no_map(ray_cluster, slow_method, tmp_path):
    inputs = groups_of(tmp_path / "in", groups=6, images=3)
    killed = []

    class KillingReporter:  # at the first finished group both workers hold a group: kill them mid-run
        def notice(self, message): ...
        def problem(self, problem): ...
        def advance(self, images): ...
        def doing(self, text): ...

        def group_done(self, report):
            if not killed:
                killed.extend(kill_workers(ray_cluster))

    options = cluster.ClusterOptions(ray_cluster, workers=2, runtime_env=slow_method)
    summary = cluster.run(io.discover([inputs]), "test-slow", tmp_path / "out", cluster=options, offline=True,
                          reporter=KillingReporter())  # fmt: skip
    assert killed, "no worker process found to kill"
    assert summary.exit_code == 0 and not summary.failures and summary.retries >= 1, summary.failures[:1]
    assert any("its worker died or was restarting" in notice for notice in summary.notices)
    outputs = [entry["output"] for group in summary.groups for entry in group.outputs]
    assert len(outputs) == len(set(outputs)) == 18 and summary.written == 18
    written = sorted((tmp_path / "out").rglob("*"))
    assert [path.name for path in written if path.is_file() and not path.name.endswith(".png")] == []
    for path in (path for path in written if path.is_file()):
        with Image.open(path) as image:
            image.load()  # whole PNGs only


def kill_workers(address: str) -> list[int]:
    """SIGKILL the cosal workers of the cluster at ``address`` (Ray titles them ``ray::GroupWorker...``),
    not those of another cluster on the machine."""
    processes = cluster_processes(CLUSTER_TEMP[address])
    pids = [pid for pid, args in processes.items() if args.startswith("ray::GroupWorker")]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def test_a_group_that_kills_every_worker_fails_after_a_bounded_number_of_sends(ray_cluster, slow_method, tmp_path):
    inputs = groups_of(tmp_path / "in", groups=2, images=2)
    (inputs / "g1").rename(inputs / "poison")
    options = cluster.ClusterOptions(ray_cluster, workers=2, runtime_env=slow_method)
    summary = cluster.run(io.discover([inputs]), "test-slow", tmp_path / "out", cluster=options, offline=True,
                          reporter=SilentReporter())  # fmt: skip
    assert summary.exit_code == 1 and summary.written == 2 and summary.retries == cluster.MAX_SENDS - 1
    assert [problem.group for problem in summary.failures] == ["poison", "poison"]
    assert f"each of the {cluster.MAX_SENDS} times group poison was sent" in summary.failures[0].message
    assert not (tmp_path / "out" / "poison").exists()


def test_bench_on_ray_scores_like_local(ray_cluster, real_weights, tmp_path):
    home = real_weights("efficientnet-lite0-imagenet").parents[1]
    runtime = json.dumps({"env_vars": {"COSAL_HOME": str(home)}})
    scores = {}
    for runner in ("local", "ray"):
        on_ray = ["--runner", "ray", "--ray-address", ray_cluster, "--ray-runtime-env", runtime]
        extra = on_ray if runner == "ray" else []
        result = CliRunner().invoke(app, ["bench", "-d", str(EXAMPLES), "-o", str(tmp_path / runner), "--json",
                                          "--offline", *extra])  # fmt: skip
        assert result.exit_code == 0, result.stdout[-2000:]
        scores[runner] = json.loads(result.stdout)
    local, remote = (scores[runner]["datasets"][0]["methods"][0] for runner in ("local", "ray"))
    assert local["metrics"] == remote["metrics"] and local["metrics"]
    assert remote["detect"]["counts"]["written"] == 14 and remote["detect"]["runner"] == "ray"


def test_write_on_workers_writes_the_same_files_into_a_shared_folder(ray_cluster, slow_method, tmp_path):
    inputs = groups_of(tmp_path / "in", groups=3, images=2)
    options = cluster.ClusterOptions(ray_cluster, workers=2, runtime_env=slow_method, write_on_workers=True)
    summary = cluster.run(io.discover([inputs]), "test-slow", tmp_path / "shared", cluster=options, offline=True,
                          reporter=SilentReporter())  # fmt: skip
    sent = cluster.run(io.discover([inputs]), "test-slow", tmp_path / "sent", cluster=cluster.ClusterOptions(
        ray_cluster, workers=2, runtime_env=slow_method), offline=True, reporter=SilentReporter())  # fmt: skip
    assert summary.exit_code == sent.exit_code == 0 and summary.written == sent.written == 6
    assert files_of(tmp_path / "shared") == files_of(tmp_path / "sent")
    assert "driver_write_s" not in summary.timings and "driver_write_s" in sent.timings


def test_skip_existing_sends_only_unfinished_groups(ray_cluster, slow_method, tmp_path):
    inputs = groups_of(tmp_path / "in", groups=3, images=2)
    options = cluster.ClusterOptions(ray_cluster, workers=2, runtime_env=slow_method)
    first = cluster.run(io.discover([inputs]), "test-slow", tmp_path / "out", cluster=options, offline=True,
                        reporter=SilentReporter())  # fmt: skip
    (tmp_path / "out" / "g1" / "0.png").unlink()
    again = cluster.run(io.discover([inputs]), "test-slow", tmp_path / "out", cluster=options, offline=True,
                        existing="skip", reporter=SilentReporter())  # fmt: skip
    assert first.written == 6 and again.written == 1 and again.skipped == 5 and again.exit_code == 0


INTERRUPTIONS = [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")]


@pytest.mark.parametrize("signal_number, code, name", INTERRUPTIONS)
def test_ctrl_c_or_sigterm_on_the_driver_stops_the_cluster_and_leaves_whole_maps(
    ray_cluster, slow_method, tmp_path, signal_number, code, name
):
    inputs = groups_of(tmp_path / "in", groups=8, images=2)
    slower = {**slow_method["env_vars"], "COSAL_TEST_SECONDS_PER_GROUP": "1.5"}
    environment = {**os.environ, **slower}
    runtime = json.dumps({**slow_method, "env_vars": slower})
    command = [sys.executable, "-c", "import tests.ray_support as s; s.register(); from cosal_cli.cli import main; "
               "main()", "detect", str(inputs), "-o", str(tmp_path / "out"), "-m", "test-slow", "--runner", "ray",
               "--ray-address", ray_cluster, "--workers", "2", "--ray-runtime-env", runtime, "--json", "--offline"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
                               cwd=REPO)  # fmt: skip
    deadline = time.monotonic() + 90
    while not list((tmp_path / "out").rglob("*.png")) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=90)
    assert process.returncode == code, stderr[-2000:]
    summary = json.loads(stdout)
    assert summary["interrupted"] and summary["signal"] == name and 0 < summary["counts"]["written"] < 16
    files = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert len(files) == summary["counts"]["written"] and all(path.suffix == ".png" for path in files)


def test_inputs_the_workers_cannot_see_fail_clearly_and_the_other_groups_run(ray_cluster, slow_method, tmp_path):
    inputs = groups_of(tmp_path / "in", groups=3, images=2)
    discovery = io.discover([inputs])
    shutil.rmtree(inputs / "g1")  # seen when the inputs were listed, gone when a worker reads them
    options = cluster.ClusterOptions(ray_cluster, workers=2, runtime_env=slow_method)
    summary = cluster.run(discovery, "test-slow", tmp_path / "out", cluster=options, offline=True,
                          reporter=SilentReporter())  # fmt: skip
    assert summary.exit_code == 1 and summary.written == 4 and len(summary.failures) == 2
    assert all("every node sees" in problem.message and problem.group == "g1" for problem in summary.failures)


def test_a_worker_that_cannot_see_the_inputs_fails_their_images_naming_the_shared_path(slow_method, tmp_path):
    inputs = groups_of(tmp_path / "in", groups=1, images=2)
    group = io.discover([inputs]).groups[0]
    worker = GroupWorker(WorkerSpec("test-slow", "cpu", offline=True))
    for image in (inputs / "g0").iterdir():
        image.unlink()
    (inputs / "g0").rmdir()
    result = worker.process(GroupTask(0, group, io.SaveSpec()))
    assert len(result.failures) == 2 and not result.encoded and not result.internal_error
    assert "every node sees" in result.failures[0].message and str(inputs / "g0") in result.failures[0].message


def test_a_worker_that_cannot_load_the_method_makes_the_driver_raise_its_error(slow_method, monkeypatch, tmp_path):
    monkeypatch.setenv("COSAL_HOME", str(tmp_path / "empty-home"))
    info = GroupWorker(WorkerSpec("test-slow", "cpu", offline=True)).describe()
    assert info.error is not None and info.error[0] == "WeightsUnavailable"


def test_runner_ray_without_the_extra_is_a_usage_error_naming_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as without the extra
    result = CliRunner().invoke(app, ["detect", str(EXAMPLES / "Image"), "-o", str(tmp_path / "o"), "--runner",
                                      "ray", "--json"])  # fmt: skip
    assert result.exit_code == 2 and "cosal-cli[ray]" in json.loads(result.stdout)["error"]
    result = CliRunner().invoke(app, ["detect", str(EXAMPLES / "Image"), "-o", str(tmp_path / "o"), "--workers", "2"])
    assert result.exit_code == 2 and "--runner ray" in result.output


def test_the_summary_json_names_the_runner_for_local_runs_too():
    data = Summary("m", "cpu", "out").to_json()
    assert data["runner"] == "local" and data["workers"] == 1 and data["retries"] == 0


def test_cuda_without_gpus_per_worker_and_gpus_the_cluster_lacks_are_usage_errors(ray_cluster, tmp_path):
    base = ["detect", str(EXAMPLES / "Image"), "-o", str(tmp_path / "o"), "--runner", "ray", "--json"]
    result = CliRunner().invoke(app, [*base, "--device", "cuda"])
    assert result.exit_code == 2 and "--gpus-per-worker above 0" in json.loads(result.stdout)["error"]
    result = CliRunner().invoke(app, [*base, "--ray-address", ray_cluster, "--gpus-per-worker", "1", "--offline"])
    message = json.loads(result.stdout)["error"]
    assert result.exit_code == 2 and "0 GPU(s): not enough for one worker" in message, message
