//! YAML as the API, `validate` and a watched proxy directory read it:
//! loading and validating never panic, whatever the text.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| {
    if let Ok(resources) = trefoil_model::load_str(&"fuzz.yaml".into(), text) {
        let _ = trefoil_model::validate(&resources);
    }
});
