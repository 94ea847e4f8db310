# PyInstaller hook (--additional-hooks-dir tools/pyinstaller), run when the package
# archiso_hook is imported (always: it is the entry point's): the modules imported by
# name when they are first needed, written as "archiso_hook.package.module:function" in
# the sources: the command line's table (cli.py), the executor's handlers (HANDLERS) and
# Boot.call's targets, lazy.function's other callers. PyInstaller's analysis follows
# import statements only, so these are declared here, read from the sources so that the
# list cannot drift from them. (A hook named for a module that only those names reach
# would never run.) The builder (archiso_hook.build) is never named.
import re
from pathlib import Path

import archiso_hook

_TARGET = re.compile(r'"(archiso_hook(?:\.[a-z_]+)+):[a-z_]+"')
_root = Path(archiso_hook.__file__).resolve().parent
_found = set()
for _path in sorted(_root.rglob("*.py")):
    _found.update(_TARGET.findall(_path.read_text(encoding="utf-8")))

# failure.py imports traceback by name, only to print a bug's traceback under rd.debug.
hiddenimports = ["traceback", *sorted(m for m in _found if not m.startswith("archiso_hook.build"))]
