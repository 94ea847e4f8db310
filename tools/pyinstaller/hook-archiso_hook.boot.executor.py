# PyInstaller hook (--additional-hooks-dir tools/pyinstaller): the modules the executor
# imports by name when a boot first needs them: its handlers' table
# (archiso_hook/boot/executor.py, HANDLERS) and Boot.call's targets, all written as
# "archiso_hook.package.module:function". PyInstaller's analysis follows import
# statements only, so these are declared here, read from the sources so that the list
# cannot drift from them. The builder (archiso_hook.build) is never one of them.
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
