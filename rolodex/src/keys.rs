//! Keys derived from a network's shared secret.
//!
//! One secret per network; each use gets its own HKDF-SHA256 output so that the rolodex, which is given only
//! the rolodex key, can neither join the data plane nor forge peer handshakes.

use ring::hkdf;

const SALT: &[u8] = b"rolomesh/v1";

/// The smallest secret accepted: shorter secrets are guessable offline from a captured handshake.
pub const MIN_SECRET_LEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyUse {
    /// Authenticates and encrypts rolodex messages; held by agents and the rolodex.
    Rolodex,
    /// The DTLS pre-shared key for peer handshakes; held by agents only.
    DtlsPsk,
    /// Authenticates hole-punching probes; held by agents only.
    Probe,
}

impl KeyUse {
    fn label(self) -> &'static str {
        match self {
            KeyUse::Rolodex => "rolodex-auth/",
            KeyUse::DtlsPsk => "dtls-psk/",
            KeyUse::Probe => "probe/",
        }
    }
}

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// Derives a 32-byte key for `network` from its secret.
pub fn derive(secret: &[u8], network: &str, key_use: KeyUse) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
    let info = [key_use.label().as_bytes(), network.as_bytes()];
    let mut out = [0u8; 32];
    // Infallible: 32 bytes is far below HKDF-SHA256's 255*32 output limit.
    if let Ok(okm) = prk.expand(&info, Len32) {
        let _ = okm.fill(&mut out);
    }
    out
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_and_networks_get_distinct_keys() {
        let s = b"0123456789abcdef0123";
        let a = derive(s, "net", KeyUse::Rolodex);
        assert_ne!(a, derive(s, "net", KeyUse::DtlsPsk));
        assert_ne!(a, derive(s, "net", KeyUse::Probe));
        assert_ne!(a, derive(s, "net2", KeyUse::Rolodex));
        assert_ne!(a, derive(b"0123456789abcdef0124", "net", KeyUse::Rolodex));
        assert_eq!(a, derive(s, "net", KeyUse::Rolodex));
    }

    #[test]
    fn hex_round_trip() {
        let k = derive(b"secretsecretsecret", "n", KeyUse::Rolodex);
        assert_eq!(from_hex(&to_hex(&k)).unwrap(), k);
        assert!(from_hex("abc").is_none());
        assert!(from_hex("zz").is_none());
    }
}
