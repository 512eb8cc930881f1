//! Deterministic network simulator (placeholder until filled).
