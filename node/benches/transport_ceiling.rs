//! The ceiling under the network benchmark: the least CPU an encrypted, digest-checked
//! transfer between two local endpoints can cost on this machine. One thread seals records
//! of Noise's largest plaintext (65 519 bytes) with ring's ChaCha20-Poly1305 — the cipher and
//! the implementation libp2p-noise uses — and writes them to a loopback TCP socket; another
//! reads, opens and BLAKE3-hashes them (as Murmur's framing does). No multiplexer, no async
//! runtime, no framing, one copy into the record buffer besides the socket's: any libp2p
//! transfer over TCP + Noise does at least this work per byte. AES-128-GCM and plaintext rows show what the cipher
//! costs.
//!
//! `cargo bench -p murmur-node --bench transport_ceiling --profile dev` (plain `main`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Instant;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Noise's largest frame (65 535 bytes) less its 16-byte tag.
const RECORD: usize = 65_535 - 16;
const TAG: usize = 16;
const TOTAL: usize = 1 << 30;

fn main() -> BenchResult<()> {
    let ciphers: [(&str, Option<&'static aead::Algorithm>); 3] = [
        ("ChaCha20-Poly1305 (Noise)", Some(&aead::CHACHA20_POLY1305)),
        ("AES-128-GCM", Some(&aead::AES_128_GCM)),
        ("plaintext", None),
    ];
    println!("what | GB/s");
    println!("BLAKE3, one core | {:.2}", blake3_rate());
    for (name, alg) in ciphers {
        if let Some(alg) = alg {
            println!("{name} seal, one core | {:.2}", seal_rate(alg)?);
        }
    }
    for (name, alg) in ciphers {
        let rate = loopback_rate(alg)?;
        println!("1 GiB over loopback TCP, {name}, receiver hashes | {rate:.2}");
    }
    Ok(())
}

fn key(alg: &'static aead::Algorithm) -> BenchResult<LessSafeKey> {
    let bytes = vec![7u8; alg.key_len()];
    let key = UnboundKey::new(alg, &bytes).map_err(|_| "bad key length")?;
    Ok(LessSafeKey::new(key))
}

/// Noise's nonce: a 64-bit counter.
fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn blake3_rate() -> f64 {
    let data = vec![3u8; 64 << 20];
    let started = Instant::now();
    for _ in 0..8 {
        std::hint::black_box(blake3::hash(&data));
    }
    (8 * data.len()) as f64 / started.elapsed().as_secs_f64() / 1e9
}

fn seal_rate(alg: &'static aead::Algorithm) -> BenchResult<f64> {
    let key = key(alg)?;
    let mut record = vec![1u8; RECORD];
    let records = 8192u64;
    let started = Instant::now();
    for i in 0..records {
        let tag = key
            .seal_in_place_separate_tag(nonce(i), Aad::empty(), &mut record)
            .map_err(|_| "seal")?;
        let _ = std::hint::black_box(tag);
    }
    Ok((records as usize * RECORD) as f64 / started.elapsed().as_secs_f64() / 1e9)
}

/// GB/s of one sealed, hashed 1 GiB transfer between two threads over loopback TCP.
fn loopback_rate(alg: Option<&'static aead::Algorithm>) -> BenchResult<f64> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> Result<blake3::Hash, String> {
        let (mut socket, _) = listener.accept().map_err(|e| e.to_string())?;
        let key = alg.map(key).transpose().map_err(|e| e.to_string())?;
        let mut record = vec![0u8; RECORD + TAG];
        let mut hasher = blake3::Hasher::new();
        let (mut received, mut counter) = (0usize, 0u64);
        while received < TOTAL {
            let len = (TOTAL - received).min(RECORD);
            let wire = if key.is_some() { len + TAG } else { len };
            socket
                .read_exact(&mut record[..wire])
                .map_err(|e| e.to_string())?;
            if let Some(key) = &key {
                key.open_in_place(nonce(counter), Aad::empty(), &mut record[..wire])
                    .map_err(|_| "open failed")?;
            }
            hasher.update(&record[..len]);
            received += len;
            counter += 1;
        }
        Ok(hasher.finalize())
    });
    let mut socket = TcpStream::connect(addr)?;
    let key = alg.map(key).transpose()?;
    let payload = vec![0x5Au8; TOTAL];
    let mut record = vec![0u8; RECORD + TAG];
    let started = Instant::now();
    for (counter, part) in (0u64..).zip(payload.chunks(RECORD)) {
        record[..part.len()].copy_from_slice(part);
        let mut wire = part.len();
        if let Some(key) = &key {
            let tag = key
                .seal_in_place_separate_tag(nonce(counter), Aad::empty(), &mut record[..wire])
                .map_err(|_| "seal")?;
            record[wire..wire + TAG].copy_from_slice(tag.as_ref());
            wire += TAG;
        }
        socket.write_all(&record[..wire])?;
    }
    let digest = receiver.join().map_err(|_| "receiver panicked")??;
    let secs = started.elapsed().as_secs_f64();
    if digest != blake3::hash(&payload) {
        return Err("digest mismatch".into());
    }
    Ok(TOTAL as f64 / secs / 1e9)
}
