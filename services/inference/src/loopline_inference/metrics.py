from collections.abc import Callable, Iterable, Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REQUESTS = Counter("loopline_inference_requests_total", "ModelInfer calls", ["model", "code"])
LATENCY = Histogram("loopline_inference_latency_seconds", "ModelInfer latency", ["model"],
                    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
LOADS = Counter("loopline_inference_model_loads_total", "Model load attempts", ["model", "outcome"])
LOG_SENT = Counter("loopline_inference_prediction_log_sent_total", "Prediction rows published", ["model"])
LOG_DROPPED = Counter("loopline_inference_prediction_log_dropped_total",
                      "Prediction rows not logged: queue full (drop), no room in time (block), closing, shutdown",
                      ["model", "reason"])
LOG_FAILED = Counter("loopline_inference_prediction_log_failed_total",
                     "Prediction rows whose publish still failed after the retries", ["model"])
LOG_QUEUED = Gauge("loopline_inference_prediction_log_queued", "Prediction rows waiting in the log's queue")
VARIANT_LOADS = Counter("loopline_inference_variant_loads_total", "Export variant loads",
                        ["model", "variant", "outcome"])
VARIANT_REQUESTS = Counter("loopline_inference_variant_requests_total", "Rows answered per role and variant",
                           ["model", "role", "variant"])
VARIANT_LATENCY = Histogram("loopline_inference_variant_latency_seconds",
                            "Queue plus compute time per role and variant",
                            ["model", "role", "variant"],
                            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
FALLBACKS = Counter("loopline_inference_fallbacks_total",
                    "Requests answered by the champion's torch variant because the routed arm or variant failed",
                    ["model", "variant", "reason"])
SHADOW = Counter("loopline_inference_shadow_total", "Shadow copies scored by the challenger", ["model", "outcome"])


class QueueDepth(Collector):
    """``loopline_inference_queued_rows{model,role,variant}``: rows waiting in each batcher, read at
    scrape time (exact, and nothing to do on the request path). ``depths`` yields (model, role,
    variant, rows) and is called from the metrics server's thread."""

    def __init__(self, depths: Callable[[], Iterable[tuple[str, str, str, int]]]) -> None:
        self._depths = depths

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("loopline_inference_queued_rows", "Rows waiting in a batcher's queue",
                                   labels=["model", "role", "variant"])
        for model, role, variant, rows in self._depths():
            family.add_metric([model, role, variant], rows)
        yield family


# ---- LLMs -----------------------------------------------------------------------------------------
LLM_REQUESTS = Counter("loopline_inference_llm_requests_total", "LLM requests by API and outcome "
                       "(ok, blocked, cancelled, error)", ["model", "api", "outcome"])
LLM_TOKENS = Counter("loopline_inference_llm_tokens_total", "Tokens the engine read (prompt) and wrote (completion)",
                     ["model", "version", "variant", "kind"])
LLM_COST = Counter("loopline_inference_llm_cost_total", "Cost of generations from the price table",
                   ["model", "version", "variant", "currency"])
LLM_TTFT = Histogram("loopline_inference_llm_ttft_seconds", "Time to the first streamed token", ["model"],
                     buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
LLM_TOKEN_LATENCY = Histogram("loopline_inference_llm_token_latency_seconds",
                              "Time per completion token after the first", ["model"],
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
LLM_ENGINE_STARTS = Counter("loopline_inference_llm_engine_starts_total",
                            "LLM engine starts (started, failed, refused: not an llm artifact or not verified)",
                            ["model", "outcome"])
LLM_READY = Gauge("loopline_inference_llm_ready", "1 while the model's LLM engine serves", ["model"])
GENERATION_LOG_DROPPED = Counter("loopline_inference_generation_log_dropped_total",
                                 "Generation events not published (queue full, publish failed, shutdown)",
                                 ["reason"])

# ---- admission ----------------------------------------------------------------------------------
IN_FLIGHT = Gauge("loopline_inference_in_flight", "Requests being served right now (gRPC and HTTP); the "
                  "HorizontalPodAutoscaler scales inference on it", ["model"])
RATE_LIMITED = Counter("loopline_inference_rate_limited_total",
                       "Requests refused by the client's rate limit (RESOURCE_EXHAUSTED, HTTP 429)", ["client"])
