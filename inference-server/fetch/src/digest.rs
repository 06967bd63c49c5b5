//! `--sha256`: the digest an artifact must have, checked on the staged copy before anything is
//! unpacked or published.
//!
//! - A source that is one file (an `https://` file, one object, a local file, an archive before
//!   unpacking): the SHA-256 of its bytes, what `sha256sum FILE` prints.
//! - A source that is a folder (a `file://` or `pvc://` folder, an object-store prefix): the
//!   SHA-256 of the listing made of one line per regular file, `<hex sha256>  <relative path>\n`,
//!   sorted by relative path (byte order), i.e. what
//!   `cd FOLDER && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum | sha256sum`
//!   prints (for names without a newline or a backslash, which `sha256sum` would escape).
//!
//! Hex is compared case-insensitively.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use super::{FetchError, io, stream::hex};

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// `text` as a digest to compare with: 64 hex digits, lower-cased.
pub fn parse(text: &str) -> Result<String, FetchError> {
    let trimmed = text.trim();
    if trimmed.len() == 64 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(trimmed.to_ascii_lowercase())
    } else {
        Err(FetchError::BadDigest {
            value: text.to_string(),
        })
    }
}

/// The SHA-256 of a file's bytes.
pub fn file(path: &Path) -> Result<Sha256Digest, FetchError> {
    let mut file = std::fs::File::open(path).map_err(io("opening", path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io("reading", path))?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buffer[..n]);
    }
}

/// The SHA-256 of a folder's listing (see the module's documentation).
pub fn folder(root: &Path) -> Result<Sha256Digest, FetchError> {
    let mut files = Vec::new();
    collect(root, Vec::new(), &mut files)?;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut listing = Sha256::new();
    for (relative, path) in files {
        listing.update(hex(&file(&path)?).as_bytes());
        listing.update(b"  ");
        listing.update(&relative);
        listing.update(b"\n");
    }
    Ok(listing.finalize().into())
}

/// Every regular file under `dir` (symbolic links are not followed), with its path relative to
/// the root as bytes joined by `/`.
fn collect(
    dir: &Path,
    prefix: Vec<u8>,
    files: &mut Vec<(Vec<u8>, PathBuf)>,
) -> Result<(), FetchError> {
    for entry in std::fs::read_dir(dir).map_err(io("reading", dir))? {
        let entry = entry.map_err(io("reading", dir))?;
        let kind = entry.file_type().map_err(io("reading", &entry.path()))?;
        let mut relative = prefix.clone();
        if !relative.is_empty() {
            relative.push(b'/');
        }
        relative.extend_from_slice(entry.file_name().as_encoded_bytes());
        if kind.is_dir() {
            collect(&entry.path(), relative, files)?;
        } else if kind.is_file() {
            files.push((relative, entry.path()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_case_insensitively_and_malformed_ones_are_named() {
        let upper = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        assert_eq!(parse(upper).expect("valid"), upper.to_ascii_lowercase());
        for bad in ["", "abc", &format!("{upper}0"), &upper.replace('E', "g")] {
            let err = parse(bad).expect_err("malformed");
            assert!(err.to_string().contains("64 hexadecimal"), "{err}");
        }
    }

    #[test]
    fn a_folder_digest_hashes_the_sorted_listing_of_its_files() {
        let root = std::env::temp_dir().join(format!("sluice-digest-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("b/c")).expect("folders");
        std::fs::create_dir_all(root.join("empty")).expect("empty folder");
        std::fs::write(root.join("a.txt"), "a\n").expect("a");
        std::fs::write(root.join("b/c/d.bin"), "d").expect("d");
        std::fs::write(root.join("B.txt"), "").expect("B");
        // sha256 of "a\n", "" and "d"; `B.txt` sorts before `a.txt` in byte order.
        let listing = "\
e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  B.txt
87428fc522803d31065e7bce3cf03fe475096631e5e07bbd7a0fde60c4cf25c7  a.txt
18ac3e7343f016890c510e93f935261169d9e3f565436429830faf0934f4f8e4  b/c/d.bin
";
        let expected: Sha256Digest = Sha256::digest(listing.as_bytes()).into();
        assert_eq!(folder(&root).expect("digest"), expected);
        assert_eq!(
            file(&root.join("a.txt")).expect("digest"),
            <Sha256Digest>::from(Sha256::digest(b"a\n"))
        );
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
