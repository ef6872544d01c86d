"""One way to turn an exception into a message for the visitor: log it for the operator first.

    except Exception as exc:
        raise ui_error(exc, "Checking the dataset", title="Dataset problem") from None
"""

from __future__ import annotations

import logging
import re

import gradio as gr

from flowerdemo.serve.jobs import Busy

log = logging.getLogger("flowerdemo.app")

# The visitor's input was wrong, or the server was busy: the core's errors (DatasetError, ArchiveError,
# ImageError, CheckpointError, PathNotAllowed, ConfigError, ...) are ValueErrors that say what was wrong and
# what is accepted. Worth a log line, not a traceback.
EXPECTED = (ValueError, Busy)
MAX_MESSAGE = 1000  # characters of an error's text shown to the visitor


def ui_error(exc: BaseException, doing: str, *, title: str | None = None, message: str | None = None) -> gr.Error:
    """Log `exc` (raised while `doing` something, e.g. "Training") and return the gr.Error to raise.

    The visitor reads `message` (default: the error's own text), except for a bug: then they read that the
    server failed, and the operator's log has the traceback.
    """
    if isinstance(exc, gr.Error):  # already meant for the visitor
        return exc
    if log_failure(exc, doing):
        text = message or (str(exc) if isinstance(exc, EXPECTED) else f"{doing} failed: {exc}")
    else:
        text = f"{doing} failed because of an error in the server ({type(exc).__name__}); the details are in its log."
    # logged above (one line for the visitor's mistakes, a traceback for failures): Gradio need not print it again
    # titled by what was being done unless told: Gradio's own title is just "Error"
    return gr.Error(_sentence(text), title=title or doing, print_exception=False)


def log_failure(exc: BaseException, doing: str) -> bool:
    """Log `exc` for the operator; True when its text is fit for the visitor, False for a bug.

    Expected errors get one line. RuntimeError, OSError and ImportError (out of memory, disk full,
    network, a missing package) get their traceback. Anything else is a bug: traceback, and False.
    """
    if isinstance(exc, EXPECTED):
        log.info("%s: %s: %s", doing, type(exc).__name__, exc)
        log.debug("%s: where the %s came from", doing, type(exc).__name__, exc_info=exc)  # -v shows it
        return True
    if isinstance(exc, (RuntimeError, OSError, ImportError)):
        log.exception("%s failed", doing, exc_info=exc)
        return True
    log.exception("%s failed: unexpected %s", doing, type(exc).__name__, exc_info=exc)
    return False


def _sentence(text: str) -> str:
    # a library's message as a visitor can read it: no terminal colour codes, and its first paragraph only (torch's
    # export errors go on for a page of advice to file bugs against torch)
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).strip().split("\n\n")[0].strip()
    # the browser's toast reads the text as HTML: a placeholder like root/<class>/<image> vanished as a tag
    text = re.sub(r"<(\w[\w .-]*)>", r"‹\1›", text)
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE].rsplit(" ", 1)[0] + " … (the rest is in the server's log)"
    text = text or "Something went wrong"
    # a sentence starts with a capital ("there is already a class…"); a file name stays as given ("notes.jpg: …")
    if re.match(r"[a-z]+(?![\w./:\\-])", text):
        text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."
