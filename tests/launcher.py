"""A pre-warmed interpreter for the tests' script runs: `python train.py ...` without the ~3 s of
importing torch, scipy, timm and matplotlib each time.

The suite runs the stage scripts a few hundred times, and most of each run used to be start-up.
One server process per pytest process imports the heavy libraries once (and computes nothing, so
no thread pool exists when it forks); each request forks a child that takes the caller's working
directory, environment, argv and stdin/stdout/stderr (passed as file descriptors over a Unix
socket) and runs the script as `__main__` with runpy, exactly as `python script.py` would: its
own imports, `sys.exit` codes, uncaught tracebacks, atexit handlers and spawned workers included.
The child is a copy of a process that has done nothing, so every run starts from the same clean
state; Python's and NumPy's global random states are re-seeded from the OS as in a fresh
interpreter, and torch's thread count follows OMP_NUM_THREADS.

    launcher.run(["train.py", "--data", ...], cwd, env, timeout) -> subprocess.CompletedProcess
    launcher.start(argv, cwd, env) -> a Popen-like handle (poll, send_signal, communicate)

LENSING_TEST_FRESH=1 makes tests/conftest.py start a fresh interpreter for every run instead
(slower; shows that nothing depends on the server).
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

HEAVY = ("numpy", "scipy.optimize", "scipy.interpolate", "scipy.special", "scipy.stats", "scipy.ndimage", "h5py",
         "torch", "torch.distributed", "torchvision", "timm", "sklearn.metrics", "astropy.io.fits",
         "astropy.cosmology", "astropy.wcs", "matplotlib.pyplot", "tqdm", "VBBinaryLensing")


# --------------------------------------------------------------------------- server
def _recv_request(conn):
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    return json.loads(msg.decode()), fds


def _run_child(request, fds):
    """In the forked child: become `python script args...`; never returns."""
    for i, fd in enumerate(fds):
        os.dup2(fd, i)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    script = os.path.abspath(request["argv"][0])
    if not os.path.isfile(script):  # as the interpreter says it
        print(f"{sys.executable}: can't open file {script!r}: [Errno 2] No such file or directory", file=sys.stderr)
        sys.stderr.flush()
        os._exit(2)
    sys.argv = [script, *request["argv"][1:]]
    sys.path[0] = os.path.dirname(script)
    import random

    import numpy as np
    import torch
    random.seed()
    np.random.seed()
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import runpy
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as stop:  # what the interpreter does with sys.exit(code)
        code = stop.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:  # the interpreter ends by SIGINT then (status -2 to the caller)
        sys.excepthook(*sys.exc_info())
        code = -signal.SIGINT
    except BaseException:  # an uncaught exception: its traceback and status 1
        sys.excepthook(*sys.exc_info())
        code = 1
    # The interpreter's exit, less its final teardown of every module: in a forked child that
    # teardown writes to every inherited page (reference counts) and costs ~2 s. Non-daemon threads
    # are joined, atexit handlers run (multiprocessing, tempfile, logging) and the streams flushed.
    import atexit
    import threading
    getattr(threading, "_shutdown", lambda: None)()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the script closed it: nothing left to flush
            pass
    if code == -signal.SIGINT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code & 0xFF)


def _handle(conn):
    """In a per-request child of the server: fork the script's process, report its pid, then its
    exit code (negative for a signal, as subprocess does)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    request, fds = _recv_request(conn)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run_child(request, fds)
    for fd in fds:
        os.close(fd)
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    conn.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")


def serve(path):
    import importlib
    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in HEAVY:
        try:
            importlib.import_module(name)
        except ImportError:  # optional (e.g. a machine without VBBinaryLensing): imported by the script if used
            pass
    import gc
    gc.freeze()  # the imported objects stay out of the children's collections (fewer copied pages)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # request handlers are reaped by the kernel
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    parent = os.getppid()
    server.settimeout(2.0)
    while True:
        try:
            conn, _ = server.accept()
        except (socket.timeout, TimeoutError):
            if os.getppid() != parent:  # the pytest process is gone (even killed): so is its server
                shutil.rmtree(os.path.dirname(path), ignore_errors=True)
                return
            continue
        conn.settimeout(None)
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            server.close()
            _handle(conn)
            os._exit(0)
        conn.close()


