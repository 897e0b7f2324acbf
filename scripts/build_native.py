#!/usr/bin/env python3
"""Compile apigate's hot modules with mypyc, in place (see src/apigate/_native.py).

Run by `make install`. Does nothing when the build is fresh. When it cannot compile (no C
compiler or Python headers), it says so and apigate runs from source, unless CI=true, where
the tests must exercise the compiled build and a failure here fails the build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def main() -> int:
    # Importing apigate runs its build selection; read the module list without it.
    sys.path.insert(0, str(SRC / "apigate"))
    import _native  # type: ignore[import-not-found]

    force = "--force" in sys.argv
    # An extension left from a module no longer in the list would still shadow its source.
    hot = {str(Path(*m.split("."))) for m in _native.HOT_MODULES}
    for ext in (SRC / "apigate").rglob("*.so"):
        module = str(ext.relative_to(SRC).parent / ext.name.split(".", 1)[0])
        if module not in hot:
            print(f"removing {ext.relative_to(ROOT)}: no longer compiled", file=sys.stderr)
            ext.unlink()
    if not force and not _native.stale_modules():
        return 0
    paths = [str(Path(*m.split(".")).with_suffix(".py")) for m in _native.HOT_MODULES]
    build = ROOT / "build" / "native"
    if force:
        shutil.rmtree(build, ignore_errors=True)
    code = (
        "import sys\n"
        "from setuptools import setup\n"
        "from mypyc.build import mypycify\n"
        f"paths = {paths!r}\n"
        "setup(name='apigate-native', py_modules=[],\n"
        f"      ext_modules=mypycify(paths, opt_level='3', group_name={_native.GROUP!r},"
        f" target_dir={str(build / 'c')!r}),\n"
        f"      script_args=['-q', 'build_ext', '--inplace', '--build-temp', {str(build / 'tmp')!r},"
        f" '--build-lib', {str(build / 'lib')!r}])\n"
    )
    print(f"compiling {len(paths)} hot modules with mypyc (about a minute)...", file=sys.stderr)
    proc = subprocess.run([sys.executable, "-c", code], cwd=SRC, capture_output=True, text=True)
    if proc.returncode == 0:
        # setuptools skips (and copies with their old times) extensions whose C is unchanged,
        # and freshness is judged by mtime: mark the whole build as made now.
        for module in _native.HOT_MODULES:
            if (ext := _native.extension_path(module)) is not None:
                os.utime(ext)
    if proc.returncode != 0 or _native.stale_modules():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        msg = "mypyc could not compile the hot modules; apigate will run from source (slower)"
        if os.environ.get("CI") == "true":
            print(f"error: {msg}", file=sys.stderr)
            return 1
        print(f"warning: {msg}", file=sys.stderr)
        return 0
    print("compiled build ready", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
