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
    retrainer_rollout_models: list[str] = ["fraud"]
    """Models whose prediction rows the rollout controller watches (``loopline.predictions.<model>``)."""
    retrainer_rollout_margin: float = 0.05
    """How much higher (absolute) a challenger's rate may be and still count as not worse."""
    retrainer_rollout_tau: float = 0.05
    """The sequential test's mixture width: the rate difference it is most sensitive to."""
    retrainer_rollout_score_threshold: float = 0.5
    """A labelled row is wrong when its score at this threshold disagrees with the label."""
    retrainer_rollout_check_s: float = 5.0
    """How often running rollouts are decided again without new rows (durations pass without traffic)."""
