"""cluster/: launcher YAMLs against Ray's shipped JSON schema, KubeRay manifests by required keys and types.

No KubeRay CRD schema is available offline, so the RayJob/RayCluster checks are hand-written from the `ray.io/v1`
CRD fields (stack notes §1.10); the pod templates inside them are validated against the Kubernetes OpenAPI schema
with `kubernetes-validate` when it is installed (`pip install kubernetes-validate`).
"""

import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHER = ["aws.yaml", "gcp.yaml"]


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(os.path.dirname(ray.autoscaler.__file__)) / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_yaml_validates_against_ray_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _load(name)
    jsonschema.validate(cfg, _ray_schema())  # as written (additionalProperties: false everywhere)
    validate_config(prepare_config(cfg))  # after the launcher fills in the provider defaults, as `ray up` does


def test_ray_schema_rejects_legacy_keys():
    cfg = _load("aws.yaml") | {"min_workers": 0}  # pre-1.0 top-level key
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, _ray_schema())


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_layout(name):
    cfg = _load(name)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert any("--head" in c and "--num-cpus=0" in c for c in cfg["head_start_ray_commands"])
    (worker_name,) = [n for n in types if n != cfg["head_node_type"]]
    worker = types[worker_name]
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 1 and worker["resources"]["GPU"] >= 1
    assert cfg["max_workers"] >= worker["max_workers"]
    assert cfg["docker"]["image"].startswith("rayproject/ray:2.60.0-") and cfg["docker"]["image"].endswith("-gpu")
    # /dev/shm >= object store on each node type
    shm = {"head": cfg["docker"]["head_run_options"], "worker": cfg["docker"]["worker_run_options"]}
    store = {"head": cfg["head_start_ray_commands"], "worker": cfg["worker_start_ray_commands"]}
    for role in shm:
        gb = float(next(o for o in shm[role] if o.startswith("--shm-size=")).split("=")[1].rstrip("g"))
        cmd = " ".join(store[role])
        obj = int(cmd.split("--object-store-memory=")[1].split()[0])
        assert gb * 1e9 >= 1.1 * obj, (role, gb, obj)
    assert cfg["file_mounts"] == {"~/ddoq-ray": "."} and ".venv" in cfg["rsync_exclude"]
    setup = " ".join(cfg["setup_commands"] + cfg["worker_setup_commands"])
    assert "pip install -q -c constraints.txt -e ." in setup and '".[gpu]"' in setup


def _check_cluster_spec(spec: dict) -> None:
    assert isinstance(spec["rayVersion"], str) and spec["rayVersion"] == "2.60.0"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # CRD: map[string]string
    groups = spec["workerGroupSpecs"]
    assert isinstance(groups, list) and groups
    for g in groups:
        assert isinstance(g["groupName"], str)
        assert g["minReplicas"] == 0 and isinstance(g["maxReplicas"], int) and g["maxReplicas"] >= 1
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert all(isinstance(v, str) for v in g["rayStartParams"].values())
        (c,) = g["template"]["spec"]["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" == c["resources"]["requests"]["nvidia.com/gpu"]
    for tmpl in [head["template"]] + [g["template"] for g in groups]:
        pod = tmpl["spec"]
        shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        assert len(shm) == 1
        for c in pod["containers"]:
            assert {"name": shm[0]["name"], "mountPath": "/dev/shm"} in c["volumeMounts"]
            assert c["image"] == head["template"]["spec"]["containers"][0]["image"]


def test_rayjob_manifest():
    job = _load("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert isinstance(spec["entrypoint"], str) and "ddoq-ray run configs/" in spec["entrypoint"]
    config = spec["entrypoint"].split("ddoq-ray run ")[1].split()[0]
    assert (CLUSTER.parent / config).is_file()
    assert spec["shutdownAfterJobFinishes"] is True and isinstance(spec["ttlSecondsAfterFinished"], int)
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    _check_cluster_spec(spec["rayClusterSpec"])


def test_raycluster_is_the_rayjob_cluster():
    rc, job = _load("kuberay-raycluster.yaml"), _load("kuberay-rayjob.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["spec"] == job["spec"]["rayClusterSpec"]


def test_kubernetes_objects_validate_against_openapi():
    kv = pytest.importorskip("kubernetes_validate")
    job = _load("kuberay-rayjob.yaml")
    spec = job["spec"]["rayClusterSpec"]
    docs = [_load("kuberay-pvc.yaml")]
    for i, tmpl in enumerate([spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]):
        docs.append({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{i}"}, "template": tmpl})
    for doc in docs:
        kv.validate(doc, "1.37.0", strict=True)
