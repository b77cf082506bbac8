"""Data contracts as files: ``contracts/<dataset>/v<major>.json`` (JSON Schema 2020-12 + ``x-loopline``).

>>> contracts = Contracts.load(settings.contracts_dir)
>>> contract = contracts.current("transactions")
>>> record = contract.check(contract.decode("application/json", payload))
"""

from loopline_core.contracts.compat import compatible
from loopline_core.contracts.explain import Violation
from loopline_core.contracts.model import (
    JSON,
    PROTOBUF,
    Contract,
    ContractError,
    Contracts,
    load_file,
    message_class,
    rejection,
    to_dict,
)

__all__ = ["JSON", "PROTOBUF", "Contract", "ContractError", "Contracts", "Violation", "compatible", "load_file",
           "message_class", "rejection", "to_dict"]
