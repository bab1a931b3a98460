"""The router classifier: what kind of work a prompt is, and how likely a small model fails at it.

The packaged model (`locus_llm/models/router/`) is one ONNX graph over the token ids of a bounded
window of the prompt: a static token table distilled from all-MiniLM-L6-v2 (int8, one row per
vocabulary entry), a pooled prompt vector, a softmax head over task types, and difficulty as the
share of the most similar scored training prompts that needed a strong model (see MODEL_CARD.md).
onnxruntime and the tokenizer are imported inside `load`, so importing this module costs
nothing; no torch at run time.

Files of a model directory:
  model.onnx      inputs `input_ids` int64 [batch, tokens]; outputs `task_probs` [batch, tasks],
                  `difficulty` [batch]
  tokenizer.json  the Hugging Face fast-tokenizer file (loadable by PreTrainedTokenizerFast)
  labels.json     {"format": 1, "tasks": [...], "window": {"head": H, "tail": T, "max_chars": C}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from locus_llm.errors import AnalysisError
from locus_llm.profile import TaskEstimate

MODEL_FILES = ("model.onnx", "tokenizer.json", "labels.json")
PACKAGED_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "router"
LABELS_FORMAT = 1
# [SEP] in the MiniLM vocabulary: put between a prompt's instruction and its reference text, so
# the graph can pool them apart (models whose labels.json says "split_context": true).
SEPARATOR_ID = 102
# "Instruction: text" on one line counts as a split when the opening is short and the text long.
COLON_OPENING_WORDS = 16
COLON_TEXT_WORDS = 16


class ClassifierLoadError(AnalysisError, ValueError):
    """The router model directory is missing, incomplete or corrupt. The message names the file."""


def packaged_model_dir() -> Path:
    return PACKAGED_MODEL_DIR


@dataclass(frozen=True)
class Window:
    """Which tokens of a long prompt are read: the first `head` and the last `tail`.

    Text longer than `max_chars` is first cut to its opening and closing characters, shared in
    the head:tail ratio (8 characters per token leaves room for long words), so tokenising a
    very long prompt costs a bounded time too: tokenising is most of the cost at 2,000 words.
    """

    head: int = 192
    tail: int = 64
    max_chars: int = 2048
    split_context: int = 0  # 1: instruction, [SEP], reference text (see instruction_and_context)

    def clip_text(self, text: str) -> str:
        if len(text) <= self.max_chars:
            return text
        head_chars = self.max_chars * self.head // (self.head + self.tail)
        tail_chars = self.max_chars - head_chars
        return text[:head_chars] + "\n" + text[-tail_chars:]

    def clip_ids(self, ids: list[int]) -> list[int]:
        if len(ids) <= self.head + self.tail:
            return ids
        return ids[: self.head] + ids[len(ids) - self.tail :]

    def to_json(self) -> dict[str, int]:
        return {
            "head": self.head,
            "tail": self.tail,
            "max_chars": self.max_chars,
            "split_context": self.split_context,
        }


def instruction_and_context(text: str) -> tuple[str, str]:
    """A prompt's instruction and its reference text (a pasted text), if it has one.

    The split is the first blank line (how instruction datasets and most chat users join a
    request to its text), else the first line break, else a colon closing a short opening
    ("Please summarize this article: …") before a longer text; otherwise it is all instruction.
    """
    text = text.strip()
    for separator in ("\n\n", "\n"):
        instruction, found, context = text.partition(separator)
        if found and context.strip():
            return instruction.strip(), context.strip()
    opening, found, rest = text.partition(": ")
    if (
        found
        and len(opening.split()) <= COLON_OPENING_WORDS
        and len(rest.split()) >= COLON_TEXT_WORDS
    ):
        return opening.strip(), rest.strip()
    return text, ""


def window_token_ids(tokenizer: Any, window: Window, text: str) -> list[int]:
    """The ids a model reads (special tokens dropped; training uses this same function).

    With `split_context`, the instruction and the reference text are encoded apart and joined
    by [SEP]; then the head and tail of a long prompt are kept.
    """
    clipped = window.clip_text(text)
    if not window.split_context:
        return window.clip_ids(tokenizer.encode(clipped, add_special_tokens=False).ids)
    instruction, context = instruction_and_context(clipped)
    ids = tokenizer.encode(instruction, add_special_tokens=False).ids
    if context:
        ids += [SEPARATOR_ID, *tokenizer.encode(context, add_special_tokens=False).ids]
    return window.clip_ids(ids)


def read_labels(path: Path) -> tuple[list[str], Window]:
    """Task names and reading window from labels.json, checked."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClassifierLoadError(f"router model file missing: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClassifierLoadError(f"router model file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != LABELS_FORMAT:
        raise ClassifierLoadError(
            f"router model file {path}: expected {{'format': {LABELS_FORMAT}}}"
        )
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise ClassifierLoadError(f"router model file {path}: 'tasks' must be a non-empty list")
    window = data.get("window", {})
    try:
        parsed = Window(**{k: int(v) for k, v in window.items()})
    except (TypeError, ValueError) as exc:
        raise ClassifierLoadError(f"router model file {path}: bad 'window': {exc}") from None
    return tasks, parsed


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort  # lazy: 0.5 s import, only paid when the classifier is used

    if not path.is_file():
        raise ClassifierLoadError(f"router model file missing: {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # small graph: more threads only add contention
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise ClassifierLoadError(f"router model file {path} cannot be loaded: {exc}") from None


def _tokenizer(path: Path) -> Any:
    # The Rust tokenizer that transformers' PreTrainedTokenizerFast wraps, read from the same
    # tokenizer.json: identical ids, without the 3-4 s import of transformers (cold load ≤ 1 s).
    from tokenizers import Tokenizer

    if not path.is_file():
        raise ClassifierLoadError(f"router model file missing: {path}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise ClassifierLoadError(f"router model file {path} is not a tokenizer: {exc}") from None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class RouterClassifier:
    """Task type and difficulty for one prompt. `classify` is safe to call from many threads."""

    def __init__(self, session: Any, tokenizer: Any, tasks: list[str], window: Window) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self.tasks = list(tasks)
        self.window = window

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int = 1) -> RouterClassifier:
        """Load a model directory (None: the one shipped in the package).

        Raises ClassifierLoadError (a ValueError) naming the file when anything is missing or
        corrupt; the analyzer then falls back to UNKNOWN_TASK.
        """
        directory = Path(path) if path is not None else PACKAGED_MODEL_DIR
        if not directory.is_dir():
            raise ClassifierLoadError(f"router model directory missing: {directory}")
        tasks, window = read_labels(directory / "labels.json")
        tokenizer = _tokenizer(directory / "tokenizer.json")
        session = _session(directory / "model.onnx", threads)
        outputs = {o.name: o.shape for o in session.get_outputs()}
        inputs = [i.name for i in session.get_inputs()]
        if inputs != ["input_ids"] or set(outputs) != {"task_probs", "difficulty"}:
            raise ClassifierLoadError(
                f"router model file {directory / 'model.onnx'}: expected input 'input_ids' and "
                f"outputs 'task_probs', 'difficulty'; found {inputs} and {sorted(outputs)}"
            )
        width = outputs["task_probs"][-1]
        if isinstance(width, int) and width != len(tasks):
            raise ClassifierLoadError(
                f"router model file {directory / 'labels.json'} names {len(tasks)} tasks but "
                f"model.onnx scores {width}"
            )
        return cls(session, tokenizer, tasks, window)

    def token_ids(self, text: str) -> list[int]:
        """The ids the model reads: see `window_token_ids`."""
        return window_token_ids(self._tokenizer, self.window, text)

    def classify(self, text: str) -> TaskEstimate:
        ids = self.token_ids(text)
        if not ids:
            ids = [0]  # [PAD]: an empty prompt still gets a (low-confidence) estimate
        feed = {"input_ids": np.asarray([ids], dtype=np.int64)}
        task_probs, difficulty = self._session.run(["task_probs", "difficulty"], feed)
        scores = {task: float(p) for task, p in zip(self.tasks, task_probs[0], strict=True)}
        best = max(scores, key=scores.__getitem__)
        return TaskEstimate(task=best, task_scores=scores, difficulty=float(difficulty[0]))
