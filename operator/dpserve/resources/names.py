"""Every name, path and port of the objects the operator renders for a PrivateModel.

One module so that the ledger (which authenticates ``<model>-dpserve``), the controllers and
the builders never spell a name twice.
"""

from __future__ import annotations

import hashlib
import re

# --- object names -------------------------------------------------------------------------

SERVICE_ACCOUNT_SUFFIX = "-dpserve"
FILTER_CONFIGMAP_SUFFIX = "-filter"
TRAINING_NETWORK_POLICY_SUFFIX = "-train"
TRAIN_JOB_INFIX = "-train-"
ERASE_JOB_INFIX = "-erase-"
ERASURE_CONFIGMAP_SUFFIX = "-erasure"

DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_MAX = 63
SUBDOMAIN_MAX = 253


def validate_model_name(name: str) -> str:
    """The PrivateModel's name also names its Service: it must be a DNS-1035 label."""
    if len(name) > LABEL_MAX or not DNS1035_LABEL.match(name):
        raise ValueError(
            f"metadata.name {name!r}: a PrivateModel name must be a DNS-1035 label (lower-case "
            f"letters, digits and '-', starting with a letter, at most {LABEL_MAX} characters) "
            "because it names the model's Service"
        )
    return name


def bounded(name: str, limit: int = LABEL_MAX) -> str:
    """``name`` if it fits in ``limit`` characters, else a deterministic shortened form.

    The shortened form keeps a readable prefix and appends 8 hex digits of the SHA-256 of
    the full name, so distinct long names stay distinct and the same input always gives the
    same name.
    """
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    prefix = name[: limit - len(digest) - 1].rstrip("-.")
    return f"{prefix}-{digest}"


def service_account_name(model: str) -> str:
    """The model's pods' ServiceAccount: the identity the ledger authenticates (fixed)."""
    return bounded(model + SERVICE_ACCOUNT_SUFFIX, SUBDOMAIN_MAX)


def deployment_name(model: str) -> str:
    return model


def service_name(model: str) -> str:
    return model


def filter_configmap_name(model: str) -> str:
    return bounded(model + FILTER_CONFIGMAP_SUFFIX, SUBDOMAIN_MAX)


def network_policy_name(model: str) -> str:
    return model


def training_network_policy_name(model: str) -> str:
    return bounded(model + TRAINING_NETWORK_POLICY_SUFFIX, SUBDOMAIN_MAX)


def pod_disruption_budget_name(model: str) -> str:
    return model


def train_job_name(model: str, version: str) -> str:
    """``<model>-train-<version>``: one Job per version, never two.

    Bounded to 63 characters because the Job's name becomes a pod label value.
    """
    return bounded(f"{model}{TRAIN_JOB_INFIX}{version}", LABEL_MAX)


def erase_job_name(model: str, version: str) -> str:
    """``<model>-erase-<version>``: the PATE unlearning Job of a version (one per version,
    never confused with the exhaustion retrain's ``-train-`` Job)."""
    return bounded(f"{model}{ERASE_JOB_INFIX}{version}", LABEL_MAX)


def erasure_configmap_name(model: str) -> str:
    """The model's erased record ids, read by every training Job of the model."""
    return bounded(model + ERASURE_CONFIGMAP_SUFFIX, SUBDOMAIN_MAX)


def model_key(namespace: str, model: str) -> str:
    """``<namespace>/<name>``: how the ledger and the lease protocol name a model."""
    return f"{namespace}/{model}"


# --- containers, volumes, paths, ports ------------------------------------------------------

MODEL_CONTAINER = "model"
FILTER_CONTAINER = "filter"
TRAIN_CONTAINER = "train"

ARTIFACT_VOLUME = "model-artifact"
FILTER_CONFIG_VOLUME = "filter-config"
TOKEN_VOLUME = "ledger-token"
MODEL_TMP_VOLUME = "model-tmp"
FILTER_TMP_VOLUME = "filter-tmp"
TRAIN_TMP_VOLUME = "train-tmp"
DATASET_VOLUME = "dataset"
OUTPUT_VOLUME = "output"
LORA_BASE_VOLUME = "lora-base"
ERASURE_VOLUME = "erasure"

ARTIFACT_MOUNT = "/models/current"
FILTER_CONFIG_DIR = "/etc/dpserve"
FILTER_CONFIG_FILE = "filter.json"
FILTER_CONFIG_PATH = f"{FILTER_CONFIG_DIR}/{FILTER_CONFIG_FILE}"
TOKEN_DIR = "/var/run/secrets/dpserve"
TOKEN_FILE = "token"
TOKEN_PATH = f"{TOKEN_DIR}/{TOKEN_FILE}"
# The CA that signed the ledger's certificate, beside filter.json in the filter ConfigMap.
LEDGER_CA_FILE = "ledger-ca.crt"
LEDGER_CA_PATH = f"{FILTER_CONFIG_DIR}/{LEDGER_CA_FILE}"
TMP_DIR = "/tmp"
FINGERPRINT_FILE = "fingerprints.json"
FINGERPRINT_PATH = f"{ARTIFACT_MOUNT}/{FINGERPRINT_FILE}"
DATASET_DIR = "/data"
OCI_DATASET_FILE = "dataset.npz"  # convention for oci:// datasets: the image's root holds it
OUTPUT_DIR = "/output"
LORA_BASE_DIR = "/base"  # the frozen base artifact of a LoRA retrain, read-only
UNLEARN_BASE_DIR = "/base"  # the served PATE ensemble an erasure starts from, read-only
ERASURE_DIR = "/erasure"  # the <model>-erasure ConfigMap, read-only
ERASED_IDS_KEY = "ids.json"  # JSON list of erased ids, append order (what the Job reads)
ERASURE_REQUESTS_KEY = "requests.json"  # which request listed which ids, mode, deadline
ERASED_IDS_PATH = f"{ERASURE_DIR}/{ERASED_IDS_KEY}"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"

MODEL_HOST = "127.0.0.1"
MODEL_PORT = 8081
FILTER_PORT = 8080
FILTER_PORT_NAME = "http"
UPSTREAM_URL = f"http://{MODEL_HOST}:{MODEL_PORT}"

TOKEN_AUDIENCE = "dpserve-ledger"
TOKEN_EXPIRATION_SECONDS = 3600
RUN_AS_USER = 65532  # the "nonroot" user of distroless-style images
