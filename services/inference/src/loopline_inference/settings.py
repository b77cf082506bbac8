from typing import Literal

from loopline_core.settings import CoreSettings


class Settings(CoreSettings):
    """Inference settings (``LOOPLINE_*``)."""

    inference_port: int = 0
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
