"""deploy/kubernetes: every object valid against the Kubernetes schemas (strict), and wired to
what the code reads (settings, the inference stream and group, the images compose builds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from adapters_store.keys import INFERENCE_GROUP, Keys
from adapters_store.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30"
NOT_CORE = {"keda.sh/v1alpha1", "kustomize.config.k8s.io/v1beta1"}


def _objects() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in sorted(DEPLOY.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in _objects() if doc["kind"] == kind}


@pytest.mark.parametrize("name,doc", [(f"{n}:{d['kind']}/{d.get('metadata', {}).get('name')}", d)
                                      for n, d in _objects() if d["apiVersion"] not in NOT_CORE])
def test_objects_are_valid_kubernetes(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_file() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_config_names_only_real_settings() -> None:
    config = _by_kind("ConfigMap")["adapterd-config"]["data"]
    secret = _by_kind("Secret")["adapterd-s3"]["stringData"]
    fields = set(Settings.model_fields)
    for key in [*config, *(k for k in secret if k.startswith("ADAPTERD_"))]:
        assert key.startswith("ADAPTERD_") and key[9:].lower() in fields, key
    # Validates as settings (types and ranges), with the secret's values.
    env = {k[9:].lower(): v for k, v in {**config, **secret}.items() if k.startswith("ADAPTERD_")}
    settings = Settings.model_validate(env)
    assert settings.blob_backend == "s3" and settings.wait_for_worker


def test_keda_scales_inference_on_its_stream_and_group() -> None:
    scaled = _by_kind("ScaledObject")["adapterd-inference"]
    deployments = _by_kind("Deployment")
    assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
    assert scaled["spec"]["minReplicaCount"] == 0
    prefix = _by_kind("ConfigMap")["adapterd-config"]["data"]["ADAPTERD_KEY_PREFIX"]
    redis_url = _by_kind("ConfigMap")["adapterd-config"]["data"]["ADAPTERD_REDIS_URL"]
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis-streams"}
    for trigger in triggers:
        meta = trigger["metadata"]
        assert meta["stream"] == Keys(prefix).infer_stream
        assert meta["consumerGroup"] == INFERENCE_GROUP
        assert meta["address"] in redis_url
    assert any("lagCount" in t["metadata"] for t in triggers)  # demand seen at zero workers


def test_probes_and_images() -> None:
    deployments = _by_kind("Deployment")
    api = deployments["adapterd-api"]["spec"]["template"]["spec"]["containers"][0]
    # Ready on Redis alone: workers may be scaled to zero behind it.
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz?need_worker=false"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    images = {compose["services"]["api"]["image"], compose["x-worker"]["image"]}
    for name, doc in deployments.items():
        for container in doc["spec"]["template"]["spec"]["containers"]:
            assert container["image"] in images, (name, container["image"])
    for name in ("adapterd-inference", "adapterd-trainer"):
        command = deployments[name]["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command == ["python", "-m", name.replace("adapterd-", "worker.")]
