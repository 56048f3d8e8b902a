"""The pre-warmed interpreter (tests/launcher.py) behaves as `python script.py` does: the same
exit codes, streams, working directory, environment and arguments, signals and atexit handlers."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import FRESH, launcher

SCRIPT = """
import atexit, json, os, sys
atexit.register(lambda: print("atexit ran"))
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": os.environ.get("PROBE"),
                  "main": __name__, "path0": sys.path[0]}))
print("to stderr", file=sys.stderr)
mode = sys.argv[1]
if mode == "exit-message":
    sys.exit("script.py: error: one line")
if mode == "exit-3":
    sys.exit(3)
if mode == "raise":
    raise ValueError("boom")
if mode == "interrupt":
    raise KeyboardInterrupt
if mode == "sleep":
    import time
    print("sleeping", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    return path


def fresh(args, cwd, env):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.skipif(FRESH, reason="LENSING_TEST_FRESH=1: no launcher")
@pytest.mark.parametrize("mode", ["ok", "exit-message", "exit-3", "raise", "interrupt", "missing"])
def test_a_run_through_the_launcher_is_a_python_run(script, tmp_path, mode):
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PROBE="value")
    args = [script if mode != "missing" else tmp_path / "nope.py", mode, "two words"]
    a, b = launcher().run(args, work, env), fresh(args, work, env)
    assert a.returncode == b.returncode, (a, b)
    assert a.stdout == b.stdout, (a.stdout, b.stdout)
    if mode == "raise":  # the traceback's last line; its frames differ (runpy's, not the interpreter's)
        assert a.stderr.splitlines()[-1] == b.stderr.splitlines()[-1] == "ValueError: boom"
    elif mode != "interrupt":
        assert a.stderr == b.stderr, (a.stderr, b.stderr)


@pytest.mark.skipif(FRESH, reason="LENSING_TEST_FRESH=1: no launcher")
def test_signals_reach_the_script(script, tmp_path):
    proc = launcher().start([script, "sleep"], tmp_path, os.environ)
    deadline = time.time() + 30
    while proc.poll() is None and time.time() < deadline and b"sleeping" not in os.pread(proc.files[0].fileno(), 64, 0):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM and "sleeping" in out
