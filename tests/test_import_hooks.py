"""`on_import` runs its set-up when a module loads, not when it is only looked up (~1 s).

`tests/test_imports.py` checks the same with TensorFlow, which looks "keras" up
before it imports it.
"""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_a_lookup_before_the_import_does_not_spend_the_hook():
    assert _run(
        "import importlib.util, sys\n"
        "from vispipe.import_hooks import on_import\n"
        "calls = []\n"
        "assert 'colorsys' not in sys.modules\n"
        "on_import('colorsys', lambda load: (load(), calls.append('loaded')))\n"
        "importlib.util.find_spec('colorsys')\n"
        "assert calls == []\n"
        "import colorsys\n"
        "print(calls)") == "['loaded']"

