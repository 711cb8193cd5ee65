"""The job queue: `vispipe` CLI verbs run in worker processes.

A job is a registry entry of kind "job" (name: its title, path: its job
folder, params: `{"verb", "argv", "target", "target_kind", "launcher"}`) plus, in the job
folder, `job.json` (`{"state": "queued"|"running"|"done", "pid", "abort"}`),
`job.yaml` (the job's typed config, `vispipe.ui.job_config`) and `log.txt`
(the process's output). Nothing lives only in memory: a new
`JobQueue` on the same registry picks up queued jobs and marks the jobs that
were running when the last UI process stopped "interrupted" (after ending
any process left over), and `resume_argv` offers to continue them.

Each job runs `python -P -m vispipe ARGV... --config job.yaml` in its job folder, in its own
process group. `-P` keeps the working directory off the import path, so a
folder named `vispipe` (or anything else) where the UI was started cannot
stand in for the installed code. Abort is SIGTERM to the group: the trainer
then marks its run "interrupted" and `vispipe train --resume RUN` continues it.

Example:

```python
queue = JobQueue(UISettings(max_jobs=2))
queue.start()
job_id = queue.submit("Train lenet", "train", ["train", "--dataset", "d", "--run", "r"],
                      config={"train": TrainConfig(epochs=3)}, target="r", target_kind="run")
queue.abort(job_id)
queue.stop()
```
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from vispipe.fileio import write_json_atomic
from vispipe.registry import Entry, Registry
from vispipe.train.run_folder import RunFolder
from vispipe.ui.job_config import JOB_CONFIG_FILE, JobConfig, write_job_config
from vispipe.ui.settings import UISettings

__all__ = ["Job", "JobQueue", "read_job", "resume_argv", "resume_config", "log_tail"]

_log = logging.getLogger(__name__)
_POLL_S = 0.3
# Seconds a job gets to write its "interrupted" state after SIGTERM.
_STOP_GRACE_S = 30.0


@dataclass(frozen=True)
class Job:
    """A job as the pages show it: its registry entry and its `job.json`."""

    entry: Entry
    state: str
    pid: int | None
    abort: bool

    @property
    def id(self) -> int:
        return self.entry.id

    @property
    def verb(self) -> str:
        return self.entry.params.get("verb", "")

    @property
    def target(self) -> str:
        return self.entry.params.get("target", "")

    @property
    def target_kind(self) -> str:
        return self.entry.params.get("target_kind", "")

    @property
    def status(self) -> str:
        """"queued", "running", or the registry's final status."""
        if self.entry.status == "running":
            return "queued" if self.state == "queued" else "running"
        return self.entry.status

    @property
    def log_path(self) -> str:
        return os.path.join(self.entry.path, "log.txt")

    @property
    def command(self) -> str:
        """The command line the job runs, as its log's first line shows it."""
        return " ".join(["vispipe", *self.entry.params.get("argv", [])])

    def config_text(self) -> str:
        """Its `job.yaml` ("" for a job without one)."""
        try:
            with open(os.path.join(self.entry.path, JOB_CONFIG_FILE), encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return ""


def read_job(entry: Entry) -> Job:
    """The `Job` of a registry entry of kind "job"."""
    try:
        with open(os.path.join(entry.path, "job.json"), encoding="utf-8") as f:
            data = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}  # Added to the registry, job.json not yet written: queued.
    return Job(entry, data.get("state", "queued"), data.get("pid"), bool(data.get("abort")))


def resume_argv(job: Job) -> list[str] | None:
    """The CLI arguments that continue an interrupted or aborted training job.

    Args:
        job: A training or resume job.

    Returns:
        `["train", "--resume", "--run", RUN]`, or None when the job cannot be
        resumed (still active, completed, or no checkpoint written yet). A new
        total of epochs is the job's config: `resume_config`.
    """
    if job.target_kind != "run" or job.status not in ("interrupted", "aborted", "failed"):
        return None
    if not RunFolder(job.target).latest_checkpoint():
        return None
    return ["train", "--resume", "--run", job.target]


def resume_config(epochs: int | None) -> JobConfig | None:
    """The config of a resume job: a new total of epochs, the only setting a resume takes."""
    return {"train": {"epochs": epochs}} if epochs else None


