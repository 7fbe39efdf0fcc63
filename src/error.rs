//! One error type for the library. Every variant that comes from a file names the file, so the CLI can print a
//! single line that tells the user what is wrong and where.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but its content is not what the format promises (truncated, corrupt, hostile).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A value (latent, option, tensor) does not fit the model or the operation.
    #[error("{0}")]
    Invalid(String),
    /// The device ran out of memory: the caller may retry with less work at once.
    #[error("{0}")]
    DeviceMemory(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// Attach a file to an error raised by file-agnostic parsing code.
    pub fn in_file(self, path: impl AsRef<Path>) -> Self {
        match self {
            Error::Invalid(msg) => Error::format(path, msg),
            other => other,
        }
    }
}

/// Shorthand for `Err(Error::Invalid(format!(...)))`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Invalid(format!($($arg)*)))
    };
}
