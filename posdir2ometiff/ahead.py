"""Ordered, bounded read-ahead: ``fn`` applied to a stream of items in a few threads, results in
the items' order, never more than a few items in flight.

Used twice per position: plane files are decoded ahead of the writer (planes.py), and decoded
planes are pyramided and tile-compressed ahead of the TIFF writer (writer.py). Both are GIL-free
C work (imagecodecs, numpy), so a small thread pool scales them over the cores while one thread
keeps the file in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Items in flight per thread (memory: a few planes, never a whole position).
AHEAD_PER_THREAD = 2


def map_ahead(
    fn: Callable[[T], R], items: Iterable[T], threads: int = 1, *, name: str = "ahead"
) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` for every item, in order, ``fn`` running ahead in ``threads`` threads.

    Items are pulled from ``items`` by the caller's thread, at most ``AHEAD_PER_THREAD ×
    threads`` ahead of what has been consumed. With one thread nothing runs ahead. Closing the
    iterator (the consumer failed) cancels what has not started and waits for what has.
    """
    if threads <= 1:
        for item in items:
            yield item, fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
    window: deque[tuple[T, Future[R]]] = deque()
    todo = iter(items)
    try:
        for item in todo:
            window.append((item, pool.submit(fn, item)))
            if len(window) >= AHEAD_PER_THREAD * threads:
                break
        while window:
            item, fut = window.popleft()
            for nxt in todo:  # refill one
                window.append((nxt, pool.submit(fn, nxt)))
                break
            yield item, fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