# TensorFlow's start-up messages that TF_CPP_MIN_LOG_LEVEL cannot silence: absl
# writes them before its logging is initialised. They are harmless (a CUDA
# plugin registered twice), so the pages leave them out; log.txt keeps them.
_STARTUP_NOISE = re.compile(
    r"Unable to register cu(DNN|BLAS|FFT) factory|computation placer already registered"
    r"|All log messages before absl::InitializeLog\(\) is called")


def log_tail(job: Job, lines: int = 30) -> str:
    """The last `lines` lines of the job's output.

    Progress-bar redraws are folded and TensorFlow's start-up registration
    noise is left out.
    """
    try:
        with open(job.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    # A tqdm bar redraws with "\r": keep only its latest state per line.
    rows = [row.rsplit("\r", 1)[-1] for row in text.replace("\r\n", "\n").split("\n")]
    kept = [row for row in rows if row.strip() and not _STARTUP_NOISE.search(row)]
    return "\n".join(kept[-lines:])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    # The pid may have been reused by an unrelated process since.
    return b"vispipe" in cmdline


class JobQueue:
    """Runs queued jobs, at most `settings.max_jobs` at once.

    Args:
        settings: The UI settings (job folders go under `<home>/jobs`).
        python: Interpreter that runs `-P -m vispipe` (default: this one).
    """

    def __init__(self, settings: UISettings, python: str = sys.executable):
        self.settings = settings
        self.python = python
        self._procs: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Recovers jobs left by an earlier UI process, then starts scheduling."""
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="vispipe-ui-jobs", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float = _STOP_GRACE_S) -> None:
        """Stops scheduling; running jobs get SIGTERM and end "interrupted"."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        with self._lock:
            procs = dict(self._procs)
        for proc in procs.values():
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for job_id, proc in procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            self._reap(job_id, proc)

    def recover(self) -> list[int]:
        """Marks jobs that were running in an earlier UI process "interrupted".

        A process still alive from then (the UI was killed) is ended first,
        and a run folder it left "running" is marked "interrupted" so that
        it can be resumed.

        Returns:
            The ids of the jobs marked.
        """
        marked = []
        registry = Registry.open()
        try:
            for entry in registry.list("job"):
                job = read_job(entry)
                if entry.status != "running" or job.state != "running" or entry.id in self._procs:
                    continue
                if job.pid and _alive(job.pid):
                    _signal_group(job.pid, signal.SIGTERM)
                    _wait_gone(job.pid, _STOP_GRACE_S)
                self._mark_run_interrupted(registry, job)
                self._write_state(entry.path, state="done", pid=job.pid, abort=job.abort)
                registry.finish(entry.id, "interrupted",
                                {"reason": "the UI server stopped while the job ran"})
                marked.append(entry.id)
        finally:
            registry.close()
        return marked

    # --- API ---------------------------------------------------------------

    def submit(self, title: str, verb: str, argv: list[str], *, config: JobConfig | None = None,
               target: str = "", target_kind: str = "", launcher: list[str] | None = None) -> int:
        """Queues `python -P -m vispipe ARGV --config job.yaml`; returns the job id.

        Args:
            title: What the pages call the job.
            verb: The kind of work ("dataset", "train", "resume", "evaluate",
                "export", "lr-find", "serve", "classify").
            argv: The verb and its operands (`--run`, `--dataset`, `--out`):
                arguments after `vispipe` that are not settings.
            config: The job's settings, written to `job.yaml` in the job
                folder (`vispipe.ui.job_config`) and passed as `--config`.
            target: The folder the job writes (dataset, run or export).
            target_kind: "dataset", "run", "export", "lr", "serve", "eval"
                or "classify".
            launcher: A command that runs the job's command, e.g.
                `["horovodrun", "-np", "2", ...]` (default: none).

        Raises:
            ConfigError: A config value that is not allowed (nothing is queued).
        """
        job_dir = os.path.join(self.settings.folder("jobs"),
                               f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}")
        os.makedirs(job_dir)
        try:
            if config is not None:
                argv = [*argv, "--config", write_job_config(job_dir, config)]
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        self._write_state(job_dir, state="queued", pid=None, abort=False)
        registry = Registry.open()
        try:
            return registry.add("job", title, job_dir, {
                "verb": verb, "argv": list(argv), "target": target, "target_kind": target_kind,
                "launcher": list(launcher or [])})
        finally:
            registry.close()

    def abort(self, job_id: int) -> Job:
        """Aborts a queued job, or sends SIGTERM to a running job's process group.

        Raises:
            KeyError: No such job.
            ValueError: The job has already finished.
        """
        with self._lock:
            registry = Registry.open()
            try:
                job = read_job(registry.get(job_id))
                if job.entry.kind != "job":
                    raise KeyError(f"Registry entry {job_id} is a {job.entry.kind}, not a job.")
                if job.entry.status != "running":
                    raise ValueError(f"Job {job_id} has already finished ({job.status}).")
                self._write_state(job.entry.path, state=job.state, pid=job.pid, abort=True)
                if job.state == "queued":
                    self._write_state(job.entry.path, state="done", pid=None, abort=True)
                    registry.finish(job_id, "aborted", {"reason": "aborted while queued"})
                elif job.pid:
                    _signal_group(job.pid, signal.SIGTERM)
                return read_job(registry.get(job_id))
            finally:
                registry.close()

    def jobs(self, registry: Registry) -> list[Job]:
        """Every job, newest first."""
        return [read_job(e) for e in registry.list("job")]

    # --- scheduling --------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except (OSError, sqlite3.Error, KeyError, ValueError):
                # A busy registry or a vanished job folder must not end scheduling.
                _log.exception("vispipe ui: job scheduling failed; retrying")
            self._stop.wait(_POLL_S)

    def tick(self) -> None:
        """Reaps finished processes and starts queued jobs up to the limit."""
        with self._lock:
            for job_id, proc in list(self._procs.items()):
                if proc.poll() is not None:
                    self._reap(job_id, proc)
            free = self.settings.max_jobs - len(self._procs)
            if free <= 0:
                return
            registry = Registry.open()
            try:
                queued = [read_job(e) for e in reversed(registry.list("job"))
                          if e.status == "running" and e.id not in self._procs]
                for job in [j for j in queued if j.state == "queued"][:free]:
                    self._launch(job)
            finally:
                registry.close()

    def _launch(self, job: Job) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
        if self.settings.token:
            env["VISPIPE_SERVE_AUTH_TOKEN"] = self.settings.token
        launcher = job.entry.params.get("launcher") or []
        argv = [*launcher, self.python, "-P", "-m", "vispipe", *job.entry.params["argv"]]
        with open(job.log_path, "ab") as log:
            log.write(("$ " + " ".join(launcher + ["vispipe"] + job.entry.params["argv"])
                       + "\n").encode())
            log.flush()
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=job.entry.path,
                                    start_new_session=True)
        self._procs[job.id] = proc
        self._write_state(job.entry.path, state="running", pid=proc.pid, abort=False)

    def _reap(self, job_id: int, proc: subprocess.Popen) -> None:
        self._procs.pop(job_id, None)
        registry = Registry.open()
        try:
            job = read_job(registry.get(job_id))
            code = proc.returncode
            if code == 0:
                status = "completed"
            elif job.abort:
                status = "aborted"
            elif code in (130, -signal.SIGTERM, -signal.SIGINT):
                status = "interrupted"
            else:
                status = "failed"
            self._write_state(job.entry.path, state="done", pid=proc.pid, abort=job.abort)
            registry.finish(job_id, status, {"returncode": code,
                                             "error": _last_error(job) if status == "failed" else ""})
        finally:
            registry.close()

    @staticmethod
    def _mark_run_interrupted(registry: Registry, job: Job) -> None:
        run = RunFolder(job.target)
        if job.target_kind != "run" or not run.exists():
            return
        try:
            info = run.read_run_info()
        except ValueError:  # An older run format: its own upgrade says what to do.
            return
        if info.status == "running":
            run.update_info(status="interrupted")
            if info.registry_id:
                registry.finish(info.registry_id, "interrupted",
                                {"epochs_completed": info.epochs_completed})

    @staticmethod
    def _write_state(job_dir: str, **state: Any) -> None:
        write_json_atomic(os.path.join(job_dir, "job.json"), state)


def _last_error(job: Job) -> str:
    lines = [line for line in log_tail(job, 20).splitlines() if "error" in line.lower()]
    return lines[-1][-500:] if lines else ""


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # Already gone.


def _wait_gone(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        _signal_group(pid, signal.SIGKILL)
