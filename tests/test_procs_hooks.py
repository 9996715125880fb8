"""The fork server (tests/procs.py) stands in for a fresh interpreter with CPython's own private hooks.

Each hook it relies on is checked here by name and behaviour, so that a Python release that renames or
changes one fails this file with a message saying which hook and what to do (run the suite with
REIDKIT_TEST_FORK=0, which starts real interpreters, until procs.py is adapted), instead of failing
hundreds of subprocess tests with confusing errors.
"""

import atexit
import inspect
import runpy
import sys
import threading
import warnings
import weakref

import pytest

import procs

ADVICE = (
    "tests/procs.py relies on it to make a forked process behave like a fresh interpreter; "
    "run the suite with REIDKIT_TEST_FORK=0 until procs.py is adapted to this Python "
    f"({sys.version.split()[0]})"
)


def _need(module, name):
    hook = getattr(module, name, None)
    if not callable(hook):
        pytest.fail(f"{module.__name__}.{name} is gone or not callable: {ADVICE}")
    return hook


def _fresh(code: str) -> str:
    """stdout of `code` in a real interpreter (not a fork), where the hook does what CPython does at exit."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_runpy_run_module_as_main_runs_a_module_as_dash_m_does(tmp_path):
    # in a real interpreter, never in this process: the hook runs the module in __main__'s own namespace, and a
    # multiprocessing forkserver started later would re-import __main__ under the probe's name
    hook = _need(runpy, "_run_module_as_main")
    params = inspect.signature(hook).parameters
    assert list(params)[:2] == ["mod_name", "alter_argv"], (
        f"runpy._run_module_as_main{inspect.signature(hook)}: {ADVICE}"
    )
    (tmp_path / "procs_probe_mod.py").write_text("import sys\nprint(__name__, sys.argv[0])\n")
    out = _fresh(
        f"import runpy, sys\nsys.path.insert(0, {str(tmp_path)!r})\nsys.argv = ['-m', 'x']\n"
        "runpy._run_module_as_main('procs_probe_mod', alter_argv=True)\n"
    )
    assert out.split() == ["__main__", str(tmp_path / "procs_probe_mod.py")], ADVICE


def test_threading_shutdown_joins_non_daemon_threads():
    _need(threading, "_shutdown")
    out = _fresh(
        "import threading, time\n"
        "done = []\n"
        "t = threading.Thread(target=lambda: (time.sleep(0.2), done.append(1)))\n"
        "t.start(); threading._shutdown(); print(done, t.is_alive())\n"
    )
    assert out.split() == ["[1]", "False"], f"threading._shutdown() did not join a running thread: {ADVICE}"


def test_atexit_run_exitfuncs_runs_and_clears_registered_hooks():
    _need(atexit, "_run_exitfuncs")
    out = _fresh(
        "import atexit\n"
        "atexit.register(print, 'hook ran')\n"
        "atexit._run_exitfuncs(); print('after', atexit._ncallbacks())\n"
    )
    assert out.splitlines() == ["hook ran", "after 0"], f"atexit._run_exitfuncs(): {ADVICE}"


def test_warnings_setoption_parses_a_pythonwarnings_entry():
    hook = _need(warnings, "_setoption")
    error = getattr(warnings, "_OptionError", None)
    assert isinstance(error, type) and issubclass(error, Exception), f"warnings._OptionError: {ADVICE}"
    with warnings.catch_warnings():
        hook("error::DeprecationWarning")
        with pytest.raises(DeprecationWarning):
            warnings.warn("x", DeprecationWarning)
    with pytest.raises(error):
        hook("not-an-action")


def test_weakref_finalize_registry_holds_the_finalizers():
    registry = getattr(weakref.finalize, "_registry", None)
    assert isinstance(registry, dict), f"weakref.finalize._registry: {ADVICE}"

    class Thing:
        pass

    t = Thing()
    fin = weakref.finalize(t, lambda: None)
    assert fin in registry and hasattr(fin, "atexit"), f"weakref.finalize._registry entries: {ADVICE}"
    fin.detach()


def test_a_forked_process_behaves_like_a_fresh_interpreter(tmp_path):
    """The hooks together: -m, exit code, atexit, a non-daemon thread joined at exit, stderr."""
    script = tmp_path / "probe.py"
    out = tmp_path / "out.txt"
    script.write_text(
        "import atexit, sys, threading, time\n"
        f"atexit.register(lambda: open({str(out)!r}, 'a').write('atexit\\n'))\n"
        f"t = threading.Thread(target=lambda: (time.sleep(0.2), open({str(out)!r}, 'a').write('thread\\n')))\n"
        "t.start()\n"
        "print('to stderr', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    r = procs.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "to stderr" in r.stderr
    assert out.read_text().splitlines() == ["thread", "atexit"], ADVICE
