//! Small helpers every stage uses: the clock conversion, the one way to lock, text tables, the
//! id source, the id hasher, and a future that panics at its caller's `.await`.

pub(crate) mod clock;
pub(crate) mod panic_at_await;
pub(crate) mod sync;
pub(crate) mod table;

/// Whether source `file` lies in a version of package `name` as cargo unpacks it (a path
/// component `<name>-<version>`, such as `tokio-1.54.1`).
pub(crate) fn in_package(file: &str, name: &str) -> bool {
    file.split(['/', '\\']).any(|dir| {
        dir.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|version| version.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// The one sequence of ids of a detector: scopes, tracked objects and standing alerts draw from
/// it, so report ids never collide. The registry owns it; the judges draw from it through the
/// engine, without reaching into the registry.
#[derive(Debug)]
pub(crate) struct Ids(std::sync::atomic::AtomicU64);

impl Default for Ids {
    fn default() -> Self {
        Ids(std::sync::atomic::AtomicU64::new(1))
    }
}

impl Ids {
    /// A fresh id (never 0, which reports about the whole process use as a request number).
    pub(crate) fn next(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

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
