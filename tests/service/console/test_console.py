"""The job console as a person uses it, in a real headless Chromium against a real server and worker on
a tiny model: sign in, submit with a file, watch the stages advance, open the finished job (three sizes,
its pictures and model card), download a size's checkpoint and load it, see a refusal land on its
field, cancel and delete a second job; at a phone's width in dark mode, by keyboard, as an admin, and
on a loopback server without keys. No request leaves the server's origin, and no key is ever in a URL
or a log line."""

from __future__ import annotations

import json
import re
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from service.schemas.jobs import JobCreate
from tests.service.conftest import LONG, QUICK, Server, submit
from tests.service.console.conftest import ADMIN, KEY_A, KEY_B, PHONE, Traffic, open_context, watch

SIZES = "0.2, 0.35, 0.5"
JOB_TIMEOUT_MS = 180_000


@dataclass
class Person:
    """One signed-in browser tab, and what it saw."""

    page: Any
    traffic: Traffic
    shots: Path
    stages_seen: list[str] = field(default_factory=list)

    def shot(self, name: str, full_page: bool = False) -> None:
        self.page.screenshot(path=self.shots / f"{name}.png", full_page=full_page)

    def submit(self, calibration: Path, sizes: str, settings: dict[str, Any]) -> None:
        page = self.page
        page.click("nav >> text=Submit")
        page.wait_for_selector("#submit-form")
        page.set_input_files("[name=calibration_file]", str(calibration))
        page.fill("[name=sparsity]", sizes)
        if settings:
            page.fill("[name=advanced]", json.dumps(settings))
        page.click("#submit-form button[type=submit]")

    def job_id(self) -> str:
        self.page.wait_for_url(re.compile(r"#/jobs/job_"))
        return self.page.url.rsplit("/", 1)[-1]


def sign_in(page: Any, server: Server, key: str) -> None:
    page.goto(server.url + "/")
    page.wait_for_selector("#api-key")
    page.keyboard.type(key)  # the key field has the focus
    page.keyboard.press("Enter")
    page.wait_for_selector("#jobs")


@pytest.fixture(scope="module")
def traffic(console_server: Server) -> Traffic:
    return Traffic(origin=console_server.url)


@pytest.fixture(scope="module")
def person(browser: Any, console_server: Server, traffic: Traffic, screenshots: Path) -> Iterator[Person]:
    context = open_context(browser, console_server, traffic)
    page = watch(context.new_page(), traffic)
    yield Person(page, traffic, screenshots)
    context.close()


def test_sign_in_with_a_key_kept_in_the_tab_only(person: Person, console_server: Server) -> None:
    page = person.page
    page.goto(console_server.url + "/")
    page.wait_for_selector("#api-key")
    person.shot("01-sign-in")
    page.fill("#api-key", "not-a-key-of-this-server-0000")
    page.keyboard.press("Enter")
    expect(page.locator("#api-key-error")).to_contain_text("not accepted")
    page.fill("#api-key", "")
    sign_in(page, console_server, KEY_A)
    assert page.evaluate("sessionStorage.getItem('fwdprune.key')") == KEY_A
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []
    page.reload()  # the tab keeps its key
    page.wait_for_selector("#jobs")
    assert page.locator("#sign-out").is_visible()
    person.shot("02-jobs-empty")


def test_a_refusal_lands_beside_the_field_it_names(person: Person, calibration: Path) -> None:
    page = person.page
    person.submit(calibration, "0.95", {})
    expect(page.locator('[data-field="sparsity"] .error')).to_have_text(
        "Input should be less than or equal to 0.9"
    )
    assert page.locator("[name=calibration_file] ~ progress").evaluate("bar => bar.value") == 1
    assert page.locator('[data-field="model"] .error').inner_text() == ""
    assert page.url.endswith("#/submit")  # no job was made
    unsupported = page.locator("[name=model] option[value=tiny-gpt2]")  # listed by /v1/models, not offered
    assert unsupported.is_disabled() and "not supported" in unsupported.inner_text()
    # the choices are the server's settings model's, read from its schema
    schema = JobCreate.model_json_schema()["properties"]
    for name in ("recover", "export_format", "budget"):
        offered = page.locator(f"[name={name}] option").evaluate_all("options => options.map(o => o.value)")
        assert offered == schema[name]["enum"]
    person.shot("03-submit-error")
    page.fill("[name=sparsity]", "0.3")
    page.fill("[name=advanced]", json.dumps({"seq_len": 4}))
    page.click("#submit-form button[type=submit]")
    expect(page.locator('[data-field="advanced"] .error')).to_contain_text(
        "seq_len: Input should be greater than or equal to 8"
    )
    assert page.locator('[data-field="sparsity"] .error').inner_text() == ""


