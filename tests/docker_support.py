"""A real Docker engine and a private registry for tests, from Debian packages, nothing pulled.

Which engine: the one DOCKER_HOST names, if set (an explicit choice: the engine must answer);
otherwise always a private `dockerd` (`DockerDaemon`) under a temp dir, never an engine that
merely happens to answer at /var/run/docker.sock. That one is the machine's: on a Batch VM or a
CI runner it has its own containers, its own configuration (iptables, storage, mirrors) and
other users (concurrent test sessions would share it and its network names), so results would
depend on the machine. A private daemon is the same everywhere and is removed with the session.

The private daemon lives next to other engines on the same host without disturbing them:

- `--bridge BR` on a bridge of its own (created here with `ip link`, on a 10.X.0.0/24 that no
  host route uses): the default `docker0` belongs to whoever started the first engine, and a
  second daemon would share it (or, with `--bridge=none`, delete it);
- `--iptables=false --ip-forward=false`: no rules of docker's in the host's shared iptables
  chains, no host-wide sysctl change. Containers on its networks still reach the host (the
  bridge IP), nothing beyond; blockExternalNetwork does not depend on iptables here
  (see `ContainerEngine.ensure_internal_network`);
- `--default-address-pool` inside the same 10.X.0.0/16, so its user networks do not collide
  with those of another daemon;
- one iptables rule of its own, `FORWARD -s POOL -d POOL -j ACCEPT`, inserted before it starts
  and deleted when it stops. A standard dockerd (iptables on, as on Batch VMs) sets the FORWARD
  policy to DROP and loads br_netfilter, after which even frames between two ports of one
  bridge traverse FORWARD: without the rule, two containers of one network of the private
  daemon cannot talk (`nc: timed out`). The rule only matches traffic from its pool to its
  pool, a /16 no host route uses, so it opens nothing else; it is added whenever `iptables`
  works (such a daemon may start after ours), and a firewall that is not iptables is not
  handled. Running the daemon in a network namespace of its own would avoid the rule, but its
  containers would then not reach this process's servers (the registry on 127.0.0.1, the test
  servers on the host) as a Batch VM's containers reach the VM.

`import_busybox` builds `local/busybox:latest` from the static busybox of the host; `Registry`
runs Debian's `docker-registry` with htpasswd auth on 127.0.0.1 (plain HTTP: engines treat
127.0.0.0/8 as an insecure registry by default).
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors

BUSYBOX_IMAGE = "local/busybox:latest"
PACKAGES = {  # a command we need -> the Debian package that has it
    "dockerd": "docker.io",
    "busybox": "busybox-static",
    "docker-registry": "docker-registry",
    "htpasswd": "apache2-utils",
    "ip": "iproute2",
    "iptables": "iptables",
}
_apt_updated = False


class Unavailable(Exception):
    """What the tests need cannot be had on this machine; the message says why."""


def client(host: str, timeout: float = 30) -> Any:
    """A docker SDK client of `host`; close it (the SDK leaves sockets open otherwise)."""
    return docker.DockerClient(base_url=host, version="auto", timeout=timeout)


def answers(host: str) -> bool:
    """Whether a Docker engine answers at `host` (blocks at most a few seconds)."""
    if host.startswith("unix://"):  # the SDK leaks its socket when this connect fails
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(host.removeprefix("unix://"))
            except OSError:
                return False
    try:
        c = docker.DockerClient(base_url=host, version="auto", timeout=3)
    except docker.errors.DockerException:
        return False
    try:
        return bool(c.ping())
    except Exception:
        return False
    finally:
        c.close()


def engine_host() -> str | None:
    """The engine DOCKER_HOST names, None if it is unset (see the module docstring).

    Raises Unavailable if it is set but no engine answers there.
    """
    host = os.environ.get("DOCKER_HOST")
    if not host:
        return None
    if not answers(host):
        raise Unavailable(f"no Docker engine answers at DOCKER_HOST={host}")
    return host


def ensure_commands(*commands: str) -> None:
    """Install the Debian packages of the missing `commands` (apt-get update once per process).

    Raises Unavailable if that is impossible (not root, no apt-get, no network...).
    """
    global _apt_updated
    missing = [c for c in commands if not _have(c)]
    if not missing:
        return
    packages = sorted({PACKAGES[c] for c in missing})
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(f"missing {', '.join(missing)}; cannot apt-get install {packages}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]]
    if not _apt_updated:
        steps.insert(0, ["apt-get", "update", "-qq"])
    for step in steps:
        done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise Unavailable(f"{' '.join(step)} failed: {done.stderr.strip()[-500:]}")
        _apt_updated = _apt_updated or step[1] == "update"
    still = [c for c in commands if not _have(c)]
    if still:
        raise Unavailable(f"{packages} installed but {still} still missing")


def _have(command: str) -> bool:
    if command == "busybox":  # it must be the static one: it runs in an empty image
        return Path("/bin/busybox").exists() and b"ld-linux" not in _head("/bin/busybox")
    return shutil.which(command) is not None or Path("/usr/sbin", command).exists()


def _head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(4096)


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise Unavailable(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


class DockerDaemon:
    """A private `dockerd` under a temp dir; see the module docstring for its flags."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bd-", dir="/tmp"))  # a short socket path
        self.host = f"unix://{self.dir}/docker.sock"
        self.bridge = f"bat{os.getpid() % 100000}{random.randrange(100):02d}"[:15]
        self.log_path = self.dir / "dockerd.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._bridge_made = False
        self._rule: list[str] | None = None  # the FORWARD rule it inserted, to delete

    def start(self, timeout: float = 60) -> None:
        """Start dockerd and wait until it answers; raises Unavailable with its log if not.

        On failure, `stop()` still has to be called to remove what was made.
        """
        ensure_commands("dockerd", "ip")
        subnet = _free_subnet()
        first = next(subnet.subnets(new_prefix=24).__iter__())
        _run("ip", "link", "add", "name", self.bridge, "type", "bridge")
        self._bridge_made = True
        _run("ip", "addr", "add", f"{first[1]}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        self._accept_forwarding(subnet)
        argv = [
            shutil.which("dockerd") or "/usr/sbin/dockerd",
            *("--data-root", str(self.dir / "data")),
            *("--exec-root", str(self.dir / "x")),
            *("--pidfile", str(self.dir / "dockerd.pid")),
            *("-H", self.host),
            *("--bridge", self.bridge),
            "--iptables=false",
            "--ip-forward=false",
            *("--default-address-pool", f"base={subnet},size=24"),
            *("--log-level", "warn"),
        ]
        self._process = serve(argv, self.log_path, lambda: answers(self.host), timeout, self.stop)

    def stop(self) -> None:
        """Remove its containers and networks, stop it, delete its bridge and files."""
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(Exception):
                clean_engine(self.host)
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._bridge_made:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
            self._bridge_made = False
        if self._rule is not None:
            _iptables("-D", *self._rule)
            self._rule = None
        _unmount_below(self.dir)  # dockerd leaves its netns bind mounts behind
        shutil.rmtree(self.dir, ignore_errors=True)

    def _accept_forwarding(self, pool: ipaddress.IPv4Network) -> None:
        """Insert `FORWARD -s pool -d pool -j ACCEPT` if iptables works here (see the module
        docstring); nothing to do where it does not, as nothing can then filter with it."""
        if os.geteuid() != 0 or not _have("iptables"):
            return
        rule = [
            "FORWARD",
            *("-s", str(pool), "-d", str(pool)),
            *("-m", "comment", "--comment", f"batch-agent tests {self.bridge}"),
            *("-j", "ACCEPT"),
        ]
        if _iptables("-I", *rule):
            self._rule = rule


def _iptables(*args: str) -> bool:
    """Run `iptables -w 60 ARGS` (waiting for the lock other users may hold); whether it worked."""
    binary = shutil.which("iptables") or "/usr/sbin/iptables"
    done = subprocess.run([binary, "-w", "60", *args], capture_output=True, timeout=90)
    return done.returncode == 0


def clean_engine(host: str) -> None:
    """Remove every container and user network of a private engine before it stops (their
    bridges would otherwise stay on the host)."""
    c = client(host)
    try:
        for container in c.api.containers(all=True):
            c.api.remove_container(container["Id"], force=True, v=True)
        for network in c.api.networks():
            if network["Name"] not in ("bridge", "host", "none"):
                c.api.remove_network(network["Id"])
    finally:
        c.close()


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.X.0.0/16 that no host route or address overlaps."""
    used = []
    for line in _run("ip", "-4", "route", "show", "table", "all").splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("local", "broadcast", "unreachable", "prohibit", "blackhole"):
            word = line.split()[1]
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(word, strict=False))
    candidates = list(range(100, 250))
    random.shuffle(candidates)
    for x in candidates:
        net = ipaddress.ip_network(f"10.{x}.0.0/16")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise Unavailable("no free 10.X.0.0/16 for the test engine's networks")


def import_busybox(host: str, tag: str = BUSYBOX_IMAGE) -> None:
    """Make `tag` from the host's static busybox and its applet links, unless it exists."""
    c = client(host)
    try:
        with contextlib.suppress(docker.errors.ImageNotFound):
            c.images.get(tag)
            return
        ensure_commands("busybox")
        c.api.import_image_from_data(_busybox_rootfs(), *tag.rsplit(":", 1))
    finally:
        c.close()


def _busybox_rootfs() -> bytes:
    """A tar of a root file system: /bin/busybox, a link per applet, /tmp, /etc, /root."""
    applets = _run("/bin/busybox", "--list-full").split()
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for directory, mode in (
            ("bin", 0o755),
            ("sbin", 0o755),
            ("usr", 0o755),
            ("usr/bin", 0o755),
            ("usr/sbin", 0o755),
            ("etc", 0o755),
            ("root", 0o700),
            ("tmp", 0o1777),
        ):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add("/bin/busybox", arcname="bin/busybox")
        for applet in applets:
            if applet == "bin/busybox":
                continue
            info = tarfile.TarInfo(applet)
            info.type, info.linkname = tarfile.SYMTYPE, "/bin/busybox"
            tar.addfile(info)
    return data.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Registry:
    """Debian's `docker-registry` on 127.0.0.1:PORT with one htpasswd (bcrypt) user."""

    def __init__(self, username: str = "tester", password: str = "s3cret-pw") -> None:
        self.username = username
        self.password = password
        self.dir = Path(tempfile.mkdtemp(prefix="reg-"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.image = ""  # what the tests pull, once pushed
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}

    def start(self, timeout: float = 30) -> None:
        """Start the registry and wait until it answers; raises Unavailable if it does not."""
        ensure_commands("docker-registry", "htpasswd")
        htpasswd = self.dir / "htpasswd"
        htpasswd.write_text(_run("htpasswd", "-Bbn", self.username, self.password))
        config = self.dir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.dir / 'data'}\n"
            f"http:\n  addr: {self.address}\n"
            f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
        )
        binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        argv = [binary, "serve", str(config)]
        log = self.dir / "registry.log"
        self._process = serve(argv, log, lambda: _accepts(self.address), timeout, self.stop)

    def push(self, host: str, source: str, repository: str) -> str:
        """Push image `source` of engine `host` as REGISTRY/repository:latest; that reference.

        The engine keeps no tag of it afterwards, so a run of it has to pull.
        """
        reference = f"{self.address}/{repository}"
        c = client(host)
        try:
            c.api.tag(source, reference, "latest")
            for event in c.api.push(
                reference, tag="latest", auth_config=self.auth, stream=True, decode=True
            ):
                if "error" in event:
                    raise Unavailable(f"cannot push {reference}: {event['error']}")
            c.api.remove_image(f"{reference}:latest")
        finally:
            c.close()
        return f"{reference}:latest"

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _unmount_below(folder: Path) -> None:
    """Lazily unmount every mount point under `folder`, deepest first."""
    prefix = str(folder).rstrip("/") + "/"
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def serve(
    argv: list[str],
    log_path: Path,
    ready: Callable[[], bool],
    timeout: float,
    stop: Callable[[], None],
) -> subprocess.Popen[bytes]:
    """Start a server in its own session, logging to `log_path`, and wait until `ready()`;
    on failure kill it, call `stop` and raise Unavailable with the log's tail."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-2000:]
            process.kill()
            process.wait()
            stop()  # the rest of the owner's clean-up (bridge, temp files)
            raise Unavailable(f"{argv[0]} did not start ({' '.join(argv)}):\n{tail}")
        time.sleep(0.05)
    return process


def _accepts(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


@contextlib.contextmanager
def tcp_server(host: str = "0.0.0.0") -> Iterator[int]:
    """A TCP server that answers every connection with `hello`, in a thread; yields its port."""
    import threading

    server = socket.socket()
    server.bind((host, 0))
    server.listen(16)
    server.settimeout(0.2)
    stopping = threading.Event()

    def answer() -> None:
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"hello\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stopping.set()
        thread.join()
        server.close()
