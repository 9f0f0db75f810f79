"""The admin home page and the queue dashboard show the queue's last 24 hours as a small SVG
chart, drawn by the server: queue depth at the end of each hour and the jobs that succeeded
in it, with no script and no inline style."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tasks_admin.models import Job, JobStatus
from tests.test_admin import logged_in

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


def chart(page: str) -> str:
    found = re.search(r'<figure class="queue-chart" id="queue-chart">.*?</figure>', page, re.S)
    assert found, "no queue chart on the page"
    return found.group(0)


def backlog(waiting: int, done_an_hour_ago: int) -> None:
    """`waiting` jobs queued 90 min ago and still waiting; `done_an_hour_ago` jobs that
    started at once 2 h ago and succeeded 70 min ago."""
    for _ in range(waiting):
        Job.objects.create(job_type="transcribe_long", created_at=NOW - 90 * MINUTE)
    for _ in range(done_an_hour_ago):
        Job.objects.create(
            job_type="transcribe_long",
            status=JobStatus.SUCCEEDED,
            created_at=NOW - 2 * HOUR,
            started_at=NOW - 2 * HOUR,
            finished_at=NOW - 70 * MINUTE,
        )


@pytest.mark.parametrize("page", ["admin:index", "admin:tasks_admin_queue_dashboard"])
def test_the_chart_shows_each_hours_depth_and_jobs_succeeded(root, page):
    backlog(waiting=3, done_an_hour_ago=2)

    with time_machine.travel(NOW, tick=False):
        response = logged_in(root).get(reverse(page))

    assert response.status_code == 200
    svg = chart(response.content.decode())
    assert len(re.findall(r"<rect ", svg)) == 24 and len(re.findall(r"<circle ", svg)) == 24
    depths = re.findall(r"<title>(\d\d:\d\d) UTC: (\d+) job\(s\) waiting</title>", svg)
    assert depths[-3:] == [("10:00", "0"), ("11:00", "3"), ("12:00", "3")]
    assert sum(int(n) for _, n in depths) == 6
    done = re.findall(
        r"<title>(\d\d:\d\d) to (\d\d:\d\d) UTC: (\d+) job\(s\) succeeded</title>", svg
    )
    assert [d for d in done if d[2] != "0"] == [("10:00", "11:00", "2")]
    assert "3 waiting now, 2 succeeded" in svg
    assert "style=" not in svg and "<script" not in svg


def test_an_empty_queue_draws_a_flat_chart(root):
    with time_machine.travel(NOW, tick=False):
        svg = chart(logged_in(root).get(reverse("admin:index")).content.decode())

    assert "0 waiting now, 0 succeeded" in svg
    bars = re.findall(r'<rect x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)"', svg)
    assert len(bars) == 24 and {height for _, height in bars} == {"0.0"}


def test_the_chart_costs_the_same_queries_whatever_the_queue_holds(root):
    client = logged_in(root)
    url = reverse("admin:index")
    with time_machine.travel(NOW, tick=False):
        backlog(waiting=1, done_an_hour_ago=1)
        with CaptureQueriesContext(connection) as few:
            client.get(url)
        backlog(waiting=40, done_an_hour_ago=40)
        with CaptureQueriesContext(connection) as many:
            response = client.get(url)

    assert len(many) == len(few)
    assert "41 waiting now, 41 succeeded" in chart(response.content.decode())
