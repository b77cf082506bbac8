from loopline_core.settings import CoreSettings


class Settings(CoreSettings):
    """Retrainer settings (``LOOPLINE_*``)."""

    registry_addr: str
    retrainer_dataset: str = "transactions"
    retrainer_cooldown_s: float = 60.0
    """After a training run finishes, alerts for the same model wait this long before another."""
    retrainer_in_flight_timeout_s: float = 900.0
    """A request with no result after this long no longer blocks a new one."""
    retrainer_seed: int = 7
    retrainer_fresh_labels: int = 1500
    """After a drift alert, wait for this many new labels before training: a model retrained on
    data from before the drift would only learn the old world again."""
    retrainer_window_rows: int = 3000
    """Train on the most recent labelled rows only (0 = all of them)."""
