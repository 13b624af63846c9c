#![no_main]
//! Any stored optimizer state: an error or a state that encodes back to exactly the input,
//! never a panic, for each optimizer's sizes.
use libfuzzer_sys::fuzz_target;
use protocol::round::{Optimizer, OptimizerState};

fuzz_target!(|data: &[u8]| {
    for name in ["momentum", "adam"] {
        let expected = Optimizer::named(name).unwrap().initial_state(4, 28);
        if let Some(state) = OptimizerState::decode(data, &expected) {
            assert_eq!(state.encode(), data);
        }
    }
});
