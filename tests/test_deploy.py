"""The deployment files: deploy/compose.yaml, the Helm chart in deploy/helm/idhub, the Dockerfile, constraints.txt.

No container engine or cluster runs here, so these tests check the files' structure and the facts each
deployment relies on (the one-shot migration, replicas that never migrate, probes on ``/healthz`` and
``/readyz``, the master key from a secret file, only real ``IDHUB_*`` settings). When Helm can be had (a
``helm`` binary on ``PATH``, or the ``helm-python-sdk`` package where installed by hand) the
chart is also linted and rendered; without it those tests skip, saying so.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from idhub.cli import main
from idhub.settings import setting_names
from tests.conftest import TEST_MASTER_KEY

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "idhub"
CI_VALUES = CHART / "ci" / "test-values.yaml"
SETTING = re.compile(r"\bIDHUB_[A-Z0-9_]+\b")


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    assert isinstance(environment, dict), "compose environments are mappings here"
    return {key: str(value) for key, value in environment.items()}


def _replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service for name, service in compose["services"].items() if (service.get("command") or [""])[0] == "serve"
    }


def _healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


# --- compose ------------------------------------------------------------------------------------
def test_compose_migrate_is_one_shot_and_replicas_wait_for_it() -> None:
    services = _compose()["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    replicas = _replicas(_compose())
    assert len(replicas) == 2, "two idhub replicas"
    for name, service in replicas.items():
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        env = _env(service)
        assert env["IDHUB_AUTO_MIGRATE"] == "false", name
        assert env["IDHUB_REDIS_URL"].startswith("redis://redis:"), name
        assert "--workers" in service["command"], name


def test_compose_uses_postgres_16_and_redis_7() -> None:
    services = _compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    for name, service in _replicas(_compose()).items():
        assert _env(service)["IDHUB_DATABASE_URL"].startswith("postgresql+asyncpg://"), name


def test_compose_master_key_comes_from_a_secret_file_that_git_ignores() -> None:
    compose = _compose()
    secret = compose["secrets"]["idhub_master_key"]["file"]
    assert secret == "./secrets/master_key"
    for name in ["migrate", *_replicas(compose)]:
        service = compose["services"][name]
        assert "idhub_master_key" in service["secrets"], name
        env = _env(service)
        assert env["IDHUB_MASTER_KEY_FILE"] == "/run/secrets/idhub_master_key", name
        assert "IDHUB_MASTER_KEY" not in env, name
        assert env["IDHUB_ENVIRONMENT"] == "production", name
        assert env["IDHUB_PUBLIC_URL"].startswith("https://"), name
    assert "deploy/secrets/" in (ROOT / ".gitignore").read_text().splitlines()
    assert not (DEPLOY / "secrets").exists() or not any((DEPLOY / "secrets").iterdir()), "no key is committed"


def test_compose_replicas_sit_behind_the_proxy_that_they_trust() -> None:
    compose = _compose()
    proxy = compose["services"]["proxy"]
    replicas = _replicas(compose)
    assert set(proxy["depends_on"]) == set(replicas)
    assert all(dep["condition"] == "service_healthy" for dep in proxy["depends_on"].values())
    address = proxy["networks"]["frontend"]["ipv4_address"]
    for name, service in replicas.items():
        assert json.loads(_env(service)["IDHUB_TRUSTED_PROXIES"]) == [address], name
        assert "ports" not in service, "only the proxy is published"
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    mounted = [volume.split(":")[0] for volume in proxy["volumes"]]
    assert "./Caddyfile" in mounted
    upstreams = re.search(r"reverse_proxy ([^{]+)\{", caddyfile)
    assert upstreams is not None
    assert sorted(upstreams.group(1).split()) == sorted(f"{name}:8000" for name in replicas)
    assert "header_up X-Request-ID {http.request.uuid}" in caddyfile
    assert "health_uri /readyz" in caddyfile
    # Caddy sets X-Forwarded-For and X-Forwarded-Proto itself; nothing may turn that off.
    assert "header_up -X-Forwarded" not in caddyfile
    assert compose["networks"]["backend"]["internal"] is True
    assert "backend" not in proxy.get("networks", {})


def test_compose_healthchecks_ask_readyz() -> None:
    compose = _compose()
    for name, service in _replicas(compose).items():
        assert "/readyz" in _healthcheck_text(service), name
    assert compose["services"]["migrate"]["healthcheck"] == {"disable": True}
    assert "pg_isready" in _healthcheck_text(compose["services"]["postgres"])
    assert "ping" in _healthcheck_text(compose["services"]["redis"])


# --- every IDHUB_* name the deployment files use is a real setting -------------------------------
def _deployment_texts() -> Iterator[tuple[str, str]]:
    for path in [DEPLOY / "compose.yaml", ROOT / "Dockerfile", *sorted(CHART.rglob("*"))]:
        if path.is_file():
            yield str(path.relative_to(ROOT)), path.read_text()


def test_deployment_files_name_only_real_settings() -> None:
    known = set(setting_names())
    used: dict[str, set[str]] = {}
    for where, text in _deployment_texts():
        for name in SETTING.findall(text):
            used.setdefault(name, set()).add(where)
    unknown = {name: sorted(places) for name, places in used.items() if name not in known}
    assert not unknown, f"not idhub settings: {unknown}"
    assert {"IDHUB_MASTER_KEY_FILE", "IDHUB_AUTO_MIGRATE", "IDHUB_DATABASE_URL"} <= set(used)


# --- Helm chart, without Helm --------------------------------------------------------------------
def _values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        merged[key] = _merged(merged[key], value) if isinstance(value, dict) and key in merged else value
    return merged


def test_chart_values_match_their_schema() -> None:
    validator = jsonschema.Draft7Validator(_schema())
    validator.validate(_values())
    validator.validate(_merged(_values(), yaml.safe_load(CI_VALUES.read_text())))


@pytest.mark.parametrize(
    "override",
    [
        {"replicaCount": 0},
        {"replicaCount": "2"},
        {"publicUrl": "id.example.com"},
        {"environment": "prod"},
        {"managementPort": 70000},
        {"database": {"url": "sqlite+aiosqlite:///idhub.db"}},
        {"masterKey": {"secret": "x"}},
        {"unknownTopLevel": True},
    ],
)
def test_chart_schema_rejects_bad_values(override: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_schema()).validate(_merged(_values(), override))


def test_chart_ships_no_default_secret() -> None:
    values = _values()
    assert values["masterKey"] == {"existingSecret": "", "secretKey": "master-key", "value": ""}
    assert values["database"]["url"] == "" and values["redis"]["url"] == ""
    assert values["environment"] == "production" and values["publicUrl"] == ""


def test_chart_templates_state_probes_hooks_and_scaling() -> None:
    templates = CHART / "templates"
    deployment = (templates / "deployment.yaml").read_text()
    for probe, path in [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        block = re.search(rf"{probe}:\n(?:\s{{12,}}.*\n)+", deployment)
        assert block is not None, probe
        assert f"path: {path}" in block.group(0) and "port: management" in block.group(0), probe
    assert '"--workers", "1"' in deployment
    assert "IDHUB_AUTO_MIGRATE" in deployment and 'value: "false"' in deployment
    assert "name: IDHUB_MANAGEMENT_PORT" in deployment and "name: management" in deployment
    assert "mountPath: /run/secrets/idhub" in deployment
    assert "IDHUB_MASTER_KEY_FILE\n  value: /run/secrets/idhub/master-key" in (templates / "_helpers.tpl").read_text()
    assert "path: master-key" in (templates / "_helpers.tpl").read_text()
    job = (templates / "migration-job.yaml").read_text()
    assert "kind: Job" in job and 'args: ["migrate"]' in job
    assert "helm.sh/hook: pre-install,pre-upgrade" in job
    assert "IDHUB_AUTO_MIGRATE" not in job
    assert "apiVersion: autoscaling/v2" in (templates / "hpa.yaml").read_text()
    assert "kind: PodDisruptionBudget" in (templates / "pdb.yaml").read_text()
    assert "readOnlyRootFilesystem: true" in (CHART / "values.yaml").read_text()
    assert "runAsNonRoot: true" in (CHART / "values.yaml").read_text()


# --- Helm chart, with Helm when it can be had -------------------------------------------------------
class _Helm:
    """``helm lint`` and ``helm template`` through the binary, else through helm-python-sdk (Helm's Go SDK)."""

    def __init__(self) -> None:
        self.binary = shutil.which("helm")
        self.sdk: Any = None
        if self.binary is None:
            try:
                import helm_python  # type: ignore[import-not-found]
            except ImportError:
                pytest.skip("Helm is not installed (no helm binary, no helm-python-sdk): chart not rendered")
            except OSError as exc:  # the wheel's native library does not load on this platform
                pytest.skip(f"helm-python-sdk cannot load Helm here ({exc}): chart not rendered")
            self.sdk = helm_python

    def lint(self, values: dict[str, Any]) -> list[str]:
        """Lint the chart strictly with ``values``; return the problems found."""
        if self.binary is not None:
            done = self._run("lint", "--strict", str(CHART), values=values)
            return [] if done.returncode == 0 else [done.stdout + done.stderr]
        report = self.sdk.lint(str(CHART), values, strict=True)
        return [*report["errors"], *(m["error"] for m in report["messages"] if m["severity"] >= 2)]

    def template(self, values: dict[str, Any]) -> list[dict[str, Any]]:
        """Render the chart as an install would; return its manifests (NOTES.txt left out)."""
        if self.binary is not None:
            done = self._run("template", "rel", str(CHART), "--namespace", "ns", values=values)
            if done.returncode != 0:
                raise RuntimeError(done.stderr)
            text = done.stdout
        else:
            with self.sdk.Chart.load(str(CHART)) as chart:
                try:
                    rendered = chart.render(values, name="rel", namespace="ns", is_install=True)
                except self.sdk.HelmError as exc:
                    raise RuntimeError(str(exc)) from exc
            text = "\n---\n".join(body for path, body in sorted(rendered.items()) if path.endswith((".yaml", ".yml")))
        return [doc for doc in yaml.safe_load_all(text) if doc]

    def _run(self, *args: str, values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        assert self.binary is not None
        with tempfile.TemporaryDirectory() as folder:
            values_file = Path(folder) / "values.json"  # JSON is YAML
            values_file.write_text(json.dumps(values))
            command = [self.binary, *args, "--values", str(values_file)]
            return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def helm() -> _Helm:
    return _Helm()


def _ci_values() -> dict[str, Any]:
    return yaml.safe_load(CI_VALUES.read_text())


def _kinds(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in documents}


def test_helm_lint_passes(helm: _Helm) -> None:
    assert helm.lint(_ci_values()) == []


def test_helm_template_renders_every_object(helm: _Helm) -> None:
    kinds = _kinds(helm.template(_ci_values()))
    assert set(kinds) == {
        "Secret",
        "ServiceAccount",
        "Service",
        "Deployment",
        "Job",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
        "ServiceMonitor",
    }
    job = kinds["Job"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    secret = kinds["Secret"]
    # The Secret must exist before the Job that reads it: an earlier hook.
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000, "management": 9000}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "management"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "management"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "management"}
    env = {item["name"]: item for item in container["env"]}
    assert env["IDHUB_AUTO_MIGRATE"]["value"] == "false"
    assert env["IDHUB_MANAGEMENT_PORT"]["value"] == "9000"
    assert env["IDHUB_MASTER_KEY_FILE"]["value"] == "/run/secrets/idhub/master-key"
    assert env["IDHUB_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert json.loads(env["IDHUB_TRUSTED_PROXIES"]["value"]) == ["10.0.0.10"]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["master-key"] == "/run/secrets/idhub"
    volume = next(v for v in pod["volumes"] if v["name"] == "master-key")
    assert volume["secret"]["items"] == [{"key": "master-key", "path": "master-key"}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "replicas" not in kinds["Deployment"]["spec"], "the HPA owns the replica count"
    assert kinds["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    assert kinds["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "management"
    annotations = kinds["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9000"


def test_helm_template_with_existing_secrets_creates_none(helm: _Helm) -> None:
    values = {
        "publicUrl": "https://id.example.test",
        "masterKey": {"existingSecret": "idhub-master-key", "secretKey": "key"},
        "database": {"existingSecret": "idhub-database", "secretKey": "url"},
        "autoscaling": {"enabled": False},
        "replicaCount": 3,
    }
    kinds = _kinds(helm.template(values))
    assert "Secret" not in kinds and "HorizontalPodAutoscaler" not in kinds
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    env = {item["name"]: item for item in pod["containers"][0]["env"]}
    assert env["IDHUB_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "idhub-database", "key": "url"}
    assert "IDHUB_REDIS_URL" not in env
    volume = next(v for v in pod["volumes"] if v["name"] == "master-key")
    assert volume["secret"]["secretName"] == "idhub-master-key"
    assert volume["secret"]["items"] == [{"key": "key", "path": "master-key"}]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "publicUrl is required"),
        ({"publicUrl": "http://id.example.test"}, "publicUrl is required"),
        ({"publicUrl": "https://id.example.test"}, "a master key is required"),
        ({"publicUrl": "https://id.example.test", "masterKey": {"value": "k"}}, "a database is required"),
    ],
)
def test_helm_template_refuses_missing_settings(helm: _Helm, values: dict[str, Any], message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        helm.template(values)


# --- Dockerfile ---------------------------------------------------------------------------------
def test_dockerfile_is_production_by_default_and_checks_readiness() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG IDHUB_ENVIRONMENT=production" in dockerfile
    assert "IDHUB_ENVIRONMENT=${IDHUB_ENVIRONMENT}" in dockerfile
    assert "--build-arg IDHUB_ENVIRONMENT=development" in dockerfile
    healthcheck = dockerfile.split("HEALTHCHECK", 1)[1].split("\n\n", 1)[0]
    assert "/readyz" in healthcheck and "/healthz" not in healthcheck
    assert "--constraint constraints.txt" in dockerfile
    assert re.search(r"^COPY .*constraints\.txt", dockerfile, re.M)
    assert "USER idhub" in dockerfile


def test_production_image_refuses_to_start_without_a_master_key(tmp_path: Path) -> None:
    """The image's default environment: one line naming the setting, a non-zero exit, no traceback."""
    env = {
        "IDHUB_ENVIRONMENT": "production",
        "IDHUB_DATA_DIR": str(tmp_path),
        "IDHUB_PUBLIC_URL": "https://id.example.test",
        "IDHUB_MASTER_KEY": None,
        "IDHUB_MASTER_KEY_FILE": None,
        "IDHUB_DATABASE_URL": None,
    }
    result = CliRunner().invoke(main, ["serve", "--port", "1"], env=env)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "IDHUB_MASTER_KEY" in lines[0], result.output
    assert not (tmp_path / "master.key").exists(), "production never generates a key"


def test_production_image_starts_with_a_master_key_file(tmp_path: Path) -> None:
    """Start as compose and the chart run the image: the key from a secret file.

    ``idhub migrate`` stands in for ``serve``: it loads and checks the same settings.
    """
    key_file = tmp_path / "master_key"
    key_file.write_text(TEST_MASTER_KEY + "\n")
    env = {
        "IDHUB_ENVIRONMENT": "production",
        "IDHUB_DATA_DIR": str(tmp_path / "data"),
        "IDHUB_PUBLIC_URL": "https://id.example.test",
        "IDHUB_MASTER_KEY": None,
        "IDHUB_MASTER_KEY_FILE": str(key_file),
        "IDHUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'idhub.db'}",
    }
    result = CliRunner().invoke(main, ["migrate"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1]) == {"migrated": True}


# --- constraints.txt ----------------------------------------------------------------------------
def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", line
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{name} pinned twice"
        pins[name] = Version(specifier.version)
    return pins


def test_constraints_pin_every_runtime_requirement_inside_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = [Requirement(text) for text in [*project["dependencies"], *extras["postgres"], *extras["redis"]]]
    pins = _pins()
    assert "idhub" not in pins
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {requirement}"
        )
    # uvicorn[standard] is what serves: its extra's speedups are pinned too.
    assert {"uvloop", "httptools", "websockets", "watchfiles"} <= set(pins)
