"""The registry in Redis: bank versions and the live pointer, jobs, datasets, tasks, workers."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

from adapters_store.errors import Conflict, NotFound
from adapters_store.keys import INFERENCE_GROUP, TRAINER_GROUP, Keys
from adapters_store.merges import MergeRequest
from adapters_store.records import (
    FINISHED_JOB_STATES,
    BankManifest,
    DatasetRecord,
    JobRecord,
    TaskRecord,
)
from adapters_store.strategy_params import StrategyName, StrategyOverrides
from adapters_store.streams import Heartbeat, TrainJobMessage

# A staged version's prepared set outlives any publish wait; it only guards against leaks.
PREPARED_TTL_S = 3600
PREPARE_POLL_S = 0.02

# Clear the staged pointer if it still names ARGV[1] (a later stage is left alone).
_UNSTAGE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class PrepareReport:
    """How many live inference workers had a staged version loaded when it was published."""

    workers: int
    prepared: int
    waited_s: float


def as_text(value: bytes | str | None) -> str | None:
    """A Redis reply (bytes from a client without decode_responses) as text; None stays None."""
    return value.decode() if isinstance(value, bytes) else value


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create a consumer group (and its stream) if missing; an existing group is success."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class Registry:
    """Synchronous access to everything adapterd keeps in Redis."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.keys = keys
        self._unstage = client.register_script(_UNSTAGE)

    def ensure_groups(self) -> None:
        ensure_group(self.r, self.keys.infer_stream, INFERENCE_GROUP)
        ensure_group(self.r, self.keys.jobs_stream, TRAINER_GROUP)

    # ---- bank versions -------------------------------------------------------------------
    def live_version(self) -> str | None:
        return as_text(self.r.get(self.keys.live))

    def manifest(self, version: str, pause: Callable[[], None] | None = None) -> BankManifest:
        raw = self.r.get(self.keys.version(version))
        if raw is None:
            raise NotFound(f"bank version {version!r} does not exist")
        return BankManifest.from_json(raw, pause)

    def live_manifest(self) -> BankManifest | None:
        version = self.live_version()
        return self.manifest(version) if version else None

    def next_version_number(self) -> int:
        return int(self.r.incr(self.keys.version_seq))

    def versions(self) -> list[dict]:
        return [json.loads(e) for e in self.r.lrange(self.keys.history, 0, -1)]

    def stage(self, manifest: BankManifest) -> None:
        """Store ``manifest`` and announce it as the next version, so inference workers load it
        off their serving path before it goes live (the swap is then a reference change)."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.version(manifest.version), manifest.to_json())
            pipe.set(self.keys.staged, manifest.version)
            pipe.execute()

    def is_staged(self, version: str) -> bool:
        """Whether ``version`` is stored but not published yet (its publish waits for workers):
        it must not be served by name or rolled back to."""
        return as_text(self.r.get(self.keys.staged)) == version

    def staged_and_live(self) -> tuple[str | None, str | None]:
        """The staged and the live version, in one round trip."""
        staged, live = self.r.mget(self.keys.staged, self.keys.live)
        return as_text(staged), as_text(live)

    def mark_prepared(self, version: str, worker_id: str) -> None:
        with self.r.pipeline(transaction=False) as pipe:
            pipe.sadd(self.keys.prepared(version), worker_id)
            pipe.expire(self.keys.prepared(version), PREPARED_TTL_S)
            pipe.execute()

    def await_prepared(self, version: str, timeout_s: float) -> PrepareReport:
        """Wait until every live inference worker has loaded ``version`` (or ``timeout_s``): a
        worker that is late loads it when it goes live, as it would without staging."""
        started = time.monotonic()
        while True:
            serving = {hb.worker_id for hb in self.heartbeats() if hb.kind == "inference"}
            ready = {as_text(w) for w in self.r.smembers(self.keys.prepared(version))} & serving
            waited = time.monotonic() - started
            if ready >= serving or waited >= timeout_s:
                return PrepareReport(workers=len(serving), prepared=len(ready),
                                     waited_s=round(waited, 3))
            time.sleep(PREPARE_POLL_S)

    def publish(self, manifest: BankManifest, reason: str, prepare_timeout_s: float = 0.0
                ) -> PrepareReport | None:
        """Make ``manifest`` live in one transaction, if the live pointer is still its parent.
        With ``prepare_timeout_s`` it is staged first, and published once every live inference
        worker has loaded it (or the timeout passed)."""
        report = None
        if prepare_timeout_s > 0:
            self.stage(manifest)
            report = self.await_prepared(manifest.version, prepare_timeout_s)
        with self.r.pipeline() as pipe:
            pipe.watch(self.keys.live)
            current = as_text(pipe.get(self.keys.live))
            if current != manifest.parent:
                pipe.reset()
                if report is not None:  # a staged version that will never be live: unstore it
                    self.r.delete(self.keys.version(manifest.version))
                    self._unstage(keys=[self.keys.staged], args=[manifest.version])
                raise Conflict(
                    f"live version moved to {current} while {manifest.version} was built on "
                    f"{manifest.parent}",
                    {"live": current, "parent": manifest.parent},
                )
            entry = {"version": manifest.version, "at": time.time(), "reason": reason,
                     "previous": current}
            pipe.multi()
            if report is None:  # staging stored it already
                pipe.set(self.keys.version(manifest.version), manifest.to_json())
            else:  # published: no longer staged (pinning and rollback may name it now)
                self._unstage(keys=[self.keys.staged], args=[manifest.version], client=pipe)
            pipe.set(self.keys.live, manifest.version)
            pipe.rpush(self.keys.history, json.dumps(entry))
            pipe.xadd(self.keys.events, {"m": json.dumps({"type": "publish", **entry})},
                      maxlen=10_000, approximate=True)
            pipe.execute()
        return report

    def rollback(self, version: str) -> dict:
        """Point live at an earlier, still-stored version; the history records the move."""
        self.manifest(version)
        if self.is_staged(version):
            raise Conflict(f"bank version {version!r} is staged, not published: it goes live "
                           "when its publish completes", {"version": version})
        with self.r.pipeline() as pipe:
            previous = as_text(self.r.get(self.keys.live))
            if previous == version:  # idempotent: already live, nothing to record
                return {"version": version, "at": time.time(), "reason": "already live",
                        "previous": previous}
            entry = {"version": version, "at": time.time(), "reason": "rollback",
                     "previous": previous}
            pipe.multi()
            pipe.set(self.keys.live, version)
            pipe.rpush(self.keys.history, json.dumps(entry))
            pipe.xadd(self.keys.events, {"m": json.dumps({"type": "rollback", **entry})},
                      maxlen=10_000, approximate=True)
            pipe.execute()
        return entry

    # ---- datasets, tasks, jobs ---------------------------------------------------------
    def dataset(self, dataset_id: str) -> DatasetRecord:
        raw = self.r.get(self.keys.dataset(dataset_id))
        if raw is None:
            raise NotFound(f"dataset {dataset_id!r} does not exist")
        return DatasetRecord.from_json(raw)

    def task(self, task_id: str) -> TaskRecord:
        raw = self.r.get(self.keys.task(task_id))
        if raw is None:
            raise NotFound(f"task {task_id!r} does not exist")
        return TaskRecord.from_json(raw)

    def task_ids(self) -> list[str]:
        return sorted(as_text(t) for t in self.r.smembers(self.keys.tasks))

    def job(self, job_id: str) -> JobRecord:
        raw = self.r.get(self.keys.job(job_id))
        if raw is None:
            raise NotFound(f"job {job_id!r} does not exist")
        return JobRecord.from_json(raw)

    def jobs(self, limit: int = 50) -> list[JobRecord]:
        ids = self.r.zrevrange(self.keys.jobs_index, 0, max(0, limit - 1))
        raws = self.r.mget([self.keys.job(as_text(i)) for i in ids]) if ids else []
        return [JobRecord.from_json(r) for r in raws if r is not None]

    def cancel_job(self, job_id: str) -> JobRecord:
        """Ask for a job's cancellation: a queued one is cancelled now (the trainer skips it), a
        running one at its trainer's next progress report, before it publishes anything."""
        key = self.keys.job(job_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise NotFound(f"job {job_id!r} does not exist")
                    job = JobRecord.from_json(raw)
                    if job.state in FINISHED_JOB_STATES:
                        raise Conflict(f"job {job_id!r} already {job.state}",
                                       {"state": job.state})
                    pipe.multi()
                    pipe.set(self.keys.job_cancel(job_id), "1", ex=7 * 86400)
                    if job.state == "queued":
                        job.state, job.finished_at = "cancelled", time.time()
                        job.progress = job.progress.model_copy(update={"stage": "cancelled"})
                        pipe.set(key, job.to_json())
                    pipe.execute()
                    return job
                except redis.WatchError:
                    continue

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(self.keys.job_cancel(job_id)))

    def delete_task(self, task_id: str) -> dict:
        """Cancel the task's unfinished jobs, publish a version without its route (modules no
        other route uses leave it; older versions keep everything, so rollback still works),
        and forget the task's record. Retries if a publish moves the live pointer meanwhile."""
        task = None
        raw = self.r.get(self.keys.task(task_id))
        if raw is not None:
            task = TaskRecord.from_json(raw)
        live = self.live_manifest()
        if task is None and (live is None or task_id not in live.routes):
            raise NotFound(f"task {task_id!r} does not exist")
        cancelled = []
        for job_id in task.job_ids if task else []:
            try:
                cancelled.append(self.cancel_job(job_id).job_id)
            except (Conflict, NotFound):
                continue  # finished or gone: nothing to stop
        version = None
        for _ in range(10):
            live = self.live_manifest()
            if live is None or task_id not in live.routes:
                break
            routes = {t: r for t, r in live.routes.items() if t != task_id}
            used = {m for r in routes.values() for m in r.layers if m is not None}
            number = self.next_version_number()
            manifest = live.model_copy(update={
                "version": f"v{number}", "number": number, "parent": live.version,
                "routes": routes, "modules": {k: v for k, v in live.modules.items() if k in used},
                "created_at": time.time(), "note": f"deleted task {task_id}"})
            try:
                self.publish(manifest, reason=f"delete {task_id}")
            except Conflict:
                continue
            version = manifest.version
            break
        else:
            raise Conflict("the live version kept moving; try the delete again")
        with self.r.pipeline() as pipe:
            pipe.delete(self.keys.task(task_id))
            pipe.srem(self.keys.tasks, task_id)
            pipe.execute()
        return {"task_id": task_id, "version": version, "cancelled_jobs": cancelled}

    def save_job(self, job: JobRecord) -> None:
        self.r.set(self.keys.job(job.job_id), job.to_json())

    def submit(self, dataset: DatasetRecord, strategy: StrategyName,
               params: StrategyOverrides) -> JobRecord:
        """Record a validated dataset and enqueue its training job in one transaction."""
        job = JobRecord(job_id="job_" + uuid.uuid4().hex[:16], task_id=dataset.task_id,
                        dataset_id=dataset.id, strategy=strategy, params=params)
        return self._enqueue(job, dataset)

    def submit_merge(self, req: MergeRequest) -> JobRecord:
        """Enqueue a merge job (validated against the live bank by the caller and again by the
        trainer, against the bank it merges)."""
        job = JobRecord(job_id="job_" + uuid.uuid4().hex[:16], kind="merge",
                        task_id=req.name or req.tasks[0], merge=req)
        return self._enqueue(job, None)

    def submit_import(self, task_id: str, blob: str, input_kind: str) -> JobRecord:
        """Enqueue building ``task_id``'s route from a stored (and checked) peft adapter zip."""
        job = JobRecord(job_id="job_" + uuid.uuid4().hex[:16], kind="import", task_id=task_id,
                        import_blob=blob, input_kind=input_kind)
        return self._enqueue(job, None)

    def _enqueue(self, job: JobRecord, dataset: DatasetRecord | None) -> JobRecord:
        """Job, its task's record (and dataset) and the stream entry in one transaction."""
        task_key = self.keys.task(job.task_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(task_key)
                    raw = pipe.get(task_key)
                    task = TaskRecord.from_json(raw) if raw else TaskRecord(task_id=job.task_id)
                    if dataset is not None:
                        task.dataset_ids.append(dataset.id)
                    task.job_ids.append(job.job_id)
                    pipe.multi()
                    if dataset is not None:
                        pipe.set(self.keys.dataset(dataset.id), dataset.to_json())
                    pipe.set(task_key, task.to_json())
                    pipe.sadd(self.keys.tasks, job.task_id)
                    pipe.set(self.keys.job(job.job_id), job.to_json())
                    pipe.zadd(self.keys.jobs_index, {job.job_id: job.created_at})
                    pipe.xadd(self.keys.jobs_stream, TrainJobMessage(job_id=job.job_id).fields())
                    pipe.execute()
                    return job
                except redis.WatchError:
                    continue

    # ---- workers -------------------------------------------------------------------------
    def beat(self, hb: Heartbeat, ttl_s: float) -> None:
        with self.r.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.heartbeat(hb.worker_id), hb.model_dump_json(), px=int(ttl_s * 1000))
            pipe.sadd(self.keys.workers, hb.worker_id)
            pipe.execute()

    def forget_worker(self, worker_id: str) -> None:
        self.r.delete(self.keys.heartbeat(worker_id))
        self.r.srem(self.keys.workers, worker_id)

    def alive_worker_ids(self) -> set[str]:
        return {hb.worker_id for hb in self.heartbeats()}

    def forget_workers_of_pid(self, pid: int) -> list[str]:
        """Drop the heartbeats of the worker(s) a process ran (ids carry the pid: a supervisor
        knows a child is dead before its heartbeat expires)."""
        gone = [w for w in (as_text(m) for m in self.r.smembers(self.keys.workers))
                if w is not None and f"-{pid}-" in w]
        for worker_id in gone:
            self.forget_worker(worker_id)
        return gone

    def heartbeats(self) -> list[Heartbeat]:
        ids = sorted(as_text(w) for w in self.r.smembers(self.keys.workers))
        raws = self.r.mget([self.keys.heartbeat(w) for w in ids]) if ids else []
        alive = []
        for worker_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                self.r.srem(self.keys.workers, worker_id)
            else:
                alive.append(Heartbeat.model_validate_json(raw))
        return alive
