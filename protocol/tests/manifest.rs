//! Pool manifests: signing, text round trips, tampering, membership edits, hostile input.

mod common;

use common::{key, peer_of};
use murmur_protocol::manifest::{MANIFEST_VERSION, MAX_MANIFEST_TEXT_BYTES, MAX_POOL_MEMBERS};
use murmur_protocol::{ManifestError, PeerKey, PoolManifest, RunId, SignedManifest};
use proptest::prelude::*;

const OWNER: u8 = 1;
const CREATED_MS: u64 = 1_700_000_000_000;

fn run() -> RunId {
    RunId::from_name("closed-pool-test")
}

/// A manifest owned by key 1 with members from keys 2..=n, signed.
fn sample(n: u8) -> SignedManifest {
    let mut m = PoolManifest::new(run(), peer_of(&key(OWNER)), CREATED_MS);
    for seed in 2..=n {
        assert!(m.add_member(peer_of(&key(seed))).unwrap());
    }
    SignedManifest::sign(&key(OWNER), m).unwrap()
}

/// Replaces the value of the `nth` line starting with `key =` in `text`.
fn replace_value(text: &str, key: &str, nth: usize, value: &str) -> String {
    let prefix = format!("{key} =");
    let mut seen = 0;
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with(&prefix) {
            if seen == nth {
                out.push_str(&format!("{key} = {value}\n"));
                seen += 1;
                continue;
            }
            seen += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(seen > nth, "no {nth}th `{key}` line");
    out
}

fn reparse(text: &str) -> Result<SignedManifest, ManifestError> {
    SignedManifest::from_text(text)
}

#[test]
fn text_round_trips_and_verifies() {
    let signed = sample(5);
    let text = signed.to_text();
    assert!(text.starts_with("# murmur pool manifest v1\nversion = 1\n"));
    assert_eq!(
        text.lines().filter(|l| l.starts_with("member = ")).count(),
        5
    );
    let parsed = reparse(&text).unwrap();
    assert_eq!(parsed, signed);
    assert_eq!(parsed.to_text(), text);
    let m = parsed.verify().unwrap();
    assert_eq!(m.version, MANIFEST_VERSION);
    assert_eq!(m.serial, 5); // 1 at creation, +1 per added member
    assert!(parsed.verify_for_run(&run()).is_ok());
}

#[test]
fn text_tolerates_comments_blank_lines_crlf_order_and_case() {
    let signed = sample(3);
    let text = signed.to_text();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.reverse();
    let shuffled = format!(
        "\n  # edited by hand\r\n\r\n{}\r\n",
        lines
            .iter()
            .map(|l| format!("  {}  ", l.to_uppercase().replace("SIGNATURE", "signature")))
            .collect::<Vec<_>>()
            .join("\r\n")
    );
    // Upper-casing changed the keys too; put them back and keep the hex upper-case.
    let shuffled = ["VERSION", "RUN", "OWNER", "SERIAL", "CREATED_MS", "MEMBER"]
        .iter()
        .fold(shuffled, |acc, k| {
            acc.replace(&format!("{k} ="), &format!("{} =", k.to_lowercase()))
        });
    let parsed = reparse(&shuffled).unwrap();
    // Members keep file order: reversed, hence unsorted, hence refused by verify.
    assert!(matches!(
        parsed.verify(),
        Err(ManifestError::UnsortedMembers)
    ));
    let mut fixed = parsed.clone();
    fixed.manifest.members.sort();
    assert_eq!(fixed, signed);
    fixed.verify().unwrap();
}

#[test]
fn tampering_with_any_signed_line_breaks_verification() {
    let signed = sample(4);
    let text = signed.to_text();
    let other = PeerKey([0xff; 32]).to_hex(); // sorts last
    let cases = [
        replace_value(&text, "serial", 0, "5"),
        replace_value(&text, "serial", 0, "3"),
        replace_value(&text, "created_ms", 0, "0"),
        replace_value(&text, "run", 0, &RunId::from_name("other").to_hex()),
        // The owner swapped for another member that is in the list.
        replace_value(&text, "owner", 0, &peer_of(&key(2)).to_hex()),
        // The last member replaced by a key that keeps the list sorted.
        replace_value(&text, "member", 3, &other),
        // A member added (at the end, sorted) or dropped.
        text.replace("signature =", &format!("member = {other}\nsignature =")),
        text.replace(&format!("member = {}\n", peer_of(&key(3)).to_hex()), ""),
    ];
    for (i, tampered) in cases.iter().enumerate() {
        assert_ne!(tampered, &text, "case {i} changed nothing");
        let parsed = reparse(tampered).unwrap();
        match parsed.verify() {
            Err(ManifestError::BadSignature) => {}
            other => panic!("case {i}: expected BadSignature, got {other:?}"),
        }
    }

    let mut flipped = signed.clone();
    flipped.signature[17] ^= 0x40;
    assert!(matches!(flipped.verify(), Err(ManifestError::BadSignature)));
}

#[test]
fn structural_errors_are_reported_before_the_signature() {
    let signed = sample(3);
    let mut dup = signed.clone();
    let first = dup.manifest.members[0];
    dup.manifest.members.insert(0, first);
    assert!(matches!(dup.verify(), Err(ManifestError::DuplicateMember(p)) if p == first));

    let mut no_owner = signed.clone();
    no_owner
        .manifest
        .members
        .retain(|p| *p != peer_of(&key(OWNER)));
    assert!(matches!(
        no_owner.verify(),
        Err(ManifestError::OwnerNotMember)
    ));

    let mut future = signed.clone();
    future.manifest.version = 2;
    assert!(matches!(
        future.verify(),
        Err(ManifestError::UnsupportedVersion(2))
    ));

    let mut weak = signed.clone();
    weak.manifest.owner = PeerKey([0; 32]); // not a valid point... or small order
    weak.manifest.members = vec![PeerKey([0; 32])];
    assert!(matches!(weak.verify(), Err(ManifestError::BadOwnerKey)));

    assert!(matches!(
        signed.verify_for_run(&RunId::from_name("another run")),
        Err(ManifestError::WrongRun { .. })
    ));
}

#[test]
fn only_the_owner_key_can_sign() {
    let m = PoolManifest::new(run(), peer_of(&key(OWNER)), CREATED_MS);
    let (intruder, owner) = (peer_of(&key(2)), peer_of(&key(OWNER)));
    let err = SignedManifest::sign(&key(2), m.clone()).unwrap_err();
    assert!(matches!(
        err,
        ManifestError::KeyMismatch { key: k, owner: o } if k == intruder && o == owner
    ));
    // A manifest re-signed by someone claiming ownership is a different pool.
    let mut hijack = SignedManifest::sign(&key(OWNER), m).unwrap();
    hijack.manifest.owner = peer_of(&key(2));
    hijack.manifest.members = vec![peer_of(&key(2))];
    assert!(matches!(hijack.verify(), Err(ManifestError::BadSignature)));
}

#[test]
fn invalid_manifests_are_not_signed() {
    let mut m = PoolManifest::new(run(), peer_of(&key(OWNER)), CREATED_MS);
    m.members.clear();
    assert!(matches!(
        SignedManifest::sign(&key(OWNER), m),
        Err(ManifestError::OwnerNotMember)
    ));
}

#[test]
fn membership_edits_keep_order_and_bump_serial() {
    let owner = peer_of(&key(OWNER));
    let mut m = PoolManifest::new(run(), owner, CREATED_MS);
    assert_eq!(m.serial, 1);
    assert!(m.is_member(&owner));
    let peers: Vec<PeerKey> = (2..10).map(|s| peer_of(&key(s))).collect();
    for p in peers.iter().rev() {
        assert!(m.add_member(*p).unwrap());
    }
    assert!(!m.add_member(peers[0]).unwrap(), "re-adding is a no-op");
    assert_eq!(m.serial, 9);
    assert!(m.members.windows(2).all(|w| w[0] < w[1]));
    assert!(peers.iter().all(|p| m.is_member(p)));
    assert!(!m.is_member(&peer_of(&key(42))));

    assert!(m.remove_member(&peers[3]).unwrap());
    assert!(!m.is_member(&peers[3]));
    assert!(
        !m.remove_member(&peers[3]).unwrap(),
        "removing twice is a no-op"
    );
    assert_eq!(m.serial, 10);
    assert!(matches!(
        m.remove_member(&owner),
        Err(ManifestError::CannotRemoveOwner)
    ));
    assert!(m.is_member(&owner));
    assert_eq!(m.serial, 10);
    m.validate().unwrap();

    m.serial = u64::MAX;
    assert!(matches!(
        m.add_member(peer_of(&key(50))),
        Err(ManifestError::SerialOverflow)
    ));
    assert!(!m.is_member(&peer_of(&key(50))));
}

#[test]
fn newer_serial_of_the_same_pool_supersedes() {
    let old = sample(2);
    let mut next = old.manifest.clone();
    next.add_member(peer_of(&key(3))).unwrap();
    let new = SignedManifest::sign(&key(OWNER), next).unwrap();
    let new = new.verify().unwrap();
    assert!(new.supersedes(&old.manifest));
    assert!(!old.manifest.supersedes(new));
    assert!(!new.supersedes(new));

    let mut foreign = PoolManifest::new(run(), peer_of(&key(9)), CREATED_MS);
    foreign.serial = 100;
    assert!(!foreign.supersedes(new), "another owner never supersedes");
}

#[test]
fn member_count_is_bounded() {
    let owner = peer_of(&key(OWNER));
    let mut m = PoolManifest::new(run(), owner, CREATED_MS);
    let mut i = 0u32;
    while m.members.len() < MAX_POOL_MEMBERS {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&i.to_be_bytes());
        m.add_member(PeerKey(bytes)).unwrap();
        i += 1;
    }
    assert!(matches!(
        m.add_member(PeerKey([0xee; 32])),
        Err(ManifestError::TooManyMembers { .. })
    ));
    // A full pool still signs, renders and parses.
    let signed = SignedManifest::sign(&key(OWNER), m.clone()).unwrap();
    let text = signed.to_text();
    assert_eq!(reparse(&text).unwrap(), signed);

    // One member line too many is refused while parsing.
    let extra = text.replace(
        "signature =",
        &format!("member = {}\nsignature =", PeerKey([0xee; 32]).to_hex()),
    );
    assert!(matches!(
        reparse(&extra),
        Err(ManifestError::TooManyMembers { max }) if max == MAX_POOL_MEMBERS
    ));
    // And a list over the bound built by hand is refused by validate/sign.
    m.members.push(PeerKey([0xff; 32]));
    assert!(matches!(
        SignedManifest::sign(&key(OWNER), m),
        Err(ManifestError::TooManyMembers { .. })
    ));
}

