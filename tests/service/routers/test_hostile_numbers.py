"""Numbers too large to handle: an integer past Python's 4,300-digit conversion limit in an upload or a
Range header, and settings past any sensible size. Each is a 4xx naming the field, never a 500 or a job
that fails later."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from service.main import create_app
from service.objects.downloads import requested_range
from service.settings import Settings
from tests.service.conftest import KEY_A

AUTH = {"Authorization": f"Bearer {KEY_A}"}
HUGE = "9" * 5000  # past sys.get_int_max_str_digits() (4,300)


@pytest.fixture
def client(tmp_path: Path, models_dir: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data", models_dir=models_dir, api_keys=[KEY_A], embedded_worker=False
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def test_a_jsonl_record_with_a_huge_integer_is_a_422_naming_its_line(client: TestClient) -> None:
    content = b'{"text": "fine"}\n{"text": "hello", "id": ' + HUGE.encode() + b"}\n"
    response = client.post("/v1/files", headers=AUTH, files={"file": ("calib.jsonl", content)})
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "loc": ["body", "file"],
            "msg": "line 2 holds an integer of more than 4300 digits, longer than the JSON reader takes",
            "type": "value_error",
        }
    ]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"bytes=0-{HUGE}", (0, 999)),  # an end past the object is its last byte
        (f"bytes=-{HUGE}", (0, 999)),  # a suffix longer than the object is all of it
        (f"bytes=10-{'0' * 30}11", (10, 11)),  # leading zeros are still the number
        (f"bytes={HUGE}-", 416),  # a start past the end
        (f"bytes={HUGE}-{HUGE}", 416),
    ],
)
def test_a_huge_range_position_is_read_as_past_the_end(header: str, expected: object) -> None:
    """The object-store download path parses Range itself (local files go through Starlette's)."""
    if isinstance(expected, int):
        with pytest.raises(HTTPException) as caught:
            requested_range(header, None, '"abc"', 1000)
        assert caught.value.status_code == expected
    else:
        assert requested_range(header, None, '"abc"', 1000) == expected


def submit(client: TestClient, fields: str) -> tuple[int, list[dict[str, object]]]:
    body = '{"model": "tiny-llama", "calibration_file": "file_x", "sparsity": 0.2, ' + fields + "}"
    response = client.post("/v1/jobs", content=body, headers={**AUTH, "Content-Type": "application/json"})
    return response.status_code, response.json()["detail"]


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ('"mlp_block": 99999999999999999999', ["body", "mlp_block"]),
        ('"mlp_block": 1048577', ["body", "mlp_block"]),
        ('"compensation_ridge": 1e300', ["body", "compensation_ridge"]),
    ],
)
def test_a_setting_past_its_bound_is_a_422_naming_it(client: TestClient, fields: str, loc: list[str]) -> None:
    code, detail = submit(client, fields)
    assert code == 422
    assert [error["loc"] for error in detail] == [loc]
    assert detail[0]["type"] == "less_than_equal"


def test_a_method_option_past_its_bound_is_a_422_naming_it(client: TestClient) -> None:
    code, detail = submit(client, '"options": {"ridge": 1e300}')
    assert code == 422 and [error["loc"] for error in detail] == [["body", "options"]]
    assert (
        detail[0]["msg"] == "Value error, bonsai option ridge: Input should be less than or equal to 1000000"
    )


# -- a model's config.json: sizes no model has are refused at submit --------------------------------

