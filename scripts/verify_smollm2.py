"""Top-1 agreement of our converted SmolLM2 with transformers' own reading of the same GGUF file.

Both sides see the same 200 token ids (a fixed English text); at every position we compare the
most likely next token. transformers dequantises the GGUF to float32 (`gguf_file=`), so this
measures what our conversion (re-quantisation, graph, rotary layout) changes. Needs the dev extra
(torch). Usage:

    python scripts/verify_smollm2.py [--quant int4|int8|fp32] [--tokens 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TEXT = (
    "The history of the city begins with a small settlement on an island in the river. Over the "
    "centuries it grew into a centre of trade, learning and government. Its bridges connected "
    "the two banks, and markets filled the squares every morning. Scholars came from distant "
    "countries to study in its libraries, while merchants brought spices, cloth and metal from "
    "the coast. During the long winters the river sometimes froze, and children skated between "
    "the boats that waited for spring. In the nineteenth century engineers rebuilt the streets, "
    "laid out wide avenues and parks, and dug tunnels for water and, later, for trains. Today "
    "visitors walk along the quays, visit museums full of paintings and sculptures, and sit in "
    "cafes to watch people pass by. The city remains a place where old stone buildings stand "
    "next to modern glass towers, and where every district keeps a character of its own. Many "
    "residents say that the best way to know it is simply to walk, without a map, and to let "
    "the streets lead the way from one surprise to the next."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", choices=["int4", "int8", "fp32"], default="int4")
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from locus_llm.local import models
    from locus_llm.local.converter import convert_gguf
    from locus_llm.local.runtime import OnnxChatModel

    gguf_path = models.default_gguf()
    if args.quant == "int4" and models.is_prepared("int4"):
        folder = models.cache_dir() / models.DEFAULT_MODEL
        scratch = None
    else:
        scratch = tempfile.TemporaryDirectory(prefix="locus-verify-")
        folder = Path(scratch.name)
        convert_gguf(gguf_path, folder, quant=args.quant)
    ours = OnnxChatModel(folder)
    ids = ours.tokenizer.encode(TEXT, add_special_tokens=False).ids[: args.tokens]
    if len(ids) < args.tokens:
        print(f"the fixed text has only {len(ids)} tokens", file=sys.stderr)
        return 1

    started = time.perf_counter()
    reference_model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        reference = reference_model(torch.tensor([ids])).logits[0].numpy()
    loaded = time.perf_counter() - started
    logits = np.stack(list(ours.next_token_logits(ids)))
    agree = (logits.argmax(-1) == reference.argmax(-1)).mean()
    # Compared over positions whose reference top-1 is not a near-tie (margin ≥ 0.5 logits).
    top2 = np.sort(reference, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= 0.5
    clear_agree = (logits.argmax(-1) == reference.argmax(-1))[clear].mean()
    max_abs = float(np.abs(logits - reference).max())
    print(f"model           SmolLM2-135M-Instruct ({gguf_path.name}) as {args.quant}")
    print(f"tokens          {len(ids)}")
    print(f"top-1 agreement {agree:.1%}  (goal >= 99 %)")
    print(f"  where clear   {clear_agree:.1%} of {int(clear.sum())} positions (margin >= 0.5)")
    print(f"max |logit diff| {max_abs:.3f}")
    print(f"reference load+forward {loaded:.1f} s")
    if scratch is not None:
        scratch.cleanup()
    return 0 if agree >= 0.99 else 2


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