#[test]
fn malformed_text_gives_typed_errors_with_line_numbers() {
    let text = sample(2).to_text();
    // Line numbers: 1 header, 2 version, 3 run, 4 owner, 5 serial, 6 created_ms, 7-8 members.
    let too_big = "#".repeat(MAX_MANIFEST_TEXT_BYTES + 1);
    assert!(matches!(
        reparse(&too_big),
        Err(ManifestError::TextTooLarge { .. })
    ));
    assert!(matches!(
        reparse(&format!("{text}just words\n")),
        Err(ManifestError::Syntax { line: 10 })
    ));
    assert!(matches!(
        reparse(&format!("{text}colour = blue\n")),
        Err(ManifestError::UnknownKey { line: 10, ref key }) if key == "colour"
    ));
    assert!(matches!(
        reparse(&format!("{text}serial = 9\n")),
        Err(ManifestError::DuplicateKey {
            line: 10,
            key: "serial"
        })
    ));
    assert!(matches!(
        reparse(&text.replace("version = 1\n", "")),
        Err(ManifestError::MissingKey("version"))
    ));
    let sig_line = text.lines().find(|l| l.starts_with("signature")).unwrap();
    assert!(matches!(
        reparse(&text.replace(sig_line, "")),
        Err(ManifestError::MissingKey("signature"))
    ));
    assert!(matches!(
        reparse(&text.replace("version = 1", "version = 2")),
        Err(ManifestError::UnsupportedVersion(2))
    ));
    let run_hex = run().to_hex();
    assert!(matches!(
        reparse(&text.replace(&run_hex, &run_hex[..62])),
        Err(ManifestError::WrongLength {
            line: 3,
            key: "run",
            expected: 64,
            found: 62
        })
    ));
    assert!(matches!(
        reparse(&text.replace(&run_hex, &format!("{}zz", &run_hex[..62]))),
        Err(ManifestError::BadHex {
            line: 3,
            key: "run"
        })
    ));
    assert!(matches!(
        reparse(&replace_value(&text, "signature", 0, "abcd")),
        Err(ManifestError::WrongLength {
            line: 9,
            key: "signature",
            expected: 128,
            found: 4
        })
    ));
    for bad in ["-1", "+1", "", "1e3", "18446744073709551616", "0x10"] {
        assert!(
            matches!(
                reparse(&replace_value(&text, "serial", 0, bad)),
                Err(ManifestError::BadInteger {
                    line: 5,
                    key: "serial"
                })
            ),
            "serial = {bad:?}"
        );
    }
    assert!(matches!(
        reparse(&text.replace("version = 1", "version = 65536")),
        Err(ManifestError::BadInteger {
            line: 2,
            key: "version"
        })
    ));
}

