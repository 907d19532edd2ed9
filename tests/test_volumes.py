"""Task volumes: real mounts where this machine allows them.

Disks are real loop devices behind a `google-<name>` link in a test device dir; buckets go
through the real gcsfuse code path with tests/fakes/gcsfuse (a bind-mounting stand-in: no FUSE
library here); NFS (no client in this kernel) is checked up to its exact command and failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch_agent.tasks.mounts import (
    MountSettings,
    container_volumes,
    gcsfuse_command,
    nfs_command,
)
from batch_agent.tasks.plan import VolumeSpec, make_plan
from batch_agent.tasks.volumes import MountTable, Volumes
from batch_agent.wire import parse_agent_task
from tests.helpers import exit_code, final_event, job, script, wait_until

FAKE_GCSFUSE = str(Path(__file__).parent / "fakes" / "gcsfuse")
LOCAL = [sys.executable, "-m", "batch_agent.cli", "local"]
TASK = "projects/123456789012/locations/us-central1/jobs/job-1/taskGroups/group0/tasks/{}"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("losetup"), reason="mounts need root and losetup"
)


def mounted(path: Path) -> int:
    """How many mounts sit at `path` (from /proc/self/mountinfo)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return sum(1 for line in lines if line.split()[4] == str(path))


@pytest.fixture
def cleanup(tmp_path: Path) -> Iterator[list[str]]:
    """Loop devices to detach; every mount under tmp_path is undone at the end."""
    loops: list[str] = []
    yield loops
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        point = line.split()[4]
        if point.startswith(str(tmp_path)):
            subprocess.run(["umount", "-l", point], check=False)
    for loop in loops:
        subprocess.run(["losetup", "-d", loop], check=False)


