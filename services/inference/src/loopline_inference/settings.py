from typing import Any, Literal

from loopline_core.settings import CoreSettings
from pydantic import Field

from loopline_inference.domain.guardrails import GuardrailConfig


class Settings(CoreSettings):
    """Inference settings (``LOOPLINE_*``)."""

    inference_port: int = 8001
    """OIP gRPC port (Triton's default; 0 picks a free one)."""
    inference_models: list[str] = ["fraud"]
    """Model names served; each serves its ``champion`` alias."""
    trusted_keys_dir: str
    registry_addr: str
    feature_addr: str = ""
    """The feature service, for requests that name entities instead of carrying a vector (unset: refused)."""
    inference_max_batch: int = 64
    """Most rows one batch holds (requests queue and are scored together up to this)."""
    inference_max_queue_delay_ms: float = 2.0
    """Longest a request waits for others to share its batch."""
    inference_eager_when_idle: bool = True
    """An idle model scores what is queued at once; false: every batch waits the delay (Triton's way)."""
    inference_max_queue: int = 4096
    """Rows that may wait per model variant; a request that does not fit gets RESOURCE_EXHAUSTED."""
    inference_workers: int = 2
    """Threads that run batches (per process; torch and onnxruntime release the GIL while they compute)."""
    inference_torch_threads: int = 1
    """Intra-op threads of one torch or onnxruntime batch (workers x threads should not exceed the cores)."""
    inference_triton_url: str = ""
    """A Triton serving the exported model repository (host:port of its gRPC); set: the ``triton`` variant."""
    inference_reconcile_s: float = 15.0
    """How often to re-resolve aliases, in case a model event was missed."""
    prediction_log_capacity: int = 10_000
    """Rows the prediction log may hold while the broker is slow or away (about 10 MB; at the demo's
    rate minutes of an outage, at 1,000 rows/s ten seconds)."""
    prediction_log_when_full: Literal["drop", "block"] = "drop"
    """``drop``: serving never waits on the log and dropped rows are counted (the monitor's drift
    statistics need a sample, not every row, and a broker outage must not slow inference).
    ``block``: a call waits up to ``prediction_log_block_s`` for room, then drops (counted)."""
    prediction_log_block_s: float = 0.05
    prediction_log_batch: int = 500
    """Most rows published in one go (their sends in flight together, acknowledgements awaited once)."""
    prediction_log_linger_s: float = 0.0
    """How long the sender waits for a batch to fill; 0 sends what is there (batches grow with load)."""
    prediction_log_drain_s: float = 10.0
    """On shutdown, how long the log may take to publish what is queued."""

    # ---- LLMs (served by vLLM engines; see the README's LLM section) ---------------------------------
    inference_llm_models: list[str] = []
    """LLM names served (each its ``champion`` alias, a version of flavor ``llm``) by a vLLM engine."""
    inference_llm_engine: dict[str, dict[str, Any]] = {}
    """vLLM settings per model, overriding ``loopline_llm.engine.EngineConfig``'s pinned defaults, e.g.
    ``{"tiny-llama": {"max_model_len": 512, "max_num_seqs": 256, "kv_cache_share": 0.1}}``."""
    inference_llm_start_timeout_s: float = 300.0
    """How long an engine may take to answer /health after its start (then: not ready, logged)."""
    inference_llm_workdir: str = ""
    """Where verified LLM artifacts and engine logs go (empty: a temporary directory)."""
    inference_llm_max_prompt_chars: int = 8000
    """Longest prompt (rendered, or all chat messages together) accepted; the engine also refuses one
    longer than the model's context."""
    inference_llm_prices: dict[str, dict[str, dict[str, Any]]] = {}
    """Price table per model and variant: ``{"tiny-llama": {"vllm": {"input_per_1k": 0.0005,
    "output_per_1k": 0.0015, "currency": "USD"}}}``; a generation's cost is tokens x rates."""
    inference_llm_stream_holdback_chars: int = 0
    """Trailing characters a stream holds back besides a partial word (0: the word only). A card number
    or IBAN written in groups can otherwise leave in pieces before the whole is recognised as PII; 48
    covers them, at the cost of that much text's delay in every stream."""
    inference_guardrails: GuardrailConfig = Field(default_factory=lambda: GuardrailConfig.model_validate({}))
    """Guardrail stages and their actions on the LLM path (JSON)."""
    inference_http_port: int = 8000
    """The OpenAI-compatible HTTP API's port (0: a free one, logged as ``http_port``); served when
    ``inference_llm_models`` is not empty."""
    inference_http_host: str = ""
    """Empty: ``bind_host``."""
    # ---- per-client rate limits (token buckets; see the README's rate-limit section) -----------------
    inference_rate_limit_rps: float = 0.0
    """Requests a second each client may make, sustained (ModelInfer, each ModelStreamInfer request,
    HTTP completions); 0: no limit. Over it: RESOURCE_EXHAUSTED / HTTP 429."""
    inference_rate_limit_burst: float = 0.0
    """Requests a client may make at once (its bucket's size); 0: twice the rate (at least 1)."""
    inference_rate_limit_clients: dict[str, dict[str, float]] = {}
    """Per-client overrides by client id (the tokens file's first column, or the certificate's CN):
    ``{"demo": {"rps": 50, "burst": 100}, "batch-scorer": {"rps": 0}}`` (rps 0: unlimited)."""
    generation_log_capacity: int = 10_000
    """Generation events that may wait for the broker; beyond, they are dropped and counted."""
