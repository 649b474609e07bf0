"""Find the classes of an installed library whose forward is one an adapter reproduces.

    python bench/find_norm_classes.py [transformers|timm|diffusers ...]

Reads the library's source files (nothing is imported), fingerprints every class's forward the
way convert() does (fusednorm/adapters/_fingerprint.py) and prints, per adapter, the classes
that match and whether the registry names them.  This is how the transformers lists in
fusednorm/adapters/_classes.py were made (transformers 5.24.0); run it after a library
upgrade and copy the new names there -- the registry itself stays an explicit list.
tests/test_adapters.py runs the same scan over transformers' modeling files.
"""
import ast
import glob
import importlib.util
import os
import sys

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fusednorm import adapters  # noqa: E402
from fusednorm.adapters import _fingerprint  # noqa: E402

# transformers' modular_*.py files are code-generation sources that are never imported
_SKIP = ("modular_", "convert_")


def source_files(library: str, pattern: str = "**/*.py"):
    spec = importlib.util.find_spec(library)
    if spec is None or spec.origin is None:
        return None, []
    root = os.path.dirname(spec.origin)
    files = sorted(glob.glob(os.path.join(root, pattern), recursive=True))
    return root, [f for f in files if not os.path.basename(f).startswith(_SKIP)]


def scan(library: str, pattern: str = "**/*.py"):
    """{adapter id: sorted ["module:qualname", ...]} of the top-level classes in ``library``'s
    source whose forward fingerprint is one an adapter accepts."""
    by_fp = {fp: a.id for a in adapters.ADAPTERS for fp in a.fingerprints}
    root, files = source_files(library, pattern)
    found = {}
    for path in files:
        rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        module = library if rel == "__init__" else f"{library}.{rel}".removesuffix(".__init__")
        try:
            tree = ast.parse(open(path, encoding="utf-8").read())
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                fp = _fingerprint.of_source(node)
                if fp in by_fp:
                    found.setdefault(by_fp[fp], []).append(f"{module}:{node.name}")
    return {k: sorted(v) for k, v in found.items()}


def main(argv=None):
    libraries = (argv if argv is not None else sys.argv[1:]) or ["transformers", "timm",
                                                                  "diffusers"]
    for lib in libraries:
        found = scan(lib)
        if not found:
            print(f"{lib}: not installed, or no class matches")
            continue
        for adapter_id, keys in sorted(found.items()):
            new = [k for k in keys if k not in adapters.REGISTRY]
            print(f"{lib} {adapter_id}: {len(keys)} classes, {len(new)} not in the registry")
            for k in new:
                print(f"    {k}")
        registered = {k for k in adapters.REGISTRY if k.startswith(lib + ".")}
        gone = registered - {k for keys in found.values() for k in keys}
        for k in sorted(gone):
            print(f"{lib}: registered but not found with its adapter's forward: {k}")


if __name__ == "__main__":
    main()