def loop_disk(
    tmp_path: Path,
    loops: list[str],
    name: str,
    *,
    read_only: bool = False,
    filesystem: bool = False,
) -> Path:
    """A 16 MiB loop device (blank, or ext4) linked as `<tmp>/by-id/google-<name>`; returns
    the device dir."""
    image = tmp_path / f"{name}.img"
    with image.open("wb") as out:
        out.truncate(16 << 20)
    if filesystem:
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    flags = ["-r"] if read_only else []
    done = subprocess.run(
        ["losetup", "-f", "--show", *flags, str(image)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"no loop device: {done.stderr.strip()}")
    loops.append(done.stdout.strip())
    device_dir = tmp_path / "by-id"
    device_dir.mkdir(exist_ok=True)
    (device_dir / f"google-{name}").symlink_to(done.stdout.strip())
    return device_dir


def table(tmp_path: Path, **settings: object) -> MountTable:
    return MountTable(tmp_path / "state" / "mounts.json", MountSettings(**settings))  # type: ignore[arg-type]


def test_commands_for_gcs_and_nfs_are_the_documented_ones() -> None:
    """gcsfuse gets --only-dir, the user's ids, allow_other and the options; NFS `mount -t nfs`."""
    gcs = VolumeSpec(0, "/mnt/disks/in", "gcs", "bkt/some/dir", ("--implicit-dirs", "-o ro"))
    assert gcsfuse_command(gcs, MountSettings(gcsfuse="/x/gcsfuse"), (1001, 1002)) == [
        "/x/gcsfuse",
        "--only-dir",
        "some/dir",
        "--uid",
        "1001",
        "--gid",
        "1002",
        "-o",
        "allow_other",
        "--implicit-dirs",
        "-o",
        "ro",
        "bkt",
        "/mnt/disks/in",
    ]
    nfs = VolumeSpec(1, "/mnt/share", "nfs", "10.0.0.2:/share", ("vers=4", "hard"))
    assert nfs_command(nfs) == [
        "mount",
        "-t",
        "nfs",
        "-o",
        "vers=4,hard",
        "10.0.0.2:/share",
        "/mnt/share",
    ]


def test_plan_parses_volumes_and_containers_mount_them_read_write() -> None:
    """spec.volumes become VolumeSpecs; containers get each read-write whatever mountOptions say."""
    raw = {
        "task": TASK.format(0),
        "spec": {
            "runnables": [{"script": {"text": "true"}}],
            "volumes": [
                {"gcs": {"remotePath": "bkt/dir/"}, "mountPath": "/mnt/a", "mountOptions": ["ro"]},
                {"nfs": {"server": "10.0.0.2", "remotePath": "/s"}, "mountPath": "/mnt/b"},
                {"deviceName": "data", "mountPath": "/mnt/c", "mountOptions": ["ro"]},
            ],
        },
    }
    plan = make_plan(parse_agent_task(raw))  # type: ignore[arg-type]
    assert [(m.kind, m.remote) for m in plan.mounts] == [
        ("gcs", "bkt/dir"),
        ("nfs", "10.0.0.2:/s"),
        ("disk", "data"),
    ]
    assert plan.volumes == ("/mnt/a:/mnt/a", "/mnt/b:/mnt/b", "/mnt/c:/mnt/c")


@needs_root
def test_nfs_failure_names_the_command_and_leaves_nothing_recorded(tmp_path, cleanup) -> None:
    """An NFS mount that fails returns `mount -t nfs ...: <its error>` and records no mount."""
    mounts = table(tmp_path)
    volume = VolumeSpec(0, str(tmp_path / "share"), "nfs", "127.0.0.1:/export", ("vers=4",))
    error = asyncio.run(mounts.acquire("t1", volume, None))
    assert error is not None
    assert error.startswith(f"mount -t nfs -o vers=4 127.0.0.1:/export {tmp_path}/share: ")
    assert mounts.users() == {}


@needs_root
def test_a_blank_disk_is_formatted_and_an_existing_one_kept(tmp_path, cleanup) -> None:
    """A disk without a filesystem gets ext4; mounted again later, its files are still there."""
    mounts = table(tmp_path, device_dir=loop_disk(tmp_path, cleanup, "data"))
    point = tmp_path / "mnt" / "data"
    volume = VolumeSpec(0, str(point), "disk", "data", ("noatime",))
    assert asyncio.run(mounts.acquire("t1", volume, None)) is None
    assert mounted(point) == 1
    (point / "kept").write_text("yes")
    asyncio.run(mounts.release("t1"))
    assert mounted(point) == 0 and not (point / "kept").exists()
    assert asyncio.run(mounts.acquire("t2", volume, None)) is None
    assert (point / "kept").read_text() == "yes"


@needs_root
def test_a_read_only_disk_is_mounted_read_only(tmp_path, cleanup) -> None:
    """A disk attached read-only (an existing disk) is mounted `ro` without being asked."""
    device_dir = loop_disk(tmp_path, cleanup, "old", read_only=True, filesystem=True)
    mounts = table(tmp_path, device_dir=device_dir)
    point = tmp_path / "mnt" / "old"
    assert asyncio.run(mounts.acquire("t1", VolumeSpec(0, str(point), "disk", "old"), None)) is None
    assert mounted(point) == 1
    with pytest.raises(OSError, match="Read-only"):
        (point / "x").write_text("no")


@needs_root
def test_containers_get_existing_disks_read_only_and_the_rest_read_write(tmp_path, cleanup) -> None:
    """Default container binds: `:ro` for a disk attached read-only, rw otherwise, options aside."""
    device_dir = loop_disk(tmp_path, cleanup, "old", read_only=True, filesystem=True)
    loop_disk(tmp_path, cleanup, "new")
    volumes = (
        VolumeSpec(0, "/mnt/old", "disk", "old"),
        VolumeSpec(1, "/mnt/new", "disk", "new", ("ro",)),
        VolumeSpec(2, "/mnt/gcs", "gcs", "bkt", ("-o ro",)),
    )
    assert container_volumes(volumes, MountSettings(device_dir=device_dir)) == (
        "/mnt/old:/mnt/old:ro",
        "/mnt/new:/mnt/new",
        "/mnt/gcs:/mnt/gcs",
    )


@needs_root
def test_tasks_share_a_bucket_mount_and_the_last_one_unmounts(tmp_path, cleanup) -> None:
    """Two tasks on one VM share one gcsfuse mount; it goes when the second is done."""
    buckets = tmp_path / "buckets"
    (buckets / "bkt" / "in").mkdir(parents=True)
    (buckets / "bkt" / "in" / "file.txt").write_text("data")
    os.environ["FAKE_GCSFUSE_BUCKETS"] = str(buckets)
    try:
        mounts = table(tmp_path, gcsfuse=FAKE_GCSFUSE)
        point = tmp_path / "mnt" / "gcs"
        volume = VolumeSpec(0, str(point), "gcs", "bkt/in")
        assert asyncio.run(mounts.acquire("t1", volume, (1000, 1000))) is None
        # A restarted agent (a new table on the same file) joins, it does not mount again.
        again = table(tmp_path, gcsfuse=FAKE_GCSFUSE)
        assert asyncio.run(again.acquire("t2", volume, None)) is None
        assert asyncio.run(again.acquire("t2", volume, None)) is None  # idempotent
        assert mounted(point) == 1 and (point / "file.txt").read_text() == "data"
        calls = [json.loads(line) for line in (buckets / ".calls").read_text().splitlines()]
        assert calls == [["--only-dir", "in", "--uid", "1000", "--gid", "1000", "-o",
                          "allow_other", "bkt", str(point)]]  # fmt: skip
        asyncio.run(again.release("t1"))
        assert mounted(point) == 1
        asyncio.run(again.release("t2"))
        assert mounted(point) == 0 and again.users() == {}
        missing = VolumeSpec(1, str(tmp_path / "mnt" / "x"), "gcs", "nobucket")
        error = asyncio.run(again.acquire("t3", missing, None))
        assert error is not None and "bucket 'nobucket'" in error
    finally:
        del os.environ["FAKE_GCSFUSE_BUCKETS"]


@needs_root
def test_a_mount_path_holds_one_source_and_a_reboot_leftover_is_replaced(tmp_path, cleanup) -> None:
    """Another source at a mounted path fails; an entry whose mount a reboot took is replaced."""
    buckets = tmp_path / "buckets"
    for name in ("a", "b"):
        (buckets / name).mkdir(parents=True)
    os.environ["FAKE_GCSFUSE_BUCKETS"] = str(buckets)
    try:
        mounts = table(tmp_path, gcsfuse=FAKE_GCSFUSE)
        point = tmp_path / "mnt" / "gcs"
        assert (
            asyncio.run(mounts.acquire("t1", VolumeSpec(0, str(point), "gcs", "a"), None)) is None
        )
        error = asyncio.run(mounts.acquire("t2", VolumeSpec(0, str(point), "gcs", "b"), None))
        assert error == f"{point} already holds gs://a (used by t1)"
        subprocess.run(["umount", str(point)], check=True)  # as a reboot would
        assert (
            asyncio.run(mounts.acquire("t3", VolumeSpec(0, str(point), "gcs", "b"), None)) is None
        )
        assert mounts.users() == {str(point): ["t3"]} and mounted(point) == 1
    finally:
        del os.environ["FAKE_GCSFUSE_BUCKETS"]


@needs_root
def test_a_failed_volume_releases_the_ones_before_it(tmp_path, cleanup) -> None:
    """The hook names the failing volume; the task's poststop unmounts those it had mounted."""
    device_dir = loop_disk(tmp_path, cleanup, "data")
    mounts = table(tmp_path, device_dir=device_dir)
    good = VolumeSpec(0, str(tmp_path / "mnt" / "d"), "disk", "data")
    bad = VolumeSpec(1, str(tmp_path / "mnt" / "n"), "disk", "absent")
    hook = Volumes(mounts, "t1", (good, bad), None)
    problem = asyncio.run(hook.prestart())
    assert problem is not None
    assert problem.startswith(f"volumes[1] ({tmp_path}/mnt/n) could not be mounted: no disk ")
    asyncio.run(hook.poststop())
    assert mounted(tmp_path / "mnt" / "d") == 0 and mounts.users() == {}


# -- end to end, through the agent --------------------------------------------------------------


@needs_root
def test_an_unmountable_volume_fails_the_task_before_any_runnable(
    make_emulator, start_agent, tmp_path, cleanup
) -> None:
    """An NFS share this VM cannot mount: FAILED with 50000 naming it; no runnable ran."""
    ran = tmp_path / "ran"
    share = tmp_path / "share"
    volume = {"nfs": {"server": "127.0.0.1", "remotePath": "/x"}, "mountPath": str(share)}
    emu = make_emulator(job(script(f"touch {ran}"), volumes=[volume]))
    agent = start_agent(emu, "--once")
    assert agent.wait(90) == 1, agent.log()
    assert exit_code(emu, TASK.format(0)) == 50000
    description = final_event(emu, TASK.format(0))["description"]
    assert f"volumes[0] ({share}) could not be mounted: mount -t nfs 127.0.0.1:/x" in description
    assert not ran.exists()


@needs_root
def test_a_disk_is_mounted_for_the_task_and_unmounted_after(
    make_emulator, start_agent, tmp_path, cleanup
) -> None:
    """The task writes to its deviceName volume; after it the disk is unmounted, the file kept."""
    device_dir = loop_disk(tmp_path, cleanup, "scratch")
    point = tmp_path / "mnt" / "scratch"
    volume = {"deviceName": "scratch", "mountPath": str(point)}
    check = f"mountpoint -q {point} && echo written > {point}/out.txt"
    emu = make_emulator(job(script(check), volumes=[volume]))
    agent = start_agent(emu, "--once", BATCH_AGENT_DEVICE_DIR=str(device_dir))
    assert agent.wait(90) == 0, agent.log()
    assert mounted(point) == 0
    assert not (point / "out.txt").exists()
    subprocess.run(["mount", str(device_dir / "google-scratch"), str(point)], check=True)
    assert (point / "out.txt").read_text() == "written\n"


@needs_root
def test_two_tasks_on_one_vm_share_one_bucket_mount(
    make_emulator, start_agent, tmp_path, cleanup
) -> None:
    """Two tasks running at once on one VM use one gcsfuse mount, gone once both are done."""
    buckets = tmp_path / "buckets"
    (buckets / "bkt").mkdir(parents=True)
    point = tmp_path / "mnt" / "gcs"
    # Each task leaves its mark and waits for the other's: both hold the mount at once.
    text = (
        f"touch {point}/$BATCH_TASK_INDEX; "
        f"until [ -e {point}/0 ] && [ -e {point}/1 ]; do sleep 0.1; done"
    )
    config = job(
        script(text),
        task_count=2,
        volumes=[{"gcs": {"remotePath": "bkt"}, "mountPath": str(point)}],
    )
    config["taskGroups"][0] |= {"parallelism": 2, "taskCountPerNode": 2}
    emu = make_emulator(config)
    agent = start_agent(
        emu, "--once", BATCH_AGENT_GCSFUSE=FAKE_GCSFUSE, FAKE_GCSFUSE_BUCKETS=str(buckets)
    )
    assert agent.wait(90) == 0, agent.log()
    wait_until(lambda: mounted(point) == 0, what="the mount released")
    assert sorted(p.name for p in (buckets / "bkt").iterdir()) == ["0", "1"]
    assert len((buckets / ".calls").read_text().splitlines()) == 1


@needs_root
def test_local_maps_a_bucket_to_a_folder_of_the_volume_root(tmp_path, cleanup) -> None:
    """`local --volume-root DIR`: the task reads bucket B from DIR/gcs/B at its mountPath."""
    root = tmp_path / "volumes"
    (root / "gcs" / "bkt" / "in").mkdir(parents=True)
    (root / "gcs" / "bkt" / "in" / "data.txt").write_text("from the bucket\n")
    point = tmp_path / "mnt" / "data"
    config = job(
        script(f"cp {point}/data.txt {point}/copy.txt"),
        volumes=[{"gcs": {"remotePath": "bkt/in"}, "mountPath": str(point)}],
    )
    (tmp_path / "job.json").write_text(json.dumps(config))
    done = subprocess.run(
        [*LOCAL, str(tmp_path / "job.json"), "--volume-root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "volumes" not in done.stderr  # applied, so not warned about
    assert (root / "gcs" / "bkt" / "in" / "copy.txt").read_text() == "from the bucket\n"
    assert mounted(point) == 0
