from pathlib import Path

from loopline_core.settings import CoreSettings
from loopline_ml.spec import default_dir
from pydantic import Field


class Settings(CoreSettings):
    """Retrainer settings (``LOOPLINE_*``). When and how to retrain is each model's spec (``retraining:``)."""

    registry_addr: str
    models_dir: Path = Field(default_factory=default_dir)
    """Where the model specs are (``<name>.yaml``); a changed file is read again, so an edit needs no restart."""
    retrainer_dataset: str = "transactions"
    """The dataset whose labels are counted and which training requests name."""
    retrainer_models: list[str] = ["fraud"]
    """Models whose label-volume and schedule triggers are checked (alerts name their model themselves)."""
    retrainer_schedule_check_s: float = 5.0
    """How often schedule triggers are checked."""
    retrainer_seed: int = 7
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
