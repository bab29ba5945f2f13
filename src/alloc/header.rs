//! The word stored in front of every block, and the tag it is made from.
//!
//! One `u64` names who allocated a block:
//!
//! | bits | field | range |
//! |---|---|---|
//! | 0–15 | scope slot (0: no scope) | [`SCOPE_SLOTS`](super::SCOPE_SLOTS) = 2¹⁶ |
//! | 16–27 | route slot (0: no route) | [`ROUTE_SLOTS`](super::ROUTE_SLOTS) = 2¹² |
//! | 28–39 | allocation site plus one (0: not sampled) | [`MAX_SITES`](super::sites::MAX_SITES) < 2¹² |
//! | 40–63 | the scope slot's generation, modulo 2²⁴ | |
//!
//! A block allocated outside any request has the word 0, so that the common free tests one
//! register. A thread's [`Tag`] is the same word without the site, so that a header is the tag
//! with the site or'ed in, and "was this block allocated by the current request" is one
//! comparison of two masked words.
//!
//! The generation is kept modulo 2²⁴: a free is charged to the scope that allocated the block
//! only while the slot's generation is still the block's. A slot is reused (its generation
//! bumped twice) once per request that takes it, so a block still alive 2²³ requests of the
//! same slot later could, if freed exactly then, be counted as freed by the request holding
//! the slot at that moment. Its route's count is exact regardless.

use super::ROUTE_SLOTS;

const SLOT_BITS: u32 = 16;
const ROUTE_SHIFT: u32 = 16;
const ROUTE_BITS: u32 = 12;
const SITE_SHIFT: u32 = 28;
const SITE_BITS: u32 = 12;
const GENERATION_SHIFT: u32 = 40;

const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const ROUTE_MASK: u64 = ((1 << ROUTE_BITS) - 1) << ROUTE_SHIFT;
const SITE_MASK: u64 = ((1 << SITE_BITS) - 1) << SITE_SHIFT;
const GENERATION_MASK: u64 = !0 << GENERATION_SHIFT;

/// The largest site number a header can hold (the site table's size).
pub(crate) const MAX_SITE: u32 = (1 << SITE_BITS) - 1;

/// Reduces a slot's generation counter to what a header keeps of it.
#[inline]
pub(crate) const fn generation_of(counter: u32) -> u32 {
    counter & ((1 << (64 - GENERATION_SHIFT)) - 1)
}

const _: () = assert!(super::SCOPE_SLOTS == 1 << SLOT_BITS);
const _: () = assert!(ROUTE_SLOTS == 1 << ROUTE_BITS);
const _: () = assert!(super::sites::MAX_SITES as u32 <= MAX_SITE);

/// Identifies who allocates on a thread: a scope slot and its generation, and a route slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tag(u64);

impl Tag {
    /// Outside any request.
    pub(crate) const NONE: Tag = Tag(0);

    /// Packs a tag; `slot`, `route` and `generation` are reduced to their fields' widths.
    pub(crate) const fn new(slot: u32, generation: u32, route: u32) -> Tag {
        Tag((slot as u64 & SLOT_MASK)
            | ((route as u64) << ROUTE_SHIFT & ROUTE_MASK)
            | ((generation_of(generation) as u64) << GENERATION_SHIFT))
    }

    /// A tag for a request on `route` that holds no scope slot.
    pub(crate) const fn route_only(route: u32) -> Tag {
        Tag::new(0, 0, route)
    }

    pub(crate) const fn slot(self) -> u32 {
        (self.0 & SLOT_MASK) as u32
    }

    pub(crate) const fn generation(self) -> u32 {
        (self.0 >> GENERATION_SHIFT) as u32
    }

    pub(crate) const fn route(self) -> u32 {
        ((self.0 & ROUTE_MASK) >> ROUTE_SHIFT) as u32
    }
}

/// The word in front of a block: the allocating tag and the sampled site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header(u64);

impl Header {
    /// The header of a block allocated under `tag`, sampled as `site` (0: not sampled; at most
    /// [`MAX_SITE`]).
    #[inline(always)]
    pub(crate) const fn new(tag: Tag, site: u32) -> Header {
        Header(tag.0 | ((site as u64) << SITE_SHIFT & SITE_MASK))
    }

    #[inline(always)]
    pub(crate) const fn from_word(word: u64) -> Header {
        Header(word)
    }

    #[inline(always)]
    pub(crate) const fn word(self) -> u64 {
        self.0
    }

