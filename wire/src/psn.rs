//! Packet sequence numbers: 24 bits, wrapping.
//!
//! IBA compares PSNs inside a window of half the sequence space (2^23): `a` is "before"
//! `b` when `b - a` (mod 2^24) is in `1..2^23`.

use core::fmt;

/// A 24-bit packet sequence number with wrapping arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Psn(u32);

impl Psn {
    /// Mask of the 24 PSN bits.
    pub const MASK: u32 = 0x00ff_ffff;
    /// Half the sequence space: the comparison window.
    pub const HALF: u32 = 0x0080_0000;

    /// A PSN from the low 24 bits of `value`.
    pub const fn new(value: u32) -> Psn {
        Psn(value & Self::MASK)
    }

    /// The PSN as a number in `0..2^24`.
    pub const fn value(self) -> u32 {
        self.0
    }

    /// `self + n`, wrapping at 2^24.
    #[must_use]
    pub const fn add(self, n: u32) -> Psn {
        Psn(self.0.wrapping_add(n) & Self::MASK)
    }

    /// `self - n`, wrapping at 2^24.
    #[must_use]
    pub const fn sub(self, n: u32) -> Psn {
        Psn(self.0.wrapping_sub(n) & Self::MASK)
    }

    /// The next PSN.
    #[must_use]
    pub const fn next(self) -> Psn {
        self.add(1)
    }

    /// Signed distance from `other` to `self` in `-2^23..2^23`: positive when `self` is
    /// after `other`.
    pub const fn diff(self, other: Psn) -> i32 {
        let d = self.0.wrapping_sub(other.0) & Self::MASK;
        // Sign-extend the 24-bit difference.
        ((d << 8) as i32) >> 8
    }

    /// True when `self` comes strictly before `other` in the window.
    pub const fn is_before(self, other: Psn) -> bool {
        self.diff(other) < 0
    }

    /// True when `self` comes strictly after `other` in the window.
    pub const fn is_after(self, other: Psn) -> bool {
        self.diff(other) > 0
    }

    /// True when `self` lies in `[start, start + len)` (mod 2^24).
    pub const fn in_range(self, start: Psn, len: u32) -> bool {
        (self.0.wrapping_sub(start.0) & Self::MASK) < len
    }
}

impl fmt::Display for Psn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#08x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps_at_24_bits() {
        assert_eq!(Psn::new(0xff_ffff).next(), Psn::new(0));
        assert_eq!(Psn::new(0).sub(1), Psn::new(0xff_ffff));
        assert_eq!(Psn::new(0x1_000_005), Psn::new(5));
    }

    #[test]
    fn window_comparison_across_wrap() {
        let a = Psn::new(0xff_fffe);
        let b = Psn::new(3);
        assert_eq!(b.diff(a), 5);
        assert_eq!(a.diff(b), -5);
        assert!(a.is_before(b));
        assert!(b.is_after(a));
        assert!(Psn::new(1).in_range(a, 5));
        assert!(!Psn::new(3).in_range(a, 5));
    }

    proptest! {
        #[test]
        fn add_then_diff(start in 0u32..=Psn::MASK, n in 0u32..Psn::HALF) {
            let s = Psn::new(start);
            prop_assert_eq!(s.add(n).diff(s), n as i32);
            prop_assert_eq!(s.add(n).sub(n), s);
        }
    }
}
