"""The weights cache under attack (issue 29): planted symlinks, truncated and oversized downloads, two
downloaders at once, a deleted hash record, a local file shadowing a catalogue name, a program served as
weights, bad user catalogue entries, a full disk, part files of dead processes.

Every attack runs against a loopback mirror (an http.server on 127.0.0.1 in a thread, serving a small real
torchreid-layout checkpoint made here) through ``$REIDKIT_ZOO_URL_OVERRIDE`` and a user catalogue
(``$REIDKIT_ZOO``). Each attack is counted; the last test prints ``cache attacks tried: N, clean: N``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import http.server
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import procs
import pytest
import torch
import yaml

from reidkit.cli import main
from reidkit.errors import ReIDError
from reidkit.models import zoo

ATTACKS = {"tried": 0, "clean": 0}  # attacks run by this file / handled cleanly (the asserts after each passed)


@contextlib.contextmanager
def attack(what: str):
    """Count one attack; it is clean when the block (its asserts) finishes."""
    ATTACKS["tried"] += 1
    yield what
    ATTACKS["clean"] += 1


@functools.lru_cache(maxsize=None)
def _checkpoint() -> bytes:
    """A real torchreid-layout OSNet x0_25 checkpoint (~1 MB), the test_zoo one."""
    from test_zoo import _osnet_file

    return _osnet_file()


class _Mirror(http.server.BaseHTTPRequestHandler):
    """Serves `server.files[name]`; `server.mode[name]`: ok | slow | nolen (no Content-Length) | short_len (half
    the body, then close, after a full Content-Length) | short_nolen (half the body, no length)."""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        srv = self.server
        name = self.path.lstrip("/")
        with srv.lock:
            srv.requests.append(name)
        data = srv.files.get(name)
        if data is None:
            self.send_error(404)
            return
        mode = srv.mode.get(name, "ok")
        self.send_response(200)
        if mode in ("ok", "slow", "short_len"):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        body = data[: len(data) // 2] if mode.startswith("short") else data
        step = 4096 if mode == "slow" else 65536
        for i in range(0, len(body), step):
            self.wfile.write(body[i : i + step])
            if mode == "slow":
                self.wfile.flush()
                time.sleep(0.01)
        # HTTP/1.0: the connection closes here, which ends a body sent without its length


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that hung up mid-body (refused downloads): quiet
        pass


def _catalogue(path: Path, entries: list[dict]) -> Path:
    base = {
        "source": "test",
        "licence": "MIT",
        "arch": "x",
        "train": "market1501",
        "input_size": [64, 32],
        "fmt": "torchreid",
    }
    path.write_text(yaml.safe_dump({"weights": [{**base, **e} for e in entries]}))
    return path


ENTRIES = [
    {"name": "t_osnet", "filename": "osnet.pth", "url": "https://example.invalid/osnet.pth"},
    {"name": "t_small", "filename": "small.pth", "url": "https://example.invalid/small.pth", "max_bytes": 100_000},
]


@pytest.fixture()
def mirror(tmp_path, monkeypatch):
    srv = _Server(("127.0.0.1", 0), _Mirror)
    srv.files, srv.mode, srv.requests, srv.lock = {}, {}, [], threading.Lock()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    srv.files["osnet.pth"] = srv.files["small.pth"] = _checkpoint()
    home = tmp_path / "home"
    monkeypatch.setenv("REIDKIT_HOME", str(home))
    monkeypatch.setenv("REIDKIT_ZOO_URL_OVERRIDE", f"http://127.0.0.1:{srv.server_address[1]}")
    monkeypatch.setenv("REIDKIT_ZOO", str(_catalogue(tmp_path / "zoo.yaml", ENTRIES)))
    srv.weights = home / "weights"
    srv.victim = tmp_path / "victim.txt"
    srv.victim.write_bytes(b"precious, not a checkpoint\n" * 40)
    srv.victim_bytes = srv.victim.read_bytes()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _left(folder: Path) -> list[str]:
    """Everything in the cache folder but the (empty, permanent) lock files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _one_cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process: exit 2, exactly one `error:` line, no traceback; returns that line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _good_afterwards(srv) -> None:
    """After an attack: a clean download of t_osnet works, and the hash pinned is the real file's."""
    path = Path(zoo.resolve_weights("t_osnet"))
    assert path.read_bytes() == _checkpoint() and not path.is_symlink()
    assert (srv.weights / "osnet.pth.sha256").read_text().split()[0] == _sha(_checkpoint())


