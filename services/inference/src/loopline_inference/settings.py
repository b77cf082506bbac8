from typing import Literal

from loopline_core.settings import CoreSettings


class Settings(CoreSettings):
    """Inference settings (``LOOPLINE_*``)."""

    inference_port: int = 0
    inference_models: list[str] = ["fraud"]
    """Model names served; each serves its ``champion`` alias."""
    trusted_keys_dir: str
    registry_addr: str
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