LLAMA: dict[str, object] = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "vocab_size": 320,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
}
MIXTRAL = {**LLAMA, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2}
QWEN3_MOE = {
    **LLAMA,
    "model_type": "qwen3_moe",
    "num_local_experts": 6,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
}
HOSTILE_SIZES: dict[str, tuple[dict[str, object], dict[str, object], str]] = {
    "zero-heads": (LLAMA, {"num_attention_heads": 0}, "num_attention_heads"),
    "zero-kv-heads": (LLAMA, {"num_key_value_heads": 0}, "num_key_value_heads"),
    "kv-heads-not-dividing": (LLAMA, {"num_key_value_heads": 3}, "num_key_value_heads"),
    "more-kv-than-query-heads": (LLAMA, {"num_key_value_heads": 8}, "num_key_value_heads"),
    "negative-hidden": (LLAMA, {"hidden_size": -64}, "hidden_size"),
    "negative-mlp": (LLAMA, {"intermediate_size": -96}, "intermediate_size"),
    "zero-layers": (LLAMA, {"num_hidden_layers": 0}, "num_hidden_layers"),
    "zero-vocabulary": (LLAMA, {"vocab_size": 0}, "vocab_size"),
    "negative-head-dim": (LLAMA, {"head_dim": -16}, "head_dim"),
    "hidden-not-whole-heads": (LLAMA, {"hidden_size": 66, "head_dim": None}, "hidden_size"),
    "a-string-width": (LLAMA, {"intermediate_size": "96"}, "intermediate_size"),
    "a-float-width": (LLAMA, {"intermediate_size": 96.5}, "intermediate_size"),
    "a-boolean-count": (LLAMA, {"num_hidden_layers": True}, "num_hidden_layers"),
    "a-huge-width": (LLAMA, {"hidden_size": 2**70}, "hidden_size"),
    "a-list-dtype": (LLAMA, {"dtype": ["float32"]}, "dtype"),
    "mixtral-top-k-past-experts": (MIXTRAL, {"num_experts_per_tok": 5}, "num_experts_per_tok"),
    "mixtral-no-experts": (MIXTRAL, {"num_local_experts": 0}, "num_local_experts"),
    "qwen3-moe-top-k-past-experts": (QWEN3_MOE, {"num_experts_per_tok": 7}, "num_experts_per_tok"),
    "qwen3-moe-zero-top-k": (QWEN3_MOE, {"num_experts_per_tok": 0}, "num_experts_per_tok"),
    "qwen3-moe-negative-expert-width": (QWEN3_MOE, {"moe_intermediate_size": -32}, "moe_intermediate_size"),
}


