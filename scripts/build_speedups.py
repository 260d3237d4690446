"""The hatchling build hook that compiles ``hybridlog/_speedups.c`` (``hybridlog/native.py``).

It runs the C compiler Python was built with (``sysconfig``'s ``CC``) on the one source file, with
the Python headers, into ``hybridlog/_speedups<EXT_SUFFIX>``: beside the sources, where an editable
install imports it, and into a wheel, which is then tagged for this platform. Where no compiler
works the build goes on without it (hybridlog then runs its pure-Python loops) unless
``HYBRIDLOG_REQUIRE_SPEEDUPS=1`` is set, as ``.ci/run`` does, so that CI cannot pass without it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

REQUIRE_ENV = "HYBRIDLOG_REQUIRE_SPEEDUPS"


def compile_speedups(root: Path) -> Path:
    """Compile the helper in the source tree; returns the built file (raises CalledProcessError or OSError)."""
    source = root / "hybridlog" / "_speedups.c"
    target = source.with_name("_speedups" + str(sysconfig.get_config_var("EXT_SUFFIX")))
    compiler = shlex.split(str(sysconfig.get_config_var("CC") or "cc"))
    include = sysconfig.get_paths()["include"]
    command = [*compiler, "-O3", "-Wall", "-shared", "-fPIC", f"-I{include}", str(source), "-o", str(target)]
    subprocess.run(command, check=True)
    return target


class SpeedupsBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Compiles the helper before a wheel (or an editable install) is built."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Build ``_speedups`` and put it in the wheel (an editable install finds it in place)."""
        try:
            target = compile_speedups(Path(self.root))
        except (OSError, subprocess.CalledProcessError) as e:
            if os.environ.get(REQUIRE_ENV) == "1":
                raise
            self.app.display_warning(f"hybridlog: the C helper was not built ({e}); using the pure-Python loops")
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][str(target)] = f"hybridlog/{target.name}"
