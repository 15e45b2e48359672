"""Ordered, bounded read-ahead: ``fn`` applied to a stream of items in a few threads, results in
the items' order, never more than a bounded number of items in flight.

Used twice per position: plane files are decoded ahead of the writer (planes.py), and decoded
planes are pyramided and tile-compressed ahead of the TIFF writer (writer.py). Both are GIL-free
C work (imagecodecs, numpy), so a small thread pool scales them over the cores while one thread
keeps the file in order.

The work starts when :func:`map_ahead` is called, not when the first result is asked for, so the
threads are busy by the time the writer wants its first plane.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Items in flight per thread, at least (memory: a few planes, never a whole position).
AHEAD_PER_THREAD = 2


class Ahead(Generic[T, R]):
    """Iterator of ``(item, fn(item))`` in order; :meth:`close` stops the threads."""

    def __init__(self, fn: Callable[[T], R], items: Iterable[T], threads: int, ahead: int,
                 name: str) -> None:
        self._fn = fn
        self._todo = iter(items)
        self._ahead = max(ahead, threads)
        self._window: deque[tuple[T, Future[R]]] = deque()
        self._pool = (ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
                      if threads > 1 else None)
        self._closed = False
        if self._pool is not None:
            self._fill()  # start now

    def _fill(self) -> None:
        assert self._pool is not None
        while len(self._window) < self._ahead:
            try:
                item = next(self._todo)
            except StopIteration:
                return
            self._window.append((item, self._pool.submit(self._fn, item)))

    def __iter__(self) -> Iterator[tuple[T, R]]:
        return self

    def __next__(self) -> tuple[T, R]:
        if self._closed:
            raise StopIteration
        if self._pool is None:
            item = next(self._todo)
            return item, self._fn(item)
        if not self._window:
            self.close()
            raise StopIteration
        item, fut = self._window.popleft()
        self._fill()  # refill before waiting: the threads never idle on our account
        try:
            return item, fut.result()
        except BaseException:
            self.close()
            raise

    def __del__(self) -> None:  # dropped without close(): do not keep idle threads
        if not self._closed and self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Cancel what has not started, wait for what has (the consumer failed or is done)."""
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._window.clear()


def map_ahead(
    fn: Callable[[T], R], items: Iterable[T], threads: int = 1, *, name: str = "ahead",
    ahead: int | None = None,
) -> Ahead[T, R]:
    """``(item, fn(item))`` for every item, in order, ``fn`` running ahead in ``threads`` threads.

    Items are pulled from ``items`` by the caller's thread, at most ``ahead`` (default
    ``AHEAD_PER_THREAD × threads``) ahead of what has been consumed; the first ones are
    submitted at once. With one thread nothing runs ahead. Close the iterator when the consumer
    stops early (it failed): that cancels what has not started and waits for what has.
    """
    return Ahead(fn, items, threads, ahead if ahead is not None else AHEAD_PER_THREAD * threads,
                 name)
