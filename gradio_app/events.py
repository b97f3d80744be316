"""What every event of the web page goes through: its errors as one-line pop-ups (:func:`guard`),
a tab's events that change its session one at a time (:func:`one_at_a_time`), the end of a
tab's session (:func:`close_session`), and the app's temporary files (:class:`AppFiles`:
session folders and API outputs)."""

import functools
import html
import logging
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path

import gradio as gr

from core.errors import InputError
from gradio_app.session import Session, SessionClosed

__all__ = ["AppFiles", "close_session", "guard", "one_at_a_time"]

log = logging.getLogger("gradio_app")

#: API outputs older than this are deleted (gradio keeps its own copy once it has answered).
API_FILES_TTL_S = 600


class AppFiles:
    """The app's temporary folder: session folders and API outputs; removed at close."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="sam3d-gradio-"))
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.root), True)

    def register(self, session: Session, request: gr.Request | None) -> None:
        h = getattr(request, "session_hash", None)
        if h and session.session_hash is None:
            session.session_hash = h
            with self.lock:
                self.sessions[h] = session

    def end_session(self, session_hash: str | None) -> None:
        with self.lock:
            s = self.sessions.pop(session_hash, None) if session_hash else None
        if s is not None:
            s.close()

    def api_dir(self) -> Path:
        base = self.root / "api"
        base.mkdir(exist_ok=True)
        now = time.time()
        for d in base.iterdir():
            try:
                if now - d.stat().st_mtime > API_FILES_TTL_S:
                    shutil.rmtree(d, ignore_errors=True)
            except FileNotFoundError:
                pass
        d = base / uuid.uuid4().hex
        d.mkdir()
        return d

    def close(self) -> None:
        with self.lock:
            sessions, self.sessions = list(self.sessions.values()), {}
        for s in sessions:
            s.close()
        self._finalizer()


def close_session(session) -> None:
    """gr.State's delete_callback: the tab is gone (or the state expired)."""
    if isinstance(session, Session):
        session.close()


def guard(fn):
    """Turn the handlers' one-line errors into gr.Error; never show a stack trace.

    A tab closed while its request runs (gradio then ends the session: ``on_unload``) makes
    the handler stop on the closed session (:class:`~gradio_app.session.SessionClosed`);
    nobody is left to answer, so that is one line of the log at info level. Any other error
    is logged with its traceback, also when the tab has closed meanwhile (the model failing
    is a real error whether or not anyone still waits for it).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except SessionClosed as exc:
            log.info("%s: the tab closed while it ran; dropped (%s)", fn.__name__, exc)
            raise gr.Error("This page was closed.", print_exception=False) from None
        except (InputError, ValueError) as exc:
            raise gr.Error(html.escape(str(exc), quote=False), print_exception=False) from None
        except Exception:
            closed = args and isinstance(args[0], Session) and args[0].closed
            log.exception(
                "unexpected error in %s%s", fn.__name__, " (its tab had closed)" if closed else ""
            )
            raise gr.Error(
                "Internal error while handling this request (details are in the server log).",
                print_exception=False,
            ) from None

    return wrapper


def one_at_a_time(fn):
    """Run ``fn(session, ...)`` holding the session's lock: gradio runs two events of one tab
    at the same time (Undo pressed while a click still computes), and their changes to the
    session would interleave (Undo found nothing to undo, then the click landed after it).
    The slice and axis events do not wait: they only choose what is drawn."""

    @functools.wraps(fn)
    def wrapper(session, *args, **kwargs):
        if not isinstance(session, Session):
            return fn(session, *args, **kwargs)
        with session.lock:
            return fn(session, *args, **kwargs)

    return wrapper
