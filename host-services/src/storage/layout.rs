//! Where a storage key lives in a store (local folder or S3 bucket): ncps's
//! layout. Plain `std` only: the Spin adapter includes this file as it is,
//! so native and Spin nodes agree on every object's place.

/// Longest storage key accepted.
pub const MAX_KEY_LEN: usize = 512;

/// Where NAR objects live under a store root.
pub const NAR_PREFIX: &str = "store/nar/";

/// Where markers of S3 multipart uploads in progress live.
pub const UPLOADS_PREFIX: &str = "store/uploads/";

/// Whether `key` is a plain relative key: `/`-separated segments of
/// `[A-Za-z0-9._-]`, none of them empty, `.` or `..`.
pub fn is_valid_key(key: &str) -> bool {
    let ok_segment = |s: &str| {
        !s.is_empty() && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    key.len() <= MAX_KEY_LEN && key.split('/').all(ok_segment)
}

/// The path of a valid `key` under a store root:
/// `store/nar/<h0>/<h0h1>/<file>` for NARs, `store/<key>` otherwise.
pub fn object_path(key: &str) -> String {
    match key.strip_prefix("nar/") {
        Some(file) if !file.contains('/') && file.len() >= 2 => {
            format!("{NAR_PREFIX}{}/{}/{file}", &file[..1], &file[..2])
        }
        _ => format!("store/{key}"),
    }
}

/// The storage key of an object path under [`NAR_PREFIX`] (its file name
/// under `nar/`), none for anything else.
pub fn nar_key_of(object: &str) -> Option<String> {
    let file = object.strip_prefix(NAR_PREFIX)?.rsplit('/').next()?;
    Some(format!("nar/{file}"))
}

/// Where the marker of multipart upload `id` lives.
pub fn upload_marker(id: &str) -> String {
    format!("{UPLOADS_PREFIX}{id}")
}
