"""Decoder chatter captured per file instead of printed: Pillow's Python warnings and libtiff's C messages.

Left alone, both reach stderr directly, through ``--quiet`` and across the progress bar
(``UserWarning: Corrupt EXIF data``, ``Fax4Decode: Bad code word ...``). Inside :func:`captured`
they become strings that the caller turns into a note on the image (a warning) or into its error
message (libtiff's error on a file Pillow then refuses). Outside it they behave as before.

Both hooks are installed once per process and route by thread, because decoding runs in a
background thread while the main thread computes and prints.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

_local = threading.local()
_install_lock = threading.Lock()
_installed = False
_forward_warning = warnings.showwarning  # where warnings that are not ours go
_TIFF_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
_handlers: list = []  # keep the ctypes callbacks alive for as long as libtiff may call them


@contextmanager
def captured() -> Iterator[list[str]]:
    """Collect the decoder messages of this thread into a list while the block runs."""
    _install()
    outer = getattr(_local, "messages", None)
    messages: list[str] = []
    _local.messages = messages
    try:
        yield messages
    finally:
        _local.messages = outer


def _install() -> None:
    """Install the hooks; the warning ones again whenever a ``catch_warnings`` block has reset them."""
    global _installed, _forward_warning
    with _install_lock:
        if warnings.showwarning is not _route_warning:
            _forward_warning, warnings.showwarning = warnings.showwarning, _route_warning
        if not warnings.filters or warnings.filters[0] != _PIL_ALWAYS:
            # "always": the same warning text from two different files must give two notes.
            warnings.filterwarnings("always", module=_PIL_MODULES)
        if not _installed:
            _installed = True
            _install_libtiff_handlers()


_PIL_MODULES = r"PIL(\.|$)"
_PIL_ALWAYS = ("always", None, Warning, re.compile(_PIL_MODULES), 0)


def _route_warning(message, category, filename, lineno, file=None, line=None) -> None:
    messages = getattr(_local, "messages", None)
    if messages is not None and Path(filename).parent.name == "PIL":
        if issubclass(category, Image.DecompressionBombWarning):
            return  # io applies its own, stated, pixel limit
        messages.append(str(message).strip().splitlines()[0] if str(message).strip() else category.__name__)
        return
    _forward_warning(message, category, filename, lineno, file, line)


def _install_libtiff_handlers() -> None:
    """Point libtiff's warning and error handlers (process-wide C globals) at our router."""
    library = _loaded_libtiff()
    if library is None:
        return
    for setter, label in (("TIFFSetWarningHandler", "libtiff warning"), ("TIFFSetErrorHandler", "libtiff error")):
        handler = _TIFF_HANDLER(_tiff_router(label))
        _handlers.append(handler)
        function = getattr(library, setter)
        function.restype = ctypes.c_void_p
        function.argtypes = [_TIFF_HANDLER]
        function(handler)


def _loaded_libtiff() -> ctypes.CDLL | None:
    """The libtiff Pillow itself links (its wheel bundles one), found among the mapped libraries."""
    try:
        from PIL import _imaging  # noqa: F401  (maps libtiff into the process)

        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "libtiff" in line and "/" in line}
    except (ImportError, OSError):
        return None  # not Linux, or Pillow without libtiff: messages go where they went before
    path = next(iter(sorted(paths)), None)
    try:
        return ctypes.CDLL(path) if path else None
    except OSError:
        return None


def _tiff_router(label: str):
    def handle(module: bytes | None, template: bytes | None, arguments: int | None) -> None:
        text = _format(template, arguments)
        where = (module or b"").decode("utf-8", "replace")
        messages = getattr(_local, "messages", None)
        if messages is not None:
            messages.append(f"{label}: {where}: {text}" if where else f"{label}: {text}")
        # Outside captured() (another library reading TIFFs) the message is dropped, as with -q.

    return handle


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)


def _format(template: bytes | None, arguments: int | None) -> str:
    """printf-format libtiff's message with its va_list; only where va_list is passed as a pointer."""
    raw = (template or b"").decode("utf-8", "replace")
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return raw
    try:
        buffer = ctypes.create_string_buffer(512)
        _libc().vsnprintf(buffer, ctypes.c_size_t(len(buffer)), template, ctypes.c_void_p(arguments))
        return buffer.value.decode("utf-8", "replace")
    except (OSError, AttributeError, ctypes.ArgumentError):
        return raw
