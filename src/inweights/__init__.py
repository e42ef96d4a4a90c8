"""inweights: teach a language model a body of documents in its weights, and serve the result."""

__version__ = "0.1.0"

from inweights.api import LoadedMemory, ask, forget, learn, load_memory  # noqa: E402
from inweights.config import LearnConfig, SynthConfig, TrainConfig  # noqa: E402
from inweights.errors import InweightsError  # noqa: E402
from inweights.store import Workspace  # noqa: E402
from inweights.versions import diff, remove, rollback  # noqa: E402

__all__ = ["learn", "ask", "load_memory", "forget", "rollback", "diff", "remove", "LoadedMemory", "LearnConfig", "SynthConfig", "TrainConfig",
           "InweightsError", "Workspace", "__version__"]
