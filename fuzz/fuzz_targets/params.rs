//! The TOML front end of the `dataset` and `transform` stages: arbitrary
//! text parsed as a TOML table and canonicalised. Must never panic; an
//! accepted table's canonical form must be accepted again and be a fixed
//! point, and the typed parameters must deserialise from it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(table) = toml::from_str::<toml::Table>(text) else { return };
    for stage in mrbm_data::stages() {
        let Ok(canon) = stage.params(&table) else { continue };
        let again: toml::Table = serde_json::from_value(canon.clone()).expect("canonical form converts back to TOML");
        let canon2 = stage.params(&again).expect("canonical form is accepted");
        assert_eq!(canon, canon2, "canonical form is not a fixed point");
        match stage.kind() {
            "dataset" => {
                let p: mrbm_data::DatasetParams = serde_json::from_value(canon).expect("typed dataset params");
                let _ = p.expected_files();
                let _ = stage.missing_input_hint(&serde_json::to_value(&p).unwrap(), "dir", std::path::Path::new("x"));
            }
            _ => {
                let _: mrbm_data::TransformParams = serde_json::from_value(canon).expect("typed transform params");
            }
        }
    }
});
