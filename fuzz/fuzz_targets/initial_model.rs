//! An initial model file (safetensors, tensors not known in advance): decoding never panics,
//! and what decodes federates only finite values, one per element of its layout, and
//! survives a re-encoding (with its kept tensors) unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = training::tensors::decode_model(data, "fuzz") {
        let total: usize = model
            .layout
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(model.values.len(), total);
        assert!(model.values.iter().all(|v| v.is_finite()));
        let again = training::tensors::encode(
            &model.layout,
            &model.values,
            &model.kept,
            Default::default(),
        )
        .expect("encodes");
        let back = training::tensors::decode_model(&again, "again").expect("decodes");
        assert_eq!(back.values.len(), model.values.len());
        assert_eq!(back.kept.len(), model.kept.len());
    }
});
