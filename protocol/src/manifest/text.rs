//! The manifest's text file: rendering ([`SignedManifest::to_text`]) and parsing
//! ([`SignedManifest::from_text`]) the line-oriented `key = value` format.

use super::{
    MANIFEST_VERSION, MAX_MANIFEST_TEXT_BYTES, MAX_POOL_MEMBERS, ManifestError, PoolManifest,
    SignedManifest,
};
use crate::ids::{PeerKey, RunId};

/// First line [`SignedManifest::to_text`] writes (a comment to readers and parsers).
const TEXT_HEADER: &str = "# murmur pool manifest v1";

impl SignedManifest {
    /// Renders the manifest file: a header comment, then `version`, `run`, `owner`,
    /// `serial`, `created_ms`, one `member` line per member in list order and
    /// `signature`, each as `key = value` on its own line (ids and signature in
    /// lower-case hex, integers in decimal).
    pub fn to_text(&self) -> String {
        let m = &self.manifest;
        let mut out = String::with_capacity(256 + m.members.len() * 76);
        let mut line = |key: &str, value: &str| {
            out.push_str(key);
            out.push_str(" = ");
            out.push_str(value);
            out.push('\n');
        };
        line("version", &m.version.to_string());
        line("run", &m.run.to_hex());
        line("owner", &m.owner.to_hex());
        line("serial", &m.serial.to_string());
        line("created_ms", &m.created_ms.to_string());
        for member in &m.members {
            line("member", &member.to_hex());
        }
        line("signature", &crate::ids::hex(&self.signature));
        format!("{TEXT_HEADER}\n{out}")
    }

    /// Parses a manifest file. Does not verify it: call [`verify`](Self::verify).
    ///
    /// Blank lines and lines starting with `#` are ignored; every other line is
    /// `key = value` (surrounding whitespace ignored). `version`, `run`, `owner`,
    /// `serial`, `created_ms` and `signature` must each appear exactly once, `member`
    /// any number of times up to [`MAX_POOL_MEMBERS`], in any order. Input over
    /// [`MAX_MANIFEST_TEXT_BYTES`] is refused before it is read. A `version` other than
    /// [`MANIFEST_VERSION`] is refused as soon as its line is read, so a newer format
    /// reports [`ManifestError::UnsupportedVersion`] rather than its new keys.
    pub fn from_text(text: &str) -> Result<Self, ManifestError> {
        if text.len() > MAX_MANIFEST_TEXT_BYTES {
            return Err(ManifestError::TextTooLarge {
                len: text.len(),
                max: MAX_MANIFEST_TEXT_BYTES,
            });
        }
        let mut version = None;
        let mut run = None;
        let mut owner = None;
        let mut serial = None;
        let mut created_ms = None;
        let mut signature = None;
        let mut members = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (key, value) = trimmed
                .split_once('=')
                .ok_or(ManifestError::Syntax { line })?;
            let (key, value) = (key.trim(), value.trim());
            match key {
                "version" => {
                    let v = parse_int::<u16>(line, "version", value)?;
                    if v != MANIFEST_VERSION {
                        return Err(ManifestError::UnsupportedVersion(v));
                    }
                    set_once(&mut version, line, "version", v)?;
                }
                "run" => {
                    let v = RunId(parse_hex::<32>(line, "run", value)?);
                    set_once(&mut run, line, "run", v)?;
                }
                "owner" => {
                    let v = PeerKey(parse_hex::<32>(line, "owner", value)?);
                    set_once(&mut owner, line, "owner", v)?;
                }
                "serial" => {
                    let v = parse_int::<u64>(line, "serial", value)?;
                    set_once(&mut serial, line, "serial", v)?;
                }
                "created_ms" => {
                    let v = parse_int::<u64>(line, "created_ms", value)?;
                    set_once(&mut created_ms, line, "created_ms", v)?;
                }
                "signature" => {
                    let v = parse_hex::<64>(line, "signature", value)?;
                    set_once(&mut signature, line, "signature", v)?;
                }
                "member" => {
                    if members.len() >= MAX_POOL_MEMBERS {
                        return Err(ManifestError::TooManyMembers {
                            max: MAX_POOL_MEMBERS,
                        });
                    }
                    members.push(PeerKey(parse_hex::<32>(line, "member", value)?));
                }
                other => {
                    return Err(ManifestError::UnknownKey {
                        line,
                        key: other.chars().take(32).collect(),
                    });
                }
            }
        }
        Ok(Self {
            manifest: PoolManifest {
                version: version.ok_or(ManifestError::MissingKey("version"))?,
                run: run.ok_or(ManifestError::MissingKey("run"))?,
                owner: owner.ok_or(ManifestError::MissingKey("owner"))?,
                serial: serial.ok_or(ManifestError::MissingKey("serial"))?,
                created_ms: created_ms.ok_or(ManifestError::MissingKey("created_ms"))?,
                members,
            },
            signature: signature.ok_or(ManifestError::MissingKey("signature"))?,
        })
    }
}

fn set_once<T>(
    slot: &mut Option<T>,
    line: usize,
    key: &'static str,
    value: T,
) -> Result<(), ManifestError> {
    if slot.is_some() {
        return Err(ManifestError::DuplicateKey { line, key });
    }
    *slot = Some(value);
    Ok(())
}

/// Parses a decimal integer: ASCII digits only (no sign), in range for `T`.
fn parse_int<T: std::str::FromStr>(
    line: usize,
    key: &'static str,
    value: &str,
) -> Result<T, ManifestError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ManifestError::BadInteger { line, key });
    }
    value
        .parse()
        .map_err(|_| ManifestError::BadInteger { line, key })
}

/// Parses exactly `2 * N` hex digits (either case).
fn parse_hex<const N: usize>(
    line: usize,
    key: &'static str,
    value: &str,
) -> Result<[u8; N], ManifestError> {
    let digits = value.as_bytes();
    if digits.len() != 2 * N {
        return Err(ManifestError::WrongLength {
            line,
            key,
            expected: 2 * N,
            found: value.chars().count(),
        });
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let mut acc = 0u8;
        for &digit in pair {
            let nibble = char::from(digit)
                .to_digit(16)
                .and_then(|d| u8::try_from(d).ok())
                .ok_or(ManifestError::BadHex { line, key })?;
            acc = (acc << 4) | nibble;
        }
        *byte = acc;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_helpers_round_trip_and_reject() {
        let bytes: [u8; 64] = std::array::from_fn(|i| u8::try_from(i * 4 % 256).unwrap());
        let text = crate::ids::hex(&bytes);
        assert_eq!(parse_hex::<64>(1, "signature", &text).unwrap(), bytes);
        assert_eq!(
            parse_hex::<64>(1, "signature", &text.to_uppercase()).unwrap(),
            bytes
        );
        assert!(matches!(
            parse_hex::<32>(3, "run", &"g".repeat(64)),
            Err(ManifestError::BadHex {
                line: 3,
                key: "run"
            })
        ));
        // A multi-byte character of the right byte length is not hex, not a panic.
        assert!(matches!(
            parse_hex::<1>(1, "run", "é"),
            Err(ManifestError::BadHex { .. })
        ));
    }
}
