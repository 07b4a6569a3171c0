"""Publication: a succeeded job's outputs become its artifacts in the same step as its status, or never.

On local storage the runner's output directory is renamed into place inside the fenced status UPDATE's
transaction; on an object store the runner has uploaded its outputs under its attempt's prefix, and the
fenced commit that marks the job succeeded is what publishes them (the API serves only artifacts a
succeeded job lists). Outputs no commit published are deleted, here or by the sweep.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from service.objects.names import is_safe
from service.objects.storage import Storage, StorageError, attempt_prefix, stored_attempts
from service.store import Store
from service.worker.process import Running
from service.worker.retry import StoreCall

log = logging.getLogger("fwdprune.worker")


class Publisher:
    def __init__(self, store: Store, storage: Storage, jobs_dir: Path, call: StoreCall) -> None:
        self.store, self.storage, self.jobs_dir, self.call = store, storage, jobs_dir, call

    def publish(self, running: Running, result: dict[str, Any]) -> None:
        """Mark the job succeeded with the artifacts the runner listed (names, sizes, checksums), and
        publish its outputs with that status: both or neither."""
        artifacts = result.get("artifacts") or []
        refused = [artifact.get("name") for artifact in artifacts if not is_safe(artifact.get("name"))]
        if refused:  # the runner lists only safe names (`describe`): one that did not is not to be trusted
            self._fail(running, f"the job listed an artifact that is never published: {refused[0]!r}")
            return
        if self.storage.local:
            self._move_into_place(running, result.get("metrics"), artifacts)
        else:
            self._commit_uploads(running, result.get("metrics"), artifacts)

    def _move_into_place(self, running: Running, metrics: Any, artifacts: list[dict[str, Any]]) -> None:
        """The move runs inside the fenced status UPDATE's transaction: only the job's owner gets that
        far, and nobody can reap the job between the move and the commit. A commit that fails moves it
        back."""
        final = self.jobs_dir / running.job_id

        def move() -> None:
            shutil.rmtree(final, ignore_errors=True)  # left by an attempt that died mid-publication
            running.out_dir.rename(final)  # atomic publication: same filesystem, one rename

        def finish() -> bool:
            try:
                return self.store.finish_job(
                    running.job_id,
                    "succeeded",
                    metrics=metrics,
                    artifacts=artifacts,
                    claim=running.claim,
                    on_won=move,
                )
            except Exception:
                if final.is_dir() and not running.out_dir.exists():
                    final.rename(running.out_dir)  # not committed, so not published: a retry moves it again
                raise

        if not self.call(finish):
            log.warning("job %s was taken from this worker; its outputs are discarded", running.job_id)

    def _commit_uploads(self, running: Running, metrics: Any, artifacts: list[dict[str, Any]]) -> None:
        stored = set(self.storage.list_keys(attempt_prefix(running.job_id, running.claim.attempt)))
        if any(artifact.get("key") not in stored for artifact in artifacts):
            self._fail(running, "the job's outputs are not all in the object store")
            return
        running.committing = True  # until the store answers, nobody knows whether the commit won
        won = self.call(
            self.store.finish_job,
            running.job_id,
            "succeeded",
            metrics=metrics,
            artifacts=artifacts,
            claim=running.claim,
        )
        # a commit whose answer was lost (and so was retried) went through if the job succeeded under
        # this worker's claim
        running.published = won or running.holds(
            self.call(self.store.get_job, running.job_id), ("succeeded",)
        )
        running.committing = False
        if not running.published:
            log.warning("job %s was taken from this worker; its outputs are discarded", running.job_id)

    def _fail(self, running: Running, message: str) -> None:
        self.call(
            self.store.finish_job,
            running.job_id,
            "failed",
            error_code="internal_error",
            error_message=message,
            claim=running.claim,
        )

    def drop_uploads(self, running: Running) -> None:
        """Delete what an unpublished attempt's runner put in the object store (its process has ended)."""
        if self.storage.local or running.published or running.committing:
            return
        try:
            self.storage.delete_prefix(attempt_prefix(running.job_id, running.claim.attempt))
        except StorageError as err:
            log.warning("job %s: its unpublished uploads are left for the sweep: %s", running.job_id, err)

    def sweep_uploads(self) -> None:
        """Object storage: delete what attempts that can never be published uploaded (those of failed,
        cancelled, requeued or deleted jobs, or superseded by a later attempt); keep the rest."""
        if self.storage.local:
            return
        try:
            # listed before the store is read: an attempt that publishes meanwhile is then seen as such
            stored = stored_attempts(self.storage.list_keys("jobs"))
            keep = self.call(self.store.publishable_attempts, {job_id for job_id, _ in stored})
            for job_id, attempt in sorted(stored - keep):
                self.storage.delete_prefix(attempt_prefix(job_id, attempt))
        except StorageError as err:  # the next sweep tries again; jobs need not wait for it
            log.warning("could not sweep the object store: %s", err)
