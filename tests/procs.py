"""Python processes for the tests, without paying the interpreter's start each time.

A test that runs ``python -m reidkit.cli ...`` (or ``-c CODE``, or a script) in its own process pays 3-5 s
of imports (torch, numpy, scipy, faiss, ...) before the first line of its own code. Most of the suite's
process tests (kills, locks, two writers, a served gallery) need a separate process, not a fresh
interpreter. Here one *fork server* imports those libraries once per test session; every process the
tests ask for is a fork of it that then runs like ``python ARGS`` would:

- its own pid, which ``send_signal`` / ``kill`` reach directly (SIGKILL kills the process that runs the
  code, at the moment it is sent); its own stdin/stdout/stderr, cwd and environment;
- ``sys.argv``, ``sys.path`` (the script's folder or the working directory, then ``$PYTHONPATH``),
  ``__main__``, standard streams and ``$PYTHONWARNINGS`` / ``$PYTHONUNBUFFERED`` set as a fresh
  interpreter sets them; the thread counts a fresh process would get from ``$OMP_NUM_THREADS``; exit
  code, non-daemon threads, ``atexit`` and uncaught exceptions handled as at interpreter exit;
- no reidkit module is imported before the fork: reidkit starts fresh in every process, state and all.

``run`` and ``Popen`` take the arguments of ``subprocess.run`` / ``subprocess.Popen`` that the tests
use. A command that is not ``[sys.executable, "-m" | "-c" | script, ...]`` runs as a real subprocess,
and so does everything when ``REIDKIT_TEST_FORK=0`` (the suite passes both ways) or where fork or Unix
sockets are missing. ``python_shim()`` gives an executable for scripts that start Python themselves
(``PYTHON=... bash benchmarks/gpu_run.sh``): it forwards its arguments, streams and SIGTERM/SIGINT to a
forked process and exits with its code.

Only the standard library is imported here: the shim and the server's own start must stay cheap.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

# Heavy libraries the reidkit CLI and the tests' scripts import: loaded once, in the server.
PRELOAD = [
    "numpy",
    "scipy.sparse",
    "scipy.spatial",
    "scipy.optimize",
    "sklearn.cluster",
    "sklearn.metrics",
    "torch",
    "torch.nn",
    "torch.distributed",
    "torch.utils.data",
    "torch.onnx",
    "faiss",
    "PIL.Image",
    "yaml",
    "tqdm",
    "ignite.engine",
    "cv2",
    "onnx",
    "onnxruntime",
    "torch.utils.tensorboard",
    "fastapi",
    "uvicorn",
    "httpx",
    "pandas",
    "pymilvus",
    # what torch imports on first use of an optimizer, a meta-device fill or torch.compile (~1 s)
    "torch._dynamo",
]
_INT = struct.Struct("!i")
_server: dict = {}
_lock = threading.Lock()


def enabled() -> bool:
    return (
        os.environ.get("REIDKIT_TEST_FORK", "1") != "0"
        and hasattr(os, "fork")
        and hasattr(socket, "send_fds")
        and sys.platform.startswith("linux")
    )


# ----------------------------------------------------------------------------------------------------------
# the server


def _serve(path: str, parent: int) -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional library that is missing is imported by the child
            pass
    base_path = list(sys.path[1:])
    listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listen.bind(path + ".tmp")
    os.rename(path + ".tmp", path)  # the client connects once the server is ready
    listen.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    children: dict[int, socket.socket] = {}
    while os.getppid() == parent:
        readable, _, _ = select.select([listen, wake_r, *children.values()], [], [], 0.5)
        if wake_r in readable:
            os.read(wake_r, 4096)
        while children:  # reap: tell each client how its process ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(_INT.pack(os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass
                conn.close()
        for pid, conn in list(children.items()):
            if conn in readable:  # the client went away before its process ended: end the process too
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if listen in readable:
            conn, _ = listen.accept()
            try:
                req, fds = _recv_request(conn)
            except (OSError, ValueError):
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                listen.close()
                conn.close()
                os.close(wake_r)
                os.close(wake_w)
                _child(req, fds, base_path)  # never returns
            for fd in fds:
                os.close(fd)
            conn.sendall(_INT.pack(pid))
            children[pid] = conn
    os._exit(0)


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    head, fds, _, _ = socket.recv_fds(conn, 8, 3)
    if len(head) < 8 or len(fds) != 3:
        raise ValueError("bad request")
    (size,) = struct.unpack("!Q", head)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("short request")
        body += chunk
    return json.loads(body), fds


def _child(req: dict, fds: list[int], base_path: list[str]) -> None:
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for i, fd in enumerate(fds):
            if fd != i:
                os.dup2(fd, i)
        for fd in set(fds):
            if fd > 2:
                os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        _forget_server_exit_hooks()
        code = _run_python(req["argv"], base_path)
    except SystemExit as exc:  # pragma: no cover - raised before the user's code ran
        code = _exit_code(exc)
    except BaseException:  # noqa: BLE001
        try:
            import traceback

            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def _forget_server_exit_hooks() -> None:
    """Exit hooks that tear down the preloaded libraries' in-memory state (torch unregisters each of its op
    libraries, dynamo formats its compile times) cost every process tens of milliseconds at exit and change
    nothing it wrote: the ones registered in the server are dropped. Logging's flush, multiprocessing's and
    everything the process itself registers still run at its exit."""
    import weakref

    for fin in list(getattr(weakref.finalize, "_registry", {})):
        fin.atexit = False
    dynamo = sys.modules.get("torch._dynamo.utils")
    if dynamo is not None and hasattr(dynamo, "dump_compile_times"):
        import atexit

        atexit.unregister(dynamo.dump_compile_times)


def _streams(unbuffered: bool) -> None:
    """stdin/stdout/stderr as the interpreter makes them at start, on the fds this process was given."""
    env = os.environ
    unbuffered = unbuffered or bool(env.get("PYTHONUNBUFFERED"))
    enc = env.get("PYTHONIOENCODING", "")
    encoding, _, errors = enc.partition(":")
    encoding = encoding or None

    def wrap(fd: int, mode: str, err: str | None) -> io.TextIOWrapper:
        try:
            tty = os.isatty(fd)
        except OSError:
            tty = False
        raw = open(fd, mode + "b", buffering=0 if unbuffered and mode == "w" else -1, closefd=False)
        return io.TextIOWrapper(
            raw,
            encoding=encoding,
            errors=errors or err,
            line_buffering=tty or fd == 2,
            write_through=unbuffered and mode == "w",
        )

    sys.stdin = sys.__stdin__ = wrap(0, "r", None)
    sys.stdout = sys.__stdout__ = wrap(1, "w", None)
    sys.stderr = sys.__stderr__ = wrap(2, "w", "backslashreplace")


def _threads() -> None:
    """Thread pools as a fresh process gets them: libraries loaded in the server read the server's
    environment at load, so apply this process's $OMP_NUM_THREADS (or the cores) to them now."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", "") or 0)
    except ValueError:
        n = 0
    n = n if n > 0 else len(os.sched_getaffinity(0))
    mods = sys.modules
    if "torch" in mods:
        mods["torch"].set_num_threads(n)
    if "faiss" in mods:
        mods["faiss"].omp_set_num_threads(n)
    if "cv2" in mods:
        mods["cv2"].setNumThreads(n)


