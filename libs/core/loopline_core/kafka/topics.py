"""Every topic and consumer-group name comes from here, so no service spells one by hand."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicNamer:
    """Builds ``<prefix>.<stage>.<name>`` topic names and ``<prefix>.<service>`` group ids."""

    prefix: str = "loopline"

    def raw(self, dataset: str) -> str:
        return f"{self.prefix}.raw.{dataset}"

    def ingested(self, dataset: str) -> str:
        return f"{self.prefix}.ingested.{dataset}"

    def valid(self, dataset: str) -> str:
        return f"{self.prefix}.valid.{dataset}"

    def dlq(self, dataset: str) -> str:
        return f"{self.prefix}.dlq.{dataset}"

    def validation_failed(self, dataset: str) -> str:
        """``ValidationFailed`` events: one per record the validator rejected."""
        return f"{self.prefix}.validation-failed.{dataset}"

    def labels(self, dataset: str) -> str:
        return f"{self.prefix}.labels.{dataset}"

    def predictions(self, model: str) -> str:
        return f"{self.prefix}.predictions.{model}"

    def generations(self, model: str) -> str:
        """One event per LLM request served (redacted text, tokens, cost, guardrails)."""
        return f"{self.prefix}.generations.{model}"

    def guardrails(self, model: str) -> str:
        return f"{self.prefix}.guardrails.{model}"

    def feedback(self, model: str) -> str:
        """Ratings of generations (thumbs, scores, corrections), keyed by request id."""
        return f"{self.prefix}.feedback.{model}"

    def training_requests(self) -> str:
        return f"{self.prefix}.training.requests"

    def training_results(self) -> str:
        return f"{self.prefix}.training.results"

    def model_events(self) -> str:
        return f"{self.prefix}.models.events"

    def alerts(self) -> str:
        return f"{self.prefix}.monitor.alerts"

    def evaluations(self) -> str:
        """``WindowEvaluated``: the monitor's record of each evaluated window."""
        return f"{self.prefix}.monitor.evaluations"

    def dead_letter_for(self, topic: str) -> str:
        """The dead-letter topic for records that failed on ``topic``.

        Dataset topics share their dataset's DLQ (``<prefix>.dlq.<dataset>``); other topics get
        ``<topic>.dlq``.
        """
        parts = topic.split(".")
        if topic.startswith(self.prefix + ".") and len(parts) >= 3 and parts[-2] in {"raw", "ingested", "valid",
                                                                                    "labels"}:
            return self.dlq(parts[-1])
        return f"{topic}.dlq"

    def group(self, service: str) -> str:
        return f"{self.prefix}.{service}"

    def platform_topics(self, datasets: tuple[str, ...] = ("transactions",),
                        models: tuple[str, ...] = ("fraud",), llms: tuple[str, ...] = ("tiny-llama",)) -> list[str]:
        """The topics the local stack creates up front."""
        names = [self.training_requests(), self.training_results(), self.model_events(), self.alerts(),
                 self.evaluations()]
        for d in datasets:
            names += [self.raw(d), self.ingested(d), self.valid(d), self.dlq(d), self.labels(d),
                      self.validation_failed(d)]
        names += [self.predictions(m) for m in models]
        for m in llms:
            names += [self.generations(m), self.guardrails(m), self.feedback(m)]
        return names
