"""A warm worker for local runs: import torch, transformers and lm-eval once, fork per job.

Each `masters` job of the embedded default is short (a few seconds of work), but a fresh Python
process spends ~7 s importing torch, transformers (which pulls in torchvision and torch._dynamo)
and lm-eval before its first tensor: ~165 such jobs are about a third of the default's CPU time.
With `warm_worker: true` (config.yaml; local runs only) the Snakefile starts one server per
workflow run (``python -m masters.worker SOCKET``). It imports those libraries, runs no torch
operation (so no thread pool exists to be broken by ``fork``), and listens on a Unix socket. The
`masters` command, when ``MASTERS_WORKER`` names that socket, sends its argv, working directory,
environment and its stdin/stdout/stderr (SCM_RIGHTS) and waits for the exit status. The server
forks a child per request; the child takes over those descriptors, the directory and the
environment, and runs `masters.cli.main` exactly as the command would have: the same code, the
same arguments, byte-identical outputs (tests/test_worker.py).

The command runs in its own process instead when: MASTERS_WORKER is unset or its socket does not
answer (the server is still importing, or gone); it runs inside a SLURM job (the socket's server
is on the submitting host, outside the job's allocation); or its environment differs from the
server's in a variable that libraries read when imported (``IMPORT_TIME_ENV``).

Costs, stated: a job's process tree no longer contains the forked child, so Snakemake's
`benchmark:` files keep the wall time (``s``) right but undercount CPU and memory of such jobs;
turn the worker off (``--config warm_worker=False``) to measure those.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import sys
import tempfile
import traceback

ENV = "MASTERS_WORKER"
# Environment variables that libraries read when imported: a job whose value differs from the
# server's runs in its own process, since the server's modules hold the server's value.
IMPORT_TIME_ENV = ("PYTHON", "HF_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "OMP_", "MKL_", "CUDA_",
                   "TOKENIZERS_", "LD_")
PRELOAD = (
    "torch",
    "transformers",
    "lm_eval.evaluator",
    "lm_eval.tasks",
    "datasets",
    "pandas",
    "pyarrow.parquet",
    "safetensors.torch",
    "accelerate",  # model loading imports it, and it imports deepspeed where that is installed
    "masters.cli",
    "masters.training",
    "masters.generation",
    "masters.rewards",
    "masters.evaluation",
)
# Thread counts that Snakemake sets per job (snakemake/shell.py): not compared, but applied in the
# child (torch's pool, and every BLAS/OpenMP pool through threadpoolctl), as a fresh process with
# them would start.
THREAD_ENV = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
_HEADER = struct.Struct("!Q")
_STATUS = struct.Struct("!i")


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    """The part of an environment that the server's imported modules depend on."""
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_ENV) and k not in THREAD_ENV}


def _apply_thread_env() -> None:
    """Size torch's and the BLAS/OpenMP libraries' thread pools from THREAD_ENV, as at a fresh start."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:
        import threadpoolctl
        import torch

        torch.set_num_threads(int(threads))
        threadpoolctl.threadpool_limits(int(threads))


# ---- the client: the `masters` command ------------------------------------------------------
def export_package(repo) -> None:
    """Put the checkout ``repo`` first on this process's PYTHONPATH, which the jobs inherit: every
    job imports that checkout's package, in any environment (rules/common.smk)."""
    entries = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    if str(repo) not in entries:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(repo), *entries])


def run_remote(argv: list[str]) -> int | None:
    """Run `masters argv` in the warm worker; its exit status, or None to run it here instead."""
    path = os.environ.get(ENV)
    if not path or "SLURM_JOB_ID" in os.environ:
        return None
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
    except OSError:
        return None  # not listening yet (still importing) or gone: run here
    with sock:
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "python": _python()}).encode()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        socket.send_fds(sock, [_HEADER.pack(len(request))], [0, 1, 2])
        sock.sendall(request)
        reply = _recv_exactly(sock, _STATUS.size)
    if reply is None:
        raise SystemExit(f"masters: the warm worker at {path} closed without an exit status "
                         f"(see its log); rerun, or set warm_worker: false")
    (status,) = _STATUS.unpack(reply)
    return None if status == DECLINED else status


DECLINED = -1000  # the server's answer when the job must run in its own process


def _python() -> dict[str, str]:
    """The interpreter and the masters package a process runs (a job with another, e.g. a rule's
    conda environment, runs in its own process)."""
    import masters

    return {"interpreter": os.path.realpath(sys.executable), "prefix": sys.prefix,
            "package": os.path.dirname(os.path.realpath(masters.__file__))}


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


