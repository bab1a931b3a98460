"""deploy/: Kubernetes manifests validated offline, generated files that cannot drift from the
locus config, the egress NetworkPolicy generator, and policy hot reload through a ConfigMap
volume's atomic symlink swap (the layout the kubelet writes, built here on disk)."""

from __future__ import annotations

import copy
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from locus_llm.cli import main
from locus_llm.config import config_from_dict, load_config
from locus_llm.deploy import network_policy, policy_configmap, proxy_config
from locus_llm.errors import ConfigError
from locus_llm.router import Router

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ISTIO = DEPLOY / "istio"
KUBERNETES = "1.37"  # the newest schemas kubernetes-validate ships (no network needed)
GENERATED = ("config-configmap.yaml", "policy-configmap.yaml", "networkpolicy.yaml")


def documents(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def by_kind(kind: str, name: str) -> dict[str, Any]:
    matches = [d for _, d in documents(K8S) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


# --- the manifests -------------------------------------------------------------------------------


def test_every_manifest_is_valid_against_the_kubernetes_schemas():
    docs = documents(K8S)
    kinds = {d["kind"] for _, d in docs}
    assert {
        "Namespace",
        "Deployment",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "StatefulSet",
    } <= kinds
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at "
                f"{'.'.join(map(str, exc.path))}"
            )


def test_the_validator_rejects_a_broken_manifest():
    """The check above can fail: a wrong type and an unknown field are caught offline."""
    broken = copy.deepcopy(by_kind("Deployment", "locus-gateway"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError, match="two"):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)
    misspelt = copy.deepcopy(by_kind("Deployment", "locus-gateway"))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES, strict=True)


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk


