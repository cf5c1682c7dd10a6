//! Where a repository lives, parsed from what a user writes: a path, or a URI whose scheme names
//! the store. Parsing is pure and refuses what cannot be served: an unknown scheme, a missing
//! bucket, a prefix that climbs out of itself.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The schemes a repository URI may have, as the error for any other lists them.
const SCHEMES: &str = "s3://, gs://, az://, http://, https://, oci:// or a path";

/// A parsed repository location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory: a plain path or `file://`.
    Local(PathBuf),
    /// A bucket (or container) in an object store, with a key prefix (no leading or trailing
    /// slash; empty for the bucket's root).
    Object { store: ObjectStoreKind, bucket: String, prefix: String },
    /// A read-only static layout served over HTTP(S), with its index objects; `url` has no
    /// trailing slash.
    Http { url: String },
    /// An OCI registry repository: one artifact per version, tagged with the version number.
    Oci { registry: String, repository: String },
}

/// The object stores that `object_store` reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectStoreKind {
    /// AWS S3 and S3-compatible stores (`s3://bucket/prefix`).
    S3,
    /// Google Cloud Storage (`gs://bucket/prefix`).
    Gcs,
    /// Azure Blob Storage (`az://container/prefix`).
    Azure,
}

impl ObjectStoreKind {
    /// The URI scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            Self::S3 => "s3",
            Self::Gcs => "gs",
            Self::Azure => "az",
        }
    }
}

impl Location {
    /// Parses `text`: a path unless it starts with `SCHEME://`.
    pub fn parse(text: &str) -> Result<Self> {
        let Some((scheme, rest)) = text.split_once("://") else {
            if text.is_empty() {
                return Err(Error::invalid("the repository location is empty"));
            }
            return Ok(Self::Local(PathBuf::from(text)));
        };
        let malformed = |why: &str| Error::invalid(format!("repository URI {text:?}: {why}"));
        if scheme.eq_ignore_ascii_case("file") {
            let path = rest.trim_end_matches('/');
            if !path.starts_with('/') {
                return Err(malformed("a file:// URI names an absolute path, file:///DIR"));
            }
            return Ok(Self::Local(PathBuf::from(if path.is_empty() { "/" } else { path })));
        }
        if rest.contains(['?', '#']) || rest.chars().any(char::is_whitespace) {
            return Err(malformed("a query, fragment or whitespace has no meaning here"));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() || authority.contains('@') {
            return Err(malformed("it names no bucket, container or host (credentials never go in the URI)"));
        }
        let prefix = clean_prefix(path).map_err(|why| malformed(&why))?;
        let store = match scheme.to_ascii_lowercase().as_str() {
            "s3" | "s3a" => ObjectStoreKind::S3,
            "gs" | "gcs" => ObjectStoreKind::Gcs,
            "az" | "azure" => ObjectStoreKind::Azure,
            "http" | "https" => {
                let url = format!("{}://{authority}/{prefix}", scheme.to_ascii_lowercase());
                return Ok(Self::Http { url: url.trim_end_matches('/').to_owned() });
            }
            "oci" => {
                if prefix.is_empty() {
                    return Err(malformed("an OCI location is oci://REGISTRY/REPOSITORY"));
                }
                return Ok(Self::Oci { registry: authority.to_owned(), repository: prefix });
            }
            other => return Err(malformed(&format!("unsupported scheme {other:?}; use {SCHEMES}"))),
        };
        if !authority.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            return Err(malformed(&format!("{authority:?} is not a bucket or container name")));
        }
        Ok(Self::Object { store, bucket: authority.to_owned(), prefix })
    }

    /// Whether versions can be published here (an HTTP layout is read-only).
    pub fn writable(&self) -> bool {
        !matches!(self, Self::Http { .. })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(path) => write!(f, "{}", path.display()),
            Self::Object { store, bucket, prefix } if prefix.is_empty() => write!(f, "{}://{bucket}", store.scheme()),
            Self::Object { store, bucket, prefix } => write!(f, "{}://{bucket}/{prefix}", store.scheme()),
            Self::Http { url } => f.write_str(url),
            Self::Oci { registry, repository } => write!(f, "oci://{registry}/{repository}"),
        }
    }
}

/// A key prefix without empty, `.` or `..` segments, and without the slashes around it.
fn clean_prefix(path: &str) -> std::result::Result<String, String> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for segment in trimmed.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!("the path {path:?} has an empty, '.' or '..' segment"));
        }
        if segment.bytes().any(|b| b.is_ascii_control() || b == b'\\') {
            return Err(format!("the path segment {segment:?} has a control character or a backslash"));
        }
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_uris_name_their_store() {
        let object = |store, bucket: &str, prefix: &str| Location::Object {
            store,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        };
        let cases = [
            ("/models", Location::Local("/models".into())),
            ("relative/dir", Location::Local("relative/dir".into())),
            ("file:///var/models/", Location::Local("/var/models".into())),
            ("s3://models/repo", object(ObjectStoreKind::S3, "models", "repo")),
            ("S3://models/a/b/", object(ObjectStoreKind::S3, "models", "a/b")),
            ("s3://models", object(ObjectStoreKind::S3, "models", "")),
            ("gs://bucket/p", object(ObjectStoreKind::Gcs, "bucket", "p")),
            ("az://container/p", object(ObjectStoreKind::Azure, "container", "p")),
            ("https://host:8443/models/", Location::Http { url: "https://host:8443/models".into() }),
            (
                "oci://127.0.0.1:5000/lantern/iris",
                Location::Oci { registry: "127.0.0.1:5000".into(), repository: "lantern/iris".into() },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(Location::parse(text).unwrap(), expected, "{text}");
        }
        assert_eq!(Location::parse("s3://models/repo/").unwrap().to_string(), "s3://models/repo");
        assert!(!Location::parse("http://h/m").unwrap().writable());
        assert!(Location::parse("s3://b/p").unwrap().writable());
    }

    #[test]
    fn bad_locations_are_refused_by_what_is_wrong() {
        let cases = [
            ("", "empty"),
            ("ftp://host/models", "unsupported scheme \"ftp\""),
            ("s3://", "names no bucket"),
            ("s3:///prefix", "names no bucket"),
            ("s3://key:secret@bucket/p", "credentials never go in the URI"),
            ("s3://bucket/../etc", "'..'"),
            ("s3://bucket/a//b", "empty"),
            ("s3://bucket/a/./b", "'.'"),
            ("s3://bu cket/p", "whitespace"),
            ("s3://bucket/p?versionId=1", "query"),
            ("s3://bucket!/p", "not a bucket"),
            ("oci://registry", "oci://REGISTRY/REPOSITORY"),
        ];
        for (text, expected) in cases {
            let error = Location::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
