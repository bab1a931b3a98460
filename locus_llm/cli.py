"""`locus`: route, chat, analyze, policy test/eval, demo — and the commands of the other areas.

Errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from locus_llm.errors import LocusError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if not args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # dependencies' start-up chatter is not the user's business
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        for noisy in ("presidio-analyzer", "LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (LocusError, OSError, ValueError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a locus's own error type (LiteLLM's) still gets one clear line
        print(
            f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            file=sys.stderr,
        )
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="locus", description="Decide per LLM call where inference runs, and run it there."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    route = sub.add_parser("route", help="show where a prompt would run, and why (nothing is sent)")
    _add_request_options(route)
    route.add_argument("--json", action="store_true", help="print the decision as JSON")
    route.add_argument(
        "--server",
        metavar="URL",
        help="ask a running gateway (locus serve --config) instead of deciding here",
    )
    route.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="with --server: the environment variable holding the gateway's API key",
    )
    route.add_argument("prompt", help="the prompt ('-' reads stdin)")
    route.set_defaults(handler=cmd_route)

    chat = sub.add_parser("chat", help="route a prompt and stream the answer")
    _add_request_options(chat)
    chat.add_argument("--locus", help="run on this locus (still only if the policy allows it)")
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=None)
    chat.add_argument("--system", help="a system prompt")
    chat.add_argument("prompt", help="the prompt ('-' reads stdin)")
    chat.set_defaults(handler=cmd_chat)

    analyze = sub.add_parser("analyze", help="profile prompts: task, difficulty, data class")
    analyze.add_argument("--config", help="locus config file (default: LOCUS_CONFIG or built in)")
    analyze.add_argument(
        "--jsonl",
        action="store_true",
        required=True,
        help='read {"id", "prompt"} lines on stdin, write one profile per line',
    )
    analyze.set_defaults(handler=cmd_analyze)

    policy = sub.add_parser("policy", help="test or evaluate a Rego policy bundle")
    policy_sub = policy.add_subparsers(title="policy commands", metavar="COMMAND")
    test = policy_sub.add_parser("test", help="run the bundle's test_* rules (like `opa test`)")
    test.add_argument("dir", nargs="?", help="bundle folder (default: the packaged bundle)")
    test.add_argument("-v", "--verbose", action="store_true", help="list passing tests too")
    test.set_defaults(handler=cmd_policy_test)
    evaluate = policy_sub.add_parser("eval", help="print the decision for a policy input")
    evaluate.add_argument("--input", required=True, help="policy input JSON file ('-': stdin)")
    evaluate.add_argument("--bundle", help="bundle folder (default: the packaged bundle)")
    evaluate.set_defaults(handler=cmd_policy_eval)
    policy.set_defaults(handler=lambda args: policy.print_help() or 2)

    demo = sub.add_parser("demo", help="route and answer a few prompts on the embedded default")
    demo.add_argument("--max-tokens", type=int, default=48)
    demo.set_defaults(handler=cmd_demo)

    _add_area_commands(sub)
    return parser


def _add_area_commands(sub: argparse._SubParsersAction) -> None:
    """Commands owned by other areas (models, serve, router train, eval, bench), if present."""
    import importlib

    for module in (
        "locus_llm.local.cli",
        "locus_llm.server",
        "locus_llm.analysis.train",
        "locus_llm.evaluation",
        "locus_llm.bench",
        "locus_llm.deploy",
    ):
        try:
            area = importlib.import_module(module)
        except ImportError as exc:
            if exc.name and exc.name.startswith("locus_llm"):
                continue  # that area is not part of this build
            raise
        area.add_commands(sub)


def _add_request_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="locus config file (default: LOCUS_CONFIG or built in)")
    parser.add_argument("--tenant", default="default")
    parser.add_argument("--user")
    parser.add_argument("--interactive", action="store_true")
    parser.add_argument("--latency-budget-ms", type=float)
    parser.add_argument("--max-cost-usd", type=float)
    parser.add_argument(
        "--label",
        dest="data_label",
        help="your own data label: PUBLIC|INTERNAL|CONFIDENTIAL|RESTRICTED "
        "(can raise the class, never lower it)",
    )


def _router(args: argparse.Namespace) -> Any:
    from locus_llm.router import Router

    return Router.from_file(args.config) if args.config else Router.default()


def _context(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "tenant": args.tenant,
        "user": args.user,
        "interactive": args.interactive,
        "latency_budget_ms": args.latency_budget_ms,
        "max_cost_usd": args.max_cost_usd,
        "data_label": args.data_label,
    }


def _prompt(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


# --- route ----------------------------------------------------------------------------------


def cmd_route(args: argparse.Namespace) -> int:
    messages = [{"role": "user", "content": _prompt(args.prompt)}]
    if args.server:  # a running gateway decides (POST /v1/route): same dict, same table
        from locus_llm.gateway import route_remotely

        api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
        data = route_remotely(args.server, messages, _context(args), api_key=api_key)
    else:
        data = _router(args).route(messages, _context(args)).to_dict()
    if args.json:
        from locus_llm.router import ROUTE_FIELDS

        print(json.dumps({k: data[k] for k in ROUTE_FIELDS}, indent=2))
        return 0
    print(render_decision(data))
    return 0


def render_decision(data: dict[str, Any]) -> str:
    profile = data["profile"]
    entities = ", ".join(sorted({e["type"] for e in profile["entities"]})) or "none"
    lines = [
        f"task {profile['task']}  difficulty {profile['difficulty']:.2f}  "
        f"class {profile['data_class']}  entities {entities}  tokens in {profile['tokens_in']}",
        f"policy revision {data['policy_revision']}  capability floor {data['capability_floor']}"
        + (
            f"  redact {data['obligations']['redact']} on {data['obligations']['redact_zones']}"
            if data["obligations"]["redact"]
            else ""
        ),
        "",
        f"{'locus':<14}{'zone':<8}{'verdict':<9}{'cap':>4}{'latency ms':>12}{'cost $':>12}  why",
    ]
    names = list(dict.fromkeys([*data["plan"], *data["allowed"], *data["denied"]]))
    for name in names:
        score = data["scores"].get(name)
        if name in data["denied"]:
            verdict, why = "denied", "; ".join(data["denied"][name])
        else:
            verdict = "CHOSEN" if name == data["locus"] else "allowed"
            why = "" if score is None or score["meets_floor"] else "below capability floor"
            if name in data["plan"] and name != data["locus"]:
                why = f"fallback {data['plan'].index(name)}" + (f", {why}" if why else "")
        zone = data["zones"].get(name, "")
        cap = f"{score['capability']}" if score else ""
        latency = f"{score['predicted_latency_ms']:.0f}" if score else ""
        cost = f"{score['predicted_cost_usd']:.6f}" if score else ""
        lines.append(f"{name:<14}{zone:<8}{verdict:<9}{cap:>4}{latency:>12}{cost:>12}  {why}")
    if profile["errors"]:
        lines.append("")
        lines += [f"analysis: {error}" for error in profile["errors"]]
    if data["locus"] is None:
        lines.append("\nno locus is allowed for this request: it would not be sent anywhere")
    return "\n".join(lines)


# --- chat -----------------------------------------------------------------------------------


def cmd_chat(args: argparse.Namespace) -> int:
    router = _router(args)
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": _prompt(args.prompt)})
    params: dict[str, Any] = {"max_tokens": args.max_tokens}
    if args.temperature is not None:
        params["temperature"] = args.temperature
    stream = router.completion(
        messages, context=_context(args), locus=args.locus, stream=True, **params
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            sys.stdout.write(chunk.choices[0].delta.content)
            sys.stdout.flush()
    info = stream.locus or {}
    usage = info.get("usage") or {}
    print(
        f"\n\n[{info.get('locus')} ({info.get('zone')}), {usage.get('completion_tokens', '?')} "
        f"tokens, ${info.get('cost_usd', 0):.6f}, policy {info.get('policy_revision')}]",
        file=sys.stderr,
    )
    return 0


# --- analyze --------------------------------------------------------------------------------


def cmd_analyze(args: argparse.Namespace) -> int:
    router = _router(args)
    router.analyzer.warm()
    for number, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            prompt = item["prompt"]
        except (ValueError, KeyError, TypeError):
            print(
                f"error: stdin line {number}: expected a JSON object with 'prompt'", file=sys.stderr
            )
            return 1
        started = time.perf_counter()
        profile = router.analyze([{"role": "user", "content": prompt}])
        out = {
            "id": item.get("id", number),
            **profile.to_dict(),
            "ms": round((time.perf_counter() - started) * 1000, 3),
        }
        for entity in out["entities"]:
            entity.pop("message", None)
        print(json.dumps(out), flush=True)
    return 0


# --- policy ---------------------------------------------------------------------------------


def cmd_policy_test(args: argparse.Namespace) -> int:
    from locus_llm.config import PACKAGED_BUNDLE
    from locus_llm.policy.testing import run_tests

    folder = Path(args.dir) if args.dir else PACKAGED_BUNDLE
    results = run_tests(folder)
    failed = [r for r in results if not r.passed]
    for result in results:
        if not result.passed:
            print(
                f"FAIL {result.file}: {result.name}" + (f": {result.error}" if result.error else "")
            )
        elif args.verbose:
            print(f"PASS {result.file}: {result.name}")
    print(
        f"{'-' * 40}\nPASS: {len(results) - len(failed)}/{len(results)}"
        + (f"\nFAIL: {len(failed)}/{len(results)}" if failed else "")
    )
    return 1 if failed else 0


def cmd_policy_eval(args: argparse.Namespace) -> int:
    from locus_llm.config import PACKAGED_BUNDLE
    from locus_llm.policy import PolicyEngine

    text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text(encoding="utf-8")
    try:
        policy_input = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{args.input}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(policy_input, dict) or not isinstance(policy_input.get("loci"), dict):
        raise ValueError(f"{args.input}: expected an object with 'request', 'context', 'loci'")
    engine = PolicyEngine(Path(args.bundle) if args.bundle else PACKAGED_BUNDLE, reload=False)
    print(json.dumps(engine.evaluate(policy_input).to_dict(), indent=2))
    return 0


# --- demo -----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from locus_llm.demo import run_demo

    return run_demo(max_tokens=args.max_tokens)


if __name__ == "__main__":
    sys.exit(main())
