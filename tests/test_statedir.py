"""The state dir: traversable but not listable by others, and claimed by one agent at a time."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from batch_agent.statedir import StateDirBusy, claim_state_dir


def test_state_dir_and_tasks_are_traversable_not_listable(tmp_path):
    """An older 0755 state dir becomes 0711, tasks/ is made 0711 and the lock file 0600."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    lock = claim_state_dir(state)
    try:
        modes = {p: stat.S_IMODE((state / p).stat().st_mode) for p in (".", "tasks", "lock")}
        assert modes == {".": 0o711, "tasks": 0o711, "lock": 0o600}
    finally:
        lock.release()


def test_a_second_claim_is_refused_until_released(tmp_path):
    """While the state dir is claimed another claim raises StateDirBusy naming the holder."""
    lock = claim_state_dir(tmp_path)
    with pytest.raises(StateDirBusy, match=rf"in use by another agent \(pid {os.getpid()}\)"):
        claim_state_dir(tmp_path)
    lock.release()
    claim_state_dir(tmp_path).release()


def _lsattr(path: object) -> str | None:
    """`lsattr -d`'s flags of `path`, or None where the tool or the filesystem has none."""
    try:
        found = subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return found.stdout.split()[0] if found.returncode == 0 and found.stdout else None


def test_tasks_folders_are_spread_like_top_level_ones(tmp_path):
    """On ext4, tasks/ carries the "top of directory hierarchy" flag (chattr +T), so that the
    churn of task folders does not pile up in one block group; elsewhere the claim works all
    the same."""
    lock = claim_state_dir(tmp_path / "state")
    try:
        flags = _lsattr(tmp_path / "state" / "tasks")
        if flags is None or _lsattr(tmp_path) is None:
            pytest.skip("no inode flags here (lsattr missing, or not ext2/3/4)")
        assert "T" in flags
        assert "T" not in (_lsattr(tmp_path / "state") or "")
    finally:
        lock.release()
