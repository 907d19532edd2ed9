"""blockExternalNetwork on a standard dockerd (iptables on, as on Batch VMs), through the agent.

A standard dockerd turns ip_forward on, sets the FORWARD policy to DROP and adds rules of its
own. The one started here has that configuration but lives in a network and mount namespace of
its own (`unshare`), so none of it touches the host: not the host's firewall, nor the engines
of other test sessions. In that namespace: lo, plus VM_ADDRESS standing for the VM's own
address; a tmpfs on /run and a sysfs of the namespace (the host's cgroup mounts moved onto it,
dockerd needs them). Its socket is in a temp dir, so the agent (in the host's namespaces) talks
to it as to any engine; "the VM's" server runs in the namespace through `nsenter`.

It skips, saying why, only when this machine cannot give a network namespace in which
iptables works (not root, no util-linux, a kernel without netfilter); a daemon that then fails
to start is a failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import docker_support
from tests.docker_support import BUSYBOX_IMAGE, Unavailable
from tests.helpers import exit_code, job, wait_until

pytestmark = pytest.mark.timeout(300)

TASK0 = "projects/123456789012/locations/us-central1/jobs/job-1/taskGroups/group0/tasks/0"
VM_ADDRESS = "198.51.100.1"  # TEST-NET-2: routed nowhere on any real host

# Run as `sh -ec PROLOGUE sh CGROUP_STAGING dockerd ARGS...` inside the new namespaces.
PROLOGUE = f"""
staging=$1; shift
mount -t tmpfs tmpfs /run
mount --rbind /sys/fs/cgroup "$staging"
mount -t sysfs sysfs /sys
mount --move "$staging" /sys/fs/cgroup
ip link set lo up
ip addr add {VM_ADDRESS}/32 dev lo
exec "$@"
"""

# A TCP server answering `hello` to every connection; prints its port once listening.
HELLO_SERVER = """
import socket
server = socket.socket()
server.bind(("0.0.0.0", 0))
server.listen(16)
print(server.getsockname()[1], flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(b"hello\\n")
"""

CONNECTS = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)"


class StandardDockerd:
    """dockerd with its defaults (iptables, ip-forward, docker0) in namespaces of its own."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bdi-", dir="/tmp"))  # a short socket path
        self.host = f"unix://{self.dir}/docker.sock"
        self.log_path = self.dir / "dockerd.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> None:
        """Start it and wait until it answers; raises Unavailable with its log if it does not."""
        (self.dir / "cgroup").mkdir()
        argv = [
            *("unshare", "--net", "--mount", "--propagation", "private", "--"),
            *("sh", "-ec", PROLOGUE, "sh", str(self.dir / "cgroup")),
            shutil.which("dockerd") or "/usr/sbin/dockerd",
            *("--data-root", str(self.dir / "data")),
            *("--exec-root", str(self.dir / "x")),
            *("--pidfile", str(self.dir / "dockerd.pid")),
            *("-H", self.host),
            *("--log-level", "warn"),
        ]
        ready = lambda: docker_support.answers(self.host)  # noqa: E731
        self._process = docker_support.serve(argv, self.log_path, ready, timeout, self.stop)

    def inside(self, *argv: str, **popen: Any) -> subprocess.Popen[bytes]:
        """Start `argv` in the daemon's network namespace (the rest is the host's)."""
        assert self._process is not None
        target = ("nsenter", "--target", str(self._process.pid), "--net", "--")
        return subprocess.Popen([*target, *argv], **popen)

    def stop(self) -> None:
        """Remove its containers and networks, stop it; its namespaces go with it."""
        if self._process is not None and self._process.poll() is None:
            try:
                docker_support.clean_engine(self.host)
            finally:
                self._process.send_signal(signal.SIGTERM)
                try:
                    self._process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _require_netns_with_iptables() -> None:
    """Skip unless root can make a network namespace in which iptables works."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace and a dockerd of its own")
    for command in ("unshare", "nsenter"):
        if shutil.which(command) is None:
            pytest.skip(f"no `{command}` (util-linux) to isolate the daemon")
    try:
        docker_support.ensure_commands("dockerd", "ip", "iptables", "busybox")
    except Unavailable as e:
        pytest.skip(str(e))
    probe = ["unshare", "--net", "--", "iptables", "-w", "60", "-S", "FORWARD"]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=90)
    if done.returncode != 0:
        pytest.skip(f"no iptables in a network namespace here: {done.stderr.strip()[-300:]}")


@dataclass
class Vm:
    """The daemon, and the servers outside the task's network: the VM's, another network's."""

    daemon: StandardDockerd
    targets: list[str]  # "address:port" a blockExternalNetwork container must not reach
    other_network: str


