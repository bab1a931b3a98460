"""`locus models add | list | prepare`: the local model cache from the command line."""

from __future__ import annotations

import argparse
import sys
import time

# The converter's choices, spelled here so that building the parser does not import onnx.
QUANTS = ("int4", "int8", "fp32")


def add_commands(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="manage the local (on-device) ONNX models")
    models_sub = models.add_subparsers(title="models commands", metavar="COMMAND")
    models.set_defaults(handler=lambda args: _help(models))

    add = models_sub.add_parser("add", help="convert a GGUF file (Llama family) into the cache")
    add.add_argument("file", metavar="FILE.gguf")
    add.add_argument("--name", help="the model's name (default: from the file name)")
    add.add_argument("--quant", choices=QUANTS, default="int4", help="weight format (default int4)")
    add.set_defaults(handler=cmd_add)

    listing = models_sub.add_parser("list", help="list the models in the cache")
    listing.set_defaults(handler=cmd_list)

    prepare = models_sub.add_parser("prepare", help="convert the default model (smollm2)")
    prepare.add_argument("model", choices=["smollm2"])
    prepare.add_argument("--quant", choices=QUANTS, default="int4")
    prepare.set_defaults(handler=cmd_prepare)


def cmd_add(args: argparse.Namespace) -> int:
    from locus_llm.local import models

    started = time.perf_counter()
    folder = models.add_gguf(args.file, name=args.name, quant=args.quant)
    print(f"{folder.name}: {args.quant} model in {folder} ({time.perf_counter() - started:.1f} s)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from locus_llm.local import models

    started = time.perf_counter()
    folder = models.prepare_default(quant=args.quant)
    print(f"{folder.name}: ready in {folder} ({time.perf_counter() - started:.1f} s)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from locus_llm.local import models

    found = models.list_models()
    if not found:
        print(f"no models in {models.cache_dir()} (run `locus models prepare smollm2`)")
        return 0
    print(f"{'NAME':<24} {'QUANT':<6} {'ARCH':<8} {'CONTEXT':>7} {'SIZE':>9}  PATH")
    for m in found:
        size = f"{m['size_bytes'] / 1e6:.0f} MB"
        context = m["context_window"] or "-"
        print(
            f"{m['name']:<24} {m['quant']:<6} {m['architecture']:<8} {context:>7} {size:>9}  {m['path']}"
        )
    return 0


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stdout)
    return 2
