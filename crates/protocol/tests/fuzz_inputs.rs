//! The fuzz targets' properties over the committed inputs: the seed corpora
//! (`fuzz/corpus/<target>/`) and every input that once broke a property
//! (`fuzz/regressions/<target>/`), so that `cargo test` keeps them fixed without the fuzzer.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `folder`, sorted; none when it does not exist.
fn inputs(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("listing a fuzz folder").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn run_all(kind: &str) -> usize {
    let mut count = 0;
    for (target, check) in sluice_protocol::fuzz::TARGETS {
        for path in inputs(&fuzz_dir().join(kind).join(target)) {
            let data = std::fs::read(&path).expect("reading a fuzz input");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target} fails on {}", path.display());
            count += 1;
        }
    }
    count
}

#[test]
fn regression_inputs_stay_fixed() {
    run_all("regressions");
}

#[test]
fn seed_corpora_hold_the_properties() {
    assert!(
        run_all("corpus") > 0,
        "no seed corpus under {}",
        fuzz_dir().display()
    );
}