@pytest.fixture(scope="module")
def finished_job(person: Person, calibration: Path) -> str:
    """A three-size job submitted through the form, its page watched until it has succeeded."""
    page = person.page
    person.submit(calibration, SIZES, QUICK)
    job_id = person.job_id()
    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    running_shot = False
    while time.monotonic() < deadline and page.locator("#summary").count() == 0:
        for stage in page.locator(".timeline li").evaluate_all("items => items.map(i => i.dataset.stage)"):
            if stage not in person.stages_seen:
                person.stages_seen.append(stage)
        if not running_shot and page.locator(".timeline li.running").count():
            person.shot("04-running-job")
            running_shot = True
        time.sleep(0.2)
    page.wait_for_selector("#summary", timeout=5_000)
    page.wait_for_selector("#curve-image", timeout=30_000)
    return job_id


def test_stages_advance_while_the_job_runs(person: Person, finished_job: str) -> None:
    assert len(person.stages_seen) >= 3, person.stages_seen
    assert person.stages_seen[0] == "load" and "scoring" in person.stages_seen
    assert person.page.locator(".badge.succeeded").count() == 1


def test_the_finished_job_shows_its_three_sizes(
    person: Person, finished_job: str, console_server: Server
) -> None:
    page = person.page
    with console_server.client() as api:
        job = api.get(f"/v1/jobs/{finished_job}").json()
        artifacts = api.get(f"/v1/jobs/{finished_job}/artifacts").json()["data"]
    rows = page.locator("#summary tbody tr")
    assert rows.count() == 3
    for index, size in enumerate(job["metrics"]["sizes"]):
        cells = rows.nth(index).locator("td").all_inner_texts()
        assert cells[0] == f"{size['sparsity'] * 100:g}%"
        assert (
            cells[2] == f"{size['perplexity']['before']:.5g}"
            and cells[3] == f"{size['perplexity']['after']:.5g}"
        )
        assert "MiB host" in cells[5] or "GiB host" in cells[5]
    for picture in ("#curve-image", "#layers-image"):
        assert page.locator(picture).evaluate("image => image.complete && image.naturalWidth") > 0
    assert page.locator("#model-card h3").first.inner_text().startswith("tiny-llama")
    shown = page.locator("#artifacts tbody tr").evaluate_all(
        "rows => rows.map(row => [row.cells[0].innerText, row.cells[2].innerText])"
    )
    assert sorted(map(tuple, shown)) == sorted((a["name"], a["sha256"]) for a in artifacts)
    assert {"curve.png", "layers.png", "sparsity-0.35/README.md"} <= {name for name, _ in shown}
    person.shot("05-finished-job", full_page=True)
    page.locator("#summary").scroll_into_view_if_needed()
    page.evaluate("document.querySelector('#results h2').scrollIntoView()")
    person.shot("05-finished-job-sizes")


def test_a_sizes_checkpoint_downloads_in_one_click_and_loads(
    person: Person, finished_job: str, console_server: Server, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    with person.page.expect_download(timeout=60_000) as started:
        person.page.click('button.download[data-size="sparsity-0.35"]')
    download = started.value
    assert download.suggested_filename == f"{finished_job}-sparsity-0.35.tar"
    archive = tmp_path / "checkpoint.tar"
    download.save_as(archive)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert all(name.startswith(f"{finished_job}/sparsity-0.35/") for name in names)
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "unpacked" / finished_job / "sparsity-0.35", trust_remote_code=True
    )
    with console_server.client() as api:
        sizes = api.get(f"/v1/jobs/{finished_job}").json()["metrics"]["sizes"]
        checkpoint = f"/v1/jobs/{finished_job}/checkpoint.tar"
        assert api.get(checkpoint, params={"size": "sparsity-0.9"}).status_code == 404  # a size it has not
        assert api.get(checkpoint, params={"size": "../sparsity-0.35"}).status_code == 422
    assert sum(p.numel() for p in model.parameters()) == sizes[1]["params_after"]