# --------------------------------------------------------------------------- client
class Launcher:
    """The client side: one server, started on first use, stopped at exit."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="lz")
        self.path = os.path.join(self.dir, "s")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), self.path],
                                     stdout=subprocess.PIPE, text=True,
                                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the test launcher did not start")
        atexit.register(self.close)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self, argv, cwd, env) -> "Running":
        """Start `python argv...` and return at once (a Popen-like handle)."""
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.path)
        request = json.dumps({"argv": [str(a) for a in argv], "cwd": str(cwd), "env": dict(env)}).encode()
        with open(os.devnull, "rb") as stdin:
            socket.send_fds(conn, [request], [stdin.fileno(), out.fileno(), err.fileno()])
        return Running([sys.executable, *map(str, argv)], conn, out, err)

    def run(self, argv, cwd, env, timeout=600) -> subprocess.CompletedProcess:
        """Run `python argv...` to its end, like subprocess.run(..., capture_output=True, text=True)."""
        proc = self.start(argv, cwd, env)
        out, err = proc.communicate(timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class Running:
    """A script started by the launcher, with the part of Popen's interface the tests use."""

    def __init__(self, args, conn, out, err):
        self.args, self.conn, self.files = args, conn, (out, err)
        self.buffer, self.returncode = b"", None
        self.pid = json.loads(self._line(None))["pid"]

    def _line(self, timeout):
        """The server's next line; None if it has not come within `timeout` s."""
        self.conn.settimeout(timeout)
        while b"\n" not in self.buffer:
            try:
                chunk = self.conn.recv(4096)
            except (socket.timeout, TimeoutError, BlockingIOError):
                return None
            if not chunk:
                raise RuntimeError("the test launcher closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def poll(self):
        if self.returncode is None:
            line = self._line(0.0)
            if line is not None:
                self.returncode = json.loads(line)["returncode"]
                self.conn.close()
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            line = self._line(timeout)
            if line is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = json.loads(line)["returncode"]
            self.conn.close()
        return self.returncode

    def send_signal(self, sig):
        if self.returncode is None:
            os.kill(self.pid, sig)

    def communicate(self, timeout=None):
        """Wait for the end (killed after `timeout` s) and return (stdout, stderr) as text."""
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send_signal(signal.SIGKILL)
            self.wait()
            raise
        texts = []
        for f in self.files:
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
            f.close()
        return tuple(texts)


def venv_shim(folder, launcher: Launcher) -> str:
    """A folder laid out like a virtual environment (`bin/activate`, `bin/python`) for shell
    scripts that `source $VENV/bin/activate` and call `python script.py`: activate is the real
    one's, and `python` hands `python script.py ...` to the launcher (anything else, e.g.
    `python -m ...`, goes to the real interpreter)."""
    bin_dir = os.path.join(folder, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    with open(os.path.join(bin_dir, "activate"), "w") as f:
        f.write(f'source "{sys.prefix}/bin/activate"\nexport PATH="{bin_dir}:$PATH"\nhash -r 2>/dev/null\n')
    shim = os.path.join(bin_dir, "python")
    with open(shim, "w") as f:
        f.write(f'#!/bin/sh\nexec "{sys.executable}" -S -E "{os.path.abspath(__file__)}" client "{launcher.path}" "$@"\n')
    os.chmod(shim, 0o755)
    return folder


def client(path, argv):
    """`python script.py ...` through the server, with this process's stdin/stdout/stderr,
    working directory and environment; signals are passed on to the script's process."""
    if not argv or argv[0].startswith("-") or not argv[0].endswith(".py"):
        os.execv(sys.executable, [sys.executable, *argv])
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [request], [0, 1, 2])
    reader = conn.makefile("r")
    pid = json.loads(reader.readline())["pid"]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, lambda signum, frame: os.kill(pid, signum))
    returncode = json.loads(reader.readline())["returncode"]
    if returncode < 0:
        signal.signal(-returncode, signal.SIG_DFL)
        os.kill(os.getpid(), -returncode)
    sys.exit(returncode)


if __name__ == "__main__":
    if sys.argv[1] == "client":
        client(sys.argv[2], sys.argv[3:])
    else:
        serve(sys.argv[1])
