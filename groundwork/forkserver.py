"""A warm interpreter for the stage commands: `python -m tasks.<stage>` spends most of its start-up importing torch,
MLflow, ONNX Runtime and scikit-learn (about 8 s of CPU on 2 cores, before any line of the stage runs), and a DVC
pipeline starts one such process per stage.

A fork server imports those libraries once. While one runs (its socket named by GROUNDWORK_STAGE_SERVER), a stage
command hands over its arguments, environment, working folder, umask, resource limits, CPU affinity and standard
streams; the server forks a process that adopts all of them and runs the stage module as `python -m` would, with the
project's own packages imported afresh from the command's sys.path (so a copy of the project runs its own code). The
command waits, passes on the signals it receives, and ends as the stage ended: its exit code, or the signal that
killed it. When the command itself is killed (SIGKILL of `dvc repro`'s process group), the stage's process group
is killed with it.

Without a server (plain `dvc repro`, a stage typed by hand), with one that cannot be reached, or with one whose
interpreter differs from the command's (another Python, other -X options or hash seed), the command runs the stage
itself, exactly as before. The flows, `groundwork repro` and the test suite start one for their duration
(`running`); `python -m groundwork.forkserver SOCKET` runs one by hand.

It is an acceleration for Linux, on there by default: GROUNDWORK_WARM_STAGES=0 turns it off. Elsewhere stages start
cold: macOS and Windows lack calls it needs (sched_getaffinity; fork, `resource` and Unix sockets on Windows), and
forking a process that has loaded torch and OpenMP is unsafe on macOS in general.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, NoReturn

try:
    import resource
except ImportError:  # Windows: no resource limits to pass on, and no stage server (see unavailable)
    resource = None  # type: ignore[assignment]

SERVER_ENV = "GROUNDWORK_STAGE_SERVER"
SWITCH_ENV = "GROUNDWORK_WARM_STAGES"  # "0" (or off, false, no) turns the stage server off
OFF = frozenset({"0", "off", "false", "no"})
STARTED_WARM_ENV = "GROUNDWORK_STARTED_WARM"  # set in a forked stage: its MLflow run says how it started
STAGE_PACKAGE = "tasks"
# Imported by the server before it forks: every heavy third-party module a stage uses. The project's own packages
# are never preloaded (a forked stage imports them from its command's sys.path).
PRELOAD = ("numpy", "pandas", "PIL.Image", "pydantic", "yaml", "scipy.stats", "torch", "torch.nn", "torch.optim",
           "torch._dynamo", "torch.onnx", "torchvision", "onnx", "onnxruntime",
           "sklearn.model_selection", "sklearn.metrics", "sklearn.datasets", "matplotlib.pyplot",
           "mlflow", "mlflow.pytorch", "mlflow.onnx", "mlflow.pyfunc", "mlflow.models", "mlflow.data",
           "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store")
# Called once after the imports: caches a preloaded library fills on first use, which every forked stage would
# otherwise fill again. MLflow maps installed packages to modules (reading every distribution's metadata: about
# 2.5 s here) the first time a process logs a model, to check the model's stated requirements.
WARM_UP = (("mlflow.utils.requirements_utils", "_init_modules_to_packages_map"),)
PROJECT_PACKAGES = frozenset({"groundwork", STAGE_PACKAGE, "flows"})
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
LIMITS = tuple(name for name in dir(resource) if name.startswith("RLIMIT_")) if resource else ()
READY = "ready"
PARENT_CHECK_S = 1.0
START_TIMEOUT_S = 180


def unavailable() -> str | None:
    """Why stages start cold here (the switch, the platform, a missing call), or None when a server can serve them."""
    setting = os.environ.get(SWITCH_ENV, "")
    if setting.strip().lower() in OFF:
        return f"{SWITCH_ENV}={setting} turns the stage server off"
    if sys.platform != "linux":
        return f"the stage server runs on Linux only, not on {sys.platform}"
    needed = {"os.fork": hasattr(os, "fork"), "os.sched_getaffinity": hasattr(os, "sched_getaffinity"),
              "the resource module": resource is not None, "Unix sockets": hasattr(socket, "AF_UNIX"),
              "socket.send_fds": hasattr(socket, "send_fds")}
    missing = [name for name, present in needed.items() if not present]
    return f"this Python lacks {', '.join(missing)}" if missing else None


# ---- the command's side ------------------------------------------------------------------------------------------

def hand_over_command() -> None:
    """Called while `python -m tasks.<stage>` imports the tasks package: hand the command to the server named in the
    environment and exit as the stage did; return (and let the command run the stage itself) when there is none."""
    argv = sys.orig_argv
    if "-m" not in argv:
        return
    at = argv.index("-m")
    module, args = argv[at + 1], argv[at + 2:]
    if not module.startswith(f"{STAGE_PACKAGE}."):
        return
    code = hand_over(module, args)
    if code is not None:
        raise SystemExit(code)


def _interpreter() -> list[Any]:
    """What a forked process inherits from the server's interpreter and cannot change: it must match the command's."""
    # the binary and the environment, not the name it was called by (a venv's python and python3 are one)
    return [os.path.realpath(sys.executable), sys.prefix, sys.version, list(sys.flags), sys.warnoptions,
            sys._xoptions, os.environ.get("PYTHONHASHSEED")]


def _request(module: str, args: list[str]) -> dict[str, Any]:
    mask = os.umask(0)
    os.umask(mask)
    return {"module": module, "argv": args, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path,
            "umask": mask, "limits": {name: resource.getrlimit(getattr(resource, name)) for name in LIMITS},
            "affinity": sorted(os.sched_getaffinity(0)), "interpreter": _interpreter(),
            "unbuffered": bool(getattr(sys.stdout, "write_through", False))}


def _message(replies: Any) -> dict[str, Any] | None:
    line = replies.readline()
    return json.loads(line) if line else None


def hand_over(module: str, args: list[str]) -> int | None:
    """Run `python -m <module> <args>` in a process forked by the server of SERVER_ENV; its exit code (or, killed by
    a signal, this process dies of the same signal). None when no server takes it: the caller runs it itself."""
    address = os.environ.get(SERVER_ENV)
    if not address or unavailable():
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(address)
        socket.send_fds(connection, [b"G"], [0, 1, 2])
        connection.sendall(json.dumps(_request(module, args)).encode() + b"\n")
        # a server still preloading answers once it is done; one that never finishes is given up on
        connection.settimeout(START_TIMEOUT_S)
        replies = connection.makefile("rb")
        started = _message(replies)
        connection.settimeout(None)
    except OSError:  # no server there (any more), it never answered, or a standard stream is closed: run here
        connection.close()
        return None
    if started is None or "pid" not in started:
        connection.close()
        return None
    child = int(started["pid"])
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, lambda received, _frame: _forward(child, received))
    ended = _message(replies)
    if ended is None:  # the server stopped and the stage's process is gone without saying how it ended
        print(f"{module}: the stage's process ended without an exit status (the stage server stopped)",
              file=sys.stderr)
        return 1
    if "signal" in ended:
        _die_of(int(ended["signal"]))
    return int(ended["exit"])


def _forward(child: int, signum: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(child, signum)


def _die_of(signum: int) -> NoReturn:
    """End this process by `signum`, as the stage's process ended, so its parent (DVC) sees the same."""
    if signum != signal.SIGKILL:
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    raise SystemExit(128 + signum)  # a signal whose default action is not to terminate


