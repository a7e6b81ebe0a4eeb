//! Micro-benchmarks of the per-byte work of a transfer: content-defined
//! chunking (with and without the whole-file check), BLAKE3 streaming and per
//! chunk against the keyed check of rebuilt files, framing data messages, zstd
//! on text. `cargo bench --bench micro`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferry::chunk::{Chunker, RebuildCheck, AVG_CHUNK};
use ferry::session::wire::{Counters, FrameWriter};
use std::hint::black_box;
use std::sync::Arc;

fn random(n: usize) -> Vec<u8> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

fn text(n: usize) -> Vec<u8> {
    let words = [
        "model",
        "token",
        "the",
        "gradient",
        "of",
        "a",
        "checkpoint",
        "data",
    ];
    let mut out = Vec::with_capacity(n + 64);
    let mut i = 0usize;
    while out.len() < n {
        out.extend_from_slice(format!("{{\"id\": {i}, \"text\": \"").as_bytes());
        for k in 0..12 {
            out.extend_from_slice(words[(i * 7 + k * 3) % words.len()].as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(b"\"}\n");
        i += 1;
    }
    out.truncate(n);
    out
}

fn chunking(c: &mut Criterion) {
    let data = random(64 << 20);
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("chunks + whole-file check (GMAC)", |b| {
        b.iter(|| {
            let mut ch = Chunker::new(data.as_slice(), &[3; 16]);
            while let Some((c, _)) = ch.next_chunk().unwrap() {
                black_box(c);
            }
            black_box(ch.whole_check())
        })
    });
    g.bench_function("chunks only", |b| {
        b.iter(|| {
            let mut ch = Chunker::chunks_only(data.as_slice());
            while let Some((c, _)) = ch.next_chunk().unwrap() {
                black_box(c);
            }
        })
    });
    g.bench_function("cut points only (gear)", |b| {
        b.iter(|| {
            let mut at = 0;
            while at < data.len() {
                let end = (at + ferry::chunk::MAX_CHUNK).min(data.len());
                at += ferry::chunk::cut(&data[at..end]);
            }
            black_box(at)
        })
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let data = random(64 << 20);
    let mut g = c.benchmark_group("blake3");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("streaming", |b| b.iter(|| black_box(blake3::hash(&data))));
    g.bench_function("the keyed check of a rebuilt file (GMAC)", |b| {
        b.iter(|| {
            let mut check = RebuildCheck::new(&[5; 16]);
            check.update(&data);
            black_box(check.finish())
        })
    });
    for size in [AVG_CHUNK, 20 << 10, 64 << 10] {
        g.bench_function(format!("per {} KiB piece", size >> 10), |b| {
            b.iter(|| {
                for piece in data.chunks(size) {
                    black_box(blake3::hash(piece));
                }
            })
        });
    }
    g.finish();
}

fn framing(c: &mut Criterion) {
    let data = random(64 << 20);
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("data messages of 256 KiB", |b| {
        b.iter(|| {
            let mut w = FrameWriter::new(std::io::sink(), Arc::new(Counters::default()));
            for block in data.chunks(256 << 10) {
                w.send_data(0, false, block.len() as u32, block).unwrap();
            }
            w.flush().unwrap();
        })
    });
    g.finish();
}

fn compression(c: &mut Criterion) {
    let data = text(16 << 20);
    let mut g = c.benchmark_group("zstd");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    for level in [1, 3] {
        g.bench_function(format!("level {level}, JSON lines"), |b| {
            let mut z = zstd::bulk::Compressor::new(level).unwrap();
            b.iter(|| {
                for block in data.chunks(256 << 10) {
                    black_box(z.compress(block).unwrap());
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, chunking, hashing, framing, compression);
criterion_main!(benches);
