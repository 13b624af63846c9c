#![no_main]
//! Any input: an error or a note (and checkpoint) that re-encodes to the same bytes.
use libfuzzer_sys::fuzz_target;
use protocol::audit::checkpoint::Checkpoint;
use protocol::audit::note::Note;

fuzz_target!(|data: &[u8]| {
    if let Ok(note) = Note::parse(data) {
        assert_eq!(note.encode().as_bytes(), data);
        if let Ok(checkpoint) = Checkpoint::parse_text(&note.text) {
            assert_eq!(checkpoint.text(), note.text);
        }
    }
});
