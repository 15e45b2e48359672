"""What the command lines (``posdir2ometiff``, ``omero-push``) do to their process, and only they.

The Python API (``convert``, ``omero_push.push``) leaves the process to its caller, as it leaves
logging (logconfig.py).
"""

from __future__ import annotations

import gc


def freeze_imports() -> None:
    """Put every object alive now (the imports: pandas, ome-types, pydantic, NumPy, omero-py; 100,000
    to 170,000 objects) out of the cyclic garbage collector's reach, once per process.

    They live as long as the process, yet each full collection walks them all: in a fresh
    ``posdir2ometiff`` the first one comes during the conversion (measured 90-130 ms, holding the
    GIL the decoding threads wait for), and the collections of the interpreter's exit walk them
    again (measured 0.4-0.6 s of a one-position run's whole process). ``gc.freeze`` moves them to
    a generation that is "ignored in all the future collections" (Python's gc docs); they are
    still freed by reference counting. The converter's workers are forked after it and inherit it.

    Called only by a command line that is the program (its ``main()`` without ``argv``), and only
    once: frozen objects are never collected, so a process that froze objects of its own is left
    as it is.
    """
    if not gc.get_freeze_count():
        gc.freeze()
