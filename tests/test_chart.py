"""The Helm chart (deploy/helm/quota-authority) renders what operators rely on: pods that
start on a migrated schema, are probed on the gRPC health service, stop within their grace
period, run restricted, read only settings the server declares, take their secrets from
Secrets, and are reached through a headless Service; values that cannot work are refused
with a message naming them.

``make chart`` runs this module (it installs helm into .tools/bin); ``make test`` leaves it
out (marker ``chart``). Nothing here reaches a cluster: the rendered objects are checked, each
against the Kubernetes schemas (``chart.check_schema``).
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart import (
    CHART,
    KUBERNETES_VERSIONS,
    VALUES_FILES,
    check_schema,
    container,
    env,
    lint,
    pod_spec,
    render,
    rendering_error,
    the,
    the_sources,
)

from quota_authority.server import SERVICE_NAME
from quota_authority.settings import load_settings, variables

pytestmark = pytest.mark.chart

ROOT = Path(__file__).resolve().parents[1]
ALERT_RULES = ROOT / "deploy" / "prometheus" / "quota-authority.rules.yaml"
REQUIRED = CHART / "ci" / "required-values.yaml"
SECURED = CHART / "ci" / "secured-values.yaml"
FULLNAME = "qa-quota-authority"
POLICY = "[starter_pack]\nsize = 500\n"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["appVersion"]


def values_id(path: Path) -> str:
    return path.stem


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in ("Deployment", "Job")]


# --- the chart is well-formed -----------------------------------------------------------


def test_the_values_files_exist_and_cover_every_template() -> None:
    templates = {p.name for p in (CHART / "templates").glob("*.yaml")}

    rendered = set().union(*(the_sources(values) for values in VALUES_FILES))

    assert templates and rendered == templates, f"no values file renders {templates - rendered}"


@pytest.mark.parametrize("values", VALUES_FILES, ids=values_id)
def test_helm_lint_strict_passes(values: Path) -> None:
    done = lint(values)

    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", VALUES_FILES, ids=values_id)
def test_every_rendered_object_is_valid_for_kubernetes(values: Path, kube_version: str) -> None:
    objects = render(values, kube_version=kube_version)

    assert objects
    for obj in objects:
        check_schema(obj, kube_version)


def test_the_schema_check_refuses_an_unknown_field_and_a_wrong_type() -> None:
    deployment = the(render(REQUIRED), "Deployment")
    container(deployment)["readinessProbes"] = container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        check_schema(deployment, KUBERNETES_VERSIONS[0])

    deployment = the(render(REQUIRED), "Deployment")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        check_schema(deployment, KUBERNETES_VERSIONS[0])

    monitor = the(render(SECURED), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = monitor["spec"]["endpoints"][0]["interval"]
    with pytest.raises(jsonschema.ValidationError):
        check_schema(monitor, KUBERNETES_VERSIONS[0])

    monitor = the(render(SECURED), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        check_schema(monitor, KUBERNETES_VERSIONS[0])

    rule = the(render(SECURED), "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["fore"] = "5m"
    with pytest.raises(jsonschema.ValidationError):
        check_schema(rule, KUBERNETES_VERSIONS[0])


@pytest.mark.parametrize("values", VALUES_FILES, ids=values_id)
def test_every_object_has_the_recommended_labels(values: Path) -> None:
    for obj in render(values):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "quota-authority"
        assert labels["app.kubernetes.io/instance"] == "qa"
        assert labels["app.kubernetes.io/version"] == APP_VERSION
        assert labels["app.kubernetes.io/component"] in ("server", "migration")
        assert labels["app.kubernetes.io/part-of"] == "quota-authority"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_the_image_is_the_repository_at_the_app_version_which_is_the_package_version() -> None:
    package = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

    assert package["project"]["version"] == APP_VERSION
    for workload in workloads(render(REQUIRED)):
        assert container(workload)["image"] == f"quota-authority:{APP_VERSION}"
    tagged = render(REQUIRED, values={"image": {"repository": "registry.example/qa", "tag": "7"}})
    for workload in workloads(tagged):
        assert container(workload)["image"] == "registry.example/qa:7"


# --- probes and listening -----------------------------------------------------------------


def test_readiness_and_startup_probe_the_grpc_health_service_on_the_grpc_port() -> None:
    server = container(the(render(REQUIRED), "Deployment"))

    grpc_port = next(p["containerPort"] for p in server["ports"] if p["name"] == "grpc")
    assert grpc_port == 50051
    for probe in (server["readinessProbe"], server["startupProbe"]):
        assert probe["grpc"] == {"port": grpc_port, "service": SERVICE_NAME}


def test_liveness_is_a_tcp_check_so_a_database_outage_restarts_no_replica() -> None:
    """Health reports NOT_SERVING while the database is down; restarting every replica for
    that would not help (docs/operations.md, Health checks)."""
    server = container(the(render(REQUIRED), "Deployment"))

    assert server["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    assert "grpc" not in server["livenessProbe"]


def test_with_tls_on_the_port_the_probes_check_tcp_as_the_kubelet_speaks_no_tls() -> None:
    server = container(the(render(SECURED), "Deployment"))

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["tcpSocket"] == {"port": "grpc"}
        assert "grpc" not in server[probe]


def test_a_probe_with_a_handler_of_its_own_replaces_the_charts() -> None:
    exec_probe = {"exec": {"command": ["quota-authority", "health"]}, "periodSeconds": 5}

    server = container(
        the(render(SECURED, values={"probes": {"readiness": exec_probe}}), "Deployment")
    )

    assert server["readinessProbe"]["exec"] == exec_probe["exec"]
    assert server["readinessProbe"]["periodSeconds"] == 5
    assert not {"grpc", "tcpSocket"} & set(server["readinessProbe"])


def test_the_timings_of_a_probe_come_from_the_values() -> None:
    values = {"probes": {"readiness": {"periodSeconds": 7, "failureThreshold": 4}}}

    probe = container(the(render(REQUIRED, values=values), "Deployment"))["readinessProbe"]

    assert probe["periodSeconds"] == 7
    assert probe["failureThreshold"] == 4
    assert probe["grpc"]["service"] == SERVICE_NAME


@pytest.mark.parametrize("values", VALUES_FILES, ids=values_id)
def test_the_server_listens_on_every_interface_on_the_grpc_port(values: Path) -> None:
    variables_ = env(the(render(values), "Deployment"))

    assert variables_["QUOTA_AUTHORITY_LISTEN"]["value"] == "0.0.0.0:50051"


# --- stopping ------------------------------------------------------------------------------


def seconds(variables_: dict[str, dict[str, Any]], name: str) -> float:
    return float(variables_[name]["value"])


def pre_stop_sleep(deployment: dict[str, Any]) -> int:
    """Seconds the preStop hook sleeps; 0 without one."""
    pre_stop = container(deployment).get("lifecycle", {}).get("preStop")
    return int(pre_stop["sleep"]["seconds"]) if pre_stop else 0


@pytest.mark.parametrize(
    "shutdown",
    [
        {},
        {"drainDelaySeconds": 0, "graceSeconds": 0},
        {"drainDelaySeconds": 2.5, "graceSeconds": 10.2},
        {"preStopSleepSeconds": 1.5, "drainDelaySeconds": 30, "graceSeconds": 30},
        {"preStopSleepSeconds": 4, "marginSeconds": 0},
        {"preStopSleepSeconds": "2", "drainDelaySeconds": "4", "graceSeconds": "8.5"},
    ],
    ids=["defaults", "none", "fractions", "prestop-fraction", "no-margin", "quoted"],
)
def test_termination_grace_covers_the_prestop_sleep_the_drain_and_the_grace(
    shutdown: dict[str, float | str],
) -> None:
    margin = float(shutdown.get("marginSeconds", 5))

    deployment = the(render(REQUIRED, values={"shutdown": shutdown}), "Deployment")

    variables_ = env(deployment)
    drain = seconds(variables_, "QUOTA_AUTHORITY_DRAIN_DELAY_S")
    grace = seconds(variables_, "QUOTA_AUTHORITY_SHUTDOWN_GRACE_S")
    assert drain == float(shutdown.get("drainDelaySeconds", 6))
    assert grace == float(shutdown.get("graceSeconds", 10))
    slept = pre_stop_sleep(deployment)
    assert slept == math.ceil(float(shutdown.get("preStopSleepSeconds", 0)))
    termination = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert isinstance(termination, int)
    assert termination >= slept + drain + grace + margin
    assert termination < slept + drain + grace + margin + 1


def test_without_a_prestop_sleep_there_is_no_prestop_hook() -> None:
    server = container(the(render(REQUIRED), "Deployment"))

    assert "lifecycle" not in server


@pytest.mark.parametrize("values", VALUES_FILES, ids=values_id)
def test_each_values_file_leaves_time_for_the_drain_and_the_grace(values: Path) -> None:
    deployment = the(render(values), "Deployment")

    variables_ = env(deployment)
    needed = (
        pre_stop_sleep(deployment)
        + seconds(variables_, "QUOTA_AUTHORITY_DRAIN_DELAY_S")
        + seconds(variables_, "QUOTA_AUTHORITY_SHUTDOWN_GRACE_S")
    )
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= needed + 1


# --- security -------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES, ids=values_id)
def test_the_server_and_the_migration_run_restricted(values: Path) -> None:
    for workload in workloads(render(values)):
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        context = container(workload)["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == 10001
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        tmp = next(m for m in container(workload)["volumeMounts"] if m["mountPath"] == "/tmp")
        volume = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
        assert "emptyDir" in volume


def test_rendering_fails_clearly_without_an_auth_choice() -> None:
    message = rendering_error(values={"database": {"existingSecret": "db"}})

    assert "auth.callers.existingSecret" in message
    assert "auth.allowUnauthenticatedRemote=true" in message
    assert "0.0.0.0" in message


def test_rendering_fails_clearly_with_both_auth_choices() -> None:
    message = rendering_error(REQUIRED, values={"auth": {"callers": {"existingSecret": "callers"}}})

    assert "choose one" in message


def test_rendering_fails_clearly_without_a_database_secret() -> None:
    message = rendering_error(values={"auth": {"allowUnauthenticatedRemote": True}})

    assert "database.existingSecret" in message


def test_rendering_fails_clearly_for_a_client_ca_without_a_certificate() -> None:
    message = rendering_error(REQUIRED, values={"tls": {"clientCA": {"existingSecret": "ca"}}})

    assert "tls.existingSecret" in message


def test_rendering_fails_clearly_for_a_service_monitor_without_metrics() -> None:
    values = {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}

    assert "metrics.enabled" in rendering_error(REQUIRED, values=values)


def test_rendering_fails_clearly_for_a_prometheus_rule_without_metrics() -> None:
    values = {"metrics": {"enabled": False, "prometheusRule": {"enabled": True}}}

    message = rendering_error(REQUIRED, values=values)
    assert "metrics.prometheusRule.enabled" in message and "metrics.enabled" in message


def test_unauthenticated_serving_is_said_by_its_variable_either_way() -> None:
    """Written "false" with callers too: the image's own default is "true"."""
    variable = "QUOTA_AUTHORITY_ALLOW_UNAUTHENTICATED_REMOTE"
    assert env(the(render(REQUIRED), "Deployment"))[variable] == {
        "name": variable,
        "value": "true",
    }
    assert env(the(render(SECURED), "Deployment"))[variable] == {
        "name": variable,
        "value": "false",
    }