@pytest.mark.parametrize("name", ["locus-gateway", "locus-mcp"])
def test_workloads_are_wired_to_their_config_policy_service_and_scaling(name: str):
    deployment = by_kind("Deployment", name)
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    [container] = pod["spec"]["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    env = {e["name"]: e for e in container["env"]}
    # the policy folder is a whole-volume mount (subPath mounts are never updated by the kubelet)
    assert volumes["policy"]["configMap"]["name"] == "locus-policy"
    assert "subPath" not in mounts["policy"]
    assert env["LOCUS_POLICY_BUNDLE"]["value"] == mounts["policy"]["mountPath"]
    config_path = container["args"][container["args"].index("--config") + 1]
    assert volumes["config"]["configMap"]["name"] == "locus-config"
    assert config_path == mounts["config"]["mountPath"] + "/config.yaml"
    assert "config.yaml" in by_kind("ConfigMap", "locus-config")["data"]
    # the container's command line is one its program accepts (flags renamed upstream show here)
    if name == "locus-gateway":
        from locus_llm.cli import build_parser

        parsed = build_parser().parse_args(container["args"])
        assert parsed.config == config_path and parsed.host == "0.0.0.0"
    else:
        from locus_mcp.cli import build_parser as mcp_parser

        parsed = mcp_parser().parse_args(container["args"])
        assert str(parsed.config) == config_path and parsed.token_env in env
    # probes: HTTP /health for the gateway; locus-mcp checks Host headers and has no /health
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if name == "locus-gateway":
            assert container[probe]["httpGet"]["path"] == "/health"
        else:
            assert "tcpSocket" in container[probe]
    # the egress policy, the Service, the HPA and the PDB all select these pods
    egress = by_kind("NetworkPolicy", "locus-egress")["spec"]["podSelector"]["matchLabels"]
    assert egress.items() <= labels.items()
    service = by_kind("Service", name)
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    assert by_kind("HorizontalPodAutoscaler", name)["spec"]["scaleTargetRef"]["name"] == name
    pdb = by_kind("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"]
    assert pdb.items() <= labels.items()


def test_the_router_config_in_the_configmap_is_valid_and_uses_redis(tmp_path: Path):
    text = by_kind("ConfigMap", "locus-config")["data"]["config.yaml"]
    (tmp_path / "config.yaml").write_text(text)
    config = load_config(tmp_path / "config.yaml")
    assert config.state == "redis://redis.locus.svc.cluster.local:6379/0"
    assert str(config.policy.bundle) == "/etc/locus/policy"
    redis = by_kind("Service", "redis")
    assert redis["spec"]["ports"][0]["port"] == 6379


# --- Istio: CRDs have no schema in kubernetes-validate; check what each kind requires ------------

ISTIO_REQUIRED = {
    "PeerAuthentication": [("spec", "mtls", "mode")],
    "DestinationRule": [("spec", "host"), ("spec", "trafficPolicy")],
    "ServiceEntry": [("spec", "hosts"), ("spec", "ports"), ("spec", "resolution")],
    "Sidecar": [("spec", "outboundTrafficPolicy", "mode")],
}


def lookup(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = doc
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise KeyError(".".join(path))
        node = node[key]
    return node


def test_istio_resources_parse_and_have_their_required_fields():
    docs = documents(ISTIO)
    assert {d["kind"] for _, d in docs} == set(ISTIO_REQUIRED)
    for name, doc in docs:
        group = doc["apiVersion"].split("/")[0]
        assert group in ("security.istio.io", "networking.istio.io"), name
        assert doc["metadata"]["name"] and doc["metadata"]["namespace"], name
        for path in ISTIO_REQUIRED[doc["kind"]]:
            assert lookup(doc, path) not in (None, "", [], {}), f"{name}: {'.'.join(path)}"
    modes = {
        lookup(d, ("spec", "mtls", "mode")) for _, d in docs if d["kind"] == "PeerAuthentication"
    }
    assert modes == {"STRICT"}
    sidecar = next(d for _, d in docs if d["kind"] == "Sidecar")
    assert sidecar["spec"]["outboundTrafficPolicy"]["mode"] == "REGISTRY_ONLY"


def test_istio_hosts_are_the_configured_loci():
    """The DestinationRule guards the on-prem locus's host; the ServiceEntry names the cloud's."""
    config = load_config(DEPLOY / "config" / "config.yaml")
    hosts = {locus.zone: locus.api_base.split("/")[2].split(":")[0] for locus in config.loci}
    docs = dict((d["metadata"]["name"], d) for _, d in documents(ISTIO))
    vllm = docs["vllm"]["spec"]
    assert vllm["host"] == hosts["onprem"]
    outlier = vllm["trafficPolicy"]["outlierDetection"]
    assert outlier["consecutive5xxErrors"] >= 1 and outlier["baseEjectionTime"]
    assert outlier["maxEjectionPercent"] < 100
    assert docs["cloud-llm"]["spec"]["hosts"] == [hosts["cloud"]]


# --- generated files cannot drift -----------------------------------------------------------------


def test_generated_manifests_match_the_config_and_the_bundle(tmp_path: Path):
    """deploy/render.sh run now writes exactly the committed files: the NetworkPolicy, the
    router config and the policy bundle in the cluster are the ones in the repository."""
    locus = Path(sys.executable).parent / "locus"
    result = subprocess.run(
        ["bash", str(DEPLOY / "render.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "LOCUS": str(locus), "OUT": str(tmp_path)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in GENERATED:
        assert (tmp_path / name).read_text() == (K8S / name).read_text(), (
            f"deploy/k8s/{name} is stale: run deploy/render.sh"
        )


def test_network_policy_allows_exactly_the_loci_redis_and_dns():
    config = config_from_dict(
        {
            "loci": [
                {"name": "device", "zone": "device", "model": "locus-onnx/smollm2"},
                {
                    "name": "sidecar",
                    "zone": "device",
                    "model": "hosted_vllm/m",
                    "api_base": "http://127.0.0.1:8000/v1",
                },  # in the pod: loopback, no rule
                {
                    "name": "vllm",
                    "zone": "onprem",
                    "model": "hosted_vllm/m",
                    "api_base": "http://vllm.inference:8000/v1",
                },
                {
                    "name": "gpu-box",
                    "zone": "onprem",
                    "model": "hosted_vllm/m",
                    "api_base": "http://10.1.2.3:9000/v1",
                },
                {
                    "name": "cloud",
                    "zone": "cloud",
                    "model": "openai/gpt-4o-mini",
                    "api_base": "https://api.example.com/v1",
                },
            ],
            "state": "redis://redis:6379/0",
        }
    )
    policy = network_policy(
        config, cidrs={"api.example.com": ["198.51.100.0/24"]}, pods={"redis": {"app": "redis"}}
    )
    rules = policy["spec"]["egress"]
    assert policy["spec"]["policyTypes"] == ["Egress"]
    allowed = [
        (json.dumps(r["to"], sort_keys=True), sorted(p["port"] for p in r["ports"])) for r in rules
    ]
    assert len(rules) == 5  # DNS, vllm, the IP, the cloud range, Redis; the device has no rule
    assert allowed[0][1] == [53, 53]
    assert [r["to"][0]["podSelector"]["matchLabels"] for r in rules if "podSelector" in r["to"][0]][
        1:
    ] == [{"app.kubernetes.io/name": "vllm"}, {"app": "redis"}]
    blocks = [r["to"][0]["ipBlock"]["cidr"] for r in rules if "ipBlock" in r["to"][0]]
    assert blocks == ["10.1.2.3/32", "198.51.100.0/24"]
    assert [r["ports"][0]["port"] for r in rules[1:]] == [8000, 9000, 443, 6379]
    namespaces = [
        r["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for r in rules
        if "namespaceSelector" in r["to"][0]
    ]
    assert namespaces == ["kube-system", "inference", "locus"]
    kubernetes_validate.validate(policy, KUBERNETES, strict=True)


def test_adding_a_locus_adds_its_egress_and_nothing_else():
    base = {
        "loci": [
            {
                "name": "a",
                "zone": "onprem",
                "model": "hosted_vllm/a",
                "api_base": "http://10.0.0.1:8000/v1",
            }
        ]
    }
    before = network_policy(config_from_dict(base))["spec"]["egress"]
    base["loci"].append(
        {
            "name": "b",
            "zone": "onprem",
            "model": "hosted_vllm/b",
            "api_base": "http://10.0.0.2:8001/v1",
        }
    )
    after = network_policy(config_from_dict(base))["spec"]["egress"]
    assert after[: len(before)] == before
    assert after[len(before) :] == [
        {"to": [{"ipBlock": {"cidr": "10.0.0.2/32"}}], "ports": [{"protocol": "TCP", "port": 8001}]}
    ]


def test_an_external_host_without_an_address_range_is_refused(tmp_path: Path, capsys):
    config = {
        "loci": [
            {
                "name": "cloud",
                "zone": "cloud",
                "model": "openai/gpt-4o-mini",
                "api_base": "https://api.openai.com/v1",
            }
        ]
    }
    with pytest.raises(ConfigError, match=r"api\.openai\.com.*--cidr"):
        network_policy(config_from_dict(config))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["deploy", "networkpolicy", "--config", str(path)]) == 1
    assert "error: api.openai.com: a NetworkPolicy matches addresses" in capsys.readouterr().err
    assert (
        main(
            [
                "deploy",
                "networkpolicy",
                "--config",
                str(path),
                "--cidr",
                "api.openai.com=not-a-range",
            ]
        )
        == 1
    )
    assert "not an address range" in capsys.readouterr().err


def test_litellm_proxy_config_names_one_deployment_per_locus_and_the_hook(capsys):
    path = DEPLOY / "config" / "config.yaml"
    config = load_config(path)
    assert main(["deploy", "litellm-config", "--config", str(path)]) == 0
    proxy = yaml.safe_load(capsys.readouterr().out)
    assert proxy == proxy_config(config)
    names = [d["model_name"] for d in proxy["model_list"]]
    assert names == [locus.name for locus in config.loci]
    cloud = next(d for d in proxy["model_list"] if d["model_name"] == "cloud")["litellm_params"]
    assert cloud["api_key"] == "os.environ/LOCUS_CLOUD_API_KEY"  # the key itself never lands here
    [callback] = proxy["litellm_settings"]["callbacks"]
    module, _, attribute = callback.rpartition(".")
    hook = getattr(importlib.import_module(module), attribute)
    assert type(hook).__name__ == "LocusProxyHook" and hook._router is None  # built lazily


# --- policy hot reload through a ConfigMap volume ---------------------------------------------


def publish(volume: Path, files: dict[str, str], stamp: str) -> Path:
    """What the kubelet's atomic writer does on a ConfigMap update: write a new timestamped
    folder, point `..data` at it by renaming a fresh symlink over it, keep one visible symlink per
    key through `..data`, then delete the old folder."""
    old = (volume / "..data").resolve() if (volume / "..data").exists() else None
    revision = volume / f"..{stamp}"
    revision.mkdir()
    for key, text in files.items():
        (revision / key).write_text(text)
    os.symlink(revision.name, volume / "..data_tmp")
    os.rename(volume / "..data_tmp", volume / "..data")  # the atomic swap
    for key in files:
        if not (volume / key).is_symlink():
            os.symlink(f"..data/{key}", volume / key)
    if old is not None:
        shutil.rmtree(old)
    return revision


def test_a_configmap_update_is_hot_reloaded_without_a_restart(tmp_path: Path, analyzer):
    files = by_kind("ConfigMap", "locus-policy")["data"]  # exactly what the cluster mounts
    volume = tmp_path / "policy"
    volume.mkdir()
    publish(volume, files, "2026_11_25_22_00_00.000000001")
    assert (volume / "routing.rego").is_symlink()
    router = Router(
        config_from_dict(
            {
                "loci": [
                    {
                        "name": "onprem",
                        "zone": "onprem",
                        "model": "hosted_vllm/m",
                        "api_base": "http://10.0.0.1:8000/v1",
                    },
                    {
                        "name": "cloud",
                        "zone": "cloud",
                        "model": "openai/m",
                        "api_base": "http://10.0.0.2:8000/v1",
                        "usd_per_mtok_in": 1,
                        "usd_per_mtok_out": 1,
                    },
                ],
                "policy": {"bundle": str(volume)},
            }
        ),
        analyzer=analyzer,
    )
    before = router.policy_check({"data_class": "INTERNAL"})
    assert before.allowed == ["cloud", "onprem"]
    # the same size as before, so only the swap (new inodes) can reveal the change
    data = files["data.json"]
    tightened = data.replace(
        '"INTERNAL": [\n        "device",\n        "onprem",\n        "cloud"',
        '"INTERNAL": [\n        "device",\n        "onprem",\n        "clouX"',
    )
    assert tightened != data and len(tightened) == len(data)
    # ... and with the old timestamps too (a coarse clock, or a copy that keeps them)
    times = {key: os.stat(volume / key) for key in [*files, "."]}
    publish(volume, {**files, "data.json": tightened}, "2026_11_25_22_05_00.000000002")
    for key, was in times.items():
        os.utime(volume / key, ns=(was.st_atime_ns, was.st_mtime_ns))
    after = router.policy_check({"data_class": "INTERNAL"})
    assert after.allowed == ["onprem"]
    assert after.revision != before.revision
    assert "cloud" in after.denied
    # a broken revision is rejected and the last good one keeps serving; a fixed one applies
    publish(
        volume,
        {**files, "routing.rego": files["routing.rego"] + "\nnot rego at all\n"},
        "2026_11_25_22_10_00.000000003",
    )
    assert router.policy_check({"data_class": "INTERNAL"}).revision == after.revision
    assert "routing.rego" in (router.policy.last_reload_error or "")
    publish(volume, files, "2026_11_25_22_15_00.000000004")
    assert router.policy_check({"data_class": "INTERNAL"}).revision == before.revision


def test_policy_configmap_refuses_a_broken_bundle(tmp_path: Path):
    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "locus_llm" / "policies", bundle)
    (bundle / "routing.rego").write_text("package locus.routing\n\nx := {\n")
    with pytest.raises(Exception, match=r"routing\.rego"):
        policy_configmap(bundle)
