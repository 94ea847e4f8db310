"""Takes the place of PyInstaller's pkgutil run-time hook (../rthooks.dat), which imports
pkgutil at every start (a third of a second under TCG) so that pkgutil.iter_modules()
also lists the modules in PyInstaller's archive. Here the same registration runs when
pkgutil is first imported: only pyroute2, on a network boot, lists its plugins that way.
"""


def _pyi_rthook() -> None:
    import sys

    def register(pkgutil):
        # As PyInstaller's own hook (pinned version): the archive's entries under the
        # finder's package, then what its fall-back finder (a FileFinder) sees.
        import pyimod02_importers

        def iter_frozen(finder, prefix=""):
            node = pyimod02_importers.get_pyz_toc_tree()
            for part in finder._pyz_entry_prefix.split(".") if finder._pyz_entry_prefix else []:
                node = node.get(part)
                if not isinstance(node, dict):
                    node = {}
                    break
            for name, entry in node.items():
                yield prefix + name, isinstance(entry, dict)
            if finder.fallback_finder is not None:
                yield from pkgutil.iter_importer_modules(finder.fallback_finder, prefix)

        pkgutil.iter_importer_modules.register(pyimod02_importers.PyiFrozenFinder, iter_frozen)

    class RegisterOnImport:
        """First on sys.meta_path until pkgutil is imported: its loader then registers."""

        @staticmethod
        def find_spec(name, path=None, target=None):
            if name != "pkgutil":
                return None
            sys.meta_path.remove(RegisterOnImport)
            from importlib.util import find_spec

            spec = find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_and_register(module):
                exec_module(module)
                register(module)

            spec.loader.exec_module = exec_and_register
            return spec

    sys.meta_path.insert(0, RegisterOnImport)


_pyi_rthook()
del _pyi_rthook
