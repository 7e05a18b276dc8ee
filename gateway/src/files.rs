//! File I/O at the edges: size-limited reads, private files written 0600 and never over an
//! existing one, atomic replacement, PEM certificates and PKCS#8 keys, and the bundle
//! directory. Pure modules receive what these functions read.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::jose::SigningKey;
use crate::spiffe::{Bundle, BundleSet, TrustDomain};

/// Largest PEM or key file read: a certificate chain or key is a few KiB.
pub const MAX_PEM_FILE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: usize },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: already exists; refusing to overwrite")]
    Exists { path: PathBuf },
}

impl FileError {
    pub fn invalid(path: &Path, message: impl Into<String>) -> Self {
        FileError::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a whole file, refusing anything larger than `limit` without reading it all.
pub fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>, FileError> {
    let f = fs::File::open(path).map_err(io(path))?;
    let meta = f.metadata().map_err(io(path))?;
    if meta.is_dir() {
        return Err(FileError::invalid(path, "is a directory"));
    }
    if meta.len() > limit as u64 {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io(path))?;
    if buf.len() > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(buf)
}

pub fn read_text_limited(path: &Path, limit: usize) -> Result<String, FileError> {
    let b = read_limited(path, limit)?;
    String::from_utf8(b).map_err(|_| FileError::invalid(path, "not UTF-8 text"))
}

/// Creates `path` (which must not exist) with `mode`, writes `data` and syncs it.
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), FileError> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            FileError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            FileError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(())
}

/// Private key material: owner read/write only.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), FileError> {
    write_new(path, data, 0o600)
}

/// Replaces `path` atomically (write a temporary sibling, fsync, rename, fsync the directory),
/// so readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", crate::crypto::random_id()));
    write_new(&tmp, data, mode)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(FileError::Io {
            path: path.to_path_buf(),
            source: e,
        });
    }
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// PEM encoding with 64-character lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = crate::crypto::b64std(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap_or(""));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// Certificates from PEM text, in file order (leaf first for an SVID).
pub fn parse_pem_certs(
    path: &Path,
    data: &[u8],
) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(data) {
        out.push(item.map_err(|e| FileError::invalid(path, format!("bad PEM: {e}")))?);
    }
    if out.is_empty() {
        return Err(FileError::invalid(
            path,
            "no CERTIFICATE block found (not PEM?)",
        ));
    }
    Ok(out)
}

pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let data = read_limited(path, MAX_PEM_FILE_BYTES)?;
    parse_pem_certs(path, &data)
}

/// A PKCS#8 private key in PEM, as DER.
pub fn read_private_key_der(path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    let data = read_limited(path, MAX_PEM_FILE_BYTES)?;
    let key = PrivateKeyDer::from_pem_slice(&data)
        .map_err(|e| FileError::invalid(path, format!("no private key found: {e}")))?;
    Ok(key)
}

/// A P-256 or Ed25519 PKCS#8 signing key (JWS, signed notes).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, FileError> {
    let der = read_private_key_der(path)?;
    match der {
        PrivateKeyDer::Pkcs8(k) => SigningKey::from_pkcs8(k.secret_pkcs8_der())
            .map_err(|e| FileError::invalid(path, e.to_string())),
        _ => Err(FileError::invalid(
            path,
            "expected a PKCS#8 (\"PRIVATE KEY\") key",
        )),
    }
}