# ----------------------------------------------------------------------------------------------------------


def test_symlink_at_the_part_path_is_never_followed(mirror, monkeypatch):
    srv = mirror
    srv.weights.mkdir(parents=True)
    with attack("symlink at the old fixed part name NAME.part"):
        (srv.weights / "osnet.pth.part").symlink_to(srv.victim)
        _good_afterwards(srv)
        assert srv.victim.read_bytes() == srv.victim_bytes
        assert not os.path.lexists(srv.weights / "osnet.pth.part")  # the link (only the link) was removed
    (srv.weights / "osnet.pth").unlink()
    (srv.weights / "osnet.pth.sha256").unlink()
    # an attacker who predicts the part's name and plants a link there after the stale parts were cleaned
    monkeypatch.setattr(zoo.secrets, "token_hex", lambda n: "deadbeef")
    clean = zoo._clean_stale
    for target, what in (
        (srv.victim, "symlink planted at the part's own name"),
        (srv.victim.with_name("made_by_attack"), "dangling symlink planted at the part's name"),
    ):
        planted = srv.weights / f"osnet.pth.{os.getpid()}.deadbeef.part"

        def plant(dfd, entry, _planted=planted, _target=target):
            out = clean(dfd, entry)
            _planted.symlink_to(_target)
            return out

        monkeypatch.setattr(zoo, "_clean_stale", plant)
        with attack(what):
            with pytest.raises(ReIDError, match="already exists"):
                zoo.resolve_weights("t_osnet")
            assert srv.victim.read_bytes() == srv.victim_bytes
            assert not srv.victim.with_name("made_by_attack").exists()  # nothing created through a dangling link
            assert not os.path.lexists(srv.weights / "osnet.pth") and planted.is_symlink()
        planted.unlink()


def test_symlinks_at_the_file_its_record_its_lock_and_the_folder_are_refused(mirror, tmp_path):
    srv = mirror
    srv.weights.mkdir(parents=True)
    for name, what in (
        ("osnet.pth", "symlink at the cached file's path"),
        ("osnet.pth.sha256", "symlink at the hash record's path"),
        (".osnet.pth.lock", "symlink at the lock's path"),
    ):
        with attack(what):
            link = srv.weights / name
            link.symlink_to(srv.victim)
            with pytest.raises(ReIDError, match="symbolic link") as err:
                zoo.resolve_weights("t_osnet")
            assert str(link) in str(err.value)
            assert srv.victim.read_bytes() == srv.victim_bytes  # byte for byte
            assert srv.requests == [] and _left(srv.weights) == ([] if name.endswith(".lock") else [name])
            link.unlink()
    with attack("dangling symlink at the cached file's path"):
        (srv.weights / "osnet.pth").symlink_to(tmp_path / "would_be_created")
        with pytest.raises(ReIDError, match="symbolic link"):
            zoo.resolve_weights("t_osnet")
        assert not (tmp_path / "would_be_created").exists() and srv.requests == []
        (srv.weights / "osnet.pth").unlink()
    with attack("a folder at the cached file's path"):
        (srv.weights / "osnet.pth").mkdir()
        with pytest.raises(ReIDError, match="is a folder"):
            zoo.resolve_weights("t_osnet")
        (srv.weights / "osnet.pth").rmdir()
    with attack("the weights folder is a symlink"):
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        srv.weights.rmdir()
        srv.weights.symlink_to(elsewhere)
        with pytest.raises(ReIDError, match="must be a real folder"):
            zoo.resolve_weights("t_osnet")
        assert list(elsewhere.iterdir()) == [] and srv.requests == []
        srv.weights.unlink()
    _good_afterwards(srv)


def test_truncated_responses_are_not_pinned(mirror):
    srv = mirror
    with attack("connection closed halfway, no Content-Length"):
        srv.mode["osnet.pth"] = "short_nolen"
        with pytest.raises(ReIDError, match="not a torchreid checkpoint") as err:
            zoo.resolve_weights("t_osnet")
        assert "not recorded" in str(err.value)
        assert _left(srv.weights) == []  # no file, no record, no part
    with attack("connection closed halfway, Content-Length given"):
        srv.mode["osnet.pth"] = "short_len"
        with pytest.raises(ReIDError, match=rf"stopped after {len(_checkpoint()) // 2} of {len(_checkpoint())} bytes"):
            zoo.resolve_weights("t_osnet")
        assert _left(srv.weights) == []
    with attack("zeros served as the checkpoint"):
        srv.mode["osnet.pth"] = "nolen"
        srv.files["osnet.pth"] = bytes(300_000)
        with pytest.raises(ReIDError, match="not a torchreid checkpoint"):
            zoo.resolve_weights("t_osnet")
        assert _left(srv.weights) == []
    srv.mode.clear()
    srv.files["osnet.pth"] = _checkpoint()
    _good_afterwards(srv)  # nothing of the attacks was kept: the real file is downloaded and pinned


