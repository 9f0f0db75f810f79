"""`{% queue_chart %}`: the queue's last 24 hours as a small server-rendered SVG, on the admin
home page and the queue dashboard. No script and no inline style (the Content Security Policy
allows neither): shapes and their classes only, coloured by css/queue_dashboard.css, each
figure also in a <title> that browsers show on hover and screen readers read."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django import template
from django.utils import timezone

from tasks_admin.stats import hourly_queue

register = template.Library()

WIDTH, HEIGHT = 480, 150
LEFT, RIGHT, TOP, BOTTOM = 34, 6, 8, 20


def _hhmm(moment: datetime) -> str:
    return moment.strftime("%H:%M")


def chart_geometry(hours: dict[str, list[Any]]) -> dict[str, Any]:
    """Bars (jobs that succeeded each hour) and a line (queue depth at the end of each hour)
    on one scale, since both count jobs."""
    ends: list[datetime] = hours["ends"]
    depth: list[int] = hours["depth"]
    done: list[int] = hours["succeeded"]
    top = max(1, *depth, *done)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(ends)
    base = TOP + plot_h

    def y(value: int) -> float:
        return round(base - value / top * plot_h, 1)

    bars, points = [], []
    for i, end in enumerate(ends):
        start = end - timedelta(hours=1)
        bars.append(
            {
                "x": round(LEFT + i * slot + 1, 1),
                "y": y(done[i]),
                "width": round(slot - 2, 1),
                "height": round(base - y(done[i]), 1),
                "title": f"{_hhmm(start)} to {_hhmm(end)} UTC: {done[i]} job(s) succeeded",
            }
        )
        points.append(
            {
                "x": round(LEFT + (i + 1) * slot, 1),
                "y": y(depth[i]),
                "title": f"{_hhmm(end)} UTC: {depth[i]} job(s) waiting",
            }
        )
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right_edge": WIDTH - RIGHT,
        "top": TOP,
        "base": base,
        "label_y": HEIGHT - 6,
        "mid_x": round(LEFT + plot_w / 2, 1),
        "scale_max": top,
        "bars": bars,
        "points": points,
        "polyline": " ".join(f"{p['x']},{p['y']}" for p in points),
        "depth_now": depth[-1],
        "done_total": sum(done),
    }


@register.inclusion_tag("admin/tasks_admin/queue_chart.html")
def queue_chart() -> dict[str, Any]:
    return {"chart": chart_geometry(hourly_queue(timezone.now()))}