def _run_python(argv: list[str], base_path: list[str]) -> int:
    import runpy
    import types
    import warnings

    unbuffered = False
    while argv[0] == "-u":  # what torchrun starts its workers with
        unbuffered, argv = True, argv[1:]
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if argv[0] == "-m":
        first = os.getcwd()
    elif argv[0] == "-c":
        first = ""
    else:
        first = os.path.dirname(os.path.realpath(argv[0]))
    sys.path[:] = [first, *extra, *[p for p in base_path if p not in extra]]
    sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    _streams(unbuffered)
    for opt in filter(None, os.environ.get("PYTHONWARNINGS", "").split(",")):
        try:
            warnings._setoption(opt)  # type: ignore[attr-defined]  # what -W / $PYTHONWARNINGS do
        except warnings._OptionError:  # type: ignore[attr-defined]
            pass
    _threads()
    code = 0
    try:
        if argv[0] == "-m":
            sys.argv = ["-m", *argv[2:]]
            runpy._run_module_as_main(argv[1], alter_argv=True)  # type: ignore[attr-defined]  # what -m does
        elif argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            main = types.ModuleType("__main__")
            main.__dict__["__builtins__"] = __builtins__
            sys.modules["__main__"] = main
            exec(compile(argv[1], "<string>", "exec"), main.__dict__)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        code = _exit_code(exc)
    except KeyboardInterrupt:
        import traceback

        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - an uncaught exception: its traceback and exit 1
        kind, value, tb = sys.exc_info()
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:  # this file's frames are not the user's
            tb = tb.tb_next
        sys.excepthook(kind, value, tb)
        code = 1
    _shutdown()
    return code


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    try:
        print(exc.code, file=sys.stderr)
    except Exception:  # noqa: BLE001
        pass
    return 1


