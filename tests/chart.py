"""The Helm chart as tests/test_chart.py sees it: rendered by ``helm template`` (helm from
.tools/bin, which ``make chart`` installs), each object a dict, and each checked offline
against the Kubernetes schemas that the ``kubernetes-validate`` package bundles.

No cluster: installing the chart into a real one is out of reach here, so the rendered
objects are what is tested.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

__all__ = [
    "CHART",
    "KUBERNETES_VERSIONS",
    "VALUES_FILES",
    "RenderFailed",
    "check_schema",
    "container",
    "env",
    "lint",
    "pod_spec",
    "render",
    "rendering_error",
    "the",
    "the_sources",
]

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "quota-authority"
HELM = ROOT / ".tools" / "bin" / "helm"
# The values files the checks render: each a way the chart is meant to be used.
VALUES_FILES = sorted((CHART / "ci").glob("*.yaml"))
# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest whose
# schemas kubernetes-validate bundles; each rendering is checked against both.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
RELEASE = "qa"

# The ServiceMonitor is a prometheus-operator CRD, whose schema kubernetes-validate does not
# have: this one, written from the operator's monitoring.coreos.com/v1 API reference, holds
# the fields the chart renders and refuses any other, as the Kubernetes schemas do.
_DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
    r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "labels": _STRING_MAP,
                "annotations": _STRING_MAP,
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _STRING_MAP},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                        },
                    },
                },
            },
        },
    },
}


# The PrometheusRule (monitoring.coreos.com/v1), likewise: the fields of an alerting rule
# group as the operator's API reference gives them; a recording rule is not expected.
_ALERTING_RULE = {
    "type": "object",
    "required": ["alert", "expr"],
    "additionalProperties": False,
    "properties": {
        "alert": {"type": "string", "minLength": 1},
        "expr": {"type": "string", "minLength": 1},
        "for": {"type": "string", "pattern": _DURATION},
        "keep_firing_for": {"type": "string", "pattern": _DURATION},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}
PROMETHEUS_RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": SERVICE_MONITOR_SCHEMA["properties"]["metadata"],
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "rules": {"type": "array", "minItems": 1, "items": _ALERTING_RULE},
                        },
                    },
                },
            },
        },
    },
}
_OPERATOR_SCHEMAS = {
    "ServiceMonitor": SERVICE_MONITOR_SCHEMA,
    "PrometheusRule": PROMETHEUS_RULE_SCHEMA,
}


class RenderFailed(AssertionError):
    """``helm template`` refused the values; the message is helm's stderr."""


def _helm(*args: str | Path) -> subprocess.CompletedProcess[str]:
    if not HELM.is_file():
        raise AssertionError(f"{HELM} is missing: run `make chart`, which installs it")
    return subprocess.run(
        [HELM, *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


def _values_args(files: tuple[Path, ...], values: Mapping[str, Any] | None) -> tuple[str, ...]:
    """What a rendering is cached by: the paths of ``files``, then ``values`` as the text of
    one more values file, which helm reads last."""
    text = yaml.safe_dump(dict(values), sort_keys=True) if values else ""
    return (*(str(file) for file in files), text)


@functools.cache
def _template(args: tuple[str, ...], kube_version: str) -> str:
    *files, values = args
    with tempfile.TemporaryDirectory() as folder:
        extra = Path(folder) / "values.yaml"
        extra.write_text(values, encoding="utf-8")
        options = [arg for file in (*files, extra) for arg in ("--values", str(file))]
        done = _helm("template", RELEASE, CHART, "--kube-version", kube_version, *options)
    if done.returncode != 0:
        raise RenderFailed(done.stderr.strip())
    return done.stdout


def render(
    *files: Path,
    values: Mapping[str, Any] | None = None,
    kube_version: str = KUBERNETES_VERSIONS[0],
) -> list[dict[str, Any]]:
    """The objects ``helm template`` renders from ``files`` and then ``values`` (nested
    dicts, as in a values file), in helm's order. Raises ``RenderFailed``."""
    text = _template(_values_args(files, values), kube_version)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def the_sources(*files: Path, values: Mapping[str, Any] | None = None) -> set[str]:
    """The chart's template files that rendered an object from these values."""
    text = _template(_values_args(files, values), KUBERNETES_VERSIONS[0])
    return set(re.findall(r"^# Source: [^/]+/templates/(\S+)$", text, re.MULTILINE))


def rendering_error(*files: Path, values: Mapping[str, Any] | None = None) -> str:
    """helm's message when it refuses to render these values; fails if it renders them."""
    try:
        render(*files, values=values)
    except RenderFailed as refused:
        return str(refused)
    raise AssertionError(f"helm rendered {files} with {values}, expected a refusal")


def lint(*files: Path) -> subprocess.CompletedProcess[str]:
    """``helm lint --strict`` over the chart with these values."""
    options = [arg for file in files for arg in ("--values", str(file))]
    return _helm("lint", "--strict", "--kube-version", KUBERNETES_VERSIONS[0], CHART, *options)


def the(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (named ``name``, when given) among ``objects``."""
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: dict[str, Any]) -> dict[str, Any]:
    """The one container of a Deployment's or Job's pods."""
    (only,) = pod_spec(workload)["containers"]
    result: dict[str, Any] = only
    return result


def env(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's environment, name to its entry (``value`` or ``valueFrom``)."""
    entries = container(workload).get("env", [])
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), f"a variable is set twice: {names}"
    return {entry["name"]: entry for entry in entries}


def check_schema(obj: dict[str, Any], kube_version: str) -> None:
    """Raise if ``obj`` is not valid for that Kubernetes: its kind's strict schema from
    kubernetes-validate (no unknown fields), or, for the prometheus-operator's ServiceMonitor and
    PrometheusRule, SERVICE_MONITOR_SCHEMA and PROMETHEUS_RULE_SCHEMA."""
    if obj.get("kind") in _OPERATOR_SCHEMAS:
        jsonschema.validate(obj, _OPERATOR_SCHEMAS[obj["kind"]])
    else:
        kubernetes_validate.validate(obj, kube_version, strict=True)
