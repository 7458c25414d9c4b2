"""
Third-party libraries' progress bars and chatter silenced for a block of the project's own calls, and
put back as they were after: transformers' ("Writing model shards", "Loading weights") and its
info and warning logs. Only its errors get through.

    with quiet.transformers():
        hf_model.save_pretrained(folder)

Scoped, not set at import: a program that imports gptkit keeps transformers as it configured it.
"""

import contextlib


@contextlib.contextmanager
def transformers():
    from transformers.utils import logging
    bars, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
