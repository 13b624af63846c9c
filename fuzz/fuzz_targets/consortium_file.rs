#![no_main]
//! Any text: an error naming what is wrong, or a consortium that survives a TOML round trip.
use libfuzzer_sys::fuzz_target;
use protocol::consortium::Consortium;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(consortium) = Consortium::parse(text)
    {
        let again = Consortium::parse(&consortium.to_toml()).expect("a parsed file re-parses");
        assert_eq!(again.digest(), consortium.digest());
    }
});
