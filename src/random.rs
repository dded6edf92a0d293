//! Random values from the system's secure source, for whoever needs them
//! (lock owners, assertion ids, jitter). Imports nothing of the service.

/// `N` random bytes in hex.
pub fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random source is available");
    hex::encode(bytes)
}

/// A uniform draw from [0, 1).
pub fn unit_random() -> f64 {
    let mut bytes = [0u8; 4];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random source is available");
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}