def test_a_second_job_is_cancelled_then_deleted(
    person: Person, calibration: Path, console_server: Server
) -> None:
    page = person.page
    person.submit(calibration, "0.3", LONG)
    job_id = person.job_id()
    page.wait_for_selector('.timeline li.running[data-stage="scoring"]', timeout=JOB_TIMEOUT_MS)
    page.wait_for_selector("#plan table", timeout=30_000)
    page.wait_for_selector("#progress-text:has-text('left')", timeout=30_000)  # the running job's ETA
    person.shot("06-running-job")
    page.click("#cancel-job")
    assert page.locator("#confirm").is_visible()
    page.click("#confirm-ok")
    page.wait_for_selector(".badge.cancelled", timeout=60_000)
    person.shot("07-cancelled-job")
    page.click("#delete-job")
    page.click("#confirm-no")  # kept: asked first
    assert page.locator(".badge.cancelled").is_visible()
    page.click("#delete-job")
    page.click("#confirm-ok")
    page.wait_for_url(re.compile(r"#/jobs$"))
    with console_server.client() as api:
        assert api.get(f"/v1/jobs/{job_id}").status_code == 404


def test_the_jobs_list_shows_progress_and_filters_by_state(
    person: Person, finished_job: str, console_server: Server
) -> None:
    page = person.page
    with console_server.client() as api:
        file_id = api.get("/v1/files").json()["data"][0]["id"]
        running = submit(api, file_id, LONG)["id"]
        page.goto(page.url.split("#")[0] + "#/jobs")
        page.wait_for_selector(f"#jobs a[href='#/jobs/{finished_job}']")
        row = page.locator("#jobs tbody tr", has=page.locator(f"a[href='#/jobs/{running}']"))
        expect(row).to_contain_text("scoring", timeout=JOB_TIMEOUT_MS)  # the list refreshes itself
        expect(row.locator("td").nth(5)).to_contain_text(" s")  # its ETA
        done = page.locator("#jobs tbody tr", has=page.locator(f"a[href='#/jobs/{finished_job}']"))
        assert "tiny-llama" in done.inner_text() and "20%, 35%, 50%" in done.inner_text()
        person.shot("08-jobs-list")
        page.select_option("#status-filter", "running")
        page.wait_for_selector(f"#jobs a[href='#/jobs/{finished_job}']", state="detached")
        assert page.locator(f"#jobs a[href='#/jobs/{running}']").count() == 1
        page.select_option("#status-filter", "succeeded")
        page.wait_for_selector(f"#jobs a[href='#/jobs/{finished_job}']")
        assert page.locator(f"#jobs a[href='#/jobs/{running}']").count() == 0
        page.select_option("#status-filter", "")
        # a job's page polls while it is open, and stops once the person has left it
        page.click(f"#jobs a[href='#/jobs/{running}']")
        page.wait_for_selector(".timeline li.running")
        page.click("nav >> text=Jobs")
        page.wait_for_selector("#jobs")
        polled = sum(f"/v1/jobs/{running}/events" in url for url in person.traffic.urls)
        time.sleep(3)
        assert sum(f"/v1/jobs/{running}/events" in url for url in person.traffic.urls) == polled
        api.post(f"/v1/jobs/{running}/cancel")


@pytest.fixture(scope="module")
def failing_job(console_server: Server) -> str:
    """A job its calibration text is too short for: it fails in the engine with invalid_data."""
    with console_server.client() as api:
        file_id = api.get("/v1/files").json()["data"][0]["id"]
        return str(submit(api, file_id, {**QUICK, "seq_len": 4096, "num_samples": 2000})["id"])


