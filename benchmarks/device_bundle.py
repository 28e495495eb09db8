"""Pack the packages benchmarks/device.py needs and the lent GPU machine lacks into one archive that travels
with the working tree (a call carries 64 MiB in all and the machine has no network).

    python benchmarks/device_bundle.py [--dest .whl]          # here, once: downloads from PyPI
    python3 benchmarks/device.py --out "$OUT" --wheels .whl   # there (name .whl in the call's carry)

The wheels of ``benchmarks/device_wheels.txt`` (CPython 3.12, x86-64 Linux: the image's python3) are
fetched without dependencies (the list names each one), unpacked into one folder, as installing them
would, and packed as ``site.tar.xz``: the wheels come to ~106 MiB (polars' runtime alone 51, bitsandbytes
41 with a library for each CUDA and ROCm release), too much to carry as they are. Only bitsandbytes'
libraries for ``--cuda`` are kept (the image's torch is cu130); xz makes the whole ~44 MiB (measured in two
parts on 2026-12-02: 36.9 MiB without bitsandbytes, 6.6 MiB for it), well inside a call with the tree
(~2.5 MiB). ``device.py --wheels`` unpacks the archive and puts it first on the figures' path. Compressing takes minutes (one thread).
"""

from __future__ import annotations

import argparse
import lzma
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_28_x86_64"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dest", type=Path, default=HERE.parent / ".whl")
    ap.add_argument("--python-version", default="3.12")
    ap.add_argument("--cuda", default="13", help="keep bitsandbytes' libraries for this CUDA major version")
    a = ap.parse_args()
    pins = [x.strip() for x in (HERE / "device_wheels.txt").read_text().splitlines() if x.strip() and x[0] != "#"]
    a.dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheels, site = Path(tmp) / "wheels", Path(tmp) / "site"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", a.python_version, "--implementation", "cp",
                        *[f"--platform={p}" for p in PLATFORMS], "-d", str(wheels), *pins], check=True)
        for w in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(w) as z:
                z.extractall(site)
        for lib in (site / "bitsandbytes").glob("libbitsandbytes_*"):
            if not re.match(rf"libbitsandbytes_(cpu|cuda{a.cuda}\d)\.", lib.name):
                lib.unlink()
        out = a.dest / "site.tar.xz"
        with lzma.open(out, "wb", preset=6) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
            tar.add(site, arcname="site")
    mib = out.stat().st_size / 2**20
    print(f"{out}: {len(pins)} packages, {mib:.1f} MiB (a call carries 64 MiB with the working tree)")


if __name__ == "__main__":
    main()
