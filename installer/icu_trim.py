"""A smaller ``libicudata.so.73`` for the Linux bundle: 31 MB of ICU data down to ~4 MB.

PySide6's Linux wheels link QtCore against ICU, whose data library holds every locale's
names, currencies, units, collations, break dictionaries and 200 legacy charset
converters. The worker's Qt uses ICU only for collation, locale-aware case mapping and
time-zone names, in English. This keeps the data those need and what ICU's own core
reads (normalization, property names, aliases, supplemental data, the root and English
bundles of each tree, break rules without the dictionaries, zoneinfo), and drops the rest:

- every locale other than root and en (``xx.res``, ``xx_YY.res`` in each tree);
- ``*.cnv`` converters (UTF-8/16/32, Latin-1 and ASCII are algorithmic, not data);
- ``brkitr/*.dict`` (CJK, Thai, Lao, Khmer, Burmese word dictionaries), ``translit/``,
  ``rbnf/`` (spelled-out numbers).

The result is the same ICU "common data" format (``CmnD``) with a shorter table of
contents, linked into a shared library that exports the one symbol (``icudt73_dat``) and
soname the original has. Needs a C compiler (``cc``); without one the spec keeps the
original. ``COUCHFARM_FULL_ICU=1`` keeps the original too.

    python installer/icu_trim.py SRC.so OUT_DIR      # prints the new library's path
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

MAGIC = b"\xda\x27"
ALIGN = 16
LOCALE = re.compile(r"^[a-z]{2,3}(_[A-Za-z0-9]+)*\.res$")
KEEP_LOCALES = {"root.res", "en.res", "en_US.res", "en_001.res", "en_GB.res"}
DROP_TREES = {"translit", "rbnf"}


class IcuDataError(ValueError):
    pass


def find_common_data(blob: bytes) -> int:
    """File offset of the ICU common data (header: size, 0xda 0x27, ..., format 'CmnD')."""
    start = 0
    while True:
        at = blob.find(b"CmnD", start)
        if at < 0:
            raise IcuDataError("no ICU common data (CmnD) in this file")
        base = at - 12  # UDataInfo starts at 4; dataFormat is 8 bytes into it
        if base >= 0 and base % ALIGN == 0 and blob[base + 2 : base + 4] == MAGIC:
            return base
        start = at + 1


def symbol_size(src: Path, symbol: str) -> int | None:
    """The size of ``symbol`` in the library's dynamic symbol table (binutils ``nm``)."""
    nm = shutil.which("nm")
    if nm is None:
        return None
    out = subprocess.run(
        [nm, "-D", "-S", "--defined-only", str(src)], capture_output=True, text=True, check=False
    ).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[3] == symbol:
            return int(fields[1], 16)
    return None


