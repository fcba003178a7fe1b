//! Stream framing: round trips over real async pipes, limits, corruption and truncation.

mod common;

use futures::io::Cursor;
use murmur_protocol::Digest;
use murmur_protocol::framing::{
    FrameError, FrameLimits, read_message, read_payload, write_message, write_payload,
    write_payload_with_digest,
};
use proptest::prelude::*;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

async fn framed(payload: &[u8], chunk: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    write_payload(&mut out, payload, chunk).await.unwrap();
    out.into_inner()
}

proptest! {
    #![proptest_config(common::config(128))]

    #[test]
    fn payloads_round_trip(payload in prop::collection::vec(any::<u8>(), 0..20_000), chunk in 1u32..5000) {
        block_on(async {
            let bytes = framed(&payload, chunk).await;
            let (got, digest) = read_payload(&mut Cursor::new(bytes), &FrameLimits::default()).await.unwrap();
            assert_eq!(digest, Digest::of(&payload));
            assert_eq!(got, payload);
        });
    }

    #[test]
    fn any_flipped_byte_is_detected(payload in prop::collection::vec(any::<u8>(), 1..4000), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        block_on(async {
            let mut bytes = framed(&payload, 512).await;
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let result = read_payload(&mut Cursor::new(bytes), &FrameLimits::default()).await;
            assert!(result.is_err(), "flip at {i} accepted");
        });
    }

    #[test]
    fn truncation_anywhere_is_a_typed_error(payload in prop::collection::vec(any::<u8>(), 1..4000), cut in any::<prop::sample::Index>()) {
        block_on(async {
            let bytes = framed(&payload, 700).await;
            let cut = cut.index(bytes.len());
            let result = read_payload(&mut Cursor::new(bytes[..cut].to_vec()), &FrameLimits::default()).await;
            assert!(matches!(result, Err(FrameError::Truncated { .. })), "{result:?}");
        });
    }

    #[test]
    fn messages_round_trip(msg in prop::collection::vec(any::<u8>(), 0..5000)) {
        block_on(async {
            let mut out = Cursor::new(Vec::new());
            write_message(&mut out, &msg, 8192).await.unwrap();
            let got = read_message(&mut Cursor::new(out.into_inner()), 8192).await.unwrap();
            assert_eq!(got, msg);
        });
    }
}

#[test]
fn corrupted_chunk_gives_digest_mismatch() {
    block_on(async {
        let payload = vec![7u8; 10_000];
        let mut bytes = framed(&payload, 1000).await;
        bytes[20 + 4 + 10] ^= 0xff; // inside the first chunk's data
        let result = read_payload(&mut Cursor::new(bytes), &FrameLimits::default()).await;
        assert!(matches!(result, Err(FrameError::DigestMismatch)));
    });
}

#[test]
fn a_known_digest_is_sent_as_is_and_a_wrong_one_is_refused() {
    block_on(async {
        let payload = vec![3u8; 9_000];
        let mut same = Cursor::new(Vec::new());
        let sent = write_payload_with_digest(&mut same, &payload, 1000, Digest::of(&payload))
            .await
            .unwrap();
        assert_eq!(same.get_ref(), &framed(&payload, 1000).await);
        let (got, digest) =
            read_payload(&mut Cursor::new(same.into_inner()), &FrameLimits::default())
                .await
                .unwrap();
        assert_eq!((got, digest), (payload.clone(), sent));

        let mut wrong = Cursor::new(Vec::new());
        write_payload_with_digest(&mut wrong, &payload, 1000, Digest::of(b"other"))
            .await
            .unwrap();
        let result = read_payload(
            &mut Cursor::new(wrong.into_inner()),
            &FrameLimits::default(),
        )
        .await;
        assert!(matches!(result, Err(FrameError::DigestMismatch)));
    });
}

#[test]
fn limits_are_enforced_before_allocating() {
    block_on(async {
        let bytes = framed(&[1u8; 100], 10).await;
        let tight = FrameLimits {
            max_payload: 99,
            max_chunk: 1 << 20,
        };
        assert!(matches!(
            read_payload(&mut Cursor::new(bytes.clone()), &tight).await,
            Err(FrameError::TooLarge { len: 100, max: 99 })
        ));
        let small_chunks = FrameLimits {
            max_payload: 1 << 20,
            max_chunk: 9,
        };
        assert!(matches!(
            read_payload(&mut Cursor::new(bytes), &small_chunks).await,
            Err(FrameError::BadChunk(10))
        ));
        // A header claiming an exabyte payload is refused on the header alone.
        let mut header = b"MRMF\x01\x00\x00\x00".to_vec();
        header.extend_from_slice(&u64::MAX.to_le_bytes());
        header.extend_from_slice(&1024u32.to_le_bytes());
        assert!(matches!(
            read_payload(&mut Cursor::new(header), &FrameLimits::default()).await,
            Err(FrameError::TooLarge { .. })
        ));
        // A length prefix of 4 GiB for a message is refused likewise.
        let huge = u32::MAX.to_le_bytes().to_vec();
        assert!(matches!(
            read_message(&mut Cursor::new(huge), 1 << 16).await,
            Err(FrameError::TooLarge { .. })
        ));
    });
}

#[test]
fn bad_magic_version_and_flags_are_rejected() {
    block_on(async {
        let good = framed(&[1, 2, 3], 2).await;
        for pos in [0usize, 4, 5] {
            let mut bytes = good.clone();
            bytes[pos] ^= 0x40;
            let r = read_payload(&mut Cursor::new(bytes), &FrameLimits::default()).await;
            match pos {
                0 => assert!(matches!(r, Err(FrameError::BadMagic))),
                4 => assert!(matches!(r, Err(FrameError::UnsupportedVersion(_)))),
                _ => assert!(matches!(r, Err(FrameError::UnknownFlags(_)))),
            }
        }
    });
}

#[tokio::test(flavor = "current_thread")]
async fn payload_crosses_an_async_pipe_and_a_vanished_writer_is_detected() {
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let writer = {
        let payload = payload.clone();
        tokio::spawn(async move {
            let mut w = a.compat_write();
            write_payload(&mut w, &payload, 128 * 1024).await
        })
    };
    let mut r = b.compat();
    let (got, _) = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        read_payload(&mut r, &FrameLimits::default()),
    )
    .await
    .expect("transfer timed out")
    .unwrap();
    assert_eq!(got, payload);
    writer.await.unwrap().unwrap();

    // The writer dies after sending a prefix: the reader gets Truncated, not a hang.
    let (a, b) = tokio::io::duplex(64 * 1024);
    let prefix = framed(&payload, 128 * 1024).await[..500_000].to_vec();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut a = a;
        let _ = a.write_all(&prefix).await;
        drop(a);
    });
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        read_payload(&mut b.compat(), &FrameLimits::default()),
    )
    .await
    .expect("reader hung");
    assert!(
        matches!(result, Err(FrameError::Truncated { .. })),
        "{result:?}"
    );
}