# ---- the server's side -------------------------------------------------------------------------------------------

def serve(address: str) -> None:
    """Listen on the Unix socket `address`, print READY, preload, and fork one process per command until SIGTERM or
    until the process that started it is gone. Commands that connect during the preload wait in the socket's backlog:
    whoever started the server goes on (DVC starting up, the flow's first task) while it imports."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    print(READY, flush=True)
    for name in PRELOAD:
        with suppress(ImportError):
            importlib.import_module(name)
    for name, function in WARM_UP:  # a private cache: a release without it leaves the stage to fill its own
        with suppress(ImportError, AttributeError):
            getattr(importlib.import_module(name), function)()
    wake_read, wake_write = os.pipe()
    for fd in (wake_read, wake_write):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)  # wakes select() through the pipe
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    parent = os.getppid()
    waiting: dict[int, socket.socket] = {}  # forked process -> its command's connection
    try:
        while os.getppid() == parent:  # whoever started it is gone (a killed flow run): so is the server
            readable, _, _ = select.select([listener, wake_read], [], [], PARENT_CHECK_S)
            if wake_read in readable:
                with suppress(BlockingIOError):
                    os.read(wake_read, 4096)
            _report_ended(waiting)
            if listener in readable:
                connection, _ = listener.accept()
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        code = _stage_process(connection, [listener, *waiting.values()], (wake_read, wake_write))
                    except BaseException:  # a fault of the server's own: on its stderr, never raised on
                        traceback.print_exc()
                    finally:
                        os._exit(code)
                waiting[pid] = connection
    finally:
        listener.close()
        with suppress(FileNotFoundError):
            os.unlink(address)


def _report_ended(waiting: dict[int, socket.socket]) -> None:
    """Reap the forked processes that ended and tell their commands how (the exit code, or the killing signal)."""
    while waiting:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = waiting.pop(pid, None)
        if connection is None:
            continue
        ended = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status)
                 else {"exit": os.waitstatus_to_exitcode(status)})
        with suppress(OSError):  # the command is gone already
            connection.sendall(json.dumps(ended).encode() + b"\n")
        connection.close()


def _send(connection: socket.socket, message: dict[str, Any]) -> None:
    with suppress(OSError):
        connection.sendall(json.dumps(message).encode() + b"\n")


def _stage_process(connection: socket.socket, inherited: list[socket.socket], wake: tuple[int, int]) -> int:
    """In the forked process: adopt the command's state, run its stage module, report its exit code."""
    for other in inherited:
        other.close()
    signal.set_wakeup_fd(-1)
    for fd in wake:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setpgid(0, 0)  # the stage and whatever it starts (torchrun) are stopped together when the command dies
    try:
        _, fds, _, _ = socket.recv_fds(connection, 1, 3)
        line = connection.makefile("rb").readline()
    except OSError:
        return 0
    if len(fds) != 3 or not line:  # a probe (`running` checking the server answers), not a command
        for fd in fds:
            os.close(fd)
        return 0
    request = json.loads(line)
    problem = None if request["interpreter"] == json.loads(json.dumps(_interpreter())) else (
        "the command's interpreter differs from the server's")
    if problem is None:
        try:
            _adopt(request, fds)
        except (OSError, ValueError) as exc:
            problem = f"cannot take the command's process state: {exc}"
    if problem is not None:
        _send(connection, {"fallback": problem})
        return 0
    try:  # not through _send: a command that gave up waiting (see hand_over) has run the stage itself
        connection.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    except OSError:
        return 0
    threading.Thread(target=_end_with_command, args=(connection,), daemon=True).start()
    code = _run_module(request["module"], request["argv"])
    for thread in threading.enumerate():  # as the interpreter does at exit: non-daemon threads, then atexit
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    _send(connection, {"exit": code})
    return code


