"""A real systemd as PID 1, with the agent installed as on a Batch VM, for the tests
(`test_systemd_boot.py`) and the benchmarks (`benchmarks/systemd_overhead.py`).

The machine: a Debian bookworm root file system with systemd and python3, made by `debootstrap
--variant=minbase` from Debian's packages and kept as a tarball in CACHE, named by a hash of
how it is made, so that only the first run on a machine bootstraps (a minute or two). It is
imported into a Docker engine and booted with systemd as PID 1 on the host network: the agent
inside reaches an emulator on this process's 127.0.0.1, as an agent on a VM reaches its
metadata server. The wheel and its dependencies are built here (`pip wheel`) and installed
inside from that wheelhouse (PIP_NO_INDEX, PIP_FIND_LINKS, which the startup script hands to
pip): the container has none of this machine's CAs for the package index. What this machine
cannot do (no debootstrap, no root, an engine that refuses to boot systemd in a container)
raises `Unavailable`, saying why.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors

from batch_agent.emulator import Emulator
from tests import docker_support
from tests.docker_support import Unavailable
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[1]
CACHE = Path("/var/cache/batch-agent-tests")
MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP = [
    "debootstrap",
    "--variant=minbase",
    "--include=systemd,systemd-sysv,python3,python3-venv",
    "bookworm",
]
RECIPE = hashlib.sha256(repr([*DEBOOTSTRAP, MIRROR]).encode()).hexdigest()[:16]
ROOTFS = CACHE / f"rootfs-bookworm-{RECIPE}.tar"  # a new recipe, a new tarball

UNIT = "batch-agent.service"
HOME = "/root/batch-agent"  # a copy of the clone's scripts/, systemd/ and the wheelhouse


# --- the root file system, bootstrapped once per machine -----------------------------------------


def cached_rootfs() -> Path:
    """The rootfs tarball: made by debootstrap when missing (another session building it is
    waited for), else reused. Raises Unavailable if debootstrap cannot be had or cannot reach
    the mirror."""
    if os.geteuid() != 0:
        raise Unavailable(f"needs root: debootstrap, and its cache in {CACHE}")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ROOTFS.exists():
            _bootstrap()
    return ROOTFS


def _bootstrap() -> None:
    _ensure_debootstrap()
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE))
    root = work / "root"
    try:
        done = subprocess.run(
            [*DEBOOTSTRAP, str(root), MIRROR],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            raise Unavailable(f"debootstrap cannot make the rootfs here:\n{done.stdout[-1500:]}")
        # Downloaded packages and indexes: half the size, and of no use in the image.
        for deb in (root / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
        (root / "var/lib/apt/lists/partial").mkdir(parents=True)
        partial = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.rename(ROOTFS)
        for stale in CACHE.glob("rootfs-*.tar"):  # made another way: never used again
            if stale != ROOTFS:
                stale.unlink()
    finally:
        _unmount_under(work)  # what a killed debootstrap left mounted (proc, sys) goes first
        shutil.rmtree(work, ignore_errors=True)


def _ensure_debootstrap() -> None:
    if shutil.which("debootstrap") or Path("/usr/sbin/debootstrap").exists():
        return
    if shutil.which("apt-get") is None:
        raise Unavailable("no debootstrap and no apt-get to install it (scripts/docker-deps does)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["update", "-qq"], ["install", "-y", "-qq", "debootstrap"]):
        done = subprocess.run(["apt-get", *step], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise Unavailable(f"cannot apt-get {step[0]} debootstrap: {done.stderr[-500:]}")


def _unmount_under(directory: Path) -> None:
    prefix = f"{directory}/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


# --- the machine: the rootfs booted by systemd in the tests' engine ------------------------------


class Machine:
    """A container whose PID 1 is systemd; `run` is `docker exec`."""

    def __init__(self, container: Any) -> None:
        self.container = container
        self.state = ""  # what `systemctl is-system-running` last said

    def run(self, *argv: str, env: dict[str, str] | None = None, cwd: str = "/") -> tuple[int, str]:
        code, out = self.container.exec_run(list(argv), environment=env, workdir=cwd)
        return int(code), out.decode(errors="replace")

    def check(self, *argv: str, env: dict[str, str] | None = None, cwd: str = "/") -> str:
        code, out = self.run(*argv, env=env, cwd=cwd)
        assert code == 0, f"{' '.join(argv)} exited {code}:\n{out}\n{self.journal()}"
        return out

    def show(self, prop: str) -> str:
        return self.check("systemctl", "show", "--value", "-p", prop, UNIT).strip()

    def journal(self) -> str:
        return self.run("journalctl", "--no-pager", "-n", "60", "-u", UNIT)[1]

    def is_up(self) -> bool:
        """systemd finished booting (degraded counts: a unit of no concern may have failed)."""
        self.container.reload()
        if self.container.status != "running":
            logs = self.container.logs()[-1500:]
            raise Unavailable(f"systemd does not boot in this engine:\n{logs}")
        self.state = self.run("systemctl", "is-system-running")[1].strip()
        return self.state in ("running", "degraded")

    def put(self, files: dict[str, Path]) -> None:
        """Copy host files to paths under HOME, keeping their modes."""
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            for name, path in files.items():
                tar.add(path, arcname=f"{HOME.lstrip('/')}/{name}")
        self.container.put_archive("/", data.getvalue())


@contextlib.contextmanager
def booted(host: str) -> Iterator[Machine]:
    """The bookworm rootfs booted by systemd in the engine at `host`, on the host network;
    removed with its image at the end. Raises Unavailable where that cannot be done."""
    rootfs = cached_rootfs()
    image = f"batch-agent-tests/systemd:{os.getpid()}"
    c = docker_support.client(host, timeout=300)
    container = None
    try:
        c.api.import_image_from_file(str(rootfs), *image.split(":"))
        try:
            container = c.containers.run(
                image,
                ["/lib/systemd/systemd"],
                detach=True,
                network_mode="host",
                cap_add=[
                    "SYS_ADMIN"
                ],  # --privileged fails on some machines: "unable to apply caps"
                security_opt=["seccomp=unconfined"],
                tmpfs={"/run": "", "/run/lock": ""},
                volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"}},
                environment={"container": "docker"},
            )
        except docker.errors.APIError as e:
            raise Unavailable(f"the engine refuses a systemd container: {e}") from None
        box = Machine(container)
        try:
            wait_until(box.is_up, timeout=120, what="systemd to finish booting")
        except AssertionError as e:
            failed = box.run("systemctl", "list-jobs", "--no-pager")[1]
            raise AssertionError(f"{e}: it is {box.state!r}, with jobs\n{failed}") from None
        yield box
    finally:
        if container is not None:
            container.remove(force=True)
        with contextlib.suppress(docker.errors.ImageNotFound):
            c.images.remove(image, force=True)
        c.close()


def build_wheelhouse(out: Path) -> Path:
    """The agent's wheel and those of its dependencies, built here into `out`."""
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, "-w", str(out), str(REPO)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def startup(box: Machine, emu: Emulator, wheelhouse: Path) -> str:
    """Run scripts/vm-startup.sh in the machine as the README says; its output."""
    (wheel,) = (p.name for p in wheelhouse.glob("batch_agent-*.whl"))
    env = {
        "BATCH_AGENT_ENDPOINT": emu.url,
        "GCE_METADATA_HOST": emu.metadata_host,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": f"{HOME}/wheelhouse",
    }
    return box.check("scripts/vm-startup.sh", f"wheelhouse/{wheel}", env=env, cwd=HOME)


def install(box: Machine, emu: Emulator, wheelhouse: Path) -> None:
    """Copy the startup script, the unit and the wheelhouse in, and run the startup script."""
    files = {
        "scripts/vm-startup.sh": REPO / "scripts/vm-startup.sh",
        "systemd/batch-agent.service": REPO / "systemd/batch-agent.service",
    }
    files.update({f"wheelhouse/{w.name}": w for w in wheelhouse.iterdir()})
    box.put(files)
    startup(box, emu, wheelhouse)
