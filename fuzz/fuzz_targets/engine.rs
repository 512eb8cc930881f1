//! The engine's state machine against a hostile peer and a hostile tenant: one engine
//! with two namespaces fed any interleaving of verbs calls, crafted and raw datagrams
//! and clock steps (`ferroce_fuzz::engine`). After every step: no panic, no region byte
//! changed that no permitted operation targeted, no namespace's memory in another's
//! packets, every queue within its bound.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use ferroce_fuzz::engine::{Action, World, MAX_STEPS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Unstructured::new(data);
    let mut world = World::new();
    for _ in 0..MAX_STEPS {
        let Ok(action) = Action::arbitrary(&mut input) else {
            break;
        };
        world.step(&action);
    }
});
