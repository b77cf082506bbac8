from loopline_core.settings import CoreSettings


class Settings(CoreSettings):
    """Validator settings (``LOOPLINE_*``)."""

    validator_datasets: list[str] = ["transactions"]
