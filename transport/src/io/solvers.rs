//! IPv4 identification solvers ([`IdentSolver`]), one per datagram length, cached: the
//! receive path recovers each datagram's IP ID with one, and the send path corrects GSO
//! segments' ICRCs with one. A stream is mostly one or two lengths, so the length asked
//! for last is checked before the map.

use std::collections::HashMap;

use ferroce_wire::ident::IdentSolver;

/// Solvers kept at most (a peer choosing lengths cannot grow the cache without end).
const MAX_SOLVERS: usize = 4096;

/// Solvers by UDP payload length.
#[derive(Debug, Default)]
pub(super) struct Solvers {
    /// The length asked for last, and its solver.
    last: Option<(usize, IdentSolver)>,
    by_len: HashMap<usize, IdentSolver>,
}

impl Solvers {
    /// The solver for datagrams of `len` bytes, or `None` when no RoCE datagram is that
    /// short.
    pub fn get(&mut self, len: usize) -> Option<&IdentSolver> {
        if self.last.as_ref().is_some_and(|(l, _)| *l == len) {
            return self.last.as_ref().map(|(_, s)| s);
        }
        let solver = match self.by_len.get(&len) {
            Some(solver) => solver.clone(),
            None => {
                let solver = IdentSolver::new(len).ok()?;
                if self.by_len.len() >= MAX_SOLVERS {
                    self.by_len.clear();
                }
                self.by_len.insert(len, solver.clone());
                solver
            }
        };
        self.last = Some((len, solver));
        self.last.as_ref().map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solvers_match_fresh_ones_whatever_the_order() {
        let mut solvers = Solvers::default();
        for len in [1052, 1052, 300, 1052, 4124, 300] {
            let fresh = IdentSolver::new(len).unwrap();
            assert_eq!(solvers.get(len), Some(&fresh), "length {len}");
        }
        assert_eq!(solvers.by_len.len(), 3);
        assert!(solvers.get(3).is_none(), "shorter than any RoCE datagram");
    }
}