    /// Allocated outside any request (no scope, no route, hence no site).
    #[inline(always)]
    pub(crate) const fn is_unattributed(self) -> bool {
        self.0 == 0
    }

    #[inline(always)]
    pub(crate) const fn tag(self) -> Tag {
        Tag(self.0 & !SITE_MASK)
    }

    #[inline(always)]
    pub(crate) const fn site(self) -> u32 {
        ((self.0 & SITE_MASK) >> SITE_SHIFT) as u32
    }

    /// Allocated by the request that `tag` names (same slot and generation, and a slot).
    #[inline(always)]
    pub(crate) const fn is_of_scope(self, tag: Tag) -> bool {
        self.0 & SLOT_MASK != 0 && (self.0 ^ tag.0) & (SLOT_MASK | GENERATION_MASK) == 0
    }

    /// Allocated, and not sampled, under exactly `tag`: by the request `tag` names or, for a
    /// tag without a scope slot, by a request of the same route that held no slot either. One
    /// comparison; either way the block's route is the tag's, and the free can be counted
    /// with the current request's pending counts (a slotless tag's are its route's).
    #[inline(always)]
    pub(crate) const fn is_own_unsampled(self, tag: Tag) -> bool {
        self.0 == tag.0
    }

    /// Allocated under the route `tag` names (and a route).
    #[inline(always)]
    pub(crate) const fn is_of_route(self, tag: Tag) -> bool {
        self.0 & ROUTE_MASK != 0 && (self.0 ^ tag.0) & ROUTE_MASK == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::{ROUTE_SLOTS, SCOPE_SLOTS};

    #[test]
    fn fields_round_trip_at_their_limits() {
        for (slot, generation, route, site) in [
            (0, 0, 0, 0),
            (1, 1, 1, 1),
            (
                SCOPE_SLOTS as u32 - 1,
                (1 << 24) - 1,
                ROUTE_SLOTS as u32 - 1,
                MAX_SITE,
            ),
            (12_345, 0xAB_CDEF, 2_047, 3_000),
        ] {
            let tag = Tag::new(slot, generation, route);
            assert_eq!(
                (tag.slot(), tag.generation(), tag.route()),
                (slot, generation, route)
            );
            let header = Header::new(tag, site);
            assert_eq!(header.site(), site);
            assert_eq!(header.tag(), tag);
            assert_eq!(Header::from_word(header.word()), header);
        }
    }

    #[test]
    fn generations_are_kept_modulo_2_pow_24() {
        assert_eq!(generation_of((1 << 24) + 5), 5);
        assert_eq!(Tag::new(3, (1 << 24) + 5, 0), Tag::new(3, 5, 0));
        assert_eq!(Tag::new(3, u32::MAX, 0).generation(), (1 << 24) - 1);
    }

    #[test]
    fn only_blocks_of_no_request_have_the_zero_word() {
        assert!(Header::new(Tag::NONE, 0).is_unattributed());
        assert!(!Header::new(Tag::route_only(1), 0).is_unattributed());
        assert!(!Header::new(Tag::new(1, 0, 0), 0).is_unattributed());
    }

    #[test]
    fn scope_and_route_membership() {
        let tag = Tag::new(7, 9, 3);
        let own = Header::new(tag, 5);
        assert!(own.is_of_scope(tag) && own.is_of_route(tag));
        // The same slot one generation later is another request of the route.
        let later = Tag::new(7, 10, 3);
        assert!(!own.is_of_scope(later) && own.is_of_route(later));
        // Another route.
        assert!(!own.is_of_route(Tag::new(8, 1, 4)));
        assert!(!own.is_of_scope(Tag::new(8, 1, 4)));
        // Exactly the tag, without a site: the free's fast path.
        assert!(Header::new(tag, 0).is_own_unsampled(tag));
        assert!(
            !own.is_own_unsampled(tag),
            "a sampled block takes the long way"
        );
        assert!(!Header::new(tag, 0).is_own_unsampled(later));
        assert!(!Header::new(tag, 0).is_own_unsampled(Tag::new(7, 1, 4)));
        assert!(!Header::new(Tag::route_only(3), 0).is_own_unsampled(Tag::route_only(4)));
        // No slot or no route is never "the same".
        let route_only = Header::new(Tag::route_only(3), 0);
        assert!(!route_only.is_of_scope(Tag::route_only(3)));
        assert!(route_only.is_of_route(Tag::route_only(3)));
        assert!(!Header::new(Tag::NONE, 0).is_of_route(Tag::NONE));
    }
}