def _end_with_command(connection: socket.socket) -> None:
    """The command sends nothing after its request: end of stream means it is gone (killed), so the stage goes too."""
    with suppress(OSError):
        while connection.recv(64):
            pass
    os.killpg(os.getpgid(0), signal.SIGKILL)


def _text_stream(fd: int, mode: str, like: Any, *, line_buffered: bool, write_through: bool = False) -> Any:
    stream = open(fd, mode, buffering=1 if line_buffered else -1, encoding=getattr(like, "encoding", None),  # noqa: SIM115
                  errors=getattr(like, "errors", None), closefd=False)
    if write_through:  # python -u, PYTHONUNBUFFERED
        stream.reconfigure(write_through=True)
    return stream


def _adopt(request: dict[str, Any], fds: list[int]) -> None:
    """Become the command's process: its standard streams, folder, environment, umask, limits, affinity, sys.path."""
    for target, fd in enumerate(fds):
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)
    sys.stdin = sys.__stdin__ = _text_stream(0, "r", sys.__stdin__, line_buffered=False)
    unbuffered = request["unbuffered"]
    sys.stdout = sys.__stdout__ = _text_stream(1, "w", sys.__stdout__, line_buffered=os.isatty(1),
                                               write_through=unbuffered)
    sys.stderr = sys.__stderr__ = _text_stream(2, "w", sys.__stderr__, line_buffered=True,  # as Python >= 3.9
                                               write_through=unbuffered)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[STARTED_WARM_ENV] = "1"
    time.tzset()
    os.umask(request["umask"])
    for name, wanted in request["limits"].items():
        number = getattr(resource, name)
        if resource.getrlimit(number) != tuple(wanted):
            resource.setrlimit(number, tuple(wanted))
    os.sched_setaffinity(0, request["affinity"])
    sys.path[:] = request["path"]
    for name in list(sys.modules):
        if name.partition(".")[0] in PROJECT_PACKAGES:
            del sys.modules[name]
    importlib.invalidate_caches()
    _settle_preloaded(request["env"])


