//! `ferroced`, the ferroce soft-HCA daemon: one process per host owns the RoCEv2
//! ports, and tenants (processes, containers, later VMs) share it, each inside an
//! isolated namespace of identifiers (QPNs, keys, handles) with its own addresses.
//!
//! Today: the configuration ([`config`]) and its check (`ferroced --check-config FILE`).
//! The daemon's engine threads, the tenant socket and the metrics endpoint follow
//! (issue 13); `docs/ARCHITECTURE.md` has the design.

pub mod config;
