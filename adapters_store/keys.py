"""Every Redis key adapterd uses, under one configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass

INFERENCE_GROUP = "inference"
TRAINER_GROUP = "trainers"


@dataclass(frozen=True)
class Keys:
    prefix: str

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # bank
    @property
    def live(self) -> str:
        return self._k("bank", "live")

    def version(self, version: str) -> str:
        return self._k("bank", "version", version)

    @property
    def staged(self) -> str:
        return self._k("bank", "staged")

    def prepared(self, version: str) -> str:
        return self._k("bank", "prepared", version)

    @property
    def history(self) -> str:
        return self._k("bank", "history")

    @property
    def version_seq(self) -> str:
        return self._k("bank", "seq")

    @property
    def events(self) -> str:
        return self._k("bank", "events")

    # training
    def job(self, job_id: str) -> str:
        return self._k("job", job_id)

    @property
    def jobs_index(self) -> str:
        return self._k("jobs", "index")

    @property
    def jobs_stream(self) -> str:
        return self._k("jobs", "stream")

    @property
    def trainer_lease(self) -> str:
        return self._k("trainer", "lease")

    def job_cancel(self, job_id: str) -> str:
        """Set by the API to ask for a job's cancellation; read by the trainer. A key of its own:
        the trainer rewrites the job record with every progress report."""
        return self._k("job", job_id, "cancel")

    def dataset(self, dataset_id: str) -> str:
        return self._k("dataset", dataset_id)

    def task(self, task_id: str) -> str:
        return self._k("task", task_id)

    @property
    def tasks(self) -> str:
        return self._k("tasks")

    # inference
    @property
    def infer_stream(self) -> str:
        return self._k("infer", "stream")

    def reply_stream(self, api_id: str) -> str:
        return self._k("reply", api_id)

    def heartbeat(self, worker_id: str) -> str:
        return self._k("worker", worker_id)

    @property
    def workers(self) -> str:
        return self._k("workers")