def test_oversize_downloads_are_refused_by_max_bytes(mirror):
    srv = mirror
    with attack("Content-Length over max_bytes"):
        with pytest.raises(ReIDError, match=r"declares \d+ bytes, over the entry's max_bytes \(100000\)"):
            zoo.resolve_weights("t_small")
        assert _left(srv.weights) == []
    with attack("endless body without Content-Length past max_bytes"):
        srv.mode["small.pth"] = "nolen"
        with pytest.raises(ReIDError, match=r"sent more than 100000 bytes"):
            zoo.resolve_weights("t_small")
        assert _left(srv.weights) == []
    assert zoo.catalogue()["t_osnet"].size_cap == zoo.DEFAULT_MAX_BYTES == 2 << 30


def test_two_concurrent_gets_download_once(mirror):
    srv = mirror
    srv.mode["osnet.pth"] = "slow"  # ~2.5 s: the second process arrives while the first downloads
    with attack("two `weights get` of one entry at once, in two processes"):
        cmd = [sys.executable, "-m", "reidkit.cli", "weights", "get", "t_osnet"]
        ps = [procs.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        outs = []
        try:
            for p in ps:
                out, err = p.communicate(timeout=120)
                outs.append((p.returncode, out.decode(), err.decode()))
        finally:
            for p in ps:
                if p.poll() is None:
                    p.kill()
        assert [rc for rc, _, _ in outs] == [0, 0], outs
        assert {o.strip() for _, o, _ in outs} == {str(srv.weights / "osnet.pth")}
        assert srv.requests.count("osnet.pth") == 1  # one download; the other waited, then found the file
        assert sum("another process is fetching it" in e for _, _, e in outs) == 1, outs
        assert (srv.weights / "osnet.pth").read_bytes() == _checkpoint()
        assert _left(srv.weights) == ["osnet.pth", "osnet.pth.sha256"]
        assert (srv.weights / "osnet.pth.sha256").read_text().split()[0] == _sha(_checkpoint())


def test_a_deleted_hash_record_is_an_error_not_a_re_pin(mirror, capsys):
    srv = mirror
    path = Path(zoo.resolve_weights("t_osnet"))
    record = srv.weights / "osnet.pth.sha256"
    with attack("hash record deleted next to the cached file"):
        record.unlink()
        with pytest.raises(ReIDError, match="no recorded sha256"):
            zoo.resolve_weights("t_osnet")
        assert not record.exists()
    with attack("file corrupted and its hash record deleted"):
        path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
        line = _one_cli_error(capsys, ["weights", "get", "t_osnet"])
        assert "no recorded sha256" in line and "--sha256" in line
        assert not record.exists()
    with attack("hash record overwritten with garbage"):
        path.unlink()
        _good_afterwards(srv)
        record.write_text("not a hash\n")
        with pytest.raises(ReIDError, match="holds no sha256"):
            zoo.resolve_weights("t_osnet")
        assert record.read_text() == "not a hash\n"
    with attack("cached file deleted, the server now sends another file"):
        record.write_text(f"{_sha(_checkpoint())}  osnet.pth\n")
        path.unlink()
        from test_zoo import _osnet_file

        srv.files["osnet.pth"] = _osnet_file("x0_5")  # a real checkpoint, but not the one pinned
        with pytest.raises(ReIDError, match="recorded at its first download") as err:
            zoo.resolve_weights("t_osnet")
        assert _sha(_checkpoint()) in str(err.value) and _left(srv.weights) == ["osnet.pth.sha256"]


def test_a_local_file_shadowing_a_catalogue_name(mirror, tmp_path, monkeypatch, capsys):
    srv = mirror
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    from test_zoo import _keys_file

    local = cwd / "t_osnet"
    local.write_bytes(_keys_file("conv1.conv.weight", "conv2.0.w", "classifier.weight"))
    with attack("a file in the current folder named like a catalogue entry"):
        capsys.readouterr()
        assert zoo.resolve_weights("t_osnet") == str(srv.weights / "osnet.pth")
        err = capsys.readouterr().err
        notes = [ln for ln in err.splitlines() if ln.startswith("notice:")]
        assert len(notes) == 1 and "./t_osnet" in notes[0], err
        assert (srv.weights / "osnet.pth").read_bytes() == _checkpoint()
    with attack("the same file given as a path"):
        assert zoo.resolve_weights("./t_osnet") == "./t_osnet"
        assert zoo.resolve_weights(str(local)) == str(local)
        assert capsys.readouterr().err == ""
    with attack("the shadowing file through the CLI"):
        assert main(["weights", "get", "t_osnet"]) == 0
        out, err = capsys.readouterr()
        assert out.strip() == str(srv.weights / "osnet.pth") and err.count("notice:") == 1
    with attack("the shadowing file through the model loader"):
        from reidkit.models.loading import local_weights

        assert local_weights("t_osnet") == srv.weights / "osnet.pth"
        assert local_weights("./t_osnet") == Path("./t_osnet")
    assert srv.requests.count("osnet.pth") == 1


def test_a_program_served_as_weights_is_refused(mirror, tmp_path):
    srv = mirror
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    with attack("TorchScript archive (a valid zip) served for a torchreid entry"):
        srv.files["osnet.pth"] = buf.getvalue()
        with pytest.raises(ReIDError, match="it is a TorchScript program"):
            zoo.resolve_weights("t_osnet")
        assert _left(srv.weights) == []

    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    evil = io.BytesIO()
    torch.save({"state_dict": {"conv1.conv.weight": torch.zeros(1)}, "x": Payload()}, evil)
    from reidkit.models.checkpoint import trusted

    with attack("a pickle that runs code, fetched under --trust-checkpoint"):
        srv.files["osnet.pth"] = evil.getvalue()
        with trusted():
            with pytest.raises(ReIDError, match="safe reader"):
                zoo.resolve_weights("t_osnet")
        assert not marker.exists() and _left(srv.weights) == []
    with attack("a checkpoint of another layout served for a torchreid entry"):
        from test_zoo import _keys_file

        srv.files["osnet.pth"] = _keys_file("backbone.conv1.weight", "heads.bnneck.weight")
        with pytest.raises(ReIDError, match="tensor names are not that layout's"):
            zoo.resolve_weights("t_osnet")
        assert _left(srv.weights) == []
    srv.files["osnet.pth"] = _checkpoint()
    _good_afterwards(srv)


BAD_ENTRIES = [
    ("filename", "", "non-empty"),
    ("filename", "bad\0.pth", "NUL"),
    ("filename", "sub/x.pth", "plain file name"),
    ("filename", "../x.pth", "plain file name"),
    ("filename", "..", "plain file name"),
    ("filename", "x.pth.sha256", "must not end in"),
    ("url", "file:///etc/passwd", "scheme 'file'"),
    ("url", "ftp://example.org/x.pth", "scheme 'ftp'"),
    ("url", "https://exa mple.org/x.pth", "space"),
    ("gdrive", "../../x", "Google Drive file id"),
    ("sha256", "abc", "64 hex digits"),
    ("sha256", "g" * 64, "64 hex digits"),
    ("max_bytes", 0, "positive"),
    ("max_bytes", -5, "positive"),
    ("max_bytes", "2GiB", "positive"),
    ("max_bytes", True, "positive"),
]


@pytest.mark.parametrize(("key", "value", "says"), BAD_ENTRIES, ids=[f"{k}={v!r}" for k, v, _ in BAD_ENTRIES])
def test_invalid_user_catalogue_entries(mirror, tmp_path, monkeypatch, capsys, key, value, says):
    srv = mirror
    bad = {"name": "t_bad", "filename": "bad.pth", "url": "https://example.invalid/bad.pth", key: value}
    monkeypatch.setenv("REIDKIT_ZOO", str(_catalogue(tmp_path / "bad.yaml", [*ENTRIES, bad])))
    with attack(f"catalogue entry with {key}={value!r}"):
        with pytest.raises(ReIDError) as err:
            zoo.resolve_weights("t_bad")
        msg = str(err.value)
        assert f"entry 't_bad': {key}:" in msg and says in msg, msg
        line = _one_cli_error(capsys, ["weights", "get", "t_bad"])
        assert f"entry 't_bad': {key}:" in line
        assert not srv.weights.exists() and srv.requests == []  # nothing fetched, no part file anywhere


def test_bad_mirror_url_is_refused(mirror, monkeypatch, tmp_path):
    with attack("REIDKIT_ZOO_URL_OVERRIDE pointing at the local disk"):
        monkeypatch.setenv("REIDKIT_ZOO_URL_OVERRIDE", f"file://{tmp_path}")
        with pytest.raises(ReIDError, match="REIDKIT_ZOO_URL_OVERRIDE: expected an http"):
            zoo.resolve_weights("t_osnet")
        assert _left(mirror.weights) == []


def test_disk_full_removes_the_part_and_says_so_once(mirror, monkeypatch, capsys):
    srv = mirror
    real_write = os.write

    def full_disk(fd, data):  # the kernel's answer when the disk fills up, for the part file only
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if name.endswith(".part"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with attack("disk full during the download"):
        with pytest.raises(ReIDError, match="no space left") as err:
            zoo.resolve_weights("t_osnet")
        assert "download it yourself" not in str(err.value) and str(srv.weights) in str(err.value)
        assert _left(srv.weights) == []
        line = _one_cli_error(capsys, ["weights", "get", "t_osnet"])
        assert "no space left" in line and "download it yourself" not in line
        assert _left(srv.weights) == []
    monkeypatch.setattr(os, "write", real_write)
    _good_afterwards(srv)


def test_parts_of_dead_processes_are_removed_live_ones_kept(mirror):
    srv = mirror
    p = procs.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=60)
    dead, live = p.pid, os.getppid()
    srv.weights.mkdir(parents=True)
    stale = [f"osnet.pth.{dead}.0123abcd.part", f".osnet.pth.sha256.{dead}.0123abcd.tmp"]
    for name in stale:
        (srv.weights / name).write_bytes(b"half a download")
    (srv.weights / f"osnet.pth.{live}.0123abcd.part").write_bytes(b"someone's download")
    (srv.weights / f"small.pth.{dead}.0123abcd.part").write_bytes(b"another entry's")  # goes with its own download
    with attack("part files left by a killed process"):
        _good_afterwards(srv)
        assert _left(srv.weights) == sorted(
            ["osnet.pth", "osnet.pth.sha256", f"osnet.pth.{live}.0123abcd.part", f"small.pth.{dead}.0123abcd.part"]
        )


def test_google_drive_downloads_go_through_the_same_part_file(mirror, tmp_path, monkeypatch):
    """gdown (faked: no network here) writes into the part writer, so its cap and failures hold for it too."""
    import types

    srv = mirror
    calls = []

    def download(id, output, quiet):  # noqa: A002 - gdown's own keyword
        calls.append(id)
        data = _checkpoint()
        for i in range(0, len(data), 65536):
            try:
                output.write(data[i : i + 65536])
            except Exception:  # noqa: BLE001 - a library that swallows its writer's errors
                return output
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    monkeypatch.delenv("REIDKIT_ZOO_URL_OVERRIDE")
    monkeypatch.setenv(
        "REIDKIT_ZOO",
        str(
            _catalogue(
                tmp_path / "gd.yaml",
                [
                    {"name": "t_gd", "filename": "gd.pth", "gdrive": "abc-DEF_123"},
                    {"name": "t_gd_small", "filename": "gds.pth", "gdrive": "abc-DEF_456", "max_bytes": 100_000},
                ],
            )
        ),
    )
    assert Path(zoo.resolve_weights("t_gd")).read_bytes() == _checkpoint()
    with attack("oversized Google Drive file, the error swallowed by the downloader"):
        with pytest.raises(ReIDError, match="sent more than 100000 bytes"):
            zoo.resolve_weights("t_gd_small")
        assert _left(srv.weights) == ["gd.pth", "gd.pth.sha256"]
    assert calls == ["abc-DEF_123", "abc-DEF_456"] and srv.requests == []


def test_zz_attack_counts():
    """The last test of the file: what the tests above tried and how it went."""
    print(f"\ncache attacks tried: {ATTACKS['tried']}, clean: {ATTACKS['clean']}")
    assert ATTACKS["tried"] > 0 and ATTACKS["clean"] == ATTACKS["tried"]
