from loopline_core.settings import CoreSettings


class Settings(CoreSettings):
    """Feature service settings (``LOOPLINE_*``)."""

    feature_port: int = 0
    feature_window_days: float = 1.0
    """Window of the per-customer aggregates (event time)."""
