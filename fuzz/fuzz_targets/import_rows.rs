//! Arbitrary bytes as an import file: the CSV reader and row validator of `consumer-operator
//! import` must never panic, and what they accept must satisfy the CRD's rules and survive the
//! trip to YAML and back (what `-o yaml` prints is what the importer applies).
#![no_main]

use consumer_operator::{
    api::{Consumer, consumer::validate_spec},
    import::{Parsed, Rows, check},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let checked = check(data, "acme");
    let Ok(rows) = Rows::open(data, "acme") else {
        assert!(checked.is_err(), "the two passes disagree about the header");
        return;
    };
    let checked = checked.expect("a header that opens validates");

    let (mut total, mut valid) = (0u64, 0u64);
    for parsed in rows {
        total += 1;
        match parsed.expect("a byte slice cannot fail to read") {
            Parsed::Valid(row) => {
                valid += 1;
                assert_eq!(
                    validate_spec(&row.spec),
                    vec![],
                    "accepted a spec the CRD rejects"
                );
                let yaml = serde_yaml::to_string(&row.manifest("fuzz")).expect("serialises");
                let read_back: Consumer = serde_yaml::from_str(&yaml).expect("reads back");
                assert_eq!(
                    read_back.spec, row.spec,
                    "the manifest changed the spec:\n{yaml}"
                );
            }
            Parsed::Invalid(error) => assert!(!error.error.is_empty(), "an error without words"),
        }
    }

    // The first pass sees the same rows, and duplicates can only turn valid rows into errors.
    assert_eq!(checked.total, total);
    assert!(checked.valid <= valid);
    assert_eq!(checked.total, checked.valid + checked.errors.len() as u64);
});
