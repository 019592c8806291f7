//! Secrets at rest (TOTP seeds): AES-256-GCM under `auth.data_key` (the spec's AES-256 for data
//! at rest, for the columns whose plaintext would let an attacker with a database dump log in).
//!
//! Stored form: `enc:v1:` and the URL-safe base64 of a random 96-bit nonce followed by the
//! ciphertext and tag. The associated data is the row's owner (the user id), so a sealed value
//! copied to another user's row does not open.
//!
//! Invariants: new values are always sealed under the current key; a value opens under the
//! current key or, during a rotation, `auth.data_key_previous` ([`Opened::stale`] tells which,
//! so `devcycle users reencrypt` can seal it again); a stored value without the prefix (written
//! before sealing existed) is read as plaintext and is stale too.

use crate::settings::AuthSettings;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

const PREFIX: &str = "enc:v1:";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("auth.data_key must be 64 hex characters (32 bytes)")]
    BadKey,
    #[error("a sealed secret does not open under auth.data_key or auth.data_key_previous")]
    Unreadable,
}

/// A stored secret, opened.
pub struct Opened {
    pub plaintext: String,
    /// Not sealed under the current key (the previous key's, or plaintext): seal it again.
    pub stale: bool,
}

/// The current and (during a rotation) previous data keys.
pub struct DataKeys {
    current: LessSafeKey,
    previous: Option<LessSafeKey>,
}

/// The 32 bytes of a 64-hex-character key.
pub fn key_bytes(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

fn key(hex: &str) -> Result<LessSafeKey, SealError> {
    let bytes = key_bytes(hex).ok_or(SealError::BadKey)?;
    Ok(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::BadKey)?))
}

impl DataKeys {
    pub fn from_settings(a: &AuthSettings) -> Result<DataKeys, SealError> {
        let previous = a.data_key_previous.expose();
        Ok(DataKeys {
            current: key(a.data_key.expose())?,
            previous: if previous.is_empty() { None } else { Some(key(previous)?) },
        })
    }

    /// `plaintext` sealed under the current key for `owner`.
    pub fn seal(&self, plaintext: &str, owner: &str) -> String {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut sealed = plaintext.as_bytes().to_vec();
        self.current
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce_bytes), Aad::from(owner), &mut sealed)
            .expect("AES-GCM seals any input shorter than 64 GiB");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", B64.encode(out))
    }

    /// Opens a stored value of `owner`'s (plaintext without the prefix passes as it is, stale).
    pub fn open(&self, stored: &str, owner: &str) -> Result<Opened, SealError> {
        let Some(encoded) = stored.strip_prefix(PREFIX) else {
            return Ok(Opened { plaintext: stored.to_string(), stale: true });
        };
        let bytes = B64.decode(encoded).map_err(|_| SealError::Unreadable)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Unreadable);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let keys = std::iter::once((&self.current, false)).chain(self.previous.iter().map(|k| (k, true)));
        for (key, stale) in keys {
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Unreadable)?;
            let mut buf = sealed.to_vec();
            if let Ok(plain) = key.open_in_place(nonce, Aad::from(owner), &mut buf) {
                let plaintext = String::from_utf8(plain.to_vec()).map_err(|_| SealError::Unreadable)?;
                return Ok(Opened { plaintext, stale });
            }
        }
        Err(SealError::Unreadable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Secret;

    fn keys(current: &str, previous: &str) -> DataKeys {
        let mut a = crate::auth::tests::settings();
        a.data_key = Secret::new(current);
        a.data_key_previous = Secret::new(previous);
        DataKeys::from_settings(&a).unwrap()
    }

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f";

    #[test]
    fn seals_and_opens_for_the_same_owner_only() {
        let k = keys(K1, "");
        let sealed = k.seal("JBSWY3DPEHPK3PXP", "user-1");
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("JBSWY3DPEHPK3PXP"), "{sealed}");
        assert_ne!(sealed, k.seal("JBSWY3DPEHPK3PXP", "user-1"), "a fresh nonce each time");
        let opened = k.open(&sealed, "user-1").unwrap();
        assert_eq!((opened.plaintext.as_str(), opened.stale), ("JBSWY3DPEHPK3PXP", false));
        assert!(matches!(k.open(&sealed, "user-2"), Err(SealError::Unreadable)), "another owner");
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(k.open(std::str::from_utf8(&tampered).unwrap(), "user-1").is_err(), "a changed byte");
        assert!(k.open("enc:v1:!!", "user-1").is_err());
    }

    #[test]
    fn a_rotation_opens_the_previous_key_s_values_as_stale() {
        let old = keys(K1, "").seal("SECRET", "u");
        let rotating = keys(K2, K1);
        let opened = rotating.open(&old, "u").unwrap();
        assert_eq!((opened.plaintext.as_str(), opened.stale), ("SECRET", true));
        assert!(!rotating.open(&rotating.seal("SECRET", "u"), "u").unwrap().stale);
        assert!(matches!(keys(K2, "").open(&old, "u"), Err(SealError::Unreadable)), "the old key dropped");
        // Written before sealing existed: plaintext, stale.
        let legacy = keys(K1, "").open("PLAINSECRET", "u").unwrap();
        assert_eq!((legacy.plaintext.as_str(), legacy.stale), ("PLAINSECRET", true));
    }

    #[test]
    fn keys_are_64_hex_characters() {
        assert!(key_bytes(K1).is_some());
        for bad in ["", "00", &K1[..63], &format!("{}zz", &K1[..62]), &format!("{K1}00")] {
            assert!(key_bytes(bad).is_none(), "{bad}");
        }
    }
}
