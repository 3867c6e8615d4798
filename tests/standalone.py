"""A Spark standalone cluster on 127.0.0.1 for tests and benchmarks: a master and workers as
separate processes, started with the launch classes that ship with pyspark, stopped on exit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: each socket stays bound until all are chosen (ports
    chosen one at a time can repeat, and a worker's web UI then took the master's)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextmanager
def standalone_cluster(work: Path, workers: int = 2, cores: int = 1, memory: str = "1g",
                       timeout: float = 90.0):
    """Yields the master's URL (``spark://127.0.0.1:PORT``) once ``workers`` workers of
    ``cores`` cores have registered; every process it started is stopped when the block ends.
    Logs are in ``work``."""
    import pyspark

    home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_WORKER_DIR": str(work / "workers"), "PYSPARK_PYTHON": sys.executable}
    port, ui, *worker_uis = free_ports(2 + workers)
    master = f"spark://127.0.0.1:{port}"
    launched = []

    def launch(name: str, *args: str) -> None:
        with open(work / f"{name}.log", "w") as log:
            launched.append(subprocess.Popen(
                [str(home / "bin" / "spark-class"), *args], env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True))

    try:
        launch("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
               "--port", str(port), "--webui-port", str(ui))
        for n in range(workers):
            launch(f"worker{n}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                   "--cores", str(cores), "--memory", memory, "--webui-port", str(worker_uis[n]),
                   master)
        deadline = time.monotonic() + timeout
        while True:  # the master's JSON page counts the workers that registered
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as r:
                    if json.load(r).get("aliveworkers", 0) >= workers:
                        break
            except (OSError, ValueError):  # not up yet, or a page that is not its JSON yet
                pass
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-1500:] for p in sorted(work.glob("*.log")))
                raise RuntimeError(f"the standalone cluster did not start in {timeout:.0f} s:"
                                   f"\n{logs}")
            time.sleep(0.5)
        yield master
    finally:
        for proc in launched:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in launched:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
