"""Every job setting reaches the engine the same way from every entry point: the library (`PruneSpec`),
`fwdprune prune`, the job API (`JobCreate` and its one mapping to the engine's request, and its OpenAPI
schema) and `fwdprune submit`; and docs/cli.md's table names it. A setting added to `PruneSettings` fails here
until SAMPLES covers it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from pruning.spec import PruneSettings, PruneSpec
from service.schemas.jobs import JobCreate

# together they move every setting off its default; each is valid on its own
SAMPLES: list[dict[str, Any]] = [
    {
        "sparsity": 0.35,
        "method": "flap",
        "precision": "bf16",
        "uniform": True,
        "export_format": "nemotron-nas",
        "gguf_type": "q8_0",
        "seq_len": 64,
        "num_samples": 7,
        "eval_samples": 5,
        "mlp_block": 4,
        "mlp_multiple_of": 8,
        "kv_multiple_of": 2,
        "unit_kinds": ["attn", "expert"],
        "objective": "distill",
        "compensate": "ls",
        "compensation_ridge": 0.5,
        "seed": 3,
        "budget": "thorough",
        "time_limit": 600.0,
        "max_time": 900.0,
        "recover": "distill",
        "recover_tokens": 4096,
        "recover_time": 120.0,
        "recover_rank": 8,
        "recover_lr": 0.002,
        "recover_lm_weight": 0.5,
        "gpus": 2,
        "options": {},
    },
    {
        "sparsity": [0.2, 0.5],  # several sizes from one job
        "method": "bonsai",
        "precision": "int8",
        "uniform": False,
        "export_format": "hf",
        "gguf_type": "f16",
        "seq_len": 128,
        "num_samples": 9,
        "eval_samples": 3,
        "mlp_block": None,
        "mlp_multiple_of": None,
        "kv_multiple_of": None,
        "unit_kinds": ["mlp"],
        "objective": "lm",
        "compensate": "bias",
        "compensation_ridge": 2.0,
        "seed": 11,
        "budget": "fast",
        "time_limit": None,
        "max_time": None,
        "recover": "zo",
        "recover_tokens": None,
        "recover_time": None,
        "recover_rank": 16,
        "recover_lr": None,
        "recover_lm_weight": 0.0,
        "gpus": None,
        "options": {"rounds": 2, "kind_split": "importance", "ridge": 0.25},
    },
]


def argv_of(settings: dict[str, Any]) -> list[str]:
    """The command-line options that ask for `settings`."""
    argv: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, list):
            argv += [flag, ",".join(str(item) for item in value)]
        elif isinstance(value, dict):
            argv += [arg for key, option in value.items() for arg in ("--options", f"{key}={option}")]
        else:
            argv += [flag, "null" if value is None else str(value)]
    return argv


def expected(settings: dict[str, Any]) -> dict[str, Any]:
    return PruneSettings(**settings).model_dump()


def test_docs_document_every_setting() -> None:
    reference = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    assert [name for name in PruneSettings.model_fields if f"| `{name}` |" not in reference] == []


def test_samples_move_every_setting_off_its_default() -> None:
    for sample in SAMPLES:
        assert set(sample) == set(PruneSettings.model_fields)
    defaults = PruneSettings(sparsity=0.1).model_dump()
    defaults["sparsity"] = None  # required: no default
    unmoved = [name for name in PruneSettings.model_fields if all(s[name] == defaults[name] for s in SAMPLES)]
    assert not unmoved


@pytest.mark.parametrize("settings", SAMPLES)
def test_library(settings: dict[str, Any], tmp_path: Path) -> None:
    spec = PruneSpec(model="m", data=tmp_path / "d.jsonl", out_dir=tmp_path / "o", **settings)
    assert spec.common_settings() == expected(settings)


@pytest.mark.parametrize("settings", SAMPLES)
def test_prune_command(settings: dict[str, Any], tmp_path: Path) -> None:
    from pruning.cli import add_prune_command, spec_from_args

    parser = argparse.ArgumentParser()
    add_prune_command(parser.add_subparsers())
    args = parser.parse_args(
        [
            "prune",
            "--model",
            "m",
            "--data",
            str(tmp_path / "d.jsonl"),
            "--out",
            str(tmp_path / "o"),
            *argv_of(settings),
        ]
    )
    assert spec_from_args(args).common_settings() == expected(settings)


@pytest.mark.parametrize("settings", SAMPLES)
def test_job_api_and_its_mapping_to_the_engine(settings: dict[str, Any], tmp_path: Path) -> None:
    body = JobCreate.model_validate({"model": "tiny", "calibration_file": "file_1", **settings})
    spec = body.to_spec(tmp_path / "m", tmp_path / "d.jsonl", None, tmp_path, "cpu")
    assert spec.common_settings() == expected(settings)
    assert (spec.model, spec.data, spec.eval_data, spec.device) == (
        str(tmp_path / "m"),
        tmp_path / "d.jsonl",
        None,
        "cpu",
    )


def test_job_api_schema_offers_every_setting(tmp_path: Path) -> None:
    from service.main import create_app
    from service.settings import Settings

    app = create_app(Settings(data_dir=tmp_path, api_keys=["key-0123456789abcdef"]))
    schema = app.openapi()["components"]["schemas"]
    create = next(value for name, value in schema.items() if name.startswith("JobCreate"))
    assert set(PruneSettings.model_fields) <= set(create["properties"])


@pytest.mark.parametrize("settings", SAMPLES)
def test_submit_command(settings: dict[str, Any], tmp_path: Path) -> None:
    from service.cli import build_parser, settings_from_args

    args = build_parser().parse_args(["submit", "--model", "tiny", "--data", "d.jsonl", *argv_of(settings)])
    sent = settings_from_args(args)  # the JSON body's settings
    body = JobCreate.model_validate({"model": "tiny", "calibration_file": "file_1", **sent})
    assert body.common_settings() == expected(settings)


@pytest.mark.parametrize("command", ["prune", "submit"])
def test_help_names_each_value_as_a_person_writes_it(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    assert re.findall(r"null\}|\{int|\{float|\{\{|dict\[|list\[", text) == []
    assert [
        option
        for option in (
            "--sparsity FRACTION[,FRACTION...]",
            "--seq-len INT",
            "--mlp-block INT",
            "--objective {lm,distill}",
            "--compensation-ridge FLOAT",
            "--time-limit DURATION",
            "--options KEY=VALUE",
        )
        if option not in text
    ] == []


def test_submit_refuses_recovery_data_without_a_recovery_before_any_upload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n')
    argv = ["submit", "--model", "tiny", "--data", str(tmp_path / "d.jsonl"), "--sparsity", "0.3"]
    url = ["--url", "http://127.0.0.1:9"]  # nothing listens there: an upload would fail
    assert main([*argv, "--recovery-data", str(tmp_path / "d.jsonl"), *url]) == 2
    assert "--recovery-data is text for the recovery to train on" in capsys.readouterr().err