/// Mutations of a valid manifest text: replace, insert or delete one character.
fn mutation() -> impl Strategy<Value = (prop::sample::Index, u8, char)> {
    (
        any::<prop::sample::Index>(),
        0u8..3,
        prop::sample::select(vec![
            '0', '1', '9', 'a', 'f', 'A', 'F', 'g', 'z', ' ', '=', '#', '\n', '\r', 'é', '\0',
        ]),
    )
}

proptest! {
    #![proptest_config(common::config(512))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        if let Ok(parsed) = SignedManifest::from_text(&text) {
            let _ = parsed.verify();
        }
    }

    #[test]
    fn line_shaped_garbage_never_panics(
        lines in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "version", "run", "owner", "serial", "created_ms", "member", "signature", "x", "",
                ]),
                "[0-9a-fA-F=# ]{0,130}",
            ),
            0..16,
        )
    ) {
        let text: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        if let Ok(parsed) = SignedManifest::from_text(&text) {
            let _ = parsed.verify();
        }
    }

    #[test]
    fn any_accepted_edit_leaves_the_signed_content_unchanged(
        members in 1u8..6,
        (pos, op, ch) in mutation(),
    ) {
        let signed = sample(members);
        let text = signed.to_text();
        let chars: Vec<char> = text.chars().collect();
        let i = pos.index(chars.len());
        let mut edited = chars.clone();
        match op {
            0 => edited[i] = ch,
            1 => edited.insert(i, ch),
            _ => { edited.remove(i); }
        }
        let edited: String = edited.into_iter().collect();
        if let Ok(parsed) = SignedManifest::from_text(&edited)
            && parsed.verify().is_ok()
        {
            // Only cosmetic edits (whitespace, comments, hex case) may survive.
            prop_assert_eq!(parsed, signed);
        }
    }

    #[test]
    fn random_pools_round_trip(seeds in prop::collection::btree_set(2u8..=255, 0..24), created in any::<u64>()) {
        let mut m = PoolManifest::new(run(), peer_of(&key(OWNER)), created);
        for s in &seeds {
            m.add_member(peer_of(&key(*s))).unwrap();
        }
        let signed = SignedManifest::sign(&key(OWNER), m).unwrap();
        let parsed = SignedManifest::from_text(&signed.to_text()).unwrap();
        prop_assert_eq!(&parsed, &signed);
        let verified = parsed.verify().unwrap();
        prop_assert_eq!(verified.members.len(), seeds.len() + 1);
        for s in &seeds {
            prop_assert!(verified.is_member(&peer_of(&key(*s))));
        }
        prop_assert!(!verified.is_member(&peer_of(&key(0))));
    }
}
