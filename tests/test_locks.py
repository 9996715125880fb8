"""The package's one inter-process lock (reidkit.utils.locks.PidLock) never writes through what sits at its name."""

from __future__ import annotations

import os

import pytest

from reidkit.errors import ReIDError
from reidkit.utils.locks import PidLock


def test_a_symlink_planted_at_the_lock_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    lock = tmp_path / ".gallery.writer.lock"
    lock.symlink_to(victim)
    with pytest.raises(ReIDError, match="symbolic link"):
        with PidLock(lock):
            pass
    assert victim.read_text() == "precious"
    dangling = tmp_path / ".other.lock"
    dangling.symlink_to(tmp_path / "created-through-the-link")
    with pytest.raises(ReIDError, match="symbolic link"):
        with PidLock(dangling):
            pass
    assert not (tmp_path / "created-through-the-link").exists()


def test_a_fifo_at_the_lock_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / ".g.lock"
    os.mkfifo(fifo)
    with pytest.raises(ReIDError, match="not a regular file"):
        with PidLock(fifo, timeout=1):
            pass


def test_the_lock_holds_the_holder_pid_and_empties_on_exit(tmp_path):
    path = tmp_path / ".g.lock"
    with PidLock(path) as held:
        assert path.read_text() == str(os.getpid()) and PidLock.held(path) and held.holder() == str(os.getpid())
    assert path.read_text() == "" and not PidLock.held(path)
