"""ferry.client: a typed gRPC client for ferry servers (no torch needed).

>>> from ferry.client import TranslationClient
>>> with TranslationClient("localhost:50051") as client:      # doctest: +SKIP
...     [t.text for t in client.translate(["Hello!"], source_language="en", target_language="de")]
"""

from .client import TranslationClient, decoding_options
from .errors import FerryError
from .health import ProbeResult, probe
from .results import Limits, ModelInfo, Translation

__all__ = [
    "FerryError",
    "Limits",
    "ModelInfo",
    "ProbeResult",
    "Translation",
    "TranslationClient",
    "decoding_options",
    "probe",
]
