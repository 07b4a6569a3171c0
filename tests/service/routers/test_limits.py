"""The operator's limits on a job (FWDPRUNE_MAX_JOB_SECONDS, FWDPRUNE_JOB_LIMITS): a job over any of them
is a 422 at submit that names the field and the setting, before it is queued."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from pruning.methods.bonsai.options import BonsaiOptions
from pruning.spec import PruneSettings
from service.main import create_app
from service.schemas.jobs import JobCreate
from service.settings import JobLimits, Settings
from tests.service.conftest import KEY_A

AUTH = {"Authorization": f"Bearer {KEY_A}"}


@pytest.fixture
def client(tmp_path: Path, models_dir: Path, calibration: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data", models_dir=models_dir, api_keys=[KEY_A], embedded_worker=False
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def submit(client: TestClient, calibration: Path, **fields: Any) -> tuple[int, Any]:
    with calibration.open("rb") as handle:
        upload = client.post("/v1/files", headers=AUTH, files={"file": ("calib.jsonl", handle)})
    body = {"model": "tiny-llama", "calibration_file": upload.json()["id"], "sparsity": 0.2, **fields}
    response = client.post("/v1/jobs", headers=AUTH, json=body)
    return response.status_code, response.json()


def test_the_findings_sixteen_day_job_is_refused_naming_each_option(
    client: TestClient, calibration: Path
) -> None:
    options = {"rounds": 64, "samples_per_round": 16384, "scoring_sequences": 64}
    code, body = submit(client, calibration, options=options)
    assert code == 422
    assert [(error["loc"], error["type"]) for error in body["detail"]] == [
        (["body", "options", "rounds"], "less_than_equal"),
        (["body", "options", "samples_per_round"], "less_than_equal"),
    ]
    assert body["detail"][0]["msg"] == (
        "rounds 64 is more than this server allows: at most 16 (FWDPRUNE_JOB_LIMITS__ROUNDS)"
    )
    assert client.get("/v1/jobs", headers=AUTH).json()["data"] == []  # nothing was queued


def test_a_time_limit_over_the_servers_is_refused_and_one_within_it_taken(
    client: TestClient, calibration: Path
) -> None:
    code, body = submit(client, calibration, time_limit="6h1s")
    assert code == 422
    assert body["detail"] == [
        {
            "loc": ["body", "time_limit"],
            "msg": "time_limit 21601 s is more than this server allows: at most 21600 s "
            "(FWDPRUNE_MAX_JOB_SECONDS)",
            "type": "less_than_equal",
        }
    ]
    code, body = submit(client, calibration, time_limit="6h")
    assert code == 201 and body["request"]["time_limit"] == 21600


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"seq_len": 8192}, ["body", "seq_len"]),
        ({"num_samples": 2049}, ["body", "num_samples"]),
        ({"eval_samples": 513}, ["body", "eval_samples"]),
        ({"gpus": 9}, ["body", "gpus"]),
        ({"sparsity": [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]}, ["body", "sparsity"]),
        ({"options": {"masks_per_forward": 65}}, ["body", "options", "masks_per_forward"]),
        ({"options": {"split_candidates": 17}}, ["body", "options", "split_candidates"]),
        ({"options": {"prior_sequences": 4097}}, ["body", "options", "prior_sequences"]),
        ({"options": {"scoring_sequences": 65}}, ["body", "options", "scoring_sequences"]),
    ],
)
def test_every_default_limit_is_enforced_at_submit(
    client: TestClient, calibration: Path, fields: dict[str, Any], loc: list[str]
) -> None:
    code, body = submit(client, calibration, **fields)
    assert code == 422 and [error["loc"] for error in body["detail"]] == [loc]


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FWDPRUNE_JOB_LIMITS", '{"rounds": 4, "seq_len": 1024}')
    monkeypatch.setenv("FWDPRUNE_JOB_LIMITS__SAMPLES_PER_ROUND", "256")
    monkeypatch.setenv("FWDPRUNE_MAX_JOB_SECONDS", "90m")
    settings = Settings()
    assert settings.max_job_seconds == 5400
    assert (settings.job_limits.rounds, settings.job_limits.seq_len) == (4, 1024)
    assert settings.job_limits.samples_per_round == 256
    assert settings.job_limits.num_samples == JobLimits().num_samples  # the others keep their defaults


def test_a_budget_over_a_limit_names_the_budget() -> None:
    """A job that sets no option gets its budget's: a server that allows fewer refuses the budget."""
    limits = JobLimits(samples_per_round=256)
    assert limits.exceeded(PruneSettings(sparsity=0.2, budget="fast")) == []
    assert limits.exceeded(PruneSettings(sparsity=0.2, budget="thorough")) == [
        (
            ["body", "budget"],
            "the thorough budget's samples_per_round 1024 is more than this server allows: at most 256 "
            "(FWDPRUNE_JOB_LIMITS__SAMPLES_PER_ROUND)",
        )
    ]
    # auto is standard on a GPU: its 512 sub-models are over 256 as well
    assert [loc for loc, _ in limits.exceeded(PruneSettings(sparsity=0.2))] == [["body", "budget"]]
    # an option the job sets is judged as given, the budget aside
    asked = PruneSettings(sparsity=0.2, budget="thorough", options={"samples_per_round": 128})
    assert limits.exceeded(asked) == []


