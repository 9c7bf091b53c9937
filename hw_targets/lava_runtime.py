"""A Lava runtime that is always torn down: no child process or shared memory outlives it.

Lava 0.10's ``Runtime.stop()`` hangs forever when a process model failed to
build (it joins actors that never received a command), and Ctrl-C reaches
every forked process model, which then dies printing its own traceback while
the parent leaks the shared-memory segments. Here the actors are forked with
SIGINT ignored (only the parent handles Ctrl-C), a clean run is stopped with
a deadline, and anything else is terminated and its shared memory released.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import threading
from typing import Iterator

from lava.magma.core.process.process import AbstractProcess

STOP_TIMEOUT_S = 20.0


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Children forked inside ignore SIGINT; a Ctrl-C meanwhile is delivered to the parent afterwards.

    Forking a large network's actors takes seconds: with SIG_IGN in the parent a
    Ctrl-C in that window would be lost. The recording handler is inherited by
    the children too, where it is as good as ignoring the signal.
    """
    pending: list[int] = []

    def _record(signum, frame) -> None:
        pending.append(signum)

    try:
        old = signal.signal(signal.SIGINT, _record)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if pending:
        signal.raise_signal(signal.SIGINT)


def force_shutdown(runtime) -> None:
    """Terminate every actor of ``runtime`` and release its shared memory (idempotent)."""
    if runtime is None:
        return
    mi = getattr(runtime, "_messaging_infrastructure", None)
    actors = list(getattr(mi, "actors", []) or [])
    for a in actors:
        with contextlib.suppress(Exception):
            if a.is_alive():
                a.terminate()
    for a in actors:
        with contextlib.suppress(Exception):
            mp.Process.join(a, timeout=3)  # SystemProcess.join() has no timeout
            if a.is_alive():
                a.kill()
                mp.Process.join(a, timeout=3)
    smm = getattr(mi, "smm", None)
    if smm is not None:
        with contextlib.suppress(Exception):
            smm.shutdown()  # unlinks every segment of the run
    wd = getattr(runtime, "_watchdog_manager", None)
    if wd is not None:
        with contextlib.suppress(Exception):
            wd.stop()
    # Runtime.__del__ would call stop() again (and hang) while it believes it is started.
    runtime._is_started = False
    runtime._is_running = False


def child_errors(runtime) -> list[str]:
    """The last line of each exception raised inside the runtime's process models."""
    out = []
    mi = getattr(runtime, "_messaging_infrastructure", None)
    for a in list(getattr(mi, "actors", []) or []):
        with contextlib.suppress(Exception):
            exc = a.exception
            if exc:
                err, tb = exc
                out.append(f"{type(err).__name__}: {err}")
    return out


def stop(runtime, timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop a healthy runtime; fall back to :func:`force_shutdown` past the deadline or on error."""
    if runtime is None:
        return
    done = threading.Event()
    failed: list[BaseException] = []

    def _stop() -> None:
        try:
            runtime.stop()
        except BaseException as exc:  # noqa: BLE001 - reported through force_shutdown
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=_stop, daemon=True, name="lava-stop").start()
    if not done.wait(timeout) or failed:
        force_shutdown(runtime)


@contextlib.contextmanager
def running(proc: AbstractProcess, run_cfg) -> Iterator[object]:
    """Compile and start the network of ``proc``; always tear it down on exit.

    Yields the runtime. On a clean exit the runtime is stopped normally (with a
    deadline); after any exception, Ctrl-C included, it is force-shut.
    """
    executable = proc.compile(run_cfg)
    ok = False
    try:
        with _sigint_ignored():
            proc.create_runtime(executable=executable)
        yield proc.runtime
        ok = True
    except Exception as exc:
        # Lava only logs the process models' tracebacks; keep their gist in the error
        errors = child_errors(getattr(proc, "runtime", None))
        if errors:
            exc.add_note("in a Lava process model: " + "; ".join(dict.fromkeys(errors)))
        raise
    finally:
        if ok:
            stop(proc.runtime)
        else:
            force_shutdown(getattr(proc, "runtime", None))
