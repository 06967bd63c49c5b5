//! Artifacts that are archives (`.tar.gz`, `.tgz`, `.tar`, `.zip`) unpacked into the model
//! folder, streamed (memory stays bounded whatever the size), refusing every entry that would
//! land outside it: absolute paths, `..` components, links whose target is absolute or climbs
//! out, and anything that is not a file, a folder or such a link. An archive holding one
//! top-level folder and nothing else is unpacked as that folder's contents (the usual
//! `tar czf model.tgz model/`).

use std::{
    fs::File,
    io::BufReader,
    path::{Component, Path, PathBuf},
};

use super::{FetchError, io};

/// The kind of archive a file name says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `.tar.gz` / `.tgz`.
    TarGz,
    /// `.tar`.
    Tar,
    /// `.zip`.
    Zip,
}

impl Kind {
    /// The archive kind of `name`, if any.
    pub fn of(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Some(Self::TarGz)
        } else if lower.ends_with(".tar") {
            Some(Self::Tar)
        } else if lower.ends_with(".zip") {
            Some(Self::Zip)
        } else {
            None
        }
    }
}

fn unsafe_entry(archive: &Path, entry: &str, why: &str) -> FetchError {
    FetchError::Archive {
        archive: archive.to_path_buf(),
        message: format!("entry {entry:?} {why}; refused"),
    }
}

/// `name` as a path inside the model folder, or why not.
fn inside(archive: &Path, name: &Path) -> Result<PathBuf, FetchError> {
    let shown = name.to_string_lossy();
    let mut clean = PathBuf::new();
    for part in name.components() {
        match part {
            Component::Normal(p) => clean.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(unsafe_entry(archive, &shown, "climbs out with `..`"));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_entry(archive, &shown, "is an absolute path"));
            }
        }
    }
    Ok(clean)
}

/// Whether a link at `at` (relative) pointing to `target` stays inside the folder.
fn link_stays_inside(at: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = at.components().count() as i64 - 1;
    for part in target.components() {
        match part {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// Unpacks `archive` into `into` (created), then removes the archive.
pub fn unpack(archive: &Path, kind: Kind, into: &Path) -> Result<(), FetchError> {
    std::fs::create_dir_all(into).map_err(io("creating", into))?;
    let file = File::open(archive).map_err(io("opening", archive))?;
    match kind {
        Kind::TarGz => unpack_tar(
            archive,
            tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file))),
            into,
        )?,
        Kind::Tar => unpack_tar(archive, tar::Archive::new(BufReader::new(file)), into)?,
        Kind::Zip => unpack_zip(archive, file, into)?,
    }
    std::fs::remove_file(archive).map_err(io("removing", archive))?;
    hoist_single_folder(into)
}

fn unpack_tar<R: std::io::Read>(
    archive: &Path,
    mut tar: tar::Archive<R>,
    into: &Path,
) -> Result<(), FetchError> {
    let bad = |e: std::io::Error| FetchError::Archive {
        archive: archive.to_path_buf(),
        message: e.to_string(),
    };
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.into_owned();
        let relative = inside(archive, &name)?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry.link_name().map_err(bad)?.unwrap_or_default();
            let ok = if kind.is_hard_link() {
                inside(archive, &target).is_ok()
            } else {
                link_stays_inside(&relative, &target)
            };
            if !ok {
                return Err(unsafe_entry(
                    archive,
                    &name.to_string_lossy(),
                    &format!("links to {} outside the model folder", target.display()),
                ));
            }
        } else if !(kind.is_file()
            || kind.is_dir()
            || kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink())
        {
            return Err(unsafe_entry(
                archive,
                &name.to_string_lossy(),
                "is not a file, folder or link",
            ));
        }
        if relative.as_os_str().is_empty() {
            continue;
        }
        // `unpack_in` checks again that the entry stays inside `into`.
        entry.set_preserve_permissions(false);
        let unpacked = entry.unpack_in(into).map_err(bad)?;
        if !unpacked {
            return Err(unsafe_entry(
                archive,
                &name.to_string_lossy(),
                "leaves the folder",
            ));
        }
    }
    Ok(())
}

fn unpack_zip(archive: &Path, file: File, into: &Path) -> Result<(), FetchError> {
    let bad = |message: String| FetchError::Archive {
        archive: archive.to_path_buf(),
        message,
    };
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| bad(e.to_string()))?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let name = entry.name().map_err(|e| bad(e.to_string()))?.into_owned();
        let relative = entry
            .enclosed_name()
            .ok_or_else(|| unsafe_entry(archive, &name, "leaves the folder"))?;
        let relative = inside(archive, &relative)?;
        if entry.is_symlink() {
            return Err(unsafe_entry(
                archive,
                &name,
                "is a link (not unpacked from zip files)",
            ));
        }
        let target = into.join(&relative);
        if entry.is_dir() {
            std::fs::create_dir_all(&target).map_err(io("creating", &target))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        let mut out = File::create(&target).map_err(io("creating", &target))?;
        std::io::copy(&mut entry, &mut out).map_err(io("writing", &target))?;
    }
    Ok(())
}

