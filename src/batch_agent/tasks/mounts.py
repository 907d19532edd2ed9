"""The commands that mount and unmount one task volume on this VM.

GCS buckets through `gcsfuse`, NFS shares through `mount -t nfs`, attached disks from
`<device dir>/google-<deviceName>` (formatted ext4 only when `blkid` finds no filesystem). With a
`volume_root` (`batch-agent local`), folders of this machine stand in for buckets and shares and
are bind-mounted instead. Every function returns the failing command's error text instead of
raising. Knows nothing of tasks, of who shares a mount, or of event wording (volumes.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the agent makes MountSettings before it has a task
    from batch_agent.tasks.plan import VolumeSpec

log = logging.getLogger(__name__)

_OCTAL = re.compile(r"\\([0-7]{3})")  # mountinfo escapes space, tab, newline, backslash
ERROR_CHARS = 500  # of a command's stderr in an event


@dataclass(frozen=True)
class MountSettings:
    gcsfuse: str = "gcsfuse"  # the gcsfuse binary (tests give a stand-in)
    device_dir: Path = Path("/dev/disk/by-id")  # where `google-<deviceName>` links are
    # `batch-agent local`: bucket B is DIR/gcs/B, NFS S:/P is DIR/nfs/S/P, disk D is DIR/disks/D
    volume_root: Path | None = None
    timeout: timedelta = timedelta(minutes=2)  # for one command


def source(volume: VolumeSpec, settings: MountSettings) -> str:
    """What is mounted, as the mount registry compares it: `gs://B/P`, `S:/P`, a device path,
    a local folder. Pure."""
    if settings.volume_root is not None and volume.kind != "path":
        return str(_local_folder(volume, settings.volume_root))
    if volume.kind == "gcs":
        return f"gs://{volume.remote}"
    if volume.kind == "disk":
        return str(settings.device_dir / f"google-{volume.remote}")
    return volume.remote or volume.mount_path


def container_volumes(volumes: tuple[VolumeSpec, ...], settings: MountSettings) -> tuple[str, ...]:
    """The task volumes as `docker run --volume` binds for containers that name none: at the
    same path, read-only for an existing persistent disk (Batch attaches those read-only, which
    the device says) and read-write for the rest, whatever mountOptions say (Batch's rule,
    Container.volumes). Reads sysfs only."""
    binds = []
    for v in volumes:
        existing = v.kind == "disk" and settings.volume_root is None
        existing = existing and _read_only(settings.device_dir / f"google-{v.remote}")
        binds.append(f"{v.mount_path}:{v.mount_path}" + (":ro" if existing else ""))
    return tuple(binds)


def gcsfuse_command(
    volume: VolumeSpec, settings: MountSettings, user: tuple[int, int] | None
) -> list[str]:
    """`gcsfuse [--only-dir P] [--uid U --gid G -o allow_other] OPTIONS BUCKET MOUNTPATH`."""
    bucket, _, prefix = volume.remote.partition("/")
    argv = [settings.gcsfuse]
    if prefix.strip("/"):
        argv += ["--only-dir", prefix.strip("/")]
    if user is not None:  # the task's user reads and writes; FUSE keeps others out without it
        argv += ["--uid", str(user[0]), "--gid", str(user[1]), "-o", "allow_other"]
    for option in volume.options:  # `--implicit-dirs`, `-o ro`, `--file-mode=777`
        argv += shlex.split(option)
    return [*argv, bucket, volume.mount_path]


def nfs_command(volume: VolumeSpec) -> list[str]:
    """`mount -t nfs [-o OPTIONS] SERVER:PATH MOUNTPATH`."""
    options = ["-o", ",".join(volume.options)] if volume.options else []
    return ["mount", "-t", "nfs", *options, volume.remote, volume.mount_path]


async def mount(
    volume: VolumeSpec, settings: MountSettings, user: tuple[int, int] | None
) -> str | None:
    """Mount `volume` at its mountPath (made if missing); None, or why it could not be."""
    if volume.kind == "path":
        return None
    try:
        os.makedirs(volume.mount_path, exist_ok=True)
    except OSError as error:
        return f"cannot make {volume.mount_path}: {error.strerror or error}"
    if settings.volume_root is not None:
        return await _mount_folder(volume, _local_folder(volume, settings.volume_root))
    if volume.kind == "gcs":
        return await run(gcsfuse_command(volume, settings, user), settings.timeout)
    if volume.kind == "nfs":
        return await run(nfs_command(volume), settings.timeout)
    return await _mount_disk(volume, settings, user)


async def unmount(mount_path: str, settings: MountSettings) -> str | None:
    """Unmount (a local run's symlink is removed); one not mounted is fine."""
    if os.path.islink(mount_path):
        os.unlink(mount_path)
        return None
    if not is_mounted(mount_path):
        return None
    return await run(["umount", mount_path], settings.timeout)


def is_mounted(mount_path: str) -> bool:
    """Something is mounted there (or, in a mount-free local run, linked). Reads the mount
    table: `os.path.ismount` misses a bind mount from the same filesystem."""
    if os.path.islink(mount_path):
        return True
    path = os.path.normpath(mount_path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
        for line in table:
            point = line.split(" ", 5)[4]
            if _OCTAL.sub(lambda m: chr(int(m[1], 8)), point) == path:
                return True
    return False


async def run(argv: list[str], timeout: timedelta) -> str | None:
    """Run a command; None when it exits 0, else `<command>: <its output or exit status>`."""
    status, said = await _execute(argv, timeout)
    if status == 0:
        return None
    return f"{shlex.join(argv)}: {said or f'exit status {status}'}"


async def _execute(argv: list[str], timeout: timedelta) -> tuple[int | None, str]:
    """The command's exit status (None: it could not start or timed out) and its output."""
    log.info("volumes: %s", shlex.join(argv))
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as error:
        return None, str(error.strerror or error)
    try:
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that comes as
        # the command ends, and the mount's caller would then wait on.
        async with asyncio.timeout(timeout.total_seconds()):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None, f"no answer in {timeout.total_seconds():g}s"
    return proc.returncode, out.decode("utf-8", "replace").strip()[-ERROR_CHARS:]


async def _mount_disk(
    volume: VolumeSpec, settings: MountSettings, user: tuple[int, int] | None
) -> str | None:
    device = settings.device_dir / f"google-{volume.remote}"
    if not device.exists():
        return f"no disk {device} (is the disk attached with deviceName {volume.remote}?)"
    read_only = _read_only(device)
    # `blkid -p` probes the device itself (no cache): 0 found a filesystem, 2 found nothing.
    status, said = await _execute(["blkid", "-p", str(device)], settings.timeout)
    if status not in (0, 2):
        return f"blkid -p {device}: {said or f'exit status {status}'}"
    if status == 2:
        if read_only:
            return f"{device} holds no filesystem and is attached read-only"
        error = await run(["mkfs.ext4", "-F", "-q", "-m", "0", str(device)], settings.timeout)
        if error is not None:
            return error
        fresh = True
    else:
        fresh = False
    options = list(volume.options)
    if read_only and "ro" not in options:  # an existing disk: Batch attaches it read-only
        options.append("ro")
    argv = ["mount", *(["-o", ",".join(options)] if options else []), str(device)]
    error = await run([*argv, volume.mount_path], settings.timeout)
    if error is None and fresh and user is not None:
        os.chown(volume.mount_path, *user)  # a new disk is the task user's to write
    return error


def _read_only(device: Path) -> bool:
    """The block device is attached read-only (sysfs `ro`)."""
    name = os.path.basename(os.path.realpath(device))
    try:
        return Path(f"/sys/class/block/{name}/ro").read_text().strip() == "1"
    except OSError:
        return False


def _local_folder(volume: VolumeSpec, root: Path) -> Path:
    if volume.kind == "gcs":
        return root / "gcs" / volume.remote
    if volume.kind == "nfs":
        server, _, path = volume.remote.partition(":")
        return root / "nfs" / server / path.lstrip("/")
    return root / "disks" / volume.remote


async def _mount_folder(volume: VolumeSpec, folder: Path) -> str | None:
    """A local run: bind-mount the folder standing in for the volume (made if missing); an
    agent that is not root links the mountPath to it instead (its parent must be writable)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            os.rmdir(volume.mount_path)  # made empty by `mount` above
            os.symlink(folder, volume.mount_path)
            return None
    except OSError as error:
        return f"{folder} -> {volume.mount_path}: {error.strerror or error}"
    return await run(["mount", "--bind", str(folder), volume.mount_path], timedelta(seconds=30))
