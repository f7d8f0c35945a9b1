"""The trainer process: takes train and merge jobs from the stream under a lease, runs and
records them."""

from __future__ import annotations

import argparse
import logging
import os
import time

import redis

from adapters_store.errors import AdapterdError, NotFound
from adapters_store.keys import TRAINER_GROUP
from adapters_store.logs import configure_logging
from adapters_store.records import FINISHED_JOB_STATES, JobProgress, JobRecord
from adapters_store.settings import Settings
from adapters_store.streams import Heartbeat, TrainJobMessage
from worker.bank import LoadedBank
from worker.host_memory import return_freed_memory
from worker.import_job import run_import_job
from worker.merge_job import run_merge_job
from worker.progress import Progress
from worker.runtime import GracefulStop, build_model
from worker.stream_worker import Entry, StopRequested, StreamConfig, StreamWorker
from worker.train_job import TrainerState, run_train_job

log = logging.getLogger(__name__)

# Compare-and-renew / compare-and-release: a trainer only touches a lease it still holds.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then " \
         "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then " \
           "return redis.call('del', KEYS[1]) else return 0 end"


class JobInterrupted(StopRequested):
    """Raised from a progress report when the trainer is asked to stop."""


class JobCancelled(Exception):  # noqa: N818 - a signal, as JobInterrupted
    """Raised from a progress report when the API asked to cancel the running job."""


