"""A real multi-node Ray cluster on 127.0.0.1 for tests: ``ray start`` processes, one per node.

    cluster = LocalRayCluster(tmp_root)
    cluster.start_head(num_cpus=1)
    worker = cluster.add_worker(num_cpus=1)
    ... cluster.address ...
    cluster.kill_node(worker)        # SIGKILL the node's raylet and every process under it
    cluster.stop()

Each node runs ``ray start --block`` in its own session, so a node can be killed on its own
(what a crashed VM looks like to the head).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.http_server import unused_port

RAY = Path(sys.executable).with_name("ray")


class LocalRayCluster:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Ray puts unix sockets under its temp dir: keep the path short.
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        self.port = unused_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        self.node_ids: dict[int, str] = {}
        # Token authentication, as a real cluster should run: every node and driver gets the
        # token through the environment (not ~/.ray/auth_token, shared with other clusters).
        self.env = dict(
            os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)
        )
        self.env.pop("RAY_ADDRESS", None)

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [str(RAY), "start", "--block", "--node-ip-address=127.0.0.1", "--object-store-memory=100000000", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env,
        )
        self.nodes.append(proc)
        return proc

    def start_head(self, num_cpus: int = 1) -> subprocess.Popen:
        proc = self._start(
            [
                "--head",
                f"--port={self.port}",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                "--include-dashboard=false",
                f"--temp-dir={self.temp_dir}",
            ],
            "head",
        )
        self.wait_nodes(1)
        return proc

    def add_worker(self, num_cpus: int = 1) -> subprocess.Popen:
        """Start a worker node; its Ray node id is ``self.node_ids[proc.pid]``."""
        before = self.alive_nodes()
        proc = self._start(
            [f"--address={self.address}", f"--num-cpus={num_cpus}", "--num-gpus=0"], f"worker{len(self.nodes)}"
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            new = self.alive_nodes() - before
            if new:
                self.node_ids[proc.pid] = sorted(new)[0]
                return proc
            if proc.poll() is not None:
                raise RuntimeError(
                    "ray worker exited:\n" + (self.log_dir / f"worker{len(self.nodes) - 1}.log").read_text()[-3000:]
                )
            time.sleep(0.5)
        raise RuntimeError("the worker node did not join in 90 s")

    def alive_nodes(self) -> set[str]:
        """Ids of the alive nodes, as ``ray status`` lists them."""
        out = subprocess.run(
            [str(RAY), "status", f"--address={self.address}"], capture_output=True, text=True, env=self.env, timeout=60
        )
        if out.returncode != 0:
            return set()
        active = out.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return set(re.findall(r"^\s*\d+\s+node_([0-9a-f]+)", active, flags=re.M))

    def wait_nodes(self, n: int, timeout: float = 90.0) -> set[str]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p in self.nodes:
                if p.poll() is not None and p in self.nodes[:1]:
                    raise RuntimeError("ray head exited:\n" + (self.log_dir / "head.log").read_text()[-3000:])
            alive = self.alive_nodes()
            if len(alive) >= n:
                return alive
            time.sleep(0.5)
        raise RuntimeError(f"the Ray cluster did not reach {n} nodes in {timeout:.0f} s")

    @staticmethod
    def processes(node: subprocess.Popen) -> list[psutil.Process]:
        """The node's ``ray start`` process and every process under it (raylet, workers)."""
        try:
            root = psutil.Process(node.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def remove_node(self, node: subprocess.Popen, timeout: float = 60.0) -> None:
        """Kill a node and wait until the head no longer lists it (the next test starts clean)."""
        self.kill_node(node)
        node_id = self.node_ids.get(node.pid)
        deadline = time.time() + timeout
        while node_id and node_id in self.alive_nodes() and time.time() < deadline:
            time.sleep(0.5)

    def kill_node(self, node: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        for p in reversed(self.processes(node)):
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.kill_node(node)
        # Processes that left the tree (daemonised helpers) still carry the temp dir.
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(self.temp_dir in part for part in (p.info["cmdline"] or [])):
                    p.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        self.nodes.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
