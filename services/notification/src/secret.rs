//! A secret given either as a value (an environment variable) or as a file read each time it is
//! used, so that a rotated Kubernetes Secret mounted as a file takes effect without a restart.
//! Its `Debug` never shows the value.

use std::fmt;
use std::path::PathBuf;

/// Where a secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The value itself.
    Value(String),
    /// A file holding it (surrounding whitespace trimmed), read on every use.
    File(PathBuf),
}

impl Secret {
    /// The secret now: the value, or the file's current content trimmed. An error names the file
    /// (never the content).
    pub fn read(&self) -> Result<String, String> {
        match self {
            Self::Value(v) => Ok(v.clone()),
            Self::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let text = text.trim();
                if text.is_empty() {
                    Err(format!("{} is empty", path.display()))
                } else {
                    Ok(text.to_string())
                }
            }
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(_) => f.write_str("Secret(<redacted>)"),
            Self::File(path) => write!(f, "Secret(file {})", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_never_printed_and_a_file_is_read_each_time() {
        let s = Secret::Value("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.read().unwrap(), "hunter2");
        let dir = std::env::temp_dir().join(format!("mesh-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("password");
        std::fs::write(&path, "first\n").unwrap();
        let f = Secret::File(path.clone());
        assert_eq!(f.read().unwrap(), "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(f.read().unwrap(), "second", "a rotated file is read again");
        std::fs::write(&path, "  \n").unwrap();
        assert!(f.read().unwrap_err().contains("empty"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(f.read().unwrap_err().contains("cannot read"));
    }
}
