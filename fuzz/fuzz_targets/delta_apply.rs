//! Recipe planning and rebuilding, against a naive reference.
//!
//! The input holds a basis, a target and a list of "lies". First, an honest
//! delta from basis to target must rebuild the target exactly. Then the recipe
//! is corrupted by the lies (entries swapped for other lengths/hashes, literals
//! replaced or dropped) and the real planner + rebuild must agree with a naive
//! reference: both fail, or both produce the same bytes.
#![no_main]

use ferry::chunk::{chunk_hash, chunk_slice};
use ferry::delta::{apply, delta, Delta};
use ferry::proto::ChunkRef;
use libfuzzer_sys::fuzz_target;

/// The obvious rebuild: each recipe entry is a basis chunk with that hash and
/// length, else an earlier entry of the new file with that hash and length,
/// else the next literal, which must have that length and hash.
fn reference(basis: &[u8], d: &Delta) -> Option<Vec<u8>> {
    let chunks = chunk_slice(basis);
    let mut out: Vec<u8> = Vec::new();
    let mut done: Vec<(ChunkRef, usize)> = Vec::new();
    let mut literals = d.literals.iter();
    for r in &d.recipe {
        if let Some(c) = chunks.iter().find(|c| c.hash == r.hash && c.len == r.len) {
            let start = c.offset as usize;
            out.extend_from_slice(&basis[start..start + c.len as usize]);
        } else if let Some((_, at)) = done.iter().find(|(e, _)| *e == *r) {
            let at = *at;
            let bytes = out[at..at + r.len as usize].to_vec();
            out.extend_from_slice(&bytes);
        } else {
            let lit = literals.next()?;
            if lit.len() != r.len as usize || chunk_hash(lit) != r.hash {
                return None;
            }
            done.push((r.clone(), out.len()));
            out.extend_from_slice(lit);
        }
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let split = u16::from_le_bytes([data[0], data[1]]) as usize;
    let lies_at = u16::from_le_bytes([data[2], data[3]]) as usize;
    let body = &data[4..];
    let split = split.min(body.len());
    let (basis, rest) = body.split_at(split);
    let lies_at = lies_at.min(rest.len());
    let (target, lies) = rest.split_at(lies_at);

    let mut d = delta(basis, target);
    assert_eq!(apply(basis, &d).expect("honest delta applies"), target);
    assert_eq!(reference(basis, &d).expect("reference applies"), target);

    // Lies: each 3 bytes pick an operation, an entry and a value.
    let pool: Vec<ChunkRef> = chunk_slice(basis)
        .iter()
        .chain(chunk_slice(target).iter())
        .map(|c| ChunkRef {
            len: c.len,
            hash: c.hash,
        })
        .collect();
    for lie in lies.chunks_exact(3) {
        let (op, at, v) = (lie[0] % 6, lie[1] as usize, lie[2]);
        match op {
            0 if !d.recipe.is_empty() => {
                let i = at % d.recipe.len();
                d.recipe[i].len = d.recipe[i].len.wrapping_add(v as u32 + 1) % (1 << 17);
            }
            1 if !d.recipe.is_empty() => {
                let i = at % d.recipe.len();
                d.recipe[i].hash[v as usize % 16] ^= 1;
            }
            2 if !pool.is_empty() => {
                // a real chunk's hash, possibly repeated, inserted anywhere
                let i = at % (d.recipe.len() + 1);
                d.recipe.insert(i, pool[v as usize % pool.len()].clone());
            }
            3 if !d.literals.is_empty() => {
                d.literals.remove(at % d.literals.len());
            }
            4 => {
                let i = at % (d.literals.len() + 1);
                d.literals.insert(i, vec![v; v as usize * 7]);
            }
            5 if !d.recipe.is_empty() && !pool.is_empty() => {
                // a real hash with a wrong length
                let i = at % d.recipe.len();
                let mut r = pool[v as usize % pool.len()].clone();
                r.len = r.len.wrapping_add(1 + v as u32);
                d.recipe[i] = r;
            }
            _ => {}
        }
    }
    let got = apply(basis, &d).ok();
    let want = reference(basis, &d);
    // The real rebuild may refuse a lie the reference tolerates only where the
    // reference ends early with literals left over; otherwise they agree.
    assert_eq!(got, want);
});
