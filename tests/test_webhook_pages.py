"""Webhooks where people see them: the account page's forms, the run page's delivery log,
the admin's redeliver action; and what a run that ends queues, in-process."""

from __future__ import annotations

import json

import pytest
from django.db import transaction
from django.test import Client

from tasks_admin.models import Job, JobStatus
from tests.conftest import queued_run
from transcription.events import publish_finished
from transcription.models import RunStatus, TranscriptRun
from webhooks.deliveries import JOB_TYPE_WEBHOOK, WEBHOOK_JOB_PRIORITY
from webhooks.models import DeliveryAttempt, WebhookDelivery, WebhookEndpoint, WebhookSecret

pytestmark = pytest.mark.django_db


@pytest.fixture
def page_client(alice, settings) -> Client:  # type: ignore[no-untyped-def]
    settings.CALLBACK_ALLOWED_HOSTS = ["hooks.example"]
    client = Client()
    client.force_login(alice.user)
    return client


def post(client: Client, **form: object) -> str:
    response = client.post("/accounts/token/", form, follow=True)
    assert response.status_code == 200
    return response.content.decode()


def test_the_account_page_adds_lists_and_removes_endpoints(page_client, alice):
    page = post(
        page_client,
        action="add-endpoint",
        url="https://hooks.example/in",
        events=["run.failed", "run.succeeded"],
        description="ops",
    )
    assert "The endpoint was added." in page
    (endpoint,) = WebhookEndpoint.objects.filter(owner=alice.user)
    assert endpoint.events == ["run.succeeded", "run.failed"]
    assert "https://hooks.example/in" in page_client.get("/accounts/token/").content.decode()

    page = post(
        page_client, action="add-endpoint", url="http://127.0.0.1:6379/", events=["run.failed"]
    )
    assert "The endpoint was not added" in page and "private" in page
    page = post(page_client, action="add-endpoint", url="https://hooks.example/x", events=[])
    assert "The endpoint was not added" in page
    assert WebhookEndpoint.objects.count() == 1

    post(page_client, action="delete-endpoint", endpoint="not-a-uuid")
    assert WebhookEndpoint.objects.count() == 1
    assert "The endpoint was removed." in post(
        page_client, action="delete-endpoint", endpoint=str(endpoint.pk)
    )
    assert not WebhookEndpoint.objects.exists()


def test_someone_elses_endpoint_cannot_be_removed(page_client, bob):
    theirs = WebhookEndpoint.objects.create(
        owner=bob.user, url="https://hooks.example/b", events=["run.failed"]
    )
    post(page_client, action="delete-endpoint", endpoint=str(theirs.pk))
    assert WebhookEndpoint.objects.filter(pk=theirs.pk).exists()


def test_the_account_page_shows_and_rotates_the_signing_secret(page_client, alice):
    page = page_client.get("/accounts/token/").content.decode()
    secret = WebhookSecret.objects.get(user=alice.user).secret
    assert secret in page

    assert "A new signing secret was made" in post(page_client, action="rotate-secret")
    rotated = WebhookSecret.objects.get(user=alice.user).secret
    assert rotated != secret and rotated.startswith("whsec_")


def finish(run_id: str, status: str = RunStatus.SUCCEEDED) -> TranscriptRun:
    with transaction.atomic():
        TranscriptRun.objects.filter(pk=run_id).update(status=status)
        run = TranscriptRun.objects.get(pk=run_id)
        publish_finished(run)
    return run


def test_a_run_that_ends_queues_one_delivery_job_per_destination(alice, settings):
    settings.CALLBACK_ALLOWED_HOSTS = ["hooks.example"]
    WebhookEndpoint.objects.create(
        owner=alice.user, url="https://hooks.example/all", events=["run.failed"]
    )
    WebhookEndpoint.objects.create(
        owner=alice.user, url="https://hooks.example/ok", events=["run.succeeded"]
    )
    run = queued_run(alice.client, callbackUrl="https://hooks.example/cb")

    finish(run["runId"], RunStatus.FAILED)

    deliveries = WebhookDelivery.objects.filter(run_id=run["runId"]).order_by("url")
    assert [(d.url, d.event) for d in deliveries] == [
        ("https://hooks.example/all", "run.failed"),
        ("https://hooks.example/cb", "run.failed"),
    ]
    (body,) = {d.payload for d in deliveries}  # one body for all destinations of an event
    assert json.loads(body)["data"]["status"] == "failed"
    assert len({d.message_id for d in deliveries}) == 2
    jobs = Job.objects.filter(job_type=JOB_TYPE_WEBHOOK)
    assert {(j.status, j.priority, j.run_id, j.max_attempts) for j in jobs} == {
        (JobStatus.QUEUED, WEBHOOK_JOB_PRIORITY, None, len(settings.WEBHOOK_RETRY_DELAYS) + 1)
    }


def test_a_run_rolled_back_before_its_end_commits_queues_nothing(alice, settings):
    settings.CALLBACK_ALLOWED_HOSTS = ["hooks.example"]
    run = queued_run(alice.client, callbackUrl="https://hooks.example/cb")

    with pytest.raises(RuntimeError), transaction.atomic():
        finish(run["runId"])
        raise RuntimeError("the end did not commit")

    assert not WebhookDelivery.objects.exists()
    assert not Job.objects.filter(job_type=JOB_TYPE_WEBHOOK).exists()


def test_the_run_page_lists_its_deliveries_and_their_attempts(page_client, alice):
    run = queued_run(alice.client, callbackUrl="https://hooks.example/cb")
    finish(run["runId"])
    delivery = WebhookDelivery.objects.get(run_id=run["runId"])
    DeliveryAttempt.objects.create(
        delivery=delivery, status_code=503, duration_ms=12, succeeded=False, response_excerpt="busy"
    )

    page = page_client.get(f"/runs/{run['runId']}/").content.decode()

    assert "Webhook deliveries" in page
    assert "https://hooks.example/cb" in page and "HTTP 503" in page and "busy" in page


def test_the_admin_redelivers_a_finished_delivery_and_leaves_a_pending_one(root, alice, settings):
    settings.CALLBACK_ALLOWED_HOSTS = ["hooks.example"]
    run = queued_run(alice.client, callbackUrl="https://hooks.example/cb")
    finish(run["runId"])
    delivery = WebhookDelivery.objects.get(run_id=run["runId"])
    admin = Client()
    admin.force_login(root.user)
    changelist = "/admin/webhooks/webhookdelivery/"
    action = {"action": "redeliver_deliveries", "_selected_action": [str(delivery.pk)]}

    page = admin.post(changelist, action, follow=True).content.decode()
    assert "still had attempts coming" in page
    assert Job.objects.filter(job_type=JOB_TYPE_WEBHOOK).count() == 1

    Job.objects.filter(pk=delivery.job_id).update(status=JobStatus.FAILED)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status="failed")
    page = admin.post(changelist, action, follow=True).content.decode()
    assert "queued again" in page
    delivery.refresh_from_db()
    assert delivery.status == "pending"
    assert Job.objects.filter(job_type=JOB_TYPE_WEBHOOK, status=JobStatus.QUEUED).count() == 1
    assert admin.get(f"{changelist}{delivery.pk}/change/").status_code == 200
