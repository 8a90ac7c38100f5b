//! Audit entries and checkpoints: stored entry bytes decode only if they are
//! canonical (decoding then encoding gives the same bytes), and checkpoint
//! bodies and verifier keys parse or are refused, never panic.
#![no_main]

use consentvault::audit::AuditEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = AuditEvent::from_bytes(data) {
        assert_eq!(event.to_bytes().expect("a decoded event encodes"), data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = consentvault::audit::checkpoint::Checkpoint::parse_body(text);
        let _ = consentvault::audit::checkpoint::NoteVerifier::parse(text);
    }
});
