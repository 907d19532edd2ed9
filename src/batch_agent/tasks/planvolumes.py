"""A task's volumes for its plan: spec.volumes -> VolumeSpecs, and the container mounts they give.

Pure, like `plan`, which calls it: each problem is appended to the caller's list with the JSON
path of the field. Mounts nothing and reads nothing of the VM: the Volumes hook and `mounts` do.
"""

from __future__ import annotations

from dataclasses import dataclass

from batch_agent.wire import Volume


@dataclass(frozen=True)
class VolumeSpec:
    """One task volume: what to mount (`kind` and `remote`) at `mount_path`, with options.

    `remote` is `bucket[/prefix]` for "gcs", `server:/path` for "nfs", the device name for
    "disk"; "path" (a volume with only a mountPath) mounts nothing: the VM's folder is shared.
    """

    index: int  # 0-based, as in spec.volumes
    mount_path: str
    kind: str  # "gcs" | "nfs" | "disk" | "path"
    remote: str = ""
    options: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """How events name it: `volumes[0] (/mnt/disks/data)`."""
        return f"volumes[{self.index}] ({self.mount_path})"


def plan_mounts(volumes: list[Volume], problems: list[str]) -> tuple[VolumeSpec, ...]:
    """spec.volumes as VolumeSpecs: exactly one source each, absolute distinct mountPaths."""
    specs: list[VolumeSpec] = []
    for i, v in enumerate(volumes):
        where = f"volumes[{i}]"
        path = v.mount_path or ""
        if not path.startswith("/"):
            problems.append(f'{where}.mountPath: needs an absolute path, got "{path}"')
            continue
        if path.rstrip("/") in (s.mount_path.rstrip("/") for s in specs):
            problems.append(f"{where}.mountPath: {path} is already another volume's")
            continue
        given = [k for k, x in (("gcs", v.gcs), ("nfs", v.nfs), ("deviceName", v.device_name)) if x]
        if len(given) > 1:
            problems.append(f"{where}: has both {given[0]} and {given[1]}; give only one")
            continue
        options = tuple(v.mount_options)
        if v.gcs is not None:
            remote = (v.gcs.remote_path or "").strip("/")
            if not remote:
                problems.append(f'{where}.gcs: needs "remotePath" (a bucket or bucket/path)')
                continue
            specs.append(VolumeSpec(i, path, "gcs", remote, options))
        elif v.nfs is not None:
            if not v.nfs.server or not (v.nfs.remote_path or "").startswith("/"):
                problems.append(f'{where}.nfs: needs "server" and an absolute "remotePath"')
                continue
            specs.append(VolumeSpec(i, path, "nfs", f"{v.nfs.server}:{v.nfs.remote_path}", options))
        elif v.device_name:
            if "/" in v.device_name or v.device_name in (".", ".."):
                problems.append(f'{where}.deviceName: "{v.device_name}" is not a device name')
                continue
            specs.append(VolumeSpec(i, path, "disk", v.device_name, options))
        else:
            specs.append(VolumeSpec(i, path, "path", "", options))
    return tuple(specs)


def default_volumes(mounts: tuple[VolumeSpec, ...]) -> tuple[str, ...]:
    """Each task volume's mountPath, mounted at the same path in containers that name no
    volumes: read-write whatever its mountOptions say (Batch's rule, Container.volumes). Which
    disks are existing ones, read-only there, only the VM can tell: `mounts.container_volumes`
    refines this when the task's run is made."""
    return tuple(f"{m.mount_path}:{m.mount_path}" for m in mounts)
