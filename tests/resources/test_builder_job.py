"""The retraining Job: deterministic name, trainer arguments, volumes, safety settings."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from dpserve.resources.job import build_job, training_plan
from dpserve.resources.names import train_job_name
from dpserve.resources.uris import parse_uri


def train_container(job):
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def arg_map(args: list[str]) -> dict[str, str]:
    assert len(args) % 2 == 0, args
    return dict(zip(args[::2], args[1::2], strict=True))


def test_job_name_is_deterministic_per_version(make_model, make_ctx):
    model = make_model()
    assert build_job(model, make_ctx(model))["metadata"]["name"] == "triage-train-v2"
    assert build_job(model, make_ctx(model))["metadata"]["name"] == "triage-train-v2"
    v3 = make_model(status={"modelVersion": "v2", "artifact": "pvc://models/triage/v2"})
    assert build_job(v3, make_ctx(v3))["metadata"]["name"] == "triage-train-v3"


def test_long_job_names_are_bounded_and_stable():
    long = "m" + "x" * 62
    name = train_job_name(long, "v12")
    assert len(name) <= 63
    assert name == train_job_name(long, "v12")
    assert name != train_job_name(long, "v13")
    assert name[-9] == "-"


def test_trainer_arguments(make_model, make_ctx):
    model = make_model()
    c = train_container(build_job(model, make_ctx(model)))
    assert c["command"] == ["dpserve-train"]
    args = arg_map(c["args"])
    assert args == {
        "--dataset": "/data/2027q1.npz",
        "--output": "/output/v2",
        "--target-epsilon": "3",
        "--delta": "1e-6",  # nextBudget.delta when retraining.delta is unset
        "--epochs": "10",
        "--batch-size": "64",
        "--max-grad-norm": "1.0",
        "--architecture": args["--architecture"],
        "--mode": "pate",  # the base model serves PATE: its retraining trains teachers
        "--teachers": "50",
        "--max-epsilon": "8",  # the next budget's epsilon
        "--version": "v2",
        "--fingerprint-window-tokens": "50",  # outputFilter.verbatimGuard.windowTokens
    }
    assert json.loads(args["--architecture"]) == {"type": "mlp", "hiddenDims": [128]}


def test_fingerprint_window_follows_the_output_filter(make_model, make_ctx):
    model = make_model(spec={"outputFilter": {"verbatimGuard": {"windowTokens": 24}}})
    args = arg_map(train_container(build_job(model, make_ctx(model)))["args"])
    assert args["--fingerprint-window-tokens"] == "24"


def test_pate_mode_and_explicit_delta(make_model, make_ctx):
    model = make_model(
        spec={
            "retraining": {"mode": "pate", "teachers": 50, "delta": "1e-7", "hiddenDims": [64, 32]}
        }
    )
    args = arg_map(train_container(build_job(model, make_ctx(model)))["args"])
    assert (args["--mode"], args["--teachers"], args["--delta"]) == ("pate", "50", "1e-7")
    assert json.loads(args["--architecture"])["hiddenDims"] == [64, 32]


def test_pvc_volumes(make_model, make_ctx):
    model = make_model()
    job = build_job(model, make_ctx(model))
    pod = job["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dataset"]["persistentVolumeClaim"] == {"claimName": "datasets", "readOnly": True}
    assert vols["output"]["persistentVolumeClaim"] == {"claimName": "models"}
    mounts = {m["name"]: m for m in train_container(job)["volumeMounts"]}
    assert mounts["dataset"] == {
        "name": "dataset",
        "mountPath": "/data",
        "readOnly": True,
        "subPath": "triage",
    }
    # Output: the directory that holds the versions, writable; the trainer creates v2 in it.
    assert mounts["output"] == {"name": "output", "mountPath": "/output", "subPath": "triage"}
    plan = training_plan(model, make_ctx(model))
    assert plan.artifact == "pvc://models/triage/v2"
    assert plan.version == "v2"


def test_file_volumes_write_a_sibling_directory(make_model, make_ctx):
    model = make_model(
        spec={
            "model": {"artifact": "file:///srv/models/triage"},
            "retraining": {"dataset": "file:///srv/data/digits.npz"},
        }
    )
    ctx = make_ctx(model, allow_host_path_artifacts=True)
    job = build_job(model, ctx)
    vols = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert vols["dataset"]["hostPath"] == {"path": "/srv/data", "type": "Directory"}
    assert vols["output"]["hostPath"] == {"path": "/srv/models", "type": "DirectoryOrCreate"}
    args = arg_map(train_container(job)["args"])
    assert (args["--dataset"], args["--output"]) == ("/data/digits.npz", "/output/triage-v2")
    assert training_plan(model, ctx).artifact == "file:///srv/models/triage-v2"


@pytest.mark.parametrize(("field", "spec"), [
    ("spec.retraining.dataset", {"retraining": {"dataset": "file:///etc/passwd.npz"}}),
    ("spec.model.artifact", {"model": {"artifact": "file:///etc"}}),
])
def test_host_paths_are_refused_unless_the_operator_allows_them(make_model, make_ctx, field,
                                                                 spec):
    model = make_model(spec=spec)
    with pytest.raises(ValueError, match=rf"^{field}: .*file://.*DPSERVE_ALLOW_HOST_PATH"):
        build_job(model, make_ctx(model))


def test_oci_dataset_uses_the_fixed_file_name(make_model, make_ctx):
    model = make_model(spec={"retraining": {"dataset": "oci://registry.example/data/triage:q1"}})
    job = build_job(model, make_ctx(model))
    vols = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert vols["dataset"]["image"]["reference"] == "registry.example/data/triage:q1"
    assert arg_map(train_container(job)["args"])["--dataset"] == "/data/dataset.npz"


def test_unwritable_or_missing_inputs_name_the_field(make_model, make_ctx):
    oci = make_model(spec={"model": {"artifact": "oci://registry.example/models/triage:v1"}})
    with pytest.raises(ValueError, match=r"spec\.model\.artifact"):
        build_job(oci, make_ctx(oci))
    no_file = make_model(spec={"retraining": {"dataset": "pvc://datasets"}})
    with pytest.raises(ValueError, match=r"spec\.retraining\.dataset"):
        build_job(no_file, make_ctx(no_file))
    none = make_model(spec={"retraining": None, "onBudgetExhausted": "ScaleToZero"})
    with pytest.raises(ValueError, match=r"spec\.retraining"):
        build_job(none, make_ctx(none))


def test_job_safety_settings(make_model, make_ctx, assert_restricted):
    model = make_model(spec={"retraining": {"backoffLimit": 4}})
    job = build_job(model, make_ctx(model))
    spec = job["spec"]
    assert spec["backoffLimit"] == 4
    assert "ttlSecondsAfterFinished" not in spec  # the operator reads the result first
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod  # never the budget-leasing identity
    assert_restricted(pod)
    c = train_container(job)
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["resources"]["requests"] == c["resources"]["limits"]
    assert spec["podFailurePolicy"]["rules"][0]["action"] == "Ignore"
    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "training"
    assert labels["app.kubernetes.io/version"] == "v2"
    assert job["metadata"]["ownerReferences"][0]["controller"] is True


# --- LoRA (DP-PEFT) retraining -------------------------------------------------------------

LATEST = kubernetes_validate.latest_version()


def lora_model(make_model, lora=None, *, artifact=None, dataset=None, **overrides):
    """A DP-SGD state-dict model whose retraining adapts a frozen base with LoRA; served with
    gaussian output noise, so its queries spend and the served version may be the base (a
    mechanism-none model must name another base: the CRD's rule)."""
    model = {
        "format": "state-dict",
        "training": {"noiseMultiplier": "1.2", "sampleRate": "0.005", "steps": 6000},
    }
    retraining = {"mode": "dpsgd", "teachers": None, "lora": lora or {"rank": 4}}
    if artifact is not None:
        model["artifact"] = artifact
    if dataset is not None:
        retraining["dataset"] = dataset
    spec = {
        "model": model,
        "serving": {"mechanism": {"type": "gaussian", "teachers": None, "noiseMultiplier": "2",
                                  "clipNorm": "1", "sensitivity": "2"}},
        "retraining": retraining,
    }
    return make_model(spec=spec, **overrides)


def claims(pod):
    return [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
            if "persistentVolumeClaim" in v]  # fmt: skip


def test_lora_mounts_the_served_version_read_only_and_passes_the_lora_flags(
    make_model, make_ctx, assert_restricted
):
    model = lora_model(make_model, {"rank": 4, "targetModules": ["1", "3"]})
    job = build_job(model, make_ctx(model))
    pod = job["spec"]["template"]["spec"]
    c = train_container(job)
    args = arg_map(c["args"])
    assert args["--lora-base"] == "/base"
    assert (args["--lora-rank"], args["--lora-alpha"], args["--lora-targets"]) == ("4", "8", "1,3")
    assert args["--mode"] == "dpsgd"
    assert "--architecture" not in args  # the base gives it
    assert "--teachers" not in args
    # Base (models/triage/v1) and output (models/triage) live on one claim: one volume,
    # writable, mounted twice; the base mount itself is read-only.
    assert claims(pod) == ["datasets", "models"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/base"] == {
        "name": "output", "mountPath": "/base", "readOnly": True, "subPath": "triage/v1",
    }  # fmt: skip
    assert mounts["/output"] == {"name": "output", "mountPath": "/output", "subPath": "triage"}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["output"]["persistentVolumeClaim"] == {"claimName": "models"}
    assert_restricted(pod)
    kubernetes_validate.validate(job, LATEST, strict=True)


def test_lora_base_follows_the_served_version_and_defaults_alpha(make_model, make_ctx):
    model = lora_model(
        make_model, {"rank": 16},
        status={"modelVersion": "v2", "artifact": "pvc://models/triage/v2"},
    )  # fmt: skip
    c = train_container(build_job(model, make_ctx(model)))
    args = arg_map(c["args"])
    assert (args["--lora-rank"], args["--lora-alpha"], args["--version"]) == ("16", "32", "v3")
    assert "--lora-targets" not in args  # every Linear / Conv2d of the base
    base = next(m for m in c["volumeMounts"] if m["mountPath"] == "/base")
    assert base["subPath"] == "triage/v2" and base["readOnly"] is True
    assert training_plan(model, make_ctx(model)).lora_base == parse_uri(
        "pvc://models/triage/v2", "x"
    )


@pytest.mark.parametrize(
    ("base", "volume", "sub_path"),
    [
        ("pvc://public-models/digits/v3",
         {"name": "lora-base", "persistentVolumeClaim": {"claimName": "public-models",
                                                         "readOnly": True}},
         {"subPath": "digits/v3"}),
        ("oci://registry.example/models/digits:v3",
         {"name": "lora-base", "image": {"reference": "registry.example/models/digits:v3",
                                         "pullPolicy": "IfNotPresent"}},
         {}),  # the image's root is the artifact
    ],
)  # fmt: skip
def test_explicit_lora_base_gets_its_own_read_only_volume(
    make_model, make_ctx, base, volume, sub_path
):
    model = lora_model(make_model, {"rank": 8, "alpha": "4.5", "base": base})
    job = build_job(model, make_ctx(model))
    pod = job["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["dataset", "output", "lora-base", "train-tmp"]
    assert pod["volumes"][2] == volume
    mount = next(m for m in train_container(job)["volumeMounts"] if m["mountPath"] == "/base")
    assert mount == {"name": "lora-base", "mountPath": "/base", "readOnly": True, **sub_path}
    assert arg_map(train_container(job)["args"])["--lora-alpha"] == "4.5"
    kubernetes_validate.validate(job, LATEST, strict=True)


def test_file_lora_base_is_a_read_only_host_path(make_model, make_ctx, assert_restricted):
    model = lora_model(
        make_model, artifact="file:///srv/models/triage", dataset="file:///srv/data/digits.npz"
    )
    job = build_job(model, make_ctx(model, allow_host_path_artifacts=True))
    pod = job["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["lora-base"]["hostPath"] == {"path": "/srv/models/triage", "type": "Directory"}
    assert vols["output"]["hostPath"] == {"path": "/srv/models", "type": "DirectoryOrCreate"}
    mount = next(m for m in train_container(job)["volumeMounts"] if m["mountPath"] == "/base")
    assert mount == {"name": "lora-base", "mountPath": "/base", "readOnly": True}
    assert_restricted(pod, allow_host_path=True)


def test_dataset_on_the_output_claim_shares_one_volume(make_model, make_ctx):
    """Two pod volumes naming one claim can hang the pod: mounts share the volume instead."""
    model = make_model(spec={"retraining": {"dataset": "pvc://models/data/2027q1.npz"}})
    job = build_job(model, make_ctx(model))
    pod = job["spec"]["template"]["spec"]
    assert claims(pod) == ["models"]
    (shared,) = (v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert shared["persistentVolumeClaim"] == {"claimName": "models"}  # writable: output
    mounts = {m["mountPath"]: m for m in train_container(job)["volumeMounts"]}
    assert mounts["/data"] == {
        "name": shared["name"], "mountPath": "/data", "readOnly": True, "subPath": "data",
    }  # fmt: skip
    assert mounts["/output"]["name"] == shared["name"] and "readOnly" not in mounts["/output"]
    kubernetes_validate.validate(job, LATEST, strict=True)


def test_lora_job_is_deterministic(make_model, make_ctx):
    model = lora_model(make_model, {"rank": 4, "targetModules": ["features.0", "head"]})
    first = build_job(model, make_ctx(model))
    assert first == build_job(lora_model(make_model, {"rank": 4, "targetModules": [
        "features.0", "head"]}), make_ctx(model))  # fmt: skip
    assert arg_map(train_container(first)["args"])["--lora-targets"] == "features.0,head"


def test_lora_base_uri_errors_name_the_field(make_model, make_ctx):
    model = lora_model(make_model, {"base": "pvc://Not_A_Claim/x"})
    with pytest.raises(ValueError, match=r"spec\.retraining\.lora\.base"):
        build_job(model, make_ctx(model))