@pytest.fixture(scope="module")
def vm() -> Iterator[Vm]:
    """A standard dockerd in namespaces of its own, a server on its VM, one in another network."""
    _require_netns_with_iptables()
    daemon = StandardDockerd()
    try:
        daemon.start()
        docker_support.import_busybox(daemon.host)
    except Unavailable as e:
        daemon.stop()
        pytest.fail(f"a standard dockerd did not start in its namespace: {e}")
    server = daemon.inside(sys.executable, "-c", HELLO_SERVER, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        yield _serving(daemon, port)
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
        daemon.stop()


def _serving(daemon: StandardDockerd, vm_port: int) -> Vm:
    """Start a `hello` server in a container of another network; the targets to probe."""
    other = f"other-{secrets.token_hex(3)}"
    c = docker_support.client(daemon.host)
    try:
        c.api.create_network(other, driver="bridge")
        container = c.api.create_container(
            BUSYBOX_IMAGE,
            ["nc", "-ll", "-p", "8080", "-e", "echo", "hello"],
            host_config=c.api.create_host_config(network_mode=other),
        )
        c.api.start(container)
        settings = c.api.inspect_container(container)["NetworkSettings"]
        other_ip = settings["Networks"][other]["IPAddress"]
    finally:
        c.close()
    gateway = _address_of(daemon, "docker0")  # IPAM has no Gateway on a first start (20.10)
    targets = [f"{gateway}:{vm_port}", f"{VM_ADDRESS}:{vm_port}", f"{other_ip}:8080"]
    for target in targets:  # all up, seen from the VM itself
        wait_until(lambda t=target: _connects(daemon, *t.split(":")), timeout=30, what=target)
    return Vm(daemon, targets, other)


def _address_of(daemon: StandardDockerd, device: str) -> str:
    listing = daemon.inside("ip", "-4", "-o", "addr", "show", device, stdout=subprocess.PIPE)
    out, _ = listing.communicate(timeout=30)
    return out.decode().split()[3].split("/")[0]  # "4: docker0    inet 172.17.0.1/16 ..."


def _connects(daemon: StandardDockerd, address: str, port: str) -> bool:
    probe = daemon.inside(sys.executable, "-c", CONNECTS, address, port, stderr=subprocess.DEVNULL)
    return probe.wait(timeout=30) == 0


def _forward_rules(daemon: StandardDockerd) -> str:
    listing = daemon.inside("iptables", "-w", "60", "-S", "FORWARD", stdout=subprocess.PIPE)
    out, _ = listing.communicate(timeout=90)
    return out.decode()


def container(command: str, **fields: Any) -> dict[str, Any]:
    """A busybox container runnable running `command` with sh."""
    extra = {k: fields.pop(k) for k in list(fields) if k != "background"}
    return {
        "container": {
            "imageUri": BUSYBOX_IMAGE,
            "entrypoint": "/bin/sh",
            "commands": ["-c", command],
            **extra,
        },
        **fields,
    }


def test_block_external_network_on_a_dockerd_with_iptables(make_emulator, start_agent, vm):
    """Under FORWARD DROP, a task's blockExternalNetwork containers reach each other by name but
    neither the VM's addresses nor another network's container, which the same probe reaches
    from a container without blockExternalNetwork."""
    assert "-P FORWARD DROP" in _forward_rules(vm.daemon)  # the Batch VM configuration
    peer = f"peer-{secrets.token_hex(3)}"
    probe = "; ".join(
        f"echo | nc -w 2 {t.replace(':', ' ')} >/dev/null && echo reached {t}" for t in vm.targets
    )
    config = job(
        container(
            "echo from-peer | nc -l -p 8080",
            blockExternalNetwork=True,
            options=f"--name {peer}",
            background=True,
        ),
        container(
            f"for i in $(seq 100); do nc -w 2 {peer} 8080 && exit 0; sleep 0.2; done; exit 1",
            blockExternalNetwork=True,
        ),
        container(f"{probe}; true", blockExternalNetwork=True),
        container(f"{probe}; true", options=f"--network {vm.other_network}"),
    )
    emu = make_emulator(config)
    agent = start_agent(emu, "--once", DOCKER_HOST=vm.daemon.host)
    assert agent.wait(180) == 0, agent.log()
    log = agent.log()
    assert exit_code(emu, TASK0) == 0, log
    assert "[task 0 r2 stdout] from-peer" in log, log
    for target in vm.targets:
        assert f"[task 0 r3 stdout] reached {target}" not in log, log
        assert f"[task 0 r4 stdout] reached {target}" in log, log
