"""JAX's persistent compilation cache, and a counter of the compilations a piece of code does.

A run compiles the same programs every time it starts (the training loop, prediction, the
estimators, the query). :func:`use_persistent_cache` points JAX's on-disk cache at a folder
(``launch.replicate`` uses one beside the workdirs by default), so a second run on the same
machine loads the compiled programs instead of compiling them again; small and quick
programs are cached too (JAX's defaults skip programs that compile in under a second).

:class:`CompileCounter` counts, while it is open, the XLA compilations requested
(``backend_compiles``, cache hits included), those answered from the persistent cache
(``cache_hits``) and so the programs really compiled (``compiled``), with their seconds.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import jax
from jax.experimental.compilation_cache import compilation_cache as _cache_api

# jax._src.dispatch.BACKEND_COMPILE_EVENT: every XLA compilation (persistent-cache look-up
# included) is timed under this event name.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_SAVED_EVENT = "/jax/compilation_cache/compile_time_saved_sec"


def use_persistent_cache(path: str | None) -> None:
    """Cache compiled programs in the folder ``path`` (created if absent); None turns it off.

    Every program is cached, whatever its size or compile time
    (``jax_persistent_cache_min_entry_size_bytes=-1``,
    ``jax_persistent_cache_min_compile_time_secs=0``). Programs already compiled in this
    process stay in JAX's in-memory cache; the folder serves the next process. Changing the
    folder within a process resets JAX's cache handle, so the new folder takes effect.
    """
    current = jax.config.jax_compilation_cache_dir
    if path is None:
        if current is not None:
            jax.config.update("jax_compilation_cache_dir", None)
            _cache_api.reset_cache()
        return
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if current != path:
        jax.config.update("jax_compilation_cache_dir", path)
        _cache_api.reset_cache()


@contextlib.contextmanager
def persistent_cache(path: str | None) -> Iterator[None]:
    """:func:`use_persistent_cache` for the ``with`` block; the previous folder (or none) after."""
    previous = jax.config.jax_compilation_cache_dir
    use_persistent_cache(path)
    try:
        yield
    finally:
        use_persistent_cache(previous)


class CompileCounter:
    """Counts XLA compilations while open (a context manager; thread-safe).

    ``backend_compiles``: compilations requested (each one a program not in this process's
    in-memory cache); ``cache_hits``: those loaded from the persistent cache;
    ``compiled = backend_compiles - cache_hits``: programs XLA actually compiled.
    ``seconds``: time spent in those requests (look-ups included);
    ``names``: the function name of each request, in order.
    """

    def __init__(self) -> None:
        self.backend_compiles = 0
        self.cache_hits = 0
        self.seconds = 0.0
        self.names: list[str] = []
        self._lock = threading.Lock()

    @property
    def compiled(self) -> int:
        return self.backend_compiles - self.cache_hits

    def _on_duration(self, event: str, duration: float, **kwargs: Any) -> None:
        if event == BACKEND_COMPILE_EVENT:
            with self._lock:
                self.backend_compiles += 1
                self.seconds += float(duration)
                self.names.append(str(kwargs.get("fun_name", "?")))

    def _on_event(self, event: str, **kwargs: Any) -> None:
        if event == CACHE_HIT_EVENT:
            with self._lock:
                self.cache_hits += 1

    def __enter__(self) -> CompileCounter:
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)
        return self

    def __exit__(self, *exc: Any) -> None:
        jax.monitoring.unregister_event_duration_listener(self._on_duration)
        jax.monitoring.unregister_event_listener(self._on_event)
