#!/usr/bin/env python3
"""Checks that an audit entry is in the log a consentvault checkpoint commits to.

Standard library only, written from RFC 9162 (section 2.1.3.2) and the C2SP
tlog-checkpoint format. The checkpoint's signature is not checked here (use
Go's sumdb/note, or tools/auditor-go); this checks the Merkle inclusion.

usage: verify-inclusion.py CHECKPOINT_FILE ENTRY_FILE INDEX PROOF_JSON_FILE
"""
import base64
import hashlib
import json
import sys


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify(index, size, leaf, proof, root):
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def main():
    checkpoint_file, entry_file, index, proof_file = sys.argv[1:5]
    lines = open(checkpoint_file, encoding="utf-8").read().split("\n")
    size, root = int(lines[1]), base64.b64decode(lines[2])
    entry = open(entry_file, "rb").read()
    proof = json.load(open(proof_file, encoding="utf-8"))
    if proof["tree_size"] != size:
        sys.exit("the proof is for another tree size than the checkpoint")
    leaf = hashlib.sha256(b"\x00" + entry).digest()
    hashes = [base64.b64decode(h) for h in proof["hashes"]]
    if not verify(int(index), size, leaf, hashes, root):
        sys.exit("entry %s is NOT in the log of this checkpoint" % index)
    print("entry %s is in the log of size %d" % (index, size))


if __name__ == "__main__":
    main()