class Trainer(StreamWorker):
    kind = "trainer"

    def __init__(self, settings: Settings, stop: GracefulStop | None = None) -> None:
        super().__init__(settings, stop)
        model, device = build_model(settings)
        self.state = TrainerState(settings=settings, registry=self.registry, blobs=self.blobs,
                                  model=model, bank=LoadedBank(self.blobs, device, keep=1),
                                  device=device)
        self.holding = False
        self._last_report = 0.0

    @property
    def jobs_done(self) -> int:
        return self.batches

    # ---- stream-worker hooks --------------------------------------------------------------
    def stream_config(self) -> StreamConfig:
        lease_ms = int(self.settings.lease_ttl_s * 1000)
        # One job at a time; a job read by a trainer that died is free once its lease is gone.
        return StreamConfig(stream=self.keys.jobs_stream, group=TRAINER_GROUP, batch=1,
                            max_wait_ms=0, claim_idle_ms=2 * lease_ms, claim_every_s=0.0,
                            block_ms=1000)

    def heartbeat(self) -> Heartbeat:
        return self.base_heartbeat(None, str(self.state.device))

    def keepalive_interval(self) -> float:
        return min(self.settings.heartbeat_s, self.settings.lease_ttl_s / 3)

    def keepalive(self) -> None:
        if self.holding:
            self._try_lease()

    def ready(self) -> bool:
        return self._try_lease()

    def handle(self, entries: list[Entry], pipe: redis.client.Pipeline) -> None:
        for _, fields in entries:
            self.process(TrainJobMessage.from_fields(fields).job_id)

    def on_exit(self) -> None:
        if self.holding:
            self.client.eval(_RELEASE, 1, self.keys.trainer_lease, self.worker_id)

    # ---- lease ----------------------------------------------------------------------------
    def _try_lease(self) -> bool:
        ttl_ms = int(self.settings.lease_ttl_s * 1000)
        if self.holding:
            self.holding = bool(self.client.eval(_RENEW, 1, self.keys.trainer_lease,
                                                 self.worker_id, ttl_ms))
            return self.holding
        holder = self.client.get(self.keys.trainer_lease)
        if holder is not None:
            holder_id = holder.decode() if isinstance(holder, bytes) else holder
            if holder_id not in self.registry.alive_worker_ids():
                # Its heartbeat is gone (a killed trainer): free the lease now rather than wait
                # out its TTL; the compare-and-delete never frees a lease someone renewed.
                log.warning("trainer %s: lease holder %s is gone; taking over", self.worker_id,
                            holder_id)
                self.client.eval(_RELEASE, 1, self.keys.trainer_lease, holder_id)
        self.holding = bool(self.client.set(self.keys.trainer_lease, self.worker_id, nx=True,
                                            px=ttl_ms))
        return self.holding

    # ---- jobs -------------------------------------------------------------------------------
    def _report(self, job: JobRecord, p: Progress, force: bool = False) -> None:
        if self.stop.stopping and not force:
            raise JobInterrupted  # a training step just ended: stop here, the job is retried
        now = time.monotonic()
        # Throttle writes, but never drop a stage change or a stage's final step.
        boundary = p.stage != job.progress.stage or p.stage_step == p.stage_steps
        if not (force or boundary) and now - self._last_report < 0.5:
            return
        self._last_report = now
        # Checked with every saved report, so a cancel lands within about half a second of a
        # step and always before "publishing" (a stage change) lets the job publish.
        try:
            if self.registry.cancel_requested(job.job_id):
                raise JobCancelled
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        job.progress = JobProgress(stage=p.stage, epoch=p.epoch, epochs=p.epochs, step=p.step,
                                   total_steps=p.total_steps, stage_step=p.stage_step,
                                   stage_steps=p.stage_steps, fraction=p.fraction, loss=p.loss,
                                   eta_s=p.eta_s)
        try:
            self.registry.save_job(job)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Progress is best effort: a Redis blip must not fail a long job; publishing needs
            # Redis and will wait for it (or leave the job to be retried).
            log.warning("job %s: progress not saved: %s", job.job_id, exc)

    def process(self, job_id: str) -> JobRecord | None:
        try:
            job = self.registry.job(job_id)
        except NotFound:
            log.warning("job %s vanished; dropping its message", job_id)
            return None
        if job.state in FINISHED_JOB_STATES:
            return job  # a redelivered message for a finished or cancelled job: a no-op
        if job.state == "running" and job.trainer_id not in (None, self.worker_id):
            job.reclaimed_from = job.trainer_id  # its trainer died mid-job
        job.attempts += 1
        job.trainer_id = self.worker_id
        job.state, job.started_at, job.error = "running", time.time(), None
        if job.attempts > self.settings.job_max_attempts:
            job.state, job.finished_at = "failed", time.time()
            job.error = f"gave up after {job.attempts - 1} attempts (trainer died each time)"
            self.registry.save_job(job)
            return job
        try:
            self._report(job, Progress("preparing", 0, 0, 0, 0, 0, 0, None, None), force=True)
            run = {"merge": run_merge_job, "import": run_import_job}.get(job.kind, run_train_job)
            job.result = run(self.state, job, lambda p: self._report(job, p))
            job.state = "succeeded"
            job.progress = job.progress.model_copy(update={
                "stage": "published", "fraction": 1.0, "eta_s": 0.0, "updated_at": time.time()})
        except JobCancelled:
            log.info("job %s task %s cancelled; the bank is unchanged", job.job_id, job.task_id)
            job.state, job.error = "cancelled", None
            job.progress = job.progress.model_copy(update={"stage": "cancelled",
                                                           "updated_at": time.time()})
        except JobInterrupted:
            # Stopping mid-job: the message stays unacknowledged, so the next trainer claims
            # it; the bank is unchanged and this attempt does not count.
            job.state, job.attempts = "queued", job.attempts - 1
            job.progress = JobProgress(stage="interrupted; will be retried")
            self.registry.save_job(job)
            log.info("job %s task %s interrupted by shutdown", job.job_id, job.task_id)
            raise
        except (redis.ConnectionError, redis.TimeoutError):
            # Redis went away mid-job: the bank did not move, and the message stays pending, so
            # the job runs again once Redis is back. Not the job's fault: no attempt is counted.
            job.attempts -= 1
            log.warning("job %s task %s: redis unavailable; the job will be retried", job.job_id,
                        job.task_id)
            raise
        except AdapterdError as exc:
            log.warning("job %s task %s failed: %s", job.job_id, job.task_id, exc.message)
            job.state, job.error = "failed", f"{exc.code}: {exc.message}"
        except Exception as exc:  # noqa: BLE001 - any failure fails the job, bank unchanged
            log.exception("job %s task %s crashed", job.job_id, job.task_id)
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
        job.finished_at = time.time()
        self.registry.save_job(job)
        return_freed_memory()  # an idle trainer should not sit on the last job's working set
        return job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.trainer")
    parser.add_argument("--max-jobs", type=int, default=None)
    parser.add_argument("--idle-exit", type=float, default=None, help="burst mode: exit when idle")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings)
    if settings.trainer_torch_threads:
        settings = settings.model_copy(update={"torch_threads": settings.trainer_torch_threads})
    if settings.trainer_nice and hasattr(os, "nice"):
        os.nice(settings.trainer_nice)  # serving first: training yields the CPU when both want it
    stop = GracefulStop()
    stop.install()
    Trainer(settings, stop).run(max_batches=args.max_jobs, idle_exit_s=args.idle_exit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
