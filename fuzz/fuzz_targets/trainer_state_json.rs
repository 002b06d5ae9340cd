//! `trainer_state.json` from arbitrary bytes: parsing and validation never panic, and a state
//! that validates agrees with its checkpoint's step and has a bounded data cursor.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(st) = codex_train::TrainerState::from_slice(data) else {
        return;
    };
    let step = st.step;
    if st.validate(step).is_ok() {
        assert!(st.optimizer_steps <= st.step);
        assert!(st.data_cursor >= st.step);
        assert!(st.data_cursor <= st.step.saturating_mul(1 << 24));
    }
    assert!(st.validate(step.wrapping_add(1)).is_err());
});
