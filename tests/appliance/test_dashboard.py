"""The shipped Grafana dashboard queries only metrics the appliance's /metrics actually has."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Final

import pytest

from appliance.catalog import ClusterSet
from appliance.metrics import Metrics

from .test_metrics_gate_counts import LISTING, ListingTransport

DASHBOARD: Final = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "sluice.json"

# PromQL words that look like names: aggregation modifiers, binary operators, set operators.
_KEYWORDS: Final = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless", "inf", "nan"}
)
_GROUPING: Final = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, label matchers, grouping labels left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = _GROUPING.sub(" ", text)  # by (model), on (cluster), ...
    names = set()
    for match in _IDENT.finditer(text):
        rest = text[match.end() :].lstrip()
        before = text[: match.start()]
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue  # a function or an aggregation, or a keyword
        if before and (before[-1].isdigit() or before[-1] == "."):
            continue  # the exponent or suffix of a number
        names.add(match.group())
    return names


def dashboard_queries(path: Path = DASHBOARD) -> list[str]:
    document = json.loads(path.read_text())
    return [target["expr"] for panel in document["panels"] for target in panel.get("targets", [])]


def exposed_names(text: str) -> set[str]:
    """Every series name a /metrics page can have: each TYPE'd metric, histograms with their suffixes."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_metric_names_of_promql() -> None:
    assert metric_names('sum by (le, model) (rate(x_bucket{type="a",b=~"c.."}[5m]))') == {"x_bucket"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(y[1m])))") == {"y"}
    assert metric_names("a / clamp_min(sum by (cluster) (b), 1e3) and on (cluster) c offset 5m") == {"a", "b", "c"}


def test_every_dashboard_query_names_an_existing_metric() -> None:
    metrics = Metrics()  # no request yet: every metric has its TYPE line all the same
    clusters = ClusterSet.single(ListingTransport(LISTING), "hpc")  # type: ignore[arg-type]
    page = metrics.render(asyncio.run(metrics.cluster_metrics(clusters))).decode()
    exposed = exposed_names(page)
    queries = dashboard_queries()
    assert len(queries) >= 15
    named = set().union(*(metric_names(q) for q in queries))
    assert all(name.startswith("sluice_") for name in named), named
    assert named - exposed == set()


@pytest.mark.parametrize("expr", dashboard_queries())
def test_dashboard_queries_are_balanced(expr: str) -> None:
    assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
