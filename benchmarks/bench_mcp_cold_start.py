"""Cold start of `locus-mcp`: process spawn → answered `initialize`, over stdio and HTTP.

Target: `initialize` answered within 1.5 s. LiteLLM, the analysis models and the local model load
lazily, on the first tool call that needs them; the first `route` call is timed too, to show
where that cost went. Baselines, measured in the same run: a bare `python -c pass` and a Python
that only imports the MCP SDK's server package (the floor any MCPServer-based server pays).

    .venv/bin/python benchmarks/bench_mcp_cold_start.py            # 7 runs each
    .venv/bin/python benchmarks/bench_mcp_cold_start.py --runs 15 --json out.json

Prints a table of median / min / max seconds — wall clock, and CPU seconds (user + system) the
process used, which a busy shared machine inflates far less — the load average, and whether the
median stdio and HTTP cold starts meet the target.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

TARGET_S = 1.5
PYTHON = Path(sys.executable)
LOCUS_MCP = PYTHON.with_name("locus-mcp")
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "cold-start-bench", "version": "1"},
    },
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
ROUTE = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "route", "arguments": {"prompt": "What is the capital of France?"}},
}


def env() -> dict[str, str]:
    return {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "OMP_NUM_THREADS": "1"}


def time_command(args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of a command run to completion."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(args, check=True, env=env(), stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a running process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stdio_cold_start(config: list[str], first_route: bool) -> tuple[float, float, float | None]:
    """Wall and CPU seconds from spawn to the `initialize` answer, and wall seconds to the first
    `route` answer (when asked)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(LOCUS_MCP), *config], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, env=env(),
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write((json.dumps(INITIALIZE) + "\n").encode())
        process.stdin.flush()
        answer = json.loads(process.stdout.readline())
        initialized = time.perf_counter() - started
        cpu = cpu_seconds(process.pid)
        if "result" not in answer:
            raise RuntimeError(f"initialize failed: {answer}")
        routed = None
        if first_route:
            process.stdin.write((json.dumps(INITIALIZED) + "\n").encode())
            process.stdin.write((json.dumps(ROUTE) + "\n").encode())
            process.stdin.flush()
            reply = json.loads(process.stdout.readline())
            routed = time.perf_counter() - started
            if reply.get("result", {}).get("isError", True):
                raise RuntimeError(f"route failed: {reply}")
        return initialized, cpu, routed
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def http_cold_start(config: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds from spawn to the `initialize` answer over streamable HTTP."""
    with tempfile.TemporaryDirectory() as folder:
        log_path = Path(folder) / "server.log"
        with log_path.open("wb") as log:
            started = time.perf_counter()
            process = subprocess.Popen(
                [str(LOCUS_MCP), *config, "--http", "127.0.0.1:0"], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, env=env(),
            )  # fmt: skip
            try:
                url = wait_for_url(log_path, process)
                request = urllib.request.Request(
                    url, data=json.dumps(INITIALIZE).encode(), method="POST",
                    headers={"Content-Type": "application/json",
                             "Accept": "application/json, text/event-stream"},
                )  # fmt: skip
                with urllib.request.urlopen(request, timeout=60) as response:
                    body = response.read().decode()
                elapsed = time.perf_counter() - started
                cpu = cpu_seconds(process.pid)
                if '"result"' not in body:
                    raise RuntimeError(f"initialize failed: {body[:500]}")
                return elapsed, cpu
            finally:
                process.terminate()
                process.wait(timeout=30)


def wait_for_url(log_path: Path, process: subprocess.Popen[bytes]) -> str:
    while True:
        text = log_path.read_text(encoding="utf-8", errors="replace")
        if match := re.search(r"streamable HTTP on (http://\S+)", text):
            return match.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"locus-mcp --http exited: {text}")
        time.sleep(0.005)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(values), 3),
        "min_s": round(min(values), 3),
        "max_s": round(max(values), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--config", help="locus config file (default: the embedded default)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    config = ["--config", args.config] if args.config else []

    load_before = os.getloadavg()
    python_bare = [time_command([str(PYTHON), "-c", "pass"]) for _ in range(args.runs)]
    sdk_import = [
        time_command([str(PYTHON), "-c", "import mcp.server.mcpserver"]) for _ in range(args.runs)
    ]
    stdio = [stdio_cold_start(config, first_route=False)[:2] for _ in range(args.runs)]
    http = [http_cold_start(config) for _ in range(args.runs)]
    first_route = [stdio_cold_start(config, first_route=True)[2] or 0.0 for _ in range(2)]
    load_after = os.getloadavg()

    results: dict[str, Any] = {
        "target_s": TARGET_S,
        "runs": args.runs,
        "cpu_count": os.cpu_count(),
        "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
        "python_bare": summary([wall for wall, _ in python_bare]),
        "python_import_mcp_sdk": summary([wall for wall, _ in sdk_import]),
        "stdio_initialize": summary([wall for wall, _ in stdio]),
        "http_initialize": summary([wall for wall, _ in http]),
        "stdio_first_route_call": summary(first_route),
        "cpu": {
            "python_bare": summary([cpu for _, cpu in python_bare]),
            "python_import_mcp_sdk": summary([cpu for _, cpu in sdk_import]),
            "stdio_initialize": summary([cpu for _, cpu in stdio]),
            "http_initialize": summary([cpu for _, cpu in http]),
        },
    }
    results["stdio_over_sdk_import"] = round(
        results["stdio_initialize"]["median_s"] / results["python_import_mcp_sdk"]["median_s"], 2
    )
    results["meets_target"] = {
        "stdio": results["stdio_initialize"]["median_s"] <= TARGET_S,
        "http": results["http_initialize"]["median_s"] <= TARGET_S,
    }

    print(f"locus-mcp cold start ({args.runs} runs; load average {load_before[0]:.1f} → "
          f"{load_after[0]:.1f} on {os.cpu_count()} cores)")  # fmt: skip
    print(f"{'measurement':32} {'median':>8} {'min':>8} {'max':>8}")
    for key in ("python_bare", "python_import_mcp_sdk", "stdio_initialize", "http_initialize",
                "stdio_first_route_call"):  # fmt: skip
        row = results[key]
        print(f"{key:32} {row['median_s']:8.3f} {row['min_s']:8.3f} {row['max_s']:8.3f}")
    for key, row in results["cpu"].items():
        name = f"{key} (CPU s)"
        print(f"{name:32} {row['median_s']:8.3f} {row['min_s']:8.3f} {row['max_s']:8.3f}")
    print(f"stdio initialize / SDK import alone: {results['stdio_over_sdk_import']:.2f}x")
    for transport, met in results["meets_target"].items():
        verdict = "meets" if met else "MISSES"
        print(f"{transport}: median {results[f'{transport}_initialize']['median_s']:.3f} s "
              f"{verdict} the {TARGET_S} s target")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
