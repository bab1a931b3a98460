"""`locus deploy …`: deployment files generated from the locus config, so they cannot drift from it.

    locus deploy networkpolicy --config router.yaml --cidr api.example.com=203.0.113.10/32
    locus deploy litellm-config --config router.yaml
    locus deploy policy-configmap --bundle locus_llm/policies
    locus deploy config-configmap --config router.yaml

The NetworkPolicy lets the locus pods reach the configured loci and nothing else (plus DNS and
the Redis state backend): sovereignty enforced by the network as well as by the policy. A
NetworkPolicy matches addresses, not names, so each locus host becomes (loopback needs no rule):
  - an IP literal: that address (/32, or /128 for IPv6);
  - an in-cluster Service name (`svc`, `svc.ns`, `svc.ns.svc[.cluster.local]`): the pods of that
    namespace labelled `app.kubernetes.io/name: svc` (or what `--pods HOST=KEY=VALUE` says);
  - any other host name: the ranges given with `--cidr HOST=CIDR` (the provider's published
    ranges, or the egress gateway's); without them the command refuses rather than open the
    whole internet. Name-based egress needs a mesh egress gateway or an FQDN-aware CNI.

The LiteLLM Proxy config has one deployment per locus, named after it, and the locus hook. The
policy ConfigMap holds the bundle's files (tests excluded); mounted as a folder (not with subPath)
it is updated in place by the kubelet and hot-reloaded by every replica without a restart.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from locus_llm.config import PACKAGED_BUNDLE, LocusConfig, load_config
from locus_llm.errors import ConfigError
from locus_llm.policy.engine import bundle_files, load_bundle

LOCAL_PROVIDER = "locus-onnx/"  # in-process loci: no network, no proxy deployment
PROXY_CALLBACK = "locus_llm.litellm_proxy.locus_hook"
EGRESS_LABEL = {"locus-llm/egress": "loci"}  # the pods the generated NetworkPolicy applies to
DEFAULT_PORTS = {"http": 80, "https": 443, "redis": 6379, "rediss": 6379}


def locus_endpoints(config: LocusConfig) -> list[tuple[str, str, int]]:
    """(locus name, host, port) of every locus reached over the network."""
    endpoints = []
    for locus in config.loci:
        if locus.model.startswith(LOCAL_PROVIDER):
            continue
        if not locus.api_base:
            raise ConfigError(
                f"locus {locus.name!r} has no api_base: its address cannot be put "
                "in a network policy (set api_base, e.g. the provider's URL)"
            )
        host, port = host_port(locus.api_base, f"locus {locus.name!r} api_base")
        endpoints.append((locus.name, host, port))
    return endpoints


def host_port(url: str, what: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if not parts.hostname:
        raise ConfigError(f"{what} {url!r}: expected a URL such as https://host:port/v1")
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    if port is None:
        raise ConfigError(f"{what} {url!r}: no port and unknown scheme {parts.scheme!r}")
    return parts.hostname, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def service_of(host: str) -> tuple[str, str | None] | None:
    """(service, namespace or None) when `host` names an in-cluster Service, else None."""
    labels = host.split(".")
    if len(labels) == 1:
        return host, None
    if len(labels) == 2 or labels[2:] in (["svc"], ["svc", "cluster", "local"]):
        return labels[0], labels[1]
    return None


def peer(
    host: str, *, cidrs: dict[str, list[str]], pods: dict[str, dict[str, str]], namespace: str
) -> list[dict[str, Any]]:
    """The NetworkPolicy peers (`to:` entries) that stand for one host."""
    if host in cidrs:
        return [{"ipBlock": {"cidr": cidr}} for cidr in cidrs[host]]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return [{"ipBlock": {"cidr": f"{address}/{address.max_prefixlen}"}}]
    service = service_of(host)
    if service is None:
        raise ConfigError(
            f"{host}: a NetworkPolicy matches addresses, not names; pass --cidr {host}=CIDR "
            "(the provider's published ranges, or your egress gateway's address) or reach it "
            "through an in-cluster Service"
        )
    name, ns = service
    return [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns or namespace}},
            "podSelector": {"matchLabels": pods.get(host, {"app.kubernetes.io/name": name})},
        }
    ]


def network_policy(
    config: LocusConfig,
    *,
    namespace: str = "locus",
    name: str = "locus-egress",
    cidrs: dict[str, list[str]] | None = None,
    pods: dict[str, dict[str, str]] | None = None,
    istio: bool = False,
) -> dict[str, Any]:
    """Egress for the locus pods: the loci, the Redis state backend and DNS; nothing else
    (with `istio`, also the control plane the sidecar needs for its configuration and certs)."""
    cidrs, pods = cidrs or {}, pods or {}
    rules: list[dict[str, Any]] = [
        {
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                    },
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }
            ],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }
    ]
    if istio:
        rules.append(
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "istio-system"}
                        },
                        "podSelector": {"matchLabels": {"app": "istiod"}},
                    }
                ],
                "ports": [{"protocol": "TCP", "port": 15012}],
            }
        )
    targets: list[tuple[str, str, int]] = list(locus_endpoints(config))
    state = getattr(config, "state", "memory")
    if isinstance(state, str) and state.startswith(("redis://", "rediss://")):
        host, port = host_port(state, "state")
        targets.append(("state (Redis)", host, port))
    seen: set[tuple[str, int]] = set()
    for _, host, port in targets:
        if (host, port) in seen or is_loopback(host):  # loopback never leaves the pod
            continue
        seen.add((host, port))
        rules.append(
            {
                "to": peer(host, cidrs=cidrs, pods=pods, namespace=namespace),
                "ports": [{"protocol": "TCP", "port": port}],
            }
        )
    listed = ", ".join(f"{what}={host}:{port}" for what, host, port in targets)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "locus"},
            "annotations": {
                "locus-llm/generated-by": "locus deploy networkpolicy",
                "locus-llm/egress-targets": listed,
            },
        },
        "spec": {
            "podSelector": {"matchLabels": dict(EGRESS_LABEL)},
            "policyTypes": ["Egress"],
            "egress": rules,
        },
    }


def proxy_model_list(config: LocusConfig) -> list[dict[str, Any]]:
    """The proxy's `model_list`: one deployment per networked locus, named after it.

    Keys stay in the environment (`os.environ/NAME`, LiteLLM's syntax for a secret reference).
    """
    deployments = []
    for locus in config.loci:
        if locus.model.startswith(LOCAL_PROVIDER):
            continue
        params: dict[str, Any] = {**locus.params, "model": locus.model, "timeout": locus.timeout_s}
        if locus.api_base:
            params["api_base"] = locus.api_base
        if locus.api_key_env:
            params["api_key"] = f"os.environ/{locus.api_key_env}"
        deployments.append(
            {
                "model_name": locus.name,
                "litellm_params": params,
                "model_info": {"locus_zone": locus.zone},
            }
        )
    return deployments


def proxy_config(config: LocusConfig, *, callback: str = PROXY_CALLBACK) -> dict[str, Any]:
    """A LiteLLM Proxy config for a locus config: its deployments and the locus hook."""
    return {
        "model_list": proxy_model_list(config),
        "litellm_settings": {"callbacks": [callback]},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }


def configmap(
    name: str, files: dict[str, str], *, namespace: str, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "locus"},
            **({"annotations": annotations} if annotations else {}),
        },
        "data": files,
    }


def policy_configmap(
    bundle: Path = PACKAGED_BUNDLE, *, namespace: str = "locus", name: str = "locus-policy"
) -> dict[str, Any]:
    """The policy bundle as a ConfigMap, after checking that it loads (a broken bundle is
    refused here rather than by every replica)."""
    bundle = Path(bundle)
    revision = load_bundle(bundle).revision
    files = [
        *bundle_files(bundle),
        *([bundle / "data.json"] if (bundle / "data.json").exists() else []),
    ]
    return configmap(
        name,
        {path.name: path.read_text(encoding="utf-8") for path in files},
        namespace=namespace,
        annotations={"locus-llm/policy-revision": revision},
    )


def config_configmap(
    path: Path, *, namespace: str = "locus", name: str = "locus-config"
) -> dict[str, Any]:
    """The locus config file as a ConfigMap (key config.yaml), after validating it."""
    load_config(path)
    return configmap(
        name, {"config.yaml": Path(path).read_text(encoding="utf-8")}, namespace=namespace
    )


def parse_pairs(values: list[str], flag: str) -> dict[str, list[str]]:
    pairs: dict[str, list[str]] = {}
    for value in values:
        host, sep, rest = value.partition("=")
        if not sep or not host or not rest:
            raise ConfigError(f"{flag} {value!r}: expected HOST=VALUE")
        pairs.setdefault(host, []).append(rest)
    return pairs


def parse_cidrs(values: list[str]) -> dict[str, list[str]]:
    cidrs = parse_pairs(values, "--cidr")
    for host, blocks in cidrs.items():
        for block in blocks:
            try:
                ipaddress.ip_network(block, strict=False)
            except ValueError:
                raise ConfigError(f"--cidr {host}={block}: not an address range") from None
    return cidrs


def parse_pods(values: list[str]) -> dict[str, dict[str, str]]:
    pods: dict[str, dict[str, str]] = {}
    for host, labels in parse_pairs(values, "--pods").items():
        for label in labels:
            key, sep, value = label.partition("=")
            if not sep:
                raise ConfigError(f"--pods {host}={label}: expected HOST=KEY=VALUE")
            pods.setdefault(host, {})[key] = value
    return pods


def dump(document: dict[str, Any]) -> str:
    """YAML; a ConfigMap's multi-line values (Rego, JSON) as literal blocks, tabs and all, so the
    committed file reads like the bundle (PyYAML would quote any text holding a tab)."""
    if document.get("kind") != "ConfigMap":
        return yaml.safe_dump(document, sort_keys=False)
    head = yaml.safe_dump({k: v for k, v in document.items() if k != "data"}, sort_keys=False)
    lines = [head.rstrip("\n"), "data:"]
    for key, value in document.get("data", {}).items():
        lines.append(f"  {key}: {literal_block(value, indent=4)}")
    text = "\n".join(lines) + "\n"
    if yaml.safe_load(text) != document:  # never write what does not read back the same
        raise ConfigError("internal error: the ConfigMap did not round-trip through YAML")
    return text


def literal_block(value: str, *, indent: int) -> str:
    """A YAML literal block scalar holding exactly `value`."""
    if "\n" not in value or value != value.lstrip(" \n") or "\r" in value:
        return yaml.safe_dump(value, default_style='"').rstrip("\n")  # short or unusual: quote
    chomp = "-" if not value.endswith("\n") else ("+" if value.endswith("\n\n") else "")
    pad = " " * indent
    body = "\n".join(pad + line if line else "" for line in value.split("\n"))
    return f"|{chomp}\n{body.rstrip() if chomp != '+' else body}"


# --- command line -------------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction) -> None:
    deploy = sub.add_parser("deploy", help="generate deployment files from the locus config")
    deploy_sub = deploy.add_subparsers(title="deploy commands", metavar="COMMAND")

    policy = deploy_sub.add_parser(
        "networkpolicy",
        help="a Kubernetes NetworkPolicy: egress only to the configured loci",
        description="Egress for pods labelled locus-llm/egress=loci: the loci of the config, "
        "its Redis state backend and DNS; nothing else.",
    )
    policy.add_argument("--config", help="locus config file (default: LOCUS_CONFIG)")
    policy.add_argument("--namespace", default="locus", help="namespace (default: locus)")
    policy.add_argument("--name", default="locus-egress", help="object name")
    policy.add_argument(
        "--cidr",
        action="append",
        default=[],
        metavar="HOST=CIDR",
        help="address range of an external host (repeatable)",
    )
    policy.add_argument(
        "--pods",
        action="append",
        default=[],
        metavar="HOST=KEY=VALUE",
        help="pod label of an in-cluster Service's pods (default "
        "app.kubernetes.io/name=<service>; repeatable)",
    )
    policy.add_argument(
        "--istio",
        action="store_true",
        help="the pods run Istio sidecars: allow istiod (port 15012) too",
    )
    policy.set_defaults(handler=cmd_networkpolicy)

    proxy = deploy_sub.add_parser(
        "litellm-config", help="a LiteLLM Proxy config: one deployment per locus, and the hook"
    )
    proxy.add_argument("--config", help="locus config file (default: LOCUS_CONFIG)")
    proxy.set_defaults(handler=cmd_litellm_config)

    bundle = deploy_sub.add_parser(
        "policy-configmap", help="a ConfigMap holding a policy bundle (hot-reloaded when mounted)"
    )
    bundle.add_argument(
        "--bundle",
        default=str(PACKAGED_BUNDLE),
        help="bundle folder (default: the packaged bundle)",
    )
    bundle.add_argument("--namespace", default="locus", help="namespace (default: locus)")
    bundle.add_argument("--name", default="locus-policy", help="object name")
    bundle.set_defaults(handler=cmd_policy_configmap)

    settings = deploy_sub.add_parser(
        "config-configmap", help="a ConfigMap holding the locus config (key config.yaml)"
    )
    settings.add_argument("--config", required=True, help="locus config file")
    settings.add_argument("--namespace", default="locus", help="namespace (default: locus)")
    settings.add_argument("--name", default="locus-config", help="object name")
    settings.set_defaults(handler=cmd_config_configmap)


def cmd_networkpolicy(args: argparse.Namespace) -> int:
    document = network_policy(
        load_config(args.config),
        namespace=args.namespace,
        name=args.name,
        cidrs=parse_cidrs(args.cidr),
        pods=parse_pods(args.pods),
        istio=args.istio,
    )
    sys.stdout.write(dump(document))
    return 0


def cmd_litellm_config(args: argparse.Namespace) -> int:
    sys.stdout.write(dump(proxy_config(load_config(args.config))))
    return 0


def cmd_policy_configmap(args: argparse.Namespace) -> int:
    sys.stdout.write(
        dump(policy_configmap(Path(args.bundle), namespace=args.namespace, name=args.name))
    )
    return 0


def cmd_config_configmap(args: argparse.Namespace) -> int:
    document = config_configmap(Path(args.config), namespace=args.namespace, name=args.name)
    sys.stdout.write(dump(document))
    return 0
