"""What the alerting rules and the dashboard ask Prometheus for: the quota_authority metric
names, label names and label values their PromQL names, read with regular expressions.

Enough PromQL for the queries of deploy/prometheus and deploy/grafana, and no more: a
selector is a ``quota_authority_…`` name with an optional ``{…}`` of matchers
(``label op "value"``); grouping and matching clauses are ``by``, ``without``, ``on``,
``ignoring``, ``group_left`` and ``group_right`` with a parenthesised list of labels. Grafana's
variables (``$job``, ``$__rate_interval``) are left in place: a matcher whose value holds one
is checked by its label name only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ALERT_RULES",
    "DASHBOARD",
    "RULE_TESTS",
    "Matcher",
    "Query",
    "alerting_rules",
    "dashboard",
    "dashboard_queries",
    "parse",
]

ROOT = Path(__file__).resolve().parents[1]
ALERT_RULES = ROOT / "deploy" / "prometheus" / "quota-authority.rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests"
DASHBOARD = ROOT / "deploy" / "grafana" / "quota-authority.json"

_SELECTOR = re.compile(r"\b(quota_authority_[a-z_]+)\b\s*(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


@dataclass(frozen=True)
class Matcher:
    """``label op "value"`` in a selector of ``metric``."""

    metric: str
    label: str
    op: str
    value: str

    @property
    def exact(self) -> bool:
        """An equality (``=``, ``!=``) with a literal value: that value must be served."""
        return self.op in ("=", "!=") and "$" not in self.value


@dataclass(frozen=True)
class Query:
    """One PromQL expression: the metrics it selects, its matchers, and the labels its
    grouping and matching clauses name."""

    expr: str
    metrics: frozenset[str]
    matchers: tuple[Matcher, ...]
    grouping: frozenset[str]


def parse(expr: str) -> Query:
    metrics: set[str] = set()
    matchers: list[Matcher] = []
    for selector in _SELECTOR.finditer(expr):
        metric, inside = selector.group(1), selector.group(2) or ""
        metrics.add(metric)
        matchers.extend(Matcher(metric, *m.groups()) for m in _MATCHER.finditer(inside))
    grouping = {
        label.strip()
        for clause in _CLAUSE.finditer(expr)
        for label in clause.group(1).split(",")
        if label.strip()
    }
    return Query(expr, frozenset(metrics), tuple(matchers), frozenset(grouping))


def alerting_rules() -> list[dict[str, Any]]:
    """Every alerting rule of the rule file, in its order."""
    document = yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def dashboard_queries() -> list[str]:
    """Every target's expr of every panel of the dashboard."""
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]
