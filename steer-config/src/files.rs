//! The files a config involves: the config file itself and the `ca_file`s
//! it names. Both are read the same careful way: only a regular file, at
//! most [`MAX_FILE_BYTES`], opened without blocking (a FIFO would otherwise
//! hang `steer check`, and `/dev/zero` would grow without bound).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::defaults::MAX_FILE_BYTES;

/// Reads a regular file of at most [`MAX_FILE_BYTES`]. The message says
/// what is wrong, for "cannot read <what>: ...".
pub(crate) fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    read_up_to(path, MAX_FILE_BYTES)
}

/// Reads a regular file of at most `limit` bytes, as [`read_limited`].
pub(crate) fn read_up_to(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    // O_NONBLOCK: opening a FIFO does not wait for a writer; the file type
    // is checked on the open descriptor (no race with a rename).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "no such file (check the path)".to_string(),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (check the file's owner and mode)".to_string()
            }
            _ => e.to_string(),
        })?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO (named pipe)"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(format!("it is {what}; steer reads only regular files"));
    }
    let too_big = || {
        format!(
            "it is larger than {} MiB, the most steer reads (is this the right file?)",
            limit >> 20
        )
    };
    if meta.len() > limit {
        return Err(too_big());
    }
    read_at_most(file, limit).ok_or_else(too_big)?
}

/// Reads to the end, `None` if there is more than `limit` (the file may grow
/// after fstat).
fn read_at_most(file: File, limit: u64) -> Option<Result<Vec<u8>, String>> {
    let mut bytes = Vec::new();
    match file.take(limit + 1).read_to_end(&mut bytes) {
        Ok(n) if n as u64 > limit => None,
        Ok(_) => Some(Ok(bytes)),
        Err(e) => Some(Err(e.to_string())),
    }
}

/// Reads a config file as text.
pub(crate) fn read_config(path: &Path) -> Result<String, String> {
    let bytes = read_limited(path).map_err(|m| format!("cannot read config file: {m}"))?;
    String::from_utf8(bytes)
        .map_err(|_| "cannot read config file: it is not valid UTF-8 text".to_string())
}

/// Checks that `ca_file` holds at least one PEM certificate and nothing that
/// fails to parse, like the health checker will need it to.
pub(crate) fn check_ca_file(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let pem = read_limited(path).map_err(|m| format!("cannot read {shown}: {m}"))?;
    let mut count = 0usize;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| format!("{shown} is not valid PEM: {e}"))?;
        count += 1;
    }
    if count == 0 {
        return Err(format!(
            "{shown} holds no certificate (expected PEM blocks starting with \
             \"-----BEGIN CERTIFICATE-----\": the CA that signs the backends' certificates)"
        ));
    }
    Ok(())
}
