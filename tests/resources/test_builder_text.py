"""Text models (format huggingface) in the builders: server flags, offline env, GPUs, the
sidecar's task / served name / generation bounds, and which ledger a query is charged to."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dpserve.api.mechanism import is_tenant_side
from dpserve.resources import confidential
from dpserve.resources.configmap import build_configmap
from dpserve.resources.deployment import GPU_RESOURCE, build_deployment

TRAINING = {"noiseMultiplier": "1.0", "sampleRate": "0.01", "steps": 3000}


def make_text(make_model: Any, task: str, mechanism: dict[str, Any], **serving: Any) -> Any:
    """A huggingface model from the pate-ensemble base: its retraining and pate parameters
    removed (a None value removes a key), ``mechanism`` in their place."""
    return make_model(spec={
        "onBudgetExhausted": "ScaleToZero",
        "retraining": None,
        "model": {"format": "huggingface", "task": task, "training": TRAINING},
        "serving": {"mechanism": {"teachers": None, "noiseMultiplier": None, **mechanism},
                    **serving},
    })


def generator(make_model: Any, **serving: Any) -> Any:
    return make_text(make_model, "text-generation", {"type": "none"}, **serving)


def embedder(make_model: Any, mechanism: dict[str, Any]) -> Any:
    return make_text(make_model, "feature-extraction", mechanism)


def model_container(dep: dict[str, Any]) -> dict[str, Any]:
    by_name = {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}
    return by_name["model"]


def filter_json(model: Any, ctx: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(build_configmap(model, ctx)["data"]["filter.json"])
    return data


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


# --------------------------------------------------------------------------- server flags


def test_generator_gets_task_and_generation_bounds(make_model, make_ctx):
    model = generator(make_model, generation={"maxTokens": 128, "maxChoices": 2})
    args = model_container(build_deployment(model, make_ctx(model)))["args"]
    assert args[-6:] == ["--task", "text-generation", "--max-tokens", "128",
                         "--max-choices", "2"]


def test_generator_without_bounds_gets_the_defaults(make_model, make_ctx):
    model = generator(make_model)
    args = model_container(build_deployment(model, make_ctx(model)))["args"]
    assert (flag(args, "--max-tokens"), flag(args, "--max-choices")) == ("256", "4")


@pytest.mark.parametrize("task", ["feature-extraction", "text-classification"])
def test_other_tasks_get_the_task_only(make_model, make_ctx, task):
    mechanism = {"type": "none"}
    model = make_text(make_model, task, mechanism)
    args = model_container(build_deployment(model, make_ctx(model)))["args"]
    assert flag(args, "--task") == task
    assert "--max-tokens" not in args and "--max-choices" not in args


def test_tensor_models_get_no_text_flags_env_or_gpu(make_model, make_ctx):
    model = make_model()
    c = model_container(build_deployment(model, make_ctx(model)))
    assert not {"--task", "--max-tokens", "--max-choices"} & set(c["args"])
    assert [e["name"] for e in c["env"]] == ["HOME"]
    assert GPU_RESOURCE not in c["resources"]["limits"]


def test_huggingface_loads_offline(make_model, make_ctx):
    model = generator(make_model)
    env = {e["name"]: e["value"] for e in model_container(
        build_deployment(model, make_ctx(model)))["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"


def test_server_gets_the_noise_not_the_privacy_unit(make_model, make_ctx):
    mech = {"type": "gaussian", "noiseMultiplier": "3", "clipNorm": "1", "sensitivity": "2",
            "privacyUnit": "query-text"}
    model = embedder(make_model, mech)
    ctx = make_ctx(model, partition_header="X-Tenant")
    args = model_container(build_deployment(model, ctx))["args"]
    assert json.loads(flag(args, "--mechanism") or "") == {
        "type": "gaussian", "noiseMultiplier": "3", "clipNorm": "1", "sensitivity": "2"}
    # The sidecar asks for leases with the whole mechanism: the ledger needs the unit.
    assert filter_json(model, ctx)["mechanism"]["privacyUnit"] == "query-text"


# --------------------------------------------------------------------------- GPUs


def test_gpu_renders_in_requests_and_limits(make_model, make_ctx):
    model = generator(make_model, resources={"cpu": "4", "memory": "16Gi", "gpu": 2})
    resources = model_container(build_deployment(model, make_ctx(model)))["resources"]
    assert resources["requests"] == resources["limits"] == {
        "cpu": "4", "memory": "16Gi", GPU_RESOURCE: "2"}


def test_zero_gpus_render_nothing(make_model, make_ctx):
    model = generator(make_model, resources={"cpu": "4", "memory": "16Gi", "gpu": 0})
    resources = model_container(build_deployment(model, make_ctx(model)))["resources"]
    assert GPU_RESOURCE not in resources["requests"]
    assert GPU_RESOURCE not in resources["limits"]


def test_no_confidential_profile_claims_the_gpu_resource():
    for spec in confidential.PROFILES.values():
        assert GPU_RESOURCE not in spec.extra_resources, spec.profile


def test_a_profile_claiming_gpus_clashes_with_a_gpu_request(make_model, make_ctx, monkeypatch):
    gpu_profile = confidential.ProfileSpec(
        profile="coco-snp", tee="test", isolation="pod", runtime_class_name="kata-qemu-snp",
        extra_resources={GPU_RESOURCE: "1"},
    )
    monkeypatch.setitem(confidential.PROFILES, "coco-snp", gpu_profile)  # type: ignore[arg-type]
    model = generator(make_model, resources={"cpu": "4", "memory": "16Gi", "gpu": 1})
    with pytest.raises(ValueError, match=r"^spec\.serving\.resources\.gpu: .*coco-snp"):
        build_deployment(model, make_ctx(model))
    # Without a GPU request the profile's device-plugin resource renders as before.
    plain = generator(make_model)
    limits = model_container(build_deployment(plain, make_ctx(plain)))["resources"]["limits"]
    assert limits[GPU_RESOURCE] == "1"


def test_probes_are_the_same_for_text_and_tensor_models(make_model, make_ctx):
    def probes(model: Any) -> list[Any]:
        containers = build_deployment(model, make_ctx(model))["spec"]["template"]["spec"][
            "containers"]
        keys = ("startupProbe", "livenessProbe", "readinessProbe")
        return [{k: c.get(k) for k in keys} for c in containers]

    assert probes(generator(make_model)) == probes(make_model())


# --------------------------------------------------------------------------- filter config


def test_filter_config_carries_task_served_name_and_bounds(make_model, make_ctx):
    model = generator(make_model, generation={"maxTokens": 128, "maxChoices": 2})
    config = filter_json(model, make_ctx(model))
    assert config["task"] == "text-generation"
    assert config["servedModelName"] == "triage"
    assert config["generation"] == {"maxTokens": 128, "maxChoices": 2}


def test_tensor_model_filter_config_has_no_task(make_model, make_ctx):
    model = make_model()
    config = filter_json(model, make_ctx(model))
    assert "task" not in config
    assert config["servedModelName"] == "triage"


# --------------------------------------------------------------------------- ledgers


LAPLACE = {"type": "laplace-embedding", "epsilon": "0.5"}
GAUSS_QUERY = {"type": "gaussian", "noiseMultiplier": "3", "clipNorm": "1", "sensitivity": "2",
               "privacyUnit": "query-text"}
GAUSS_DATASET = {"type": "gaussian", "noiseMultiplier": "3", "clipNorm": "1",
                 "sensitivity": "2"}


@pytest.mark.parametrize("mech", [LAPLACE, GAUSS_QUERY], ids=["laplace", "gaussian-query"])
def test_tenant_side_queries_are_charged_to_the_tenant_partition(make_model, make_ctx, mech):
    model = embedder(make_model, mech)
    assert is_tenant_side(model.spec.serving.mechanism)
    config = filter_json(model, make_ctx(model, partition_header="X-Tenant"))
    assert config["partitionHeader"] == "X-Tenant"


@pytest.mark.parametrize("mech", [LAPLACE, GAUSS_QUERY], ids=["laplace", "gaussian-query"])
def test_tenant_side_without_partitions_is_refused(make_model, make_ctx, mech):
    # Charging a tenant's query-text spend to the dataset's ledger would mix privacy units.
    model = embedder(make_model, mech)
    with pytest.raises(ValueError, match=r"^spec\.serving\.mechanism: .*never to the dataset"):
        build_configmap(model, make_ctx(model))
    with pytest.raises(ValueError, match=r"patients-2026q4 has no spec\.partitions"):
        build_deployment(model, make_ctx(model))  # the pod template hashes the config


def test_dataset_side_gaussian_ignores_the_partition_header(make_model, make_ctx):
    model = embedder(make_model, GAUSS_DATASET)
    assert not is_tenant_side(model.spec.serving.mechanism)
    config = filter_json(model, make_ctx(model, partition_header="X-Tenant"))
    assert "partitionHeader" not in config
