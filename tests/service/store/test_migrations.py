"""Migrations on SQLite and PostgreSQL: stored job requests move to the shared settings' names."""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import command

from service.store import Store
from service.store.engine import alembic_config, make_engine

OLD_REQUEST = {
    "model": "tiny-llama",
    "calibration_file": "file_1",
    "eval_file": None,
    "target_sparsity": 0.3,
    "method": "bonsai",
    "precision": "auto",
    "uniform": False,
    "seed": 0,
    "seq_len": None,
    "num_samples": 16,
    "eval_samples": None,
    "options": {"rounds": 2},
    "metadata": {},
}


def test_0002_renames_target_sparsity_and_drops_unset_lengths(db_url: str) -> None:
    command.upgrade(alembic_config(db_url), "0001")
    engine = make_engine(db_url)
    jobs = sa.table(
        "jobs",
        *(sa.column(c) for c in ("id", "owner", "status", "request_hash", "created_at")),
        *(sa.column(c, sa.JSON) for c in ("request", "resolved", "metadata", "progress")),
    )
    with engine.begin() as conn:
        conn.execute(
            sa.insert(jobs).values(
                id="job_1",
                owner="alice",
                status="succeeded",
                request=OLD_REQUEST,
                resolved={},
                request_hash="h",
                metadata={},
                created_at=time.time(),
                progress={},
            )
        )
    engine.dispose()
    store = Store(db_url)  # migrates to head
    try:
        job = store.get_job("job_1")
        assert job is not None
        expected = {
            k: v for k, v in OLD_REQUEST.items() if k not in ("target_sparsity", "seq_len", "eval_samples")
        }
        assert job.request == {**expected, "sparsity": 0.3}
        from service.schemas.jobs import JobCreate

        assert JobCreate.model_validate(job.request).seq_len == 256  # the settings' default
    finally:
        store.close()
    command.downgrade(alembic_config(db_url), "0001")
    with make_engine(db_url).connect() as conn:
        request = conn.execute(sa.select(jobs.c.request)).scalar_one()
    assert request["target_sparsity"] == 0.3 and "sparsity" not in request


def test_0003_gives_jobs_their_gpu_request_and_model_name(db_url: str) -> None:
    command.upgrade(alembic_config(db_url), "0002")
    engine = make_engine(db_url)
    jobs = sa.table(
        "jobs",
        *(sa.column(c) for c in ("id", "owner", "status", "request_hash", "created_at")),
        *(sa.column(c, sa.JSON) for c in ("request", "resolved", "metadata", "progress")),
    )
    request = {"model": "tiny-llama", "calibration_file": "file_1", "sparsity": 0.3}
    with engine.begin() as conn:
        for job_id, gpus in (("job_default", None), ("job_four", 4)):
            conn.execute(
                sa.insert(jobs).values(
                    id=job_id,
                    owner="alice",
                    status="queued",
                    request={**request, "gpus": gpus},
                    # resolved at submit by an older API: a path on its host
                    resolved={"model": "/srv/models/tiny-llama", "data": "/srv/files/f"},
                    request_hash="h",
                    metadata={},
                    created_at=time.time(),
                    progress={},
                )
            )
    engine.dispose()
    store = Store(db_url)  # migrates to head
    try:
        default, four = store.get_job("job_default"), store.get_job("job_four")
        assert default is not None and four is not None
        assert (default.gpus, four.gpus, four.min_gpu_memory_bytes) == (0, 4, None)
        # the worker resolves the name; the file's path stays as it was
        assert four.resolved == {"model": "tiny-llama", "data": "/srv/files/f"}
    finally:
        store.close()
    command.downgrade(alembic_config(db_url), "0002")
