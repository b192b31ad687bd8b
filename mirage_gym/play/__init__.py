"""``mirage-gym play``: an interactive web viewer of a generated scene.

* :class:`PlaySession` -- the driven scene (environment, map, recording), no web code;
* :mod:`mirage_gym.play.server` -- the FastAPI app, its static page and the command line.
"""

from mirage_gym.play.session import MAX_UPLOAD_BYTES, PlaySession, Update, decode_start_image

__all__ = ["MAX_UPLOAD_BYTES", "PlaySession", "Update", "decode_start_image"]