/// Loads `<trust-domain>.json` files from a directory. Every file must parse; a bad file is an
/// error naming it (a gateway must not start with a silently missing partner).
pub fn load_bundle_dir(dir: &Path) -> Result<BundleSet, Vec<String>> {
    let mut set = BundleSet::new();
    let mut problems = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Err(vec![format!("{}: {e}", dir.display())]),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(td) = name.strip_suffix(".json") else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        match load_bundle_file(&path, td) {
            Ok(b) => set.insert(b),
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() {
        Ok(set)
    } else {
        Err(problems)
    }
}

/// Loads one bundle file for trust domain `td`.
pub fn load_bundle_file(path: &Path, td: &str) -> Result<Bundle, String> {
    let td = TrustDomain::parse(td)
        .map_err(|e| format!("{}: file name is not a trust domain: {e}", path.display()))?;
    let data =
        read_limited(path, crate::spiffe::bundle::MAX_BUNDLE_BYTES).map_err(|e| e.to_string())?;
    Bundle::parse(td, &data).map_err(|e| format!("{}: {e}", path.display()))
}

/// Resolves `p` relative to the directory of `base_file` unless absolute.
pub fn relative_to(base_file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// Loads every `*.toml` agreement in `dir` with its signature files (see [`signature_path`])
/// and activates it (lint clean, names `local`, both signatures valid). Several versions of one
/// id may be held (`agreement::versions`); one version twice, or versions naming other domains,
/// are problems. Any failure is reported, naming the file; callers refuse to start or to reload
/// on problems.
pub fn load_agreements(
    dir: &Path,
    bundles: &BundleSet,
    local: Option<&TrustDomain>,
) -> Result<Vec<crate::agreement::Agreement>, Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Err(vec![format!("{}: {e}", dir.display())]),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        match load_agreement_file(&path, bundles, local) {
            Ok(a) => out.push(a),
            Err(e) => problems.push(e),
        }
    }
    problems.extend(crate::agreement::versions::conflicts(&out));
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Where one domain's signature of the agreement in `toml` sits: `<file stem>.<td>.sig` next to
/// it, so each version file has its own (`company-vendor.v4.toml` →
/// `company-vendor.v4.company.com.sig`). For a file named by its id this is SPEC section 5's
/// `<id>.<td>.sig`; a file named otherwise falls back to that name when it has no signature of
/// its own (the layout before versions).
pub fn signature_path(toml: &Path, id: &str, td: &str) -> PathBuf {
    let dir = toml.parent().unwrap_or(Path::new("."));
    let stem = toml.file_stem().and_then(|s| s.to_str()).unwrap_or(id);
    let own = dir.join(crate::agreement::signature_file_name(stem, td));
    if stem != id && !own.exists() {
        return dir.join(crate::agreement::signature_file_name(id, td));
    }
    own
}

/// The agreements in `dir` whose signature by `td` names key `kid` (the JWS header's `kid`):
/// a key that signs an agreement must stay in the bundle, or the agreement no longer
/// activates on either side. Unreadable files are skipped (activation reports them).
pub fn agreements_signed_by(dir: &Path, td: &str, kid: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return vec![];
    };
    let mut out = Vec::new();
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let Ok(text) = read_text_limited(&path, crate::agreement::MAX_AGREEMENT_BYTES) else {
            continue;
        };
        let Ok(a) = crate::agreement::Agreement::parse(&text) else {
            continue;
        };
        let Ok(sig) = read_text_limited(
            &signature_path(&path, &a.id, td),
            crate::jose::MAX_JWS_BYTES,
        ) else {
            continue;
        };
        let named = sig
            .trim()
            .split('.')
            .next()
            .and_then(crate::crypto::b64url_decode)
            .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
            .and_then(|h| h.get("kid").and_then(|k| k.as_str()).map(str::to_string));
        if named.as_deref() == Some(kid) {
            out.push(a.agr());
        }
    }
    out.sort();
    out
}

/// Loads and activates one agreement file; signatures are read from its directory.
pub fn load_agreement_file(
    path: &Path,
    bundles: &BundleSet,
    local: Option<&TrustDomain>,
) -> Result<crate::agreement::Agreement, String> {
    let text = read_text_limited(path, crate::agreement::MAX_AGREEMENT_BYTES)
        .map_err(|e| e.to_string())?;
    let id = crate::agreement::Agreement::parse(&text)
        .map(|a| a.id)
        .map_err(|issues| {
            format!(
                "{}: {}",
                path.display(),
                issues
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
    let sig_of = |td: &str| -> Option<String> {
        read_text_limited(&signature_path(path, &id, td), crate::jose::MAX_JWS_BYTES).ok()
    };
    crate::agreement::activate(&text, &sig_of, bundles, local)
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_read_and_private_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_private(&p, b"secret").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(matches!(
            write_private(&p, b"x"),
            Err(FileError::Exists { .. })
        ));
        assert_eq!(read_limited(&p, 6).unwrap(), b"secret");
        assert!(matches!(
            read_limited(&p, 5),
            Err(FileError::TooLarge { .. })
        ));
        assert!(matches!(
            read_limited(dir.path(), 5),
            Err(FileError::Invalid { .. })
        ));
        write_atomic(&p, b"new", 0o600).unwrap();
        assert_eq!(read_limited(&p, 10).unwrap(), b"new");
    }

    #[test]
    fn pem_round_trip_and_errors() {
        let pem = pem_encode("CERTIFICATE", &[1, 2, 3]);
        let certs = parse_pem_certs(Path::new("x"), pem.as_bytes()).unwrap();
        assert_eq!(certs[0].as_ref(), &[1, 2, 3]);
        assert!(parse_pem_certs(Path::new("x"), b"not pem").is_err());
        assert!(parse_pem_certs(Path::new("x"), b"").is_err());
        assert!(parse_pem_certs(
            Path::new("x"),
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"
        )
        .is_err());
    }
}