def test_keyboard_reaches_the_views(person: Person, failing_job: str) -> None:
    # failing_job is queued here so that it runs while the tests below do
    page = person.page
    page.goto(page.url.split("#")[0] + "#/jobs")
    page.wait_for_selector("#jobs")
    page.focus(".skip")  # the page's first stop
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.getAttribute('href')") == "#/submit":
            break
    else:
        raise AssertionError("Tab never reached the Submit link")
    page.keyboard.press("Enter")
    page.wait_for_selector("#submit-form")
    assert page.evaluate("document.activeElement.name") == "model"


def test_phone_width_in_dark_mode(
    browser: Any, console_server: Server, traffic: Traffic, finished_job: str, screenshots: Path
) -> None:
    context = open_context(browser, console_server, traffic, color_scheme="dark")
    page = watch(context.new_page(), traffic)
    page.set_viewport_size(PHONE)
    sign_in(page, console_server, KEY_A)
    page.goto(f"{console_server.url}/#/jobs/{finished_job}")
    page.wait_for_selector("#summary")
    page.wait_for_selector("#curve-image")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(21, 23, 27)"
    page.screenshot(path=screenshots / "09-phone-dark.png")
    context.close()


def test_an_admin_sees_every_keys_jobs(
    browser: Any, console_server: Server, traffic: Traffic, finished_job: str
) -> None:
    for key, sees in ((ADMIN, True), (KEY_B, False)):
        context = open_context(browser, console_server, traffic)
        page = watch(context.new_page(), traffic)
        sign_in(page, console_server, key)
        page.wait_for_selector("#jobs table, #jobs p")
        assert (page.locator(f"#jobs a[href='#/jobs/{finished_job}']").count() == 1) is sees
        context.close()


def test_no_sign_in_on_a_loopback_server_without_keys(
    browser: Any, traffic: Traffic, models_dir: Path, tmp_path: Path
) -> None:
    keyless = Server(
        tmp_path / "data",
        models_dir,
        FWDPRUNE_API_KEYS="",
        FWDPRUNE_ADMIN_KEYS="",
        FWDPRUNE_INSECURE_NO_AUTH="true",
    ).start()
    try:
        context = open_context(browser, keyless, Traffic(origin=keyless.url))
        page = watch(context.new_page(), traffic)
        page.goto(keyless.url + "/console")
        page.wait_for_selector("#jobs")
        assert page.locator("#api-key").count() == 0 and not page.locator("#sign-out").is_visible()
        page.click("nav >> text=Submit")
        expect(page.locator("[name=model]")).to_contain_text("tiny-llama")
        context.close()
    finally:
        keyless.stop()


def test_a_failed_job_says_why_in_one_line(person: Person, failing_job: str) -> None:
    page = person.page
    page.goto(page.url.split("#")[0] + f"#/jobs/{failing_job}")
    failure = page.locator(".failure")
    expect(failure).to_contain_text("Failed (invalid_data): DataError: ", timeout=JOB_TIMEOUT_MS)
    assert "\n" not in failure.inner_text() and "Send more text" in failure.inner_text()
    assert page.locator("#delete-job").is_visible() and page.locator("#cancel-job").count() == 0
    person.shot("10-failed-job")


def test_nothing_left_the_origin_and_no_key_in_a_url_or_log(
    person: Person, console_server: Server, traffic: Traffic
) -> None:
    assert traffic.urls and all(url.startswith(console_server.url + "/") for url in traffic.urls)
    assert traffic.foreign == [] and traffic.csp_violations == [] and traffic.page_errors == []
    keys = (KEY_A, KEY_B, ADMIN)
    assert not [url for url in traffic.urls if any(key in url for key in keys)]
    log = (console_server.data_dir.parent / f"server-{console_server.port}.log").read_text(errors="replace")
    assert '"GET /v1/jobs?' in log  # the request lines are there to look at
    assert not [line for line in log.splitlines() if any(key in line for key in keys)]
    page = httpx.get(console_server.url + "/")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "unsafe" not in policy
    assert "connect-src 'self'" in policy and "img-src 'self' data:" in policy
    assert re.findall(r"<script(?![^>]*\bsrc=)", page.text) == []  # no inline script
    assert re.findall(r"\son[a-z]+=", page.text) == []  # no inline handler
    script = httpx.get(console_server.url + "/console/assets/app.js")
    assert script.headers["cache-control"] == "no-cache" and "javascript" in script.headers["content-type"]