def test_every_job_runs_within_the_servers_time(
    client: TestClient, calibration: Path, tmp_path: Path
) -> None:
    """The server's limit reaches the engine as each job's max_time: a ceiling the engine cuts the work
    to fit, which a job asking for its own options keeps (time_limit would size them instead)."""
    code, body = submit(client, calibration, options={"rounds": 1, "samples_per_round": 8})
    assert code == 201 and body["request"]["max_time"] == 21600 and body["request"]["time_limit"] is None
    spec = JobCreate.model_validate(body["request"]).to_spec(
        tmp_path / "model", tmp_path / "data.jsonl", None, tmp_path / "out", "cpu"
    )
    options = spec.method_options("standard")
    assert isinstance(options, BonsaiOptions) and options.samples_per_round == 8
    assert spec.time_bound_s == 21600
    code, body = submit(client, calibration, max_time="1h")  # a job may ask for less
    assert code == 201 and body["request"]["max_time"] == 3600
    code, body = submit(client, calibration, time_limit="2h")  # one that fills its time keeps it
    assert code == 201 and (body["request"]["time_limit"], body["request"]["max_time"]) == (7200, 21600)
    code, body = submit(client, calibration, max_time="7h")
    assert code == 422 and [error["loc"] for error in body["detail"]] == [["body", "max_time"]]
    assert "(FWDPRUNE_MAX_JOB_SECONDS)" in body["detail"][0]["msg"]


def test_a_time_limit_longer_than_max_time_is_refused() -> None:
    with pytest.raises(ValidationError, match="cannot be longer than max_time"):
        PruneSettings(sparsity=0.2, time_limit="2h", max_time="1h")
    assert PruneSettings(sparsity=0.2, time_limit="1h", max_time="2h").time_bound_s == 3600
    assert PruneSettings(sparsity=0.2, max_time="2h").time_bound_s == 7200
    assert PruneSettings(sparsity=0.2).time_bound_s is None


def test_a_config_stating_sizes_its_weights_lack_is_refused_at_submit(
    tmp_path: Path, models_dir: Path, calibration: Path
) -> None:
    """A config.json stating a million layers beside the weights of two is refused before anything is
    queued or built (read from the safetensors headers, torch-free): an unsupported_model 422."""
    lying = shutil.copytree(models_dir / "tiny-llama", tmp_path / "models" / "tiny-llama")
    config = json.loads((lying / "config.json").read_text())
    (lying / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10**6}))
    settings = Settings(
        data_dir=tmp_path / "data", models_dir=tmp_path / "models", api_keys=[KEY_A], embedded_worker=False
    )
    with TestClient(create_app(settings)) as client:
        code, body = submit(client, calibration)
        assert code == 422, body
        (error,) = body["detail"]
        assert error["loc"] == ["body", "model"] and error["type"] == "unsupported_model", error
        assert "num_hidden_layers 1000000" in error["msg"] and "numbered 0-1" in error["msg"], error
        assert client.get("/v1/jobs", headers=AUTH).json()["data"] == []
