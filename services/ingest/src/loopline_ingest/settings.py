from loopline_core.settings import CoreSettings


class Settings(CoreSettings):
    """Ingest settings (``LOOPLINE_*``): the datasets it serves are ``LOOPLINE_DATASETS``, and each
    dataset's contract (``LOOPLINE_CONTRACTS_DIR``) names its entity key, event time and event id."""
