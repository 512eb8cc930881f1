//! DREP, reply to a request for communication release (IBA 12.6.11, table 113).
//!
//! ```text
//! 0 | Local Communication ID (32) | 4 | Remote Communication ID (32)
//! 8 | private data (224)
//! ```

comm_ids_message!("DREP", "a CM DREP");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cm::testdata::{rping_mads, DREP, DREQ};
    use crate::Error;
    use proptest::prelude::*;

    #[test]
    fn parses_rpings_drep() {
        let mads = rping_mads();
        let data = &mads[DREP][crate::mad::HEADER_LEN..];
        let repr = Repr::parse(&Packet::new_checked(data).unwrap()).unwrap();
        let dreq =
            crate::cm::dreq::Packet::new_checked(&mads[DREQ][crate::mad::HEADER_LEN..]).unwrap();
        // rxe's server answers the client's DREQ.
        assert_eq!(repr.local_comm_id, 0x166a_6efc);
        assert_eq!(repr.local_comm_id, dreq.remote_comm_id());
        assert_eq!(repr.remote_comm_id, dreq.local_comm_id());
        let mut out = [0xffu8; MESSAGE_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(&out[..], data);
        assert_eq!(
            Packet::new_checked(&data[..MESSAGE_LEN - 1]).err(),
            Some(Error::Truncated)
        );
    }

    proptest! {
        #[test]
        fn any_drep_round_trips(
            local in any::<u32>(),
            remote in any::<u32>(),
            private in proptest::collection::vec(any::<u8>(), PRIVATE_DATA_LEN),
        ) {
            let repr = Repr { local_comm_id: local, remote_comm_id: remote, private_data: &private };
            let mut out = [0u8; MESSAGE_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&out[..]).unwrap()), Ok(repr));
        }
    }
}
