from loopline_core.settings import CoreSettings


class Settings(CoreSettings):
    """Monitor settings (``LOOPLINE_*``)."""

    monitor_models: list[str] = ["fraud"]
    registry_addr: str
    trusted_keys_dir: str
    monitor_window: int = 400
    """Recent predictions compared with the training reference."""
    monitor_every: int = 100
    """Evaluate drift after this many new predictions of a model."""
    monitor_psi_threshold: float = 0.25
    monitor_repeat_every: int = 20
    """While a version stays in alert, raise the alert again every this many evaluations (as
    Alertmanager's repeat interval does), so a rejected retrain is retried once more labels exist."""
    monitor_psi_clear: float = 0.1
    """Below this the alert clears (hysteresis: between the two, the state holds)."""
