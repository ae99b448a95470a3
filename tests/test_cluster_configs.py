"""The cluster launcher YAML and Kubernetes manifests parse, carry the fields their tools require, keep secrets out,
and run commands that exist in this project (offline, schema level)."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from orchestration.cli import parser

CLUSTER = Path(__file__).parent.parent / "cluster"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def test_ray_cluster_launcher_config():
    (cfg,) = docs("ray/cluster-aws.yaml")
    for key in ("cluster_name", "provider", "auth", "available_node_types", "head_node_type", "setup_commands"):
        assert key in cfg, key
    assert cfg["head_node_type"] in cfg["available_node_types"]
    gpu = cfg["available_node_types"]["gpu_workers"]
    assert gpu["max_workers"] >= gpu["min_workers"] >= 0
    assert any("pip install" in c and "ttrain" in c for c in cfg["setup_commands"])
    assert all(
        "RAY_AUTH_MODE=token" in c
        for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
        if "ray start" in c
    )


def test_kuberay_cluster_manifest():
    (rc,) = docs("k8s/raycluster.yaml")
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    spec = rc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["maxReplicas"] >= gpu["minReplicas"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1


def test_worker_deployments_run_real_commands_and_take_secrets_from_a_secret():
    manifests = docs("k8s/workers.yaml")
    kinds = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    assert ("ConfigMap", "ttrain-config") in kinds
    deployments = [m for m in manifests if m["kind"] == "Deployment"]
    queues = set()
    for d in deployments:
        (container,) = d["spec"]["template"]["spec"]["containers"]
        argv = container["command"]
        assert argv[0] == "ttrain"
        args = parser().parse_args(argv[1:])  # the command exists and its flags parse
        queues.add(args.queue)
        secret_refs = [e for e in container["env"] if "valueFrom" in e]
        assert {e["name"] for e in secret_refs} >= {"TEMPORAL_API_KEY", "RAY_AUTH_TOKEN"}
    assert queues == {"training", "orchestration"}
    (config,) = [m for m in manifests if m["kind"] == "ConfigMap"]
    assert not any("KEY" in k or "TOKEN" in k for k in config["data"]), "secrets belong in the Secret"


def test_launcher_comments_name_commands_that_exist():
    text = (CLUSTER / "ray/cluster-aws.yaml").read_text()
    for line in text.splitlines():
        if line.strip().startswith("#   ttrain "):
            parser().parse_args(shlex.split(line.strip()[4:].split("#")[0])[1:])


def test_no_secret_value_ships_with_the_manifests():
    """`kubectl apply -f cluster/k8s/` must never create or overwrite a Secret: a placeholder token would let anyone
    who reaches the dashboard run code. The Secret is made from a generated token, by the command the README gives."""
    for path in sorted(CLUSTER.rglob("*.yaml")):
        for manifest in docs(str(path.relative_to(CLUSTER))):
            assert manifest.get("kind") != "Secret", f"{path} ships a Secret"
    readme = (CLUSTER.parent / "README.md").read_text()
    assert "kubectl create secret generic ttrain-secrets" in readme and "openssl rand -hex 32" in readme