def _shutdown() -> None:
    """What the interpreter does at exit: join non-daemon threads, run atexit, flush the streams."""
    import atexit

    try:
        threading._shutdown()  # type: ignore[attr-defined]
    except BaseException:  # noqa: BLE001
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass


# ----------------------------------------------------------------------------------------------------------
# the client


def start_server() -> None:
    """Start the server (one per test session) without waiting for its imports."""
    with _lock:
        if _server or not enabled():
            return
        folder = tempfile.mkdtemp(prefix="reidkit-fork-")
        path = os.path.join(folder, "sock")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        # what `reidkit`'s configure_threads sets before torch loads in a fresh process
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        code = f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import procs; procs._serve({path!r}, {os.getpid()})"
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _server.update(path=path, proc=proc, folder=folder, ready=False)


def _address() -> str | None:
    """The server's socket path once it has its libraries loaded; None where there is no server."""
    start_server()
    with _lock:
        if not _server.get("ready"):
            if "proc" not in _server:
                return None
            proc, path = _server["proc"], _server["path"]
            deadline = time.monotonic() + 180
            while not os.path.exists(path):
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    _server.clear()
                    _server["failed"] = True  # run real subprocesses from now on
                    return None
                time.sleep(0.02)
            _server["ready"] = True
        return _server["path"]


def stop_server() -> None:
    proc = _server.pop("proc", None)
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    folder = _server.pop("folder", None)
    _server.clear()
    _server["failed"] = True
    if folder:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def _forkable(cmd) -> bool:
    if isinstance(cmd, (str, bytes)) or len(cmd) < 2 or str(cmd[0]) != sys.executable:
        return False
    args = [str(a) for a in cmd[1:]]
    while args and args[0] == "-u":
        args = args[1:]
    if not args:
        return False
    if args[0] in ("-m", "-c"):
        return len(args) >= 2
    return not args[0].startswith("-")


def _request(path: str, argv: list[str], env: dict, cwd: str, fds: list[int]) -> tuple[socket.socket, int]:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    body = json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode()
    socket.send_fds(conn, [struct.pack("!Q", len(body))], fds)
    conn.sendall(body)
    head = _recv_exact(conn, 4)
    if head is None:
        conn.close()
        raise OSError("the fork server did not start the process")
    return conn, _INT.unpack(head)[0]


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class ForkedPopen:
    """The part of ``subprocess.Popen`` the tests use, for a process forked from the server."""

    def __init__(
        self,
        path: str,
        cmd,
        stdin=None,
        stdout=None,
        stderr=None,
        env=None,
        cwd=None,
        text=None,
        universal_newlines=None,
        encoding=None,
        errors=None,
    ):
        self.args = cmd
        self.returncode: int | None = None
        text = bool(text or universal_newlines or encoding or errors)
        mine: list[int] = []  # fds made here for the child, closed once sent
        self.stdin = self.stdout = self.stderr = None

        def target(spec, fd: int, reading: bool):
            if spec is None:
                return fd, None
            if spec == subprocess.DEVNULL:
                d = os.open(os.devnull, os.O_RDWR)
                mine.append(d)
                return d, None
            if spec == subprocess.PIPE:
                r, w = os.pipe()
                child, ours = (r, w) if reading else (w, r)
                mine.append(child)
                return child, ours
            if isinstance(spec, int):
                return spec, None
            return spec.fileno(), None

        in_fd, in_ours = target(stdin, 0, True)
        out_fd, out_ours = target(stdout, 1, False)
        if stderr == subprocess.STDOUT:
            err_fd, err_ours = out_fd, None
        else:
            err_fd, err_ours = target(stderr, 2, False)
        env = dict(os.environ if env is None else env)
        try:
            self._conn, self.pid = _request(
                path,
                [str(a) for a in cmd[1:]],
                {str(k): str(v) for k, v in env.items()},
                os.path.abspath(str(cwd or os.getcwd())),
                [in_fd, out_fd, err_fd],
            )
        finally:
            for fd in mine:
                os.close(fd)

        def wrap(fd, mode):
            if fd is None:
                return None
            f = open(fd, mode + "b")
            if text:
                return io.TextIOWrapper(f, encoding=encoding, errors=errors, write_through=mode == "w")
            return f

        self.stdin = wrap(in_ours, "w")
        self.stdout = wrap(out_ours, "r")
        self.stderr = wrap(err_ours, "r")

    def poll(self) -> int | None:
        if self.returncode is None:
            ready, _, _ = select.select([self._conn], [], [], 0)
            if ready:
                self._finish()
        return self.returncode

    def _finish(self) -> None:
        head = _recv_exact(self._conn, 4)
        self._conn.close()
        # no status: the server went away; the process was killed with it
        self.returncode = _INT.unpack(head)[0] if head is not None else -signal.SIGKILL

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            ready, _, _ = select.select([self._conn], [], [], timeout)
            if not ready:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._finish()
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input=None, timeout: float | None = None):
        """Write `input`, read stdout/stderr to their end, wait: as ``Popen.communicate``."""
        if self.stdin is not None:
            try:
                if input:
                    self.stdin.write(input)
                self.stdin.close()
            except BrokenPipeError:
                pass
        results: dict[str, list] = {}
        readers = []
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is None:
                continue
            results[name] = []
            t = threading.Thread(target=lambda s=stream, r=results[name]: r.append(s.read()), daemon=True)
            t.start()
            readers.append(t)
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in readers:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        out = results.get("stdout", [None])[0] if "stdout" in results else None
        err = results.get("stderr", [None])[0] if "stderr" in results else None
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        return out, err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self.wait()

    def __del__(self):
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()