/// The only entry of `dir`, when it holds exactly one.
pub fn lone_entry(dir: &Path) -> Result<Option<std::fs::DirEntry>, FetchError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io("reading", dir))?
        .collect::<Result<_, _>>()
        .map_err(io("reading", dir))?;
    Ok(if entries.len() == 1 {
        entries.pop()
    } else {
        None
    })
}

/// Moves every entry of folder `from` into `to`, then removes `from`.
pub fn move_contents(from: &Path, to: &Path) -> Result<(), FetchError> {
    for entry in std::fs::read_dir(from).map_err(io("reading", from))? {
        let entry = entry.map_err(io("reading", from))?;
        let target = to.join(entry.file_name());
        std::fs::rename(entry.path(), &target).map_err(io("moving", &target))?;
    }
    std::fs::remove_dir(from).map_err(io("removing", from))
}

/// Replaces a lone top-level folder by its contents.
fn hoist_single_folder(into: &Path) -> Result<(), FetchError> {
    let Some(only) = lone_entry(into)? else {
        return Ok(());
    };
    let folder = only.path();
    if !only.file_type().map_err(io("reading", &folder))?.is_dir() {
        return Ok(());
    }
    let moved = into.join(".sluice-unpacked");
    std::fs::rename(&folder, &moved).map_err(io("moving", &folder))?;
    move_contents(&moved, into)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(label: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-archive-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    fn tar_gz(path: &Path, entries: &[(&str, &[u8])], link: Option<(&str, &str)>) {
        let file = File::create(path).expect("create");
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, body) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            // Written raw: the builder itself refuses `..` names.
            let raw = header.as_old_mut();
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            tar.append(&header, *body).expect("append");
        }
        if let Some((name, target)) = link {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, name, target).expect("link");
        }
        tar.into_inner().expect("tar").finish().expect("gz");
    }

    #[test]
    fn a_tarball_of_one_folder_becomes_the_model_folder() {
        let d = dir("ok");
        let archive = d.join("model.tar.gz");
        tar_gz(
            &archive,
            &[
                ("model/sluice-model.yaml", b"format: onnx\n"),
                ("model/sub/w.bin", b"w"),
            ],
            Some(("model/latest", "sub/w.bin")),
        );
        let into = d.join("out");
        unpack(&archive, Kind::of("model.tar.gz").expect("kind"), &into).expect("unpacked");
        assert_eq!(
            std::fs::read(into.join("sluice-model.yaml")).expect("yaml"),
            b"format: onnx\n"
        );
        assert_eq!(std::fs::read(into.join("sub/w.bin")).expect("w"), b"w");
        assert!(into.join("latest").exists(), "an inside link is kept");
        assert!(!archive.exists(), "the archive is removed");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn entries_that_leave_the_folder_are_refused() {
        let d = dir("bad");
        for (label, entries, link) in [
            ("dotdot", vec![("../evil.txt", &b"x"[..])], None),
            (
                "absolute-link",
                vec![("ok.txt", &b"x"[..])],
                Some(("l", "/etc/passwd")),
            ),
            (
                "climbing-link",
                vec![("ok.txt", &b"x"[..])],
                Some(("a/l", "../../x")),
            ),
        ] {
            let archive = d.join(format!("{label}.tgz"));
            tar_gz(&archive, &entries, link);
            let into = d.join(label);
            let err = unpack(&archive, Kind::TarGz, &into).expect_err(label);
            assert!(err.to_string().contains("refused"), "{label}: {err}");
        }
        assert!(!d.join("evil.txt").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn zip_files_unpack_and_kinds_follow_the_name() {
        let d = dir("zip");
        let archive = d.join("m.zip");
        {
            let mut zip = zip::ZipWriter::new(File::create(&archive).expect("zip"));
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            zip.start_file("model.onnx", options).expect("start");
            std::io::Write::write_all(&mut zip, b"onnx bytes").expect("write");
            zip.start_file("sluice-model.yaml", options).expect("start");
            std::io::Write::write_all(&mut zip, b"format: onnx\n").expect("write");
            zip.finish().expect("finish");
        }
        let into = d.join("out");
        unpack(&archive, Kind::Zip, &into).expect("unpacked");
        assert_eq!(
            std::fs::read(into.join("model.onnx")).expect("onnx"),
            b"onnx bytes"
        );
        assert_eq!(Kind::of("A.TGZ"), Some(Kind::TarGz));
        assert_eq!(Kind::of("w.tar"), Some(Kind::Tar));
        assert_eq!(Kind::of("model.onnx"), None);
        let _ = std::fs::remove_dir_all(&d);
    }
}
