//! The reasons a [`VerbsError`](crate::engine::VerbsError) gives (its `&'static str`s)
//! as the control protocol knows them. An error crosses the wire as its text, and the
//! receiving side maps the text back to its own `&'static str` here: no allocation
//! that lives forever, and a peer cannot make this side hold text it does not know
//! (an unknown reason fails to decode). A test checks that every reason the engine
//! writes is in the table, so adding one without adding it here fails the build's
//! tests, not a daemon's client.

/// Every reason, sorted (for the binary search).
pub(super) const REASONS: &[&str] = &[
    "CQ",
    "CQ in use",
    "GID owned by a namespace",
    "GID owned by another namespace",
    "MR",
    "MR table",
    "PD",
    "PD in use",
    "QP",
    "QP already bound to a connection",
    "QP type differs from the request's",
    "QP uses an SRQ",
    "QP1",
    "QP1 is a UD QP",
    "QP1 is a raw GSI QP: the CM is off",
    "QP1 is the CM agent's",
    "QPN space",
    "READ/atomic with max_rd_atomic 0",
    "REMOTE_WRITE/REMOTE_ATOMIC need LOCAL_WRITE",
    "SRQ",
    "SRQ in use",
    "UD message longer than the MTU",
    "UD send without a destination",
    "a UD service needs a UD QP",
    "a listener on this service ID",
    "access",
    "atomics return 8 bytes",
    "av",
    "av: no such local GID",
    "backlog 0",
    "connect needs an RC or UC QP",
    "connection",
    "connection being established",
    "connection is not a pending request",
    "dest_qpn",
    "flow_label",
    "flow_label is 20 bits",
    "inline READ or atomic",
    "inline data with an sg_list",
    "listener",
    "lkey or range",
    "max_cq",
    "max_cqe",
    "max_dest_rd_atomic",
    "max_inline_data",
    "max_mr",
    "max_mr_size",
    "max_pd",
    "max_qp",
    "max_qp_wr",
    "max_rd_atomic",
    "max_recv_sge",
    "max_send_sge",
    "max_sge",
    "max_srq",
    "max_srq_sge",
    "max_srq_wr",
    "message over 2 GiB",
    "min_rnr_timer",
    "namespace",
    "no local GID of the remote's family",
    "operation not supported on this QP type",
    "path_mtu",
    "pkey_index",
    "pkey_index (only 0 exists)",
    "port_num",
    "port_num (only 1 exists)",
    "private data too long for the message",
    "qkey",
    "retry count out of range",
    "retry counts are 3 bits",
    "retry_cnt",
    "rnr_retry",
    "rq_psn",
    "sq_psn",
    "srq_limit above max_wr",
    "timeout",
    "timer codes are 5 bits",
];

/// This build's `&'static str` for the reason `text`, if it knows it.
pub(super) fn known(text: &str) -> Option<&'static str> {
    REASONS.binary_search(&text).ok().map(|i| REASONS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_unique_and_each_reason_fits_a_length_byte() {
        assert!(REASONS.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
        assert!(REASONS.iter().all(|r| r.len() <= usize::from(u8::MAX)));
        assert_eq!(known("QP"), Some("QP"));
        assert_eq!(known("no such reason"), None);
    }

    /// The string literals `VerbsError` variants are built with in every source file of
    /// this crate (also when the literal starts on the next line), with their files.
    fn reasons_in_sources() -> Vec<(String, String)> {
        let mut found = Vec::new();
        let mut dirs = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("source directory") {
                let path = entry.expect("directory entry").path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("source file");
                for (at, _) in text.match_indices("VerbsError::") {
                    let rest = &text[at + "VerbsError::".len()..];
                    let variant_len = rest
                        .find(|c: char| !c.is_alphanumeric() && c != '_')
                        .unwrap_or(rest.len());
                    let Some(args) = rest[variant_len..].strip_prefix('(') else {
                        continue;
                    };
                    let Some(literal) = args.trim_start().strip_prefix('"') else {
                        continue;
                    };
                    let end = literal.find('"').expect("a closed string literal");
                    found.push((path.display().to_string(), literal[..end].to_string()));
                }
            }
        }
        found
    }

    #[test]
    fn every_reason_the_engine_writes_is_known() {
        let found = reasons_in_sources();
        assert!(found.len() > 40, "the scan found {} reasons", found.len());
        let unknown: Vec<_> = found
            .iter()
            .filter(|(_, reason)| known(reason).is_none())
            .collect();
        assert!(unknown.is_empty(), "add these to REASONS: {unknown:?}");
        for name in crate::engine::qp::ATTRIBUTE_NAMES {
            assert_eq!(known(name), Some(name), "a QP attribute name");
        }
    }
}
