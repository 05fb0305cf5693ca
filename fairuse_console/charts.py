"""Server-rendered SVG charts of a subject's hourly activity (matplotlib, no JavaScript).

Each chart is returned as a ``data:`` URI for an ``<img>``, so the SVGs'
element ids never clash on one page. Titles and legends are written in the
page's language by the template, so the charts carry numbers and dates only
and matplotlib never needs a CJK font.
"""

from __future__ import annotations

import base64
from datetime import UTC, tzinfo
from io import BytesIO

import matplotlib

matplotlib.use("svg")

from matplotlib.dates import DateFormatter, DayLocator  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from detector.review.activity import GAP_LABELS, ActivitySeries  # noqa: E402

_STYLE = {"svg.fonttype": "none", "font.size": 8, "axes.spines.top": False, "axes.spines.right": False}
_COLOURS = ("#2b6cb0", "#c05621", "#2f855a")
# Line colours of the distinct-values chart; static/console.css colours the legend the same.
DISTINCT_COLOURS = {"networks": _COLOURS[0], "countries": _COLOURS[1], "user_agents": _COLOURS[2]}


def activity_charts(series: ActivitySeries, zone: tzinfo = UTC) -> dict[str, str]:
    """Return the case page's charts as SVG data URIs: requests, cost, distinct values and gaps.

    Days on the time axes start at midnight in ``zone``.
    """
    with matplotlib.rc_context(_STYLE):
        return {
            "requests": _hourly_bars(series, series.requests, _COLOURS[0], zone),
            "cost": _hourly_bars(series, series.cost, _COLOURS[1], zone),
            "distinct": _distinct_lines(series, zone),
            "gaps": _gap_histogram(series),
        }


def _figure() -> tuple[Figure, object]:
    figure = Figure(figsize=(7.2, 2.0), layout="constrained")
    return figure, figure.add_subplot()


def _time_axis(axes, zone: tzinfo) -> None:
    axes.xaxis.set_major_locator(DayLocator(tz=zone))
    axes.xaxis.set_major_formatter(DateFormatter("%m-%d", tz=zone))
    axes.grid(axis="y", color="#e2e8f0", linewidth=0.6)


def _hourly_bars(series: ActivitySeries, values, colour: str, zone: tzinfo) -> str:
    figure, axes = _figure()
    axes.bar(series.hours.to_pydatetime(), values, width=1 / 24, color=colour, align="edge")
    _time_axis(axes, zone)
    return _data_uri(figure)


def _distinct_lines(series: ActivitySeries, zone: tzinfo) -> str:
    figure, axes = _figure()
    hours = series.hours.to_pydatetime()
    for name, colour in DISTINCT_COLOURS.items():
        axes.step(hours, getattr(series, name), where="post", color=colour, linewidth=1.1)
    axes.yaxis.get_major_locator().set_params(integer=True)
    _time_axis(axes, zone)
    return _data_uri(figure)


def _gap_histogram(series: ActivitySeries) -> str:
    figure, axes = _figure()
    axes.bar(range(len(GAP_LABELS)), series.gaps, color=_COLOURS[2])
    axes.set_xticks(range(len(GAP_LABELS)), GAP_LABELS)
    axes.grid(axis="y", color="#e2e8f0", linewidth=0.6)
    return _data_uri(figure)


def _data_uri(figure: Figure) -> str:
    buffer = BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode()
