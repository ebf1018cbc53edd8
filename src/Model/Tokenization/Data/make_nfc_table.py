#!/usr/bin/env python3
"""Writes nfc-table.txt (embedded in Qwen3Cuda.Model) from Python's unicodedata.

The runtime runs with InvariantGlobalization, where string.Normalize is a no-op, so NFC is done by
Nfc.cs from this table. Lines (hex code points):
  V <unicode version>
  C <cp> <ccc>            canonical combining class, only when non-zero
  D <cp> <cp> [<cp> ...]  full canonical decomposition (recursively expanded; Hangul is algorithmic)
  P <a> <b> <composite>   primary composition pair (not excluded)
  N <first> <last>        range of code points with NFC_Quick_Check = No
Run: python3 make_nfc_table.py > nfc-table.txt
"""
import sys
import unicodedata as ud


def full_decomp(cp):
    d = ud.decomposition(chr(cp))
    if not d or d.startswith('<'):
        return [cp]
    out = []
    for part in d.split():
        out.extend(full_decomp(int(part, 16)))
    return out


def main():
    w = sys.stdout.write
    w('V %s\n' % ud.unidata_version)
    qc_no = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF or 0xAC00 <= cp <= 0xD7A3:
            continue
        c = chr(cp)
        ccc = ud.combining(c)
        if ccc:
            w('C %X %d\n' % (cp, ccc))
        d = ud.decomposition(c)
        if d and not d.startswith('<'):
            w('D %X %s\n' % (cp, ' '.join('%X' % x for x in full_decomp(cp))))
            parts = [int(p, 16) for p in d.split()]
            if len(parts) == 2 and ud.normalize('NFC', chr(parts[0]) + chr(parts[1])) == c:
                w('P %X %X %X\n' % (parts[0], parts[1], cp))
        if ud.normalize('NFC', c) != c:
            qc_no.append(cp)
    start = prev = None
    for cp in qc_no + [None]:
        if cp is not None and prev is not None and cp == prev + 1:
            prev = cp
            continue
        if start is not None:
            w('N %X %X\n' % (start, prev))
        start = prev = cp


main()
