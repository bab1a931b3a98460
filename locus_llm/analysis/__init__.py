"""The router pre-processor: messages + context → RequestProfile, failing closed.

The classifier (task, difficulty) and the sensitivity detector (entities, data class) are loaded
lazily on first use and may be missing or broken: a classifier failure gives "unknown task,
difficulty 1.0" (the strong, trusted side), a detector failure gives RESTRICTED.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from locus_llm.analysis.tokens import estimate_prompt_tokens
from locus_llm.messages import last_user_text, message_text
from locus_llm.profile import (
    UNKNOWN_TASK,
    DataClass,
    Entity,
    RequestProfile,
    RoutingContext,
    TaskEstimate,
)

log = logging.getLogger("locus.analysis")


@contextlib.contextmanager
def torch_hidden() -> Iterator[None]:
    """Keep torch out of the process while presidio loads.

    presidio imports spaCy, whose thinc imports torch whenever it is installed (a dev or training
    environment): 5-10 s and ~500 MB for nothing, since no torch model runs at run time. A None in
    sys.modules makes `import torch` fail fast, and thinc carries on without it.
    """
    if "torch" in sys.modules:  # already loaded by the caller (training): nothing to save
        yield
        return
    # transformers records at import whether torch is available: let it see the truth first, so
    # hiding torch from thinc never hides it from the caller's own models later on
    with contextlib.suppress(ImportError):
        import transformers  # noqa: F401
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


class Classifier(Protocol):
    def classify(self, text: str) -> TaskEstimate: ...


class Detector(Protocol):
    def detect(self, text: str) -> list[Entity]: ...

    def data_class(self, entities: list[Entity]) -> DataClass: ...


class Analyzer:
    """Builds RequestProfiles. Thread-safe; the models load once, on first use or `warm()`."""

    def __init__(
        self,
        *,
        classifier_path: Path | None = None,
        sensitivity: dict[str, Any] | None = None,
        classifier: Classifier | None = None,
        detector: Detector | None = None,
        tokens_out_default: int = 256,
    ) -> None:
        self.classifier_path = classifier_path
        self.sensitivity = sensitivity or {}
        self.tokens_out_default = tokens_out_default
        self._classifier = classifier
        self._detector = detector
        self._classifier_error: str | None = None
        self._detector_error: str | None = None
        self._lock = threading.Lock()

    def warm(self) -> None:
        self._get_classifier()
        self._get_detector()

    def analyze(
        self,
        messages: list[dict[str, Any]],
        context: RoutingContext,
        *,
        max_tokens: int | None = None,
        tools: list[Any] | None = None,
    ) -> RequestProfile:
        timings: dict[str, float] = {}
        errors: list[str] = []
        flags: list[str] = []

        start = time.perf_counter()
        estimate = UNKNOWN_TASK
        classifier = self._get_classifier()
        if classifier is None:
            errors.append(f"classifier: {self._classifier_error}")
        else:
            try:
                estimate = classifier.classify(last_user_text(messages))
            except Exception as exc:  # fail towards the strong, trusted side
                errors.append(f"classifier: {type(exc).__name__}: {exc}")
                estimate = UNKNOWN_TASK
        timings["classify"] = (time.perf_counter() - start) * 1000

        start = time.perf_counter()
        entities: list[Entity] = []
        data_class = DataClass.RESTRICTED
        detector = self._get_detector()
        if detector is None:
            errors.append(f"sensitivity: {self._detector_error}")
            flags.append("analysis_failed")
        else:
            try:
                for index, message in enumerate(messages):
                    for entity in detector.detect(message_text(message)):
                        entities.append(
                            Entity(entity.type, entity.start, entity.end, entity.score, index)
                        )
                data_class = detector.data_class(entities)
            except Exception as exc:  # fail closed: unseen data is treated as the most sensitive
                errors.append(f"sensitivity: {type(exc).__name__}: {exc}")
                flags.append("analysis_failed")
                entities, data_class = [], DataClass.RESTRICTED
        timings["sensitivity"] = (time.perf_counter() - start) * 1000

        if context.data_label is not None and context.data_label > data_class:
            data_class = context.data_label  # the caller's label only ever raises the class
            flags.append("raised_by_label")
        if tools:
            flags.append("tools")
        return RequestProfile(
            task=estimate.task,
            task_scores=dict(estimate.task_scores),
            difficulty=float(estimate.difficulty),
            tokens_in=estimate_prompt_tokens(messages, tools),
            tokens_out_est=max_tokens or self.tokens_out_default,
            data_class=data_class,
            entities=entities,
            flags=flags,
            timings_ms=timings,
            errors=errors,
        )

    def _get_classifier(self) -> Classifier | None:
        if self._classifier is None and self._classifier_error is None:
            with self._lock:
                if self._classifier is None and self._classifier_error is None:
                    try:
                        from locus_llm.analysis.classifier import RouterClassifier

                        self._classifier = RouterClassifier.load(self.classifier_path)
                    except Exception as exc:
                        self._classifier_error = f"{type(exc).__name__}: {exc}"
                        log.error(
                            "router classifier unavailable, using 'unknown task, "
                            "difficulty 1.0': %s",
                            self._classifier_error,
                        )
        return self._classifier

    def _get_detector(self) -> Detector | None:
        if self._detector is None and self._detector_error is None:
            with self._lock:
                if self._detector is None and self._detector_error is None:
                    try:
                        with torch_hidden():
                            from locus_llm.analysis.sensitivity import (
                                SensitivityConfig,
                                SensitivityDetector,
                            )

                            config = SensitivityConfig.model_validate(self.sensitivity)
                            self._detector = SensitivityDetector(config)
                    except Exception as exc:
                        self._detector_error = f"{type(exc).__name__}: {exc}"
                        log.error(
                            "sensitivity detector unavailable, every request is RESTRICTED: %s",
                            self._detector_error,
                        )
        return self._detector