def _settle_preloaded(env: dict[str, str]) -> None:
    """What the preloaded libraries read from the environment at import, read again from the command's; the random
    state every forked process would otherwise share; and the root logger as a fresh interpreter has it (MLflow's
    PyTorch flavour calls logging.basicConfig at import, which, preloaded, would pre-empt the stage's own)."""
    import logging

    import numpy as np

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)

    np.random.seed()  # numpy's global generator is seeded once at import; a cold process draws a fresh seed
    if "torch" in sys.modules and env.get("OMP_NUM_THREADS", "").isdigit():
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))  # OpenMP read the server's environment at load


def _run_module(module: str, args: list[str]) -> int:
    """`python -m module args` in this process; its exit code, as the interpreter would compute it."""
    import runpy

    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        sys.stderr.flush()
        _die_of(signal.SIGINT)
    except BaseException:  # an uncaught exception: traceback and exit 1, as the interpreter does
        traceback.print_exc()
        return 1
    return 0


# ---- starting one ------------------------------------------------------------------------------------------------

def answers(address: str) -> bool:
    """Whether a server listens on `address`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(address)
        except OSError:
            return False
    return True


def _on_stderr(line: str) -> None:
    print(line, file=sys.stderr)


@contextmanager
def running(say: Callable[[str], None] = _on_stderr) -> Iterator[dict[str, str]]:
    """A fork server for the duration; yields the environment entries that point stage commands at it (merge them
    into the stages' environment). One already named in this process's environment, and answering, is reused.
    Where there can be none (`unavailable`), or should the server fail to start, this says so once through `say`
    and yields nothing: the stages then start cold."""
    if reason := unavailable():
        say(f"stages start cold: {reason}")
        yield {}
        return
    current = os.environ.get(SERVER_ENV)
    if current and answers(current):
        yield {SERVER_ENV: current}
        return
    folder = tempfile.mkdtemp(prefix="groundwork-stages-")
    address = os.path.join(folder, "socket")
    # its threads follow the cores: a forked stage sets its own from OMP_NUM_THREADS, when its command has one
    env = {key: value for key, value in os.environ.items() if key not in (SERVER_ENV, "OMP_NUM_THREADS")}
    server = subprocess.Popen([sys.executable, "-m", "groundwork.forkserver", address], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        assert server.stdout is not None
        ready = select.select([server.stdout], [], [], START_TIMEOUT_S)[0] and server.stdout.readline().strip()
        if ready == READY:
            yield {SERVER_ENV: address}
        else:
            say(f"stages start cold: the stage server did not start (exit {server.poll()})")
            yield {}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        with suppress(OSError):
            os.unlink(address)
        with suppress(OSError):
            os.rmdir(folder)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m groundwork.forkserver SOCKET\n\n" + (__doc__ or ""), file=sys.stderr)
        return 2
    serve(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
