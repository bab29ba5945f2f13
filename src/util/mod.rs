//! Small helpers every stage uses: the clock conversion, the one way to lock, text tables and
//! the id hasher.

pub(crate) mod clock;
pub(crate) mod sync;
pub(crate) mod table;

/// Hashes sequential `u64` ids (the registry's, tokio's task ids) with one multiplication (Fibonacci hashing): the
/// ids are not attacker-controlled, and SipHash would cost more than the rest of an insert.
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