# ---- the server ----------------------------------------------------------------------------
def serve(path: str) -> None:
    """Import PRELOAD, then fork one child per request on the Unix socket `path` until the parent
    (the Snakemake run) exits or SIGTERM arrives."""
    import importlib

    parent = os.getppid()
    before = dict(os.environ)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as error:  # an optional library: jobs that need it import it themselves
            print(f"masters worker: not preloaded: {name} ({error})", flush=True)
    from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: F401 (the lazy classes)

    env = import_time_env(before)  # what a job's environment must match
    # what the imports themselves set (huggingface_hub sets HF_XET_HIGH_PERFORMANCE): a child sets
    # it too, as its imports would have in a fresh process
    induced = {k: v for k, v in os.environ.items() if before.get(k) != v}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    os.rename(path + ".tmp", path)  # clients see the socket only once it is listening
    listener.listen(64)
    running: dict[socket.socket, int] = {}  # client connection -> child pid
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    wake, waker = os.pipe()  # SIGCHLD wakes the loop, so a job's status is sent at once
    os.set_blocking(waker, False)
    signal.set_wakeup_fd(waker)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    print(f"masters worker: ready on {path} (pid {os.getpid()})", flush=True)
    try:
        while not stopping and os.getppid() == parent:
            ready, _, _ = select.select([listener, wake, *running], [], [], 1.0)
            for conn in ready:
                if conn is listener:
                    _start(listener, running, env, induced, (wake, waker))
                elif conn is wake:
                    os.read(wake, 4096)
                else:  # a client closed its end before its child finished: it was cancelled
                    pid = running.pop(conn)
                    _kill(pid)
                    conn.close()
                    print(f"masters worker: job {pid} cancelled (its command was stopped)", flush=True)
            _reap(running)
    finally:
        for conn, pid in running.items():
            _kill(pid)
            conn.close()
        listener.close()
        os.unlink(path)


def _start(listener: socket.socket, running: dict, env: dict, induced: dict, wakeup: tuple[int, int]) -> None:
    conn, _ = listener.accept()
    header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
    body = _recv_exactly(conn, _HEADER.unpack(header)[0]) if len(header) == _HEADER.size else None
    if body is None or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    request = json.loads(body)
    differ = sorted(k for k in set(env) | set(import_time_env(request["env"])) if env.get(k) != request["env"].get(k))
    differ += [k for k, v in _python().items() if request["python"].get(k) != v]
    if differ:
        print(f"masters worker: declined (the job's {', '.join(differ)} differ): {' '.join(request['argv'])}",
              flush=True)
        conn.sendall(_STATUS.pack(DECLINED))
        conn.close()
        for fd in fds:
            os.close(fd)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in wakeup:
            os.close(fd)
        listener.close()
        for other in running:
            other.close()
        conn.close()
        _child(request, fds, induced)  # never returns
    for fd in fds:
        os.close(fd)
    running[conn] = pid
    print(f"masters worker: job {pid}: {' '.join(request['argv'])}", flush=True)


def _child(request: dict, fds: list[int], induced: dict) -> None:
    """Become the job: its descriptors, directory, environment and argv; run the CLI; exit."""
    code = 1
    try:
        os.setpgid(0, 0)  # its own process group: a cancel reaches what it starts (torchrun)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update({**request["env"], **induced})
        tempfile.tempdir = None  # gettempdir() reads TMPDIR (set per job by Snakemake) again
        _apply_thread_env()
        sys.argv = list(request["argv"])
        from masters.cli import main

        code = main(sys.argv[1:])
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 (reported as an uncaught exception would be)
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 (a closed pipe: nothing left to tell)
                pass
        os._exit(code)


def _reap(running: dict) -> None:
    for conn, pid in list(running.items()):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            print(f"masters worker: job {pid} exited {code}", flush=True)
            try:
                conn.sendall(_STATUS.pack(code if code >= 0 else 128 - code))
            except OSError:
                pass
            conn.close()
            del running[conn]


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    os.waitpid(pid, 0)


# ---- the workflow's side -------------------------------------------------------------------
def start(log: str) -> tuple[object, str]:
    """Start a server for this process's jobs (the Snakefile's onstart); sets MASTERS_WORKER."""
    import subprocess
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="masters-worker-"), "socket")
    os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "masters.worker", path], stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    os.environ[ENV] = path
    return server, path


def stop(server, path: str) -> None:
    """Stop the server (the Snakefile's onsuccess / onerror)."""
    os.environ.pop(ENV, None)
    server.terminate()
    try:
        server.wait(timeout=30)
    except Exception:  # noqa: BLE001 (stuck: kill it)
        server.kill()
    for leftover in (path, path + ".tmp"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    os.rmdir(os.path.dirname(path))


if __name__ == "__main__":
    serve(sys.argv[1])