# --- settings, secrets and files ---------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES, ids=values_id)
def test_every_environment_variable_is_a_setting_the_server_declares(values: Path) -> None:
    declared = {variable.name for variable in variables().values()}

    for workload in workloads(render(values)):
        unknown = set(env(workload)) - declared
        assert not unknown, f"{workload['metadata']['name']} sets {unknown}"


def mounted_file(workload: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The volume that holds the file at ``path`` in the container, and its key there."""
    folder, _, name = path.rpartition("/")
    (mount,) = [m for m in container(workload)["volumeMounts"] if m["mountPath"] == folder]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
    source = volume.get("secret") or volume["configMap"]
    (item,) = [item for item in source["items"] if item["path"] == name]
    return volume, item["key"]


def database_secret(workload: dict[str, Any]) -> dict[str, str]:
    reference: dict[str, str] = env(workload)["QUOTA_AUTHORITY_DATABASE_URL"]["valueFrom"][
        "secretKeyRef"
    ]
    return reference


def test_the_database_url_comes_from_its_secret_for_the_server_and_the_migration() -> None:
    objects = render(REQUIRED)

    expected = {"name": "quota-authority-database", "key": "url"}
    assert database_secret(the(objects, "Deployment")) == expected
    assert database_secret(the(objects, "Job")) == expected


def test_the_migration_may_connect_as_the_owner_and_the_server_as_a_runtime_role() -> None:
    objects = render(SECURED)

    assert database_secret(the(objects, "Deployment")) == {
        "name": "quota-authority-database",
        "key": "dsn",
    }
    assert database_secret(the(objects, "Job")) == {
        "name": "quota-authority-database-owner",
        "key": "url",
    }


def test_callers_and_tls_files_are_mounted_from_their_secrets() -> None:
    server = the(render(SECURED), "Deployment")
    variables_ = env(server)

    for name, secret, key in [
        ("QUOTA_AUTHORITY_CALLERS_FILE", "quota-authority-callers", "callers.toml"),
        ("QUOTA_AUTHORITY_TLS_CERT_FILE", "quota-authority-tls", "tls.crt"),
        ("QUOTA_AUTHORITY_TLS_KEY_FILE", "quota-authority-tls", "tls.key"),
        ("QUOTA_AUTHORITY_TLS_CLIENT_CA_FILE", "quota-authority-client-ca", "ca.crt"),
    ]:
        volume, mounted_key = mounted_file(server, variables_[name]["value"])
        assert volume["secret"]["secretName"] == secret, name
        assert mounted_key == key, name


def test_the_policy_reaches_the_pods_from_its_config_map() -> None:
    objects = render(REQUIRED, values={"policy": POLICY})
    server = the(objects, "Deployment")

    volume, key = mounted_file(server, env(server)["QUOTA_AUTHORITY_CONFIG"]["value"])
    config_map = the(objects, "ConfigMap", volume["configMap"]["name"])
    assert config_map["data"][key] == POLICY


def test_without_a_policy_the_built_in_defaults_apply() -> None:
    objects = render(REQUIRED)

    assert not [o for o in objects if o["kind"] == "ConfigMap"]
    assert "QUOTA_AUTHORITY_CONFIG" not in env(the(objects, "Deployment"))


def policy_checksum(values: dict[str, Any]) -> str | None:
    template = the(render(REQUIRED, values=values), "Deployment")["spec"]["template"]
    annotation: str | None = template["metadata"].get("annotations", {}).get("checksum/policy")
    return annotation


def test_a_changed_policy_changes_the_pods_checksum_so_they_roll_out() -> None:
    before = policy_checksum({"policy": POLICY})

    assert before is not None
    assert policy_checksum({"policy": POLICY}) == before
    assert policy_checksum({"policy": POLICY.replace("500", "400")}) != before


def test_without_rollout_on_change_a_changed_policy_leaves_the_pods_for_a_sighup() -> None:
    assert policy_checksum({"policy": POLICY, "policyRolloutOnChange": False}) is None


def test_further_settings_pass_through_env_as_the_server_reads_them() -> None:
    variables_ = env(the(render(SECURED), "Deployment"))

    assert variables_["QUOTA_AUTHORITY_LOG_LEVEL"]["value"] == "WARNING"
    assert variables_["QUOTA_AUTHORITY_DB_POOL_SIZE"]["value"] == "20"
    assert variables_["QUOTA_AUTHORITY_MAX_MESSAGE_BYTES"]["value"] == "4194304"
    assert variables_["QUOTA_AUTHORITY_DISTRIBUTE"]["value"] == "true"
    assert variables_["QUOTA_AUTHORITY_MAX_CONNECTION_AGE_S"]["value"] == "300"


def test_a_null_in_env_unsets_a_default_of_the_chart() -> None:
    plaintext = CHART / "ci" / "callers-plaintext-values.yaml"

    assert "QUOTA_AUTHORITY_MAX_CONNECTION_AGE_S" not in env(the(render(plaintext), "Deployment"))


def test_a_variable_the_chart_sets_is_refused_in_env() -> None:
    """Each is set from a value of the chart's, so that it and what depends on it (mounts,
    ports, the termination grace period) cannot disagree."""
    given = {
        *yaml.safe_load(SECURED.read_text(encoding="utf-8"))["env"],
        *yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))["env"],
    }
    chart_set = (
        set(env(the(render(SECURED), "Deployment"))) | set(env(the(render(REQUIRED), "Deployment")))
    ) - given

    assert "QUOTA_AUTHORITY_DRAIN_DELAY_S" in chart_set
    for name in sorted(chart_set):
        message = rendering_error(REQUIRED, values={"env": {name: "1"}})
        assert f"env.{name}: the chart sets it from" in message


def test_an_env_value_that_is_no_scalar_is_refused() -> None:
    message = rendering_error(REQUIRED, values={"env": {"QUOTA_AUTHORITY_LOG_LEVEL": ["INFO"]}})

    assert "env.QUOTA_AUTHORITY_LOG_LEVEL: expected a string, number or boolean" in message


def test_the_rendered_settings_are_ones_the_server_accepts(tmp_path: Path) -> None:
    """The server's own check (settings.load_settings) passes on each container's
    environment, with the mounted files in place: 0.0.0.0 with callers whose tokens travel
    over TLS or an encrypting mesh, or without callers at all."""
    contents = {
        "QUOTA_AUTHORITY_CONFIG": POLICY,
        "QUOTA_AUTHORITY_CALLERS_FILE": '[[callers]]\nname = "invitation-service"\n'
        'roles = ["outreach"]\ntoken = "a-token-of-at-least-16-characters"\n',
    }
    for values in VALUES_FILES:
        for workload in workloads(render(values, values={"policy": POLICY})):
            environ = {}
            for name, entry in env(workload).items():
                value = entry.get("value", "postgresql://quota@database/quota_authority")
                if value.startswith("/etc/quota-authority/"):
                    file = tmp_path / value.removeprefix("/")
                    file.parent.mkdir(parents=True, exist_ok=True)
                    file.write_text(contents.get(name, ""), encoding="utf-8")
                    value = str(file)
                environ[name] = value

            settings = load_settings(environ)

            assert settings.database_url == "postgresql://quota@database/quota_authority"
            if workload["kind"] == "Deployment":
                assert settings.listen == "0.0.0.0:50051"
                assert settings.policy.starter_pack_size == 500


# --- Services, the migration, scaling, metrics --------------------------------------------------


def test_the_headless_service_resolves_to_every_server_pod() -> None:
    objects = render(REQUIRED)
    pods = the(objects, "Deployment")["spec"]["selector"]["matchLabels"]

    headless = the(objects, "Service", f"{FULLNAME}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == pods
    assert headless["spec"]["ports"] == [
        {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP"}
    ]
    service = the(objects, "Service", FULLNAME)
    assert service["spec"].get("clusterIP") != "None"
    assert service["spec"]["selector"] == pods


def test_the_migration_is_a_pre_install_and_pre_upgrade_hook_job() -> None:
    objects = render(SECURED)
    job = the(objects, "Job")

    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    assert container(job)["args"] == ["migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    # Citus: a distributed schema is distributed by the migration too.
    assert env(job)["QUOTA_AUTHORITY_DISTRIBUTE"]["value"] == "true"
    # It reads no files the release has not created yet (the policy ConfigMap, say).
    assert [m["mountPath"] for m in container(job)["volumeMounts"]] == ["/tmp"]


def test_the_migration_pods_are_not_the_servers() -> None:
    objects = render(SECURED)
    pods = the(objects, "Deployment")["spec"]["selector"]["matchLabels"]

    labels = the(objects, "Job")["spec"]["template"]["metadata"]["labels"]
    assert not all(labels.get(key) == value for key, value in pods.items())


def test_the_server_runs_serve() -> None:
    assert container(the(render(REQUIRED), "Deployment"))["args"] == ["serve"]


def test_the_disruption_budget_selects_the_server_pods() -> None:
    objects = render(REQUIRED)

    budget = the(objects, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == the(objects, "Deployment")["spec"]["selector"]


def test_autoscaling_leaves_the_replicas_to_the_hpa() -> None:
    assert the(render(REQUIRED), "Deployment")["spec"]["replicas"] == 2
    assert not [o for o in render(REQUIRED) if o["kind"] == "HorizontalPodAutoscaler"]

    objects = render(SECURED)
    assert "replicas" not in the(objects, "Deployment")["spec"]
    autoscaler = the(objects, "HorizontalPodAutoscaler")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (3, 12)


def test_the_service_monitor_scrapes_the_port_metrics_listen_names() -> None:
    objects = render(SECURED)
    server = the(objects, "Deployment")

    port = int(env(server)["QUOTA_AUTHORITY_METRICS_LISTEN"]["value"].rpartition(":")[2])
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container(server)[
        "ports"
    ]
    monitor = the(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # Exactly one selected Service has the port, so each pod is scraped once.
    selected = [
        s
        for s in objects
        if s["kind"] == "Service"
        and monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        and any(p["name"] == "metrics" for p in s["spec"]["ports"])
    ]
    assert [s["metadata"]["name"] for s in selected] == [FULLNAME]


def test_without_metrics_no_metrics_port_is_served() -> None:
    objects = render(CHART / "ci" / "callers-plaintext-values.yaml")

    assert "QUOTA_AUTHORITY_METRICS_LISTEN" not in env(the(objects, "Deployment"))
    for service in (o for o in objects if o["kind"] == "Service"):
        assert [p["name"] for p in service["spec"]["ports"]] == ["grpc"]


def test_the_prometheus_rule_holds_the_alerting_rules_as_they_are() -> None:
    rules = yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))

    rule = the(render(SECURED), "PrometheusRule")

    assert rule["spec"] == rules
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert not any(o["kind"] == "PrometheusRule" for o in render(REQUIRED))
