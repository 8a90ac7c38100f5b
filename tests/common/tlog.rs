//! An outside auditor's view of the log, written here from the RFC text and
//! the C2SP specs rather than taken from the crate: RFC 9162 hashing and
//! proof verification (SHA-256 from the `sha2` crate, not ring) and signed
//! checkpoints opened with ed25519-dalek.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The leaf hash of an entry: SHA-256(0x00 ‖ entry).
pub fn leaf(entry: &[u8]) -> Hash {
    sha256(&[&[0], entry])
}

/// An interior node: SHA-256(0x01 ‖ left ‖ right).
pub fn node(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[1], left, right])
}

/// The Merkle tree hash of a list of leaf hashes (RFC 9162 §2.1.1): the
/// hash of the empty string for none, the leaf hash for one, else the node
/// over the tree hashes of the first k leaves and of the rest, k the largest
/// power of two smaller than their number.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha256(&[]),
        1 => leaves[0],
        count => {
            let k = 1usize << (usize::BITS - 1 - (count - 1).leading_zeros());
            node(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// RFC 9162 §2.1.3.2.
pub fn verify_inclusion(index: u64, size: u64, leaf_hash: Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = leaf_hash;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &r == root
}

/// RFC 9162 §2.1.4.2.
pub fn verify_consistency(first: u64, second: u64, first_hash: &Hash, second_hash: &Hash, proof: &[Hash]) -> bool {
    if first == second {
        return proof.is_empty() && first_hash == second_hash;
    }
    if first == 0 || first > second {
        return false;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if first.is_power_of_two() {
        path.insert(0, *first_hash);
    }
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let Some((&start, rest)) = path.split_first() else { return false };
    let (mut fr, mut sr) = (start, start);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node(c, &fr);
            sr = node(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &fr == first_hash && &sr == second_hash
}

/// Opens a signed checkpoint with the verifier key, the way the C2SP
/// signed-note spec describes it; returns (origin, size, root). Panics if
/// the signature or the format is wrong.
pub fn open_checkpoint(note: &str, verifier_key: &str) -> (String, u64, Hash) {
    let mut key_parts = verifier_key.trim().splitn(3, '+');
    let (name, key_id_hex, key_b64) = (key_parts.next().unwrap(), key_parts.next().unwrap(), key_parts.next().unwrap());
    let key_bytes = STANDARD.decode(key_b64).unwrap();
    assert_eq!(key_bytes[0], 1, "Ed25519 signature type");
    let public: [u8; 32] = key_bytes[1..].try_into().unwrap();
    let key_id = &sha256(&[name.as_bytes(), b"\n", &[1], &public])[..4];
    assert_eq!(hex(key_id), key_id_hex, "key id = SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)[..4]");

    let split = note.rfind("\n\n").unwrap();
    let (body, signatures) = (&note[..split + 1], &note[split + 2..]);
    let line = signatures.lines().find(|l| l.starts_with(&format!("\u{2014} {name} "))).unwrap();
    let signature = STANDARD.decode(line.rsplit(' ').next().unwrap()).unwrap();
    assert_eq!(&signature[..4], key_id);
    let verifying = VerifyingKey::from_bytes(&public).unwrap();
    let signature = Signature::from_slice(&signature[4..]).unwrap();
    verifying.verify(body.as_bytes(), &signature).expect("ed25519-dalek accepts the checkpoint signature");

    let mut lines = body.lines();
    let origin = lines.next().unwrap().to_owned();
    let size = lines.next().unwrap().parse().unwrap();
    let root = STANDARD.decode(lines.next().unwrap()).unwrap().try_into().unwrap();
    (origin, size, root)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `hashes` of a proof answer.
pub fn hashes(value: &Value) -> Vec<Hash> {
    value["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| STANDARD.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect()
}
