//! Whose memory a route holds: its own code's, or a dependency's.
//!
//! The rule that decides whose task it is (its spawn location, see
//! [`origin`](crate::request::origin)) decides whose bytes they are, by allocation site: the
//! first frame of a block's sampled call stack outside the standard library and the allocator.
//! What a dependency's code allocated while a request was served and still holds — a batch
//! exporter's span buffer, a metrics recorder's buckets, an epoch's deferred garbage, a pool's
//! buffers — is the dependency's, kept on the dependency's own schedule; what the user's code
//! allocated is the user's.
//!
//! A route's owner is read from the share of its live bytes that its sites put in
//! dependencies: more than half makes the memory a dependency's. Sampled, the share is an
//! estimate from `n` samples, with a standard error of at most `0.5 / √n` (±29 % at 3, ±12.5 %
//! at 16); it is read from [`MIN_SAMPLES`] samples on — as many as the old witnesses that
//! report a route ([`MIN_OLD_WITNESSES`](super::memory::MIN_OLD_WITNESSES)), each of which is a
//! sample in sampled mode, so that a route is never reported on more evidence than its owner is
//! read from. A leak's own bytes outweigh what else the route holds, so it reads as its
//! allocator's. With every allocation recorded
//! ([`AllocationSites::Exact`](crate::AllocationSites::Exact)) the share is exact and read at
//! once. Sites without debug information (no file) count for neither side. Until the share can
//! be read — or with allocation sites off — the owner is [`Owner::Unknown`].

use crate::alloc::symbolize::Symbolizer;
use crate::alloc::RawSite;
use crate::request::origin;

/// Samples a route's sites must hold before its owner is read from them.
pub(crate) const MIN_SAMPLES: u64 = super::memory::MIN_OLD_WITNESSES as u64;

/// How many of a route's sites (those holding the most) are read.
pub(crate) const SITES_READ: usize = 64;

/// Whose a route's memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Most of it was allocated by the user's own code.
    User,
    /// Most of it was allocated by dependencies' code.
    Dependency,
    /// Too few samples to tell, or allocation sites are off.
    Unknown,
}

/// The owner of the memory held at `sites` (a route's, those holding the most), sampled with a
/// mean of `mean` bytes between samples (1: every allocation).
pub(crate) fn owner(sites: &[RawSite], mean: u64, symbols: &mut Symbolizer) -> Owner {
    if mean == 0 || sites.is_empty() {
        return Owner::Unknown;
    }
    let resolved = symbols.sites(sites);
    let (mut user, mut dependency, mut samples) = (0u64, 0u64, 0u64);
    for site in &resolved {
        let Some(file) = &site.file else { continue };
        // A sampled block stands for about `mean` bytes (more for a larger block).
        samples += if mean == 1 {
            site.blocks
        } else {
            (site.bytes + mean / 2) / mean
        };
        if origin::is_dependency_source(file) {
            dependency += site.bytes;
        } else {
            user += site.bytes;
        }
    }
    let sampled = mean != 1;
    if user + dependency == 0 || (sampled && samples < MIN_SAMPLES) {
        Owner::Unknown
    } else if dependency > user {
        Owner::Dependency
    } else {
        Owner::User
    }
}
