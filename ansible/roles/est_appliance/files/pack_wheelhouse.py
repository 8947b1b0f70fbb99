"""Pack a folder of wheels into one reproducible tar on the controller; run by the roles.

Copying a wheelhouse file by file costs one round trip per wheel on every run; one tar costs
one, and because names are sorted and owners, modes and times fixed, an unchanged wheelhouse
gives a byte-identical tar, so the copy reports no change. Works wherever Python does (macOS
controllers have no GNU tar --sort).

Usage: pack_wheelhouse.py WHEELHOUSE_DIR OUTPUT_TAR
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

FIXED_MTIME = 315532800  # 1980-01-01, as SOURCE_DATE_EPOCH for the wheel build


def pack(folder: Path, output: Path) -> None:
    wheels = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".whl")
    if not wheels:
        raise SystemExit(f"pack_wheelhouse: no wheels in {folder}")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for wheel in wheels:
            info = tar.gettarinfo(str(wheel), arcname=wheel.name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o644
            info.mtime = FIXED_MTIME
            with wheel.open("rb") as handle:
                tar.addfile(info, handle)
    if output.exists() and output.read_bytes() == tmp.read_bytes():
        tmp.unlink()  # unchanged: keep the old file (and its mtime)
        return
    tmp.replace(output)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write(__doc__ or "")
        return 2
    pack(Path(argv[1]), Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
