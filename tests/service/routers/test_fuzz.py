"""Schemathesis fuzzes every operation of the OpenAPI schema in-process: no input may cause a 5xx.

/readyz answers 503 by design when no worker is alive (none is, here), so it is left out.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from service.main import create_app
from service.settings import Settings
from tests.service.conftest import KEY_A

_DATA = Path(tempfile.mkdtemp(prefix="fwdprune-fuzz-"))
app = create_app(
    Settings(data_dir=_DATA / "data", models_dir=_DATA / "models", api_keys=[KEY_A], max_upload_bytes=10_000)
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path="/readyz")


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {KEY_A}"}, checks=[not_a_server_error], excluded_checks=[]
    )
