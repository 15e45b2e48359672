"""What the command lines (``posdir2ometiff``, ``omero-push``) do to their process, and only they.

The Python API (``convert``, ``omero_push.push``) leaves the process to its caller, as it leaves
logging (logconfig.py).
"""

from __future__ import annotations

import gc


def freeze_imports() -> None:
    """Put every object alive now (the imports: pandas, ome-types, pydantic, NumPy; about 100,000
    objects) out of the cyclic garbage collector's reach, once per process.

    They live as long as the process, yet each full collection walks them all: in a fresh
    ``posdir2ometiff`` the first one comes during the conversion (measured 90-130 ms, holding the
    GIL the decoding threads wait for), and the interpreter's exit walks them again (measured
    0.42-0.53 s, 0.05-0.07 s once they are frozen). Whole process, measured in pairs: a
    one-position conversion 0.68 s less (3.43 -> 2.76 s), an ``omero-push`` of two files 0.79 s
    less (3.86 -> 3.18 s; omero-py, imported later, is not frozen). ``gc.freeze`` moves them to a
    generation "ignored in all the future collections" (Python's gc docs); reference counting
    still frees them. The converter's workers are forked after it and inherit it.

    Called only by a command line that is the program (its ``main()`` without ``argv``), and only
    once: frozen objects are never collected, so a process that froze objects of its own is left
    as it is.

    Whether the process froze objects already is asked once: ``gc.get_freeze_count()`` counts
    the frozen objects by walking their list (CPython's ``gc_list_size``), 10 ms once they are
    the imports, which a program running ``main()`` again (a benchmark, a notebook) paid on
    every run.
    """
    global _asked
    if _asked:
        return
    _asked = True
    if not gc.get_freeze_count():
        gc.freeze()


#: freeze_imports() has run in this process (and frozen the imports, or found objects frozen).
_asked = False
