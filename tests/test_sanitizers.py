"""The native kernels rebuilt with AddressSanitizer + UndefinedBehaviorSanitizer pass the kernel tests.

tools/sanitize.sh builds the extension (every instruction-set variant) in a scratch copy and runs the
kernel tests under each variant this CPU supports (EDGERUN_ISA); any sanitizer report fails the run.
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_native_kernels_are_clean_under_asan_and_ubsan():
    result = subprocess.run(["bash", str(ROOT / "tools" / "sanitize.sh")], capture_output=True, text=True,
                            timeout=1200, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable,
                                               "HOME": str(Path.home())})
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, tail
    assert "sanitizers: clean" in result.stdout, tail
