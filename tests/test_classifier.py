"""The router classifier: the shipped model, retraining, load errors, and the routing evaluation."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from locus_llm.analysis.classifier import (
    MODEL_FILES,
    SEPARATOR_ID,
    ClassifierLoadError,
    RouterClassifier,
    instruction_and_context,
    packaged_model_dir,
)
from locus_llm.analysis.train import (
    difficulty_label,
    examples_from_rows,
    roc_auc,
    split_models,
)
from locus_llm.analysis.train import main as train_main
from locus_llm.errors import AnalysisError
from locus_llm.evaluation import evaluate_routing, routing_curve

UNAMBIGUOUS = {
    "summarization": (
        "Please summarize this article: Scientists have discovered a new species of frog in the "
        "rainforests of Peru. The frog is bright orange and is smaller than a fingernail. "
        "Researchers say the discovery shows how much is still unknown about the region."
    ),
    "math": (
        "Tom has 3 boxes with 12 apples in each box. He gives 7 apples to his sister and eats 2. "
        "How many apples does Tom have left?"
    ),
    "code": "Write a Python function to check whether a given number is a prime number.",
    "information_extraction": (
        "Extract all the names of the people mentioned in this text and list them separated by "
        "commas.\n\nAlice Johnson met Robert Chen at the conference in Berlin, where they were "
        "joined by Maria Garcia and the keynote speaker, David Okafor."
    ),
}
PASSAGE = (
    "Acme Robotics was founded in 1998 by Jane Ortiz and Samuel Lee in Portland, Oregon. The "
    "company first built warehouse conveyors and later moved into autonomous forklifts, which now "
    "make up most of its revenue. It employs about 1,200 people across three countries."
)


@pytest.fixture(scope="module")
def shipped() -> RouterClassifier:
    return RouterClassifier.load()


@pytest.mark.parametrize("task", sorted(UNAMBIGUOUS))
def test_shipped_model_gets_unambiguous_prompts_right(shipped: RouterClassifier, task: str) -> None:
    estimate = shipped.classify(UNAMBIGUOUS[task])
    assert estimate.task == task, estimate.task_scores
    assert set(estimate.task_scores) == set(shipped.tasks)
    assert sum(estimate.task_scores.values()) == pytest.approx(1.0, abs=1e-4)
    assert 0.0 <= estimate.difficulty <= 1.0


def test_competition_math_is_harder_than_a_summary(shipped: RouterClassifier) -> None:
    hard = shipped.classify(
        "Let $f(x) = x^3 - 3x + 1$. Find the sum of the squares of the roots of $f(f(x)) = 0$."
    )
    easy = shipped.classify(UNAMBIGUOUS["summarization"])
    assert hard.difficulty > easy.difficulty


def test_tokenizer_file_is_a_transformers_fast_tokenizer(shipped: RouterClassifier) -> None:
    from transformers import PreTrainedTokenizerFast

    reference = PreTrainedTokenizerFast(tokenizer_file=str(packaged_model_dir() / "tokenizer.json"))
    text = UNAMBIGUOUS["code"]
    assert shipped.token_ids(text) == reference(text, add_special_tokens=False)["input_ids"]


def test_long_prompt_reads_head_and_tail_only(shipped: RouterClassifier) -> None:
    window = shipped.window
    body = "The committee reviewed the quarterly figures in detail. " * 600
    ids = shipped.token_ids("Please read this report.\n\n" + body + "Now summarize it briefly.")
    assert len(ids) == window.head + window.tail
    tail_words = shipped._tokenizer.decode(ids[-window.tail :])
    assert "summarize it briefly" in tail_words
    assert shipped.classify(body * 3).task in shipped.tasks  # 5,000+ words: still answers


def test_instruction_and_reference_text_are_read_apart(shipped: RouterClassifier) -> None:
    assert instruction_and_context("  Who won?\n\nThe final.\n\nMore text. ") == (
        "Who won?",
        "The final.\n\nMore text.",
    )
    assert instruction_and_context("Summarize this:\nThe final.") == (
        "Summarize this:",
        "The final.",
    )
    assert instruction_and_context("Please summarize this article: " + PASSAGE) == (
        "Please summarize this article",
        PASSAGE,
    )
    math = UNAMBIGUOUS["math"]  # sentences without a line break or an opening colon: no split
    assert instruction_and_context(math) == (math, "")
    assert instruction_and_context("Note: call me.") == ("Note: call me.", "")
    assert shipped.window.split_context
    question = shipped.token_ids("Who founded the company?")
    with_text = shipped.token_ids("Who founded the company?\n\n" + PASSAGE)
    assert SEPARATOR_ID not in question
    assert with_text[: len(question)] == question and with_text[len(question)] == SEPARATOR_ID
    assert with_text.count(SEPARATOR_ID) == 1


def test_a_question_over_a_given_text_is_not_an_open_question(shipped: RouterClassifier) -> None:
    # The same words with and without a reference text: only the split tells them apart.
    assert shipped.classify("Who founded the company?").task == "open_qa"
    over_text = shipped.classify("Who founded the company?\n\n" + PASSAGE).task
    assert over_text in {"closed_qa", "information_extraction", "summarization"}


def test_empty_prompt_still_gets_an_estimate(shipped: RouterClassifier) -> None:
    estimate = shipped.classify("")
    assert estimate.task in shipped.tasks
    assert 0.0 <= estimate.difficulty <= 1.0


# ---------------------------------------------------------------- load errors


def _copy_model(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(packaged_model_dir(), target)
    return target


def test_missing_directory_names_it(tmp_path: Path) -> None:
    with pytest.raises(ClassifierLoadError, match="nowhere"):
        RouterClassifier.load(tmp_path / "nowhere")


@pytest.mark.parametrize("name", MODEL_FILES)
def test_missing_file_names_it(tmp_path: Path, name: str) -> None:
    model = _copy_model(tmp_path)
    (model / name).unlink()
    with pytest.raises(ClassifierLoadError, match=name.replace(".", r"\.")):
        RouterClassifier.load(model)


@pytest.mark.parametrize("name", MODEL_FILES)
def test_corrupt_file_names_it(tmp_path: Path, name: str) -> None:
    model = _copy_model(tmp_path)
    data = (model / name).read_bytes()
    (model / name).write_bytes(data[: len(data) // 3])  # a truncated download
    with pytest.raises(ClassifierLoadError, match=name.replace(".", r"\.")) as info:
        RouterClassifier.load(model)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AnalysisError)


def test_labels_that_do_not_match_the_graph_are_refused(tmp_path: Path) -> None:
    model = _copy_model(tmp_path)
    labels = json.loads((model / "labels.json").read_text())
    labels["tasks"] = labels["tasks"][:-1]
    (model / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(ClassifierLoadError, match="labels.json"):
        RouterClassifier.load(model)


def test_analyzer_falls_back_to_unknown_task_on_a_corrupt_model(tmp_path: Path) -> None:
    from locus_llm.analysis import Analyzer
    from locus_llm.profile import UNKNOWN_TASK, RoutingContext

    model = _copy_model(tmp_path)
    (model / "model.onnx").write_bytes(b"\x08\x07not a graph")
    profile = Analyzer(classifier_path=model).analyze(
        [{"role": "user", "content": "Write a Python function that reverses a list."}],
        RoutingContext(),
    )
    assert profile.task == UNKNOWN_TASK.task and profile.difficulty == 1.0
    assert profile.task_scores == {}
    assert any("model.onnx" in error for error in profile.errors), profile.errors


# ---------------------------------------------------------------- training


def test_difficulty_label_is_the_share_of_small_models_falling_short() -> None:
    small, strong = split_models(
        ["qwen2.5-7b-instruct", "gemma-2-9b-it", "llama3-chatqa-1.5-70b", "llama-3.1-nemotron-51b"]
    )
    assert small == ["gemma-2-9b-it", "qwen2.5-7b-instruct"]
    assert strong == ["llama-3.1-nemotron-51b", "llama3-chatqa-1.5-70b"]
    scores = {
        "qwen2.5-7b-instruct": 0.0,
        "gemma-2-9b-it": 1.0,
        "llama3-chatqa-1.5-70b": 1.0,
        "llama-3.1-nemotron-51b": 0.0,
    }
    assert difficulty_label(scores, small, strong) == 0.5
    scores["llama3-chatqa-1.5-70b"] = 0.0  # no strong model solves it: nothing to gain
    assert difficulty_label(scores, small, strong) == 0.0


def test_rows_without_task_or_scores_are_refused(tmp_path: Path) -> None:
    from locus_llm.analysis.train import TrainingError

    with pytest.raises(TrainingError, match=r"data\.jsonl:2"):
        examples_from_rows(
            [{"prompt": "a", "task_type": "x", "_line": 1}, {"prompt": "b", "_line": 2}],
            tmp_path / "data.jsonl",
        )


def _tiny_training_file(path: Path) -> None:
    """Two task types with plainly different wording; scores say the code prompts are hard."""
    rng = np.random.default_rng(0)
    things = ["invoice", "meeting", "report", "email", "article", "contract", "memo", "letter"]
    rows = []
    for i in range(24):
        thing = things[i % len(things)]
        rows.append(
            {
                "prompt": f"Summarize this {thing} in one paragraph for the team number {i}.",
                "task_type": "summarization",
                "scores": {"small-7b": 1.0, "big-70b": 1.0},
            }
        )
        rows.append(
            {
                "prompt": f"Write a Python function that parses the {thing} file and returns a dict.",
                "task_type": "code",
                "scores": {"small-7b": float(rng.random() < 0.2), "big-70b": 1.0},
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_retraining_on_a_tiny_file_yields_a_loadable_model(tmp_path: Path) -> None:
    data, out = tmp_path / "logs.jsonl", tmp_path / "retrained"
    _tiny_training_file(data)
    assert train_main(["train", "--data", str(data), "--out", str(out), "--epochs", "40"]) == 0
    model = RouterClassifier.load(out)
    assert model.tasks == ["code", "summarization"]
    code = model.classify("Write a Python function that parses the budget file and returns a dict.")
    summary = model.classify("Summarize this budget in one paragraph for the team.")
    assert code.task == "code" and summary.task == "summarization"
    assert code.difficulty > summary.difficulty
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["base"] == "packaged" and metrics["examples"] == 48


def test_training_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine", "task_type": "a"}\nnot json\n')
    assert train_main(["train", "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:2: not JSON" in capsys.readouterr().err


def test_train_command_is_registered() -> None:
    from locus_llm.analysis.train import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["router", "train", "--data", "x.jsonl", "--epochs", "3"])
    assert (args.data, args.epochs, args.seed, args.out) == ("x.jsonl", 3, 0, "router-model")
    assert callable(args.handler)


# ---------------------------------------------------------------- routing evaluation


def test_auc_matches_a_pairwise_count() -> None:
    labels = np.array([1, 0, 1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.4, 0.4, 0.7, 0.1])
    pairs = [(p, n) for p in scores[labels == 1] for n in scores[labels == 0]]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert roc_auc(labels, scores) == pytest.approx(expected)


def _scored_file(path: Path) -> None:
    """Four prompts; only the first needs the strong model. The longest prompt is the easiest."""
    rows = [
        {"prompt": "prove it", "scores": {"big": 1.0, "small": 0.0}},
        {"prompt": "say hi to me", "scores": {"big": 1.0, "small": 1.0}},
        {"prompt": "what is two plus two", "scores": {"big": 0.0, "small": 0.0}},
        {"prompt": "please repeat after me the word yes", "scores": {"big": 1.0, "small": 1.0}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_oracle_router_has_the_hand_computed_apgr(tmp_path: Path) -> None:
    data = tmp_path / "eval.jsonl"
    _scored_file(data)
    oracle = {"prove it": 1.0}
    summary = evaluate_routing(
        data,
        "big",
        "small",
        tmp_path / "out",
        scorer=lambda ps: np.array([oracle.get(p, 0.0) for p in ps]),
    )
    # Gap of 0.25 closed fully once the first quarter goes strong: APGR = .25*.5 + .75*1.
    assert summary["routers"]["difficulty"]["apgr"] == pytest.approx(0.875)
    assert summary["routers"]["difficulty"]["cpt50"] == pytest.approx(0.125)
    assert summary["routers"]["random"]["apgr"] == pytest.approx(0.5)
    # Longest-first sends "prove it" (the shortest) last: PGR stays 0 until share 1.
    assert summary["routers"]["length"]["apgr"] == pytest.approx(0.125)
    assert (tmp_path / "out" / "eval_routing.png").stat().st_size > 1000
    written = json.loads((tmp_path / "out" / "eval_routing.json").read_text())
    assert written["strong"] == "big" and written["prompts"] == 4


def test_raising_the_threshold_never_adds_strong_calls() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random(200).round(2)  # with ties
    curve = routing_curve(scores, rng.random(200), rng.random(200))
    assert all(np.diff(curve.thresholds) < 0)
    assert all(np.diff(curve.strong_share) > 0)
    assert curve.strong_share[0] == 0.0 and curve.strong_share[-1] == 1.0


def test_the_shipped_difficulty_is_a_monotone_threshold_knob(shipped: RouterClassifier) -> None:
    prompts = [
        *UNAMBIGUOUS.values(),
        PASSAGE,
        "Who founded the company?",
        "Prove that 17 is prime.",
    ]
    difficulty = {p: shipped.classify(p).difficulty for p in prompts}
    assert difficulty == {p: shipped.classify(p).difficulty for p in prompts}  # deterministic
    strong_sets = [{p for p, d in difficulty.items() if d >= t} for t in np.linspace(0, 1, 21)]
    assert strong_sets[0] == set(prompts)
    assert all(
        later <= earlier for earlier, later in zip(strong_sets, strong_sets[1:], strict=False)
    )
    assert len({len(s) for s in strong_sets}) > 2  # the knob actually moves across the range


def test_evaluation_input_errors_name_the_file(tmp_path: Path) -> None:
    from locus_llm.evaluation import EvaluationError

    data = tmp_path / "scores.jsonl"
    data.write_text(json.dumps({"prompt": "x", "scores": {"a": 1}}) + "\n")
    with pytest.raises(EvaluationError, match="scores.jsonl"):
        evaluate_routing(data, scorer=lambda ps: np.zeros(len(ps)))


def test_eval_routing_command_runs_on_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from locus_llm.evaluation import add_commands

    data = tmp_path / "eval.jsonl"
    _scored_file(data)
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "routing", "--data", str(data), "--out", str(tmp_path)])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "strong=big weak=small" in out and "eval_routing.png" in out


def test_classify_is_safe_from_many_threads(shipped: RouterClassifier) -> None:
    from concurrent.futures import ThreadPoolExecutor

    prompts = list(UNAMBIGUOUS.values()) * 10
    alone = [shipped.classify(p) for p in prompts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(shipped.classify, prompts))
    assert together == alone
