"""The files in cluster/: each parses, has what its tool needs, and matches this Ray and this code."""

from __future__ import annotations

import copy
import importlib.util
import shlex
from pathlib import Path

import ray
import yaml
from conftest import ROOT

CLUSTER = ROOT / "cluster"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def _make_rayservice():
    spec = importlib.util.spec_from_file_location("make_rayservice", ROOT / "scripts" / "make_rayservice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_cluster_launcher_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` checks before launching anything
    assert ray.__version__ in config["docker"]["image"]
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) and t["max_workers"] > 0 for t in workers), "no GPU workers"
    assert any("pip install" in cmd and "/home/ray/vibeserve" in cmd for cmd in config["setup_commands"])
    assert any("--dashboard-host=0.0.0.0" in cmd for cmd in config["head_start_ray_commands"])


def test_rayjob_runs_vibeserve_search_on_a_target_of_this_repository():
    docs = _docs("rayjob-search.yaml")
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["vibeserve", "search"]
    assert (ROOT / Path(argv[2]).relative_to("/home/ray/vibeserve") / "target.toml").is_file()
    run = argv[argv.index("--run") + 1]
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]["template"]["spec"]
    mounts = [m["mountPath"] for c in head["containers"] for m in c.get("volumeMounts", [])]
    assert any(run.startswith(m + "/") for m in mounts), "the run directory must be on a volume that outlives the job"
    claim = head["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert any(d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim for d in docs)
    gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for c in _containers(cluster)]
    assert any(gpus), "no GPU workers"


def test_rayjob_gives_the_api_key_to_the_head_as_a_file_never_as_an_environment_variable():
    job = next(d for d in _docs("rayjob-search.yaml") if d["kind"] == "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    for container in _containers(cluster):  # Ray workers inherit their node's environment
        assert not any(e["name"] == "ANTHROPIC_API_KEY" for e in container.get("env", [])), container["name"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    [container] = head["containers"]
    key_file = Path({e["name"]: e.get("value") for e in container["env"]}["ANTHROPIC_API_KEY_FILE"])
    mount = next(m for m in container["volumeMounts"] if key_file.parent == Path(m["mountPath"]))
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["optional"] is True and mount["readOnly"] is True


def test_rayservice_serve_config_is_exactly_what_config_only_writes():
    from ray.serve.schema import ServeDeploySchema

    service = _docs("rayservice.yaml")[0]
    assert service["kind"] == "RayService" and service["apiVersion"] == "ray.io/v1"
    make = _make_rayservice()
    written = make.serve_config_text()  # `vibeserve deploy --config-only` with the script's arguments
    assert service["spec"]["serveConfigV2"] == written, "stale: run python scripts/make_rayservice.py"
    assert (CLUSTER / "rayservice.yaml").read_text() == make.render()
    config = yaml.safe_load(written)
    ServeDeploySchema.model_validate(config)
    assert config["http_options"]["host"] == "0.0.0.0"
    key_name = config["applications"][0]["runtime_env"]["env_vars"]["VIBESERVE_API_KEY_ENV"]
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    for container in _containers(cluster):  # every node that may run a replica holds the key, from a secret
        env = {e["name"]: e for e in container["env"]}
        assert "secretKeyRef" in env[key_name]["valueFrom"]


def test_readme_explains_job_submit_search_and_serving_the_result():
    text = (CLUSTER / "README.md").read_text()
    for needed in ("ray job submit", "vibeserve search", "vibeserve deploy", "--config-only", "serve deploy",
                   "kubectl apply -f cluster/rayservice.yaml", "rayjob-search.yaml", "scripts/make_rayservice.py"):
        assert needed in text, needed