def read_items(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(header bytes, [(item name, item bytes)]) of ICU common data that is exactly ``data``
    (items carry no length: each ends where the next begins, the last at the end)."""
    header_size = struct.unpack_from("<H", data, 0)[0]
    if data[2:4] != MAGIC:
        raise IcuDataError("not ICU data (bad magic)")
    toc = header_size
    count = struct.unpack_from("<I", data, toc)[0]
    if not 0 < count < 100_000:
        raise IcuDataError(f"implausible item count {count}")
    entries = [struct.unpack_from("<II", data, toc + 4 + 8 * i) for i in range(count)]
    items = []
    for i, (name_at, data_at) in enumerate(entries):
        end_name = data.index(b"\0", toc + name_at)
        name = data[toc + name_at : end_name].decode("ascii")
        data_end = toc + entries[i + 1][1] if i + 1 < count else len(data)
        items.append((name, data[toc + data_at : data_end]))
    return data[:toc], items


def wanted(name: str) -> bool:
    parts = name.split("/")[1:]  # drop the "icudt73l" package prefix
    leaf = parts[-1]
    tree = parts[0] if len(parts) > 1 else ""
    if tree in DROP_TREES:
        return False
    if leaf.endswith(".cnv"):
        return False
    if tree == "brkitr" and leaf.endswith(".dict"):
        return False
    return not (LOCALE.match(leaf) and leaf not in KEEP_LOCALES)


def build_common_data(header: bytes, items: list[tuple[str, bytes]]) -> bytes:
    """ICU common data: header, count, (name offset, data offset) pairs, names, data.
    Offsets are from the start of the table of contents; each item starts 16-aligned."""
    items = sorted(items, key=lambda item: item[0])  # ICU binary-searches the names
    count = len(items)
    names = b"".join(name.encode("ascii") + b"\0" for name, _ in items)
    toc_head = 4 + 8 * count
    data_start = toc_head + len(names)
    data_start += -(len(header) + data_start) % ALIGN
    name_offsets, data_offsets, data = [], [], bytearray()
    at = toc_head
    for name, _ in items:
        name_offsets.append(at)
        at += len(name) + 1
    for _, body in items:
        pad = -(len(header) + data_start + len(data)) % ALIGN
        data += b"\0" * pad
        data_offsets.append(data_start + len(data))
        data += body
    toc = struct.pack("<I", count) + b"".join(
        struct.pack("<II", n, d) for n, d in zip(name_offsets, data_offsets, strict=True)
    )
    gap = b"\0" * (data_start - toc_head - len(names))
    return header + toc + names + gap + bytes(data)


def symbol_name(items: list[tuple[str, bytes]]) -> str:
    package = items[0][0].split("/")[0]  # "icudt73l"
    match = re.fullmatch(r"(icudt\d+)[lbe]", package)
    if not match:
        raise IcuDataError(f"unexpected ICU package name {package!r}")
    return f"{match.group(1)}_dat"


def link_library(data: bytes, symbol: str, soname: str, out_dir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise IcuDataError("no C compiler (cc) to link the smaller ICU data library")
    out_dir.mkdir(parents=True, exist_ok=True)
    dat = out_dir / f"{symbol}.bin"
    dat.write_bytes(data)
    asm = out_dir / "icudata.S"
    asm.write_text(
        "\t.section .rodata\n"
        f"\t.globl {symbol}\n"
        f"\t.type {symbol}, @object\n"
        "\t.balign 16\n"
        f"{symbol}:\n"
        f'\t.incbin "{dat.name}"\n'
        f"\t.size {symbol}, . - {symbol}\n"
        '\t.section .note.GNU-stack,"",@progbits\n'
    )
    out = out_dir / soname
    subprocess.run(
        [cc, "-shared", "-nostdlib", f"-Wl,-soname,{soname}", "-o", str(out), asm.name],
        cwd=out_dir,
        check=True,
        capture_output=True,
    )
    return out


def trim(src: Path, out_dir: Path) -> tuple[Path, int, int]:
    """Write the smaller library into ``out_dir``: (path, items kept, items dropped)."""
    blob = src.read_bytes()
    base = find_common_data(blob)
    _header, rough = read_items(blob[base:])  # the last item runs on here: names only
    symbol = symbol_name(rough)
    size = symbol_size(src, symbol)
    if size is None:
        raise IcuDataError(f"cannot tell the size of {symbol} (binutils nm is needed)")
    header, items = read_items(blob[base : base + size])
    kept = [item for item in items if wanted(item[0])]
    data = build_common_data(header, kept)
    # sanity: what we wrote reads back as the same items
    _h, again = read_items(data)
    if [n for n, _ in again] != sorted(n for n, _ in kept):
        raise IcuDataError("the rebuilt ICU data does not read back")
    path = link_library(data, symbol, src.name, out_dir)
    return path, len(kept), len(items) - len(kept)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    path, kept, dropped = trim(Path(argv[0]), Path(argv[1]))
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, {kept} items kept, {dropped} dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
