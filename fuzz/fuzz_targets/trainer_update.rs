//! An external trainer's update file (safetensors): decoding never panics, and what decodes
//! has exactly the layout's values, all finite, and survives a re-encoding unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let layout = vec![
        ("weight".to_string(), vec![2, 3]),
        ("bias".to_string(), vec![2]),
    ];
    if let Ok((values, metadata)) = training::tensors::decode(data, &layout, &[], "fuzz") {
        assert_eq!(values.len(), 8);
        assert!(values.iter().all(|v| v.is_finite()));
        let again = training::tensors::encode(&layout, &values, &[], metadata).expect("encodes");
        assert_eq!(
            training::tensors::decode(&again, &layout, &[], "again").expect("decodes").0,
            values
        );
    }
});
