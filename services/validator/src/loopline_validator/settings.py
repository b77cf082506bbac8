from loopline_core.settings import CoreSettings


class Settings(CoreSettings):
    """Validator settings (``LOOPLINE_*``): the datasets it serves are ``LOOPLINE_DATASETS``, checked
    against the contracts under ``LOOPLINE_CONTRACTS_DIR``."""
