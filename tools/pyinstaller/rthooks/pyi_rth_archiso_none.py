"""Takes the place of PyInstaller's run-time hooks named in ../rthooks.dat: nothing to do."""