def Popen(cmd, **kw):  # noqa: N802 - the name of what it stands in for
    """``subprocess.Popen``; a Python command runs as a fork of the server (see the module docstring)."""
    path = _address() if _forkable(cmd) and set(kw) <= _FORK_KW else None
    if path is None:
        return subprocess.Popen(cmd, **kw)
    return ForkedPopen(path, cmd, **kw)


_FORK_KW = {"stdin", "stdout", "stderr", "env", "cwd", "text", "universal_newlines", "encoding", "errors"}


def run(
    cmd, *, input=None, capture_output: bool = False, timeout: float | None = None, check: bool = False, **kw
) -> subprocess.CompletedProcess:
    """``subprocess.run`` with ``Popen`` above."""
    if capture_output:
        kw["stdout"] = kw["stderr"] = subprocess.PIPE
    if input is not None:
        kw["stdin"] = subprocess.PIPE
    with Popen(cmd, **kw) as p:
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise
    if check and p.returncode:
        raise subprocess.CalledProcessError(p.returncode, cmd, out, err)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


# ----------------------------------------------------------------------------------------------------------
# the shim: an executable that stands in for `python` in scripts


def python_shim() -> str:
    """An executable that runs ``python ARGS`` as a fork of the server, for scripts and launchers that start
    Python themselves (``PYTHON=`` for benchmarks/gpu_run.sh, ``PYTHON_EXEC=`` for torchrun's workers);
    the real interpreter where there is no server."""
    path = _address()
    if path is None:
        return sys.executable
    shim = os.path.join(os.path.dirname(path), "python")
    if not os.path.exists(shim):
        with open(shim + ".tmp", "w") as f:
            f.write(
                f"#!{sys.executable} -S\n"
                f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
                f"import procs; procs._shim({path!r})\n"
            )
        os.chmod(shim + ".tmp", 0o755)
        os.rename(shim + ".tmp", shim)
    return shim


def _shim(path: str | None) -> None:
    argv = sys.argv[1:]
    if path is None or not os.path.exists(path) or not _forkable([sys.executable, *argv]):
        os.execv(sys.executable, [sys.executable, *argv])
    conn, pid = _request(path, argv, dict(os.environ), os.getcwd(), [0, 1, 2])

    def forward(sig, _frame):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    head = None
    while head is None:
        try:
            head = _recv_exact(conn, 4)
            break
        except InterruptedError:
            continue
    code = _INT.unpack(head)[0] if head is not None else -signal.SIGKILL
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)
