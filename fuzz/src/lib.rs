//! Support for the fuzz targets that need more than a few lines: the `engine` target's
//! world (one engine, two namespaces), its model of which bytes may change, and its
//! generator of hostile packets.

pub mod engine;