WIDE_LLAMA = {**LLAMA, "intermediate_size": 512}  # wide enough for the Nemotron-NAS layout
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "original_max_position_embeddings": 8192,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
}
# changes to a sound Llama config (None: the field left out) that leave GGUF's header nothing to write
HOSTILE_GGUF: dict[str, tuple[dict[str, object], str]] = {
    "negative-context": ({"max_position_embeddings": -1}, "max_position_embeddings"),
    "huge-context": ({"max_position_embeddings": 2**70}, "max_position_embeddings"),
    "context-past-32-bits": ({"max_position_embeddings": 2**32}, "max_position_embeddings"),
    "no-context": ({"max_position_embeddings": None}, "max_position_embeddings"),
    "negative-window": ({"sliding_window": -4}, "sliding_window"),
    "no-norm-epsilon": ({"rms_norm_eps": None}, "rms_norm_eps"),
    "negative-norm-epsilon": ({"rms_norm_eps": -1e-6}, "rms_norm_eps"),
    "rope-a-list": ({"rope_parameters": [1]}, "rope_parameters"),
    "rope-kind-a-list": ({"rope_parameters": {"rope_type": ["llama3"]}}, "rope"),
    "rope-kind-unwritten": ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    "rope-theta-negative": ({"rope_parameters": {"rope_type": "default", "rope_theta": -1}}, "rope_theta"),
    "llama3-rope-without-its-factors": (
        {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
        "original_max_position_embeddings",
    ),
    "llama3-rope-without-theta": (
        {"rope_parameters": {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}},
        "rope_theta",
    ),
    "llama3-rope-equal-factors": (
        {"rope_parameters": {**LLAMA3_ROPE, "high_freq_factor": 1.0}},
        "freq_factor",
    ),
    "linear-rope-without-factor": ({"rope_parameters": None, "rope_scaling": {"type": "linear"}}, "factor"),
    "linear-rope-huge-factor": ({"rope_parameters": {"rope_type": "linear", "factor": 1e39}}, "factor"),
}


def _changed(config: dict[str, object], changes: dict[str, object]) -> dict[str, object]:
    changed = {**config, **changes}
    return {key: value for key, value in changed.items() if value is not None or key == "rope_parameters"}


@pytest.fixture(scope="module")
def config_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir of config.json files alone: the API reads no more of a model at submit."""
    root = tmp_path_factory.mktemp("config-models")
    models = {"llama": LLAMA, "mixtral": MIXTRAL, "qwen3-moe": QWEN3_MOE}
    models |= {name: {**base, **changes} for name, (base, changes, _) in HOSTILE_SIZES.items()}
    models |= {"llama-wide": WIDE_LLAMA, "phi3": {**LLAMA, "model_type": "phi3"}}
    models |= {f"gguf-{name}": _changed(WIDE_LLAMA, changes) for name, (changes, _) in HOSTILE_GGUF.items()}
    for name, config in models.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
    return root


@pytest.fixture
def config_client(tmp_path: Path, config_models: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data", models_dir=config_models, api_keys=[KEY_A], embedded_worker=False
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def submit_model(client: TestClient, model: str, **fields: object) -> tuple[int, list[dict[str, object]]]:
    body = {"model": model, "calibration_file": "file_x", "sparsity": 0.2, **fields}
    response = client.post("/v1/jobs", json=body, headers=AUTH)
    return response.status_code, response.json()["detail"]


@pytest.mark.parametrize("model", ["llama", "mixtral", "qwen3-moe"])
def test_a_sound_config_passes_the_model_check(config_client: TestClient, model: str) -> None:
    code, detail = submit_model(config_client, model)
    assert code == 422 and [error["loc"] for error in detail] == [["body", "calibration_file"]], detail


@pytest.mark.parametrize("model", sorted(HOSTILE_SIZES))
def test_sizes_no_model_has_are_an_unsupported_model_at_submit(config_client: TestClient, model: str) -> None:
    code, detail = submit_model(config_client, model)
    assert code == 422, detail
    (error,) = detail
    assert error["loc"] == ["body", "model"] and error["type"] == "unsupported_model", error
    assert HOSTILE_SIZES[model][2] in str(error["msg"]), error


@pytest.mark.parametrize("model", ["mixtral", "qwen3-moe", "phi3", "llama"])
def test_nemotron_nas_is_refused_at_submit_for_a_model_it_cannot_hold(
    config_client: TestClient, model: str
) -> None:
    code, detail = submit_model(config_client, model, export_format="nemotron-nas")
    assert code == 422, detail
    (error,) = detail
    assert error["loc"] == ["body", "model"] and error["type"] == "invalid_request", error
    # the tiny llama's MLP (96 channels) is narrower than the narrowest width the layout states
    assert ("narrower than one" if model == "llama" else "is for Llama models") in str(error["msg"]), error
    code, detail = submit_model(config_client, "llama-wide", export_format="nemotron-nas")
    assert code == 422 and [error["loc"] for error in detail] == [["body", "calibration_file"]], detail


def test_a_sound_llama_config_passes_the_gguf_check(config_client: TestClient) -> None:
    code, detail = submit_model(config_client, "llama-wide", export_format="gguf")
    assert code == 422 and [error["loc"] for error in detail] == [["body", "calibration_file"]], detail


@pytest.mark.parametrize("name", sorted(HOSTILE_GGUF))
def test_a_config_gguf_cannot_write_is_refused_at_submit(config_client: TestClient, name: str) -> None:
    code, detail = submit_model(config_client, f"gguf-{name}", export_format="gguf")
    assert code == 422, detail
    (error,) = detail
    assert error["loc"] == ["body", "model"] and error["type"] == "unsupported_model", error
    assert HOSTILE_GGUF[name][1] in str(error["msg"]) and "\n" not in str(error["msg"]), error
    # the hf export writes the config as it is: the same model is accepted for it
    code, detail = submit_model(config_client, f"gguf-{name}", export_format="hf")
    assert [error["loc"] for error in detail] == [["body", "calibration_file"]], detail
