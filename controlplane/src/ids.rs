//! Identifiers shown to clients.

/// Crockford's Base32 alphabet, as in Sora's ids (no I, L, O, U).
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new `connection_id`: 26 characters, the Base32 form of a random UUIDv4.
pub fn new_connection_id() -> String {
    encode_u128(uuid::Uuid::new_v4().as_u128())
}

/// 128 bits as 26 Crockford Base32 characters (the first holds the top 3 bits).
pub fn encode_u128(mut v: u128) -> String {
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = CROCKFORD[(v & 31) as usize];
        v >>= 5;
    }
    // Every byte comes from the ASCII alphabet above.
    String::from_utf8(out.to_vec()).expect("Crockford alphabet is ASCII")
}

/// A random ICE ufrag (16 chars) or pwd (32 chars) from the ICE character set.
pub fn ice_token(len: usize) -> String {
    use rand::Rng;
    const ICE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ICE[rng.random_range(0..ICE.len())] as char)
        .collect()
}

/// A random non-zero SSRC.
pub fn new_ssrc() -> u32 {
    use rand::Rng;
    rand::rng().random_range(1..=u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_id_shape() {
        let id = new_connection_id();
        assert_eq!(id.len(), 26);
        assert!(id.bytes().all(|b| CROCKFORD.contains(&b)));
        assert_ne!(id, new_connection_id());
    }

    #[test]
    fn encode_known_values() {
        assert_eq!(encode_u128(0), "0".repeat(26));
        assert_eq!(encode_u128(u128::MAX), format!("7{}", "Z".repeat(25)));
        assert_eq!(encode_u128(32), format!("{}10", "0".repeat(24)));
    }

    #[test]
    fn ice_tokens() {
        let t = ice_token(32);
        assert_eq!(t.len(), 32);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'));
    }
}
