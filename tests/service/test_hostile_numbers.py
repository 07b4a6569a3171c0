"""Numbers too large to handle: an integer past Python's 4,300-digit conversion limit in an upload or a
Range header, and settings past any sensible size. Each is a 4xx naming the field, never a 500 or a job
that fails later."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from service.downloads import requested_range
from service.main import create_app
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
