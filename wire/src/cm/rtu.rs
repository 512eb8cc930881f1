//! RTU, ready to use (IBA 12.6.9, table 111): the active side's last handshake message.
//!
//! ```text
//! 0 | Local Communication ID (32) | 4 | Remote Communication ID (32)
//! 8 | private data (224)
//! ```

comm_ids_message!("RTU", "a CM RTU");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cm::testdata::{rping_mads, REP, RTU};
    use crate::Error;
    use proptest::prelude::*;

    #[test]
    fn parses_rpings_rtu() {
        let mads = rping_mads();
        let data = &mads[RTU][crate::mad::HEADER_LEN..];
        let repr = Repr::parse(&Packet::new_checked(data).unwrap()).unwrap();
        let rep =
            crate::cm::rep::Packet::new_checked(&mads[REP][crate::mad::HEADER_LEN..]).unwrap();
        // The RTU swaps the REP's IDs.
        assert_eq!(repr.local_comm_id, 0x8f4e_3c9d);
        assert_eq!(repr.local_comm_id, rep.remote_comm_id());
        assert_eq!(repr.remote_comm_id, rep.local_comm_id());
        assert_eq!(repr.private_data.len(), PRIVATE_DATA_LEN);
        let mut out = [0xffu8; MESSAGE_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(&out[..], data);
        assert_eq!(
            Packet::new_checked(&data[..8]).err(),
            Some(Error::Truncated)
        );
    }

    proptest! {
        #[test]
        fn any_rtu_round_trips(
            local in any::<u32>(),
            remote in any::<u32>(),
            private in proptest::collection::vec(any::<u8>(), PRIVATE_DATA_LEN),
        ) {
            let repr = Repr { local_comm_id: local, remote_comm_id: remote, private_data: &private };
            let mut out = [0u8; MESSAGE_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&out[..]).unwrap()), Ok(repr));
            let long = [0u8; PRIVATE_DATA_LEN + 1];
            prop_assert_eq!(
                Repr { private_data: &long, ..repr }.emit(&mut Packet::new_unchecked(&mut out[..])),
                Err(Error::Malformed)
            );
        }
    }
}
