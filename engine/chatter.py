"""Silencing the chatter of transformers, huggingface_hub and TransformerLens while lamina loads models."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def quiet():
    """Silence transformers', huggingface_hub's and TransformerLens' chatter (progress bars, notices)."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tl_logger = logging.getLogger("transformer_lens")
    old = tl_logger.level
    tl_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()
        tl_logger.setLevel(old)
